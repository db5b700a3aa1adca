"""What every layout shares: the `Plan` a layout produces, reports about state-dict keys, the
architecture facts read from tensors, override checks, and the Skip-DiT long-skip weights."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..errors import ConvertError

TIMESTEP_FREQ_DIM = 256  # diffusers hard-codes the 256-channel sinusoid, as DiT does


@dataclass
class Plan:
    model_class: type
    config: dict
    tensors: dict[str, torch.Tensor]  # diffusers state dict
    skips: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)  # j -> norm/linear weights
    ignored: list[str] = field(default_factory=list)  # source keys knowingly dropped
    notes: list[str] = field(default_factory=list)
    checks: list[Callable] = field(default_factory=list)  # check(model) after loading; may raise


# ---------------------------------------------------------------------------- key reports
def _ranges(nums: list[int]) -> str:
    nums, out, start = sorted(set(nums)), [], None
    for i, n in enumerate(nums):
        if start is None:
            start = n
        if i + 1 == len(nums) or nums[i + 1] != n + 1:
            out.append(str(start) if start == n else f"{start}-{n}")
            start = None
    return ",".join(out)


def summarize_keys(keys, limit: int = 16) -> str:
    """Compact listing: ``blocks.{0-27}.attn.qkv.weight`` instead of 28 lines."""
    groups: dict[str, list[int]] = {}
    for key in keys:
        m = re.search(r"(^|\.)(\d+)(\.|$)", key)
        if m:
            pattern = key[: m.start(2)] + "{}" + key[m.end(2) :]
            groups.setdefault(pattern, []).append(int(m.group(2)))
        else:
            groups.setdefault(key, [])
    items = [p.replace("{}", "{" + _ranges(n) + "}") if n else p for p, n in sorted(groups.items())]
    shown = ", ".join(items[:limit])
    return shown + (f", ... and {len(items) - limit} more" if len(items) > limit else "") if items else "none"


def check_keys(sd: dict, expected: dict[str, tuple], optional: dict[str, tuple | None], layout: str, hint: str = ""):
    """Raise a ConvertError listing missing, unexpected and wrongly shaped keys."""
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected and k not in optional]
    wrong: dict[tuple, list[str]] = {}
    for k, v in sd.items():
        want = expected.get(k, optional.get(k))
        if want is not None and tuple(v.shape) != tuple(want):
            wrong.setdefault((tuple(v.shape), tuple(want)), []).append(k)
    if not (missing or unexpected or wrong):
        return
    parts = [f"checkpoint does not match the {layout!r} layout"]
    if missing:
        parts.append(f"missing {len(missing)} key(s): {summarize_keys(missing)}")
    if unexpected:
        parts.append(f"unexpected {len(unexpected)} key(s): {summarize_keys(unexpected)}")
    for (got, want), keys in wrong.items():
        parts.append(f"wrong shape {got} (expected {want}) for {summarize_keys(keys)}")
    raise ConvertError("; ".join(parts) + (f". {hint}" if hint else ""))


def require_keys(sd: dict, anchors: list[str], layout: str, hint: str = "") -> None:
    missing = [k for k in anchors if k not in sd]
    if missing:
        raise ConvertError(
            f"checkpoint does not look like the {layout!r} layout: missing {summarize_keys(missing)} "
            f"(needed to infer the architecture); it holds {len(sd)} tensors: {summarize_keys(sd, limit=10)}"
            + (f". {hint}" if hint else "")
        )


def depth_of(sd: dict, prefix: str) -> int:
    idx = [int(m.group(1)) for k in sd if (m := re.match(re.escape(prefix) + r"\.(\d+)\.", k))]
    return max(idx) + 1 if idx else 0


def heads_of(width: int, overrides: dict, table: dict[int, int], what: str) -> int:
    heads = overrides.get("num_heads")
    if heads is None:
        heads = table.get(width)
        if heads is None:
            known = ", ".join(f"{w}->{h}" for w, h in table.items())
            raise ConvertError(
                f"cannot infer the number of attention heads of a {what} of width {width} (the weights do "
                f"not determine it; known widths: {known}); pass --config num_heads=H"
            )
    if width % heads:
        raise ConvertError(f"num_heads={heads} does not divide the width {width}")
    return heads


def grid_side(tokens: int, what: str) -> int:
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise ConvertError(f"{what} has {tokens} positions, not a square grid")
    return side


def sample_size_of(sd: dict, key: str, patch: int, overrides: dict, default: int, notes: list[str]) -> int:
    if key in sd:
        t = sd[key]
        if t.dim() != 3:
            raise ConvertError(f"{key} should be (1, tokens, width), got shape {tuple(t.shape)}")
        size = grid_side(t.shape[1], key) * patch
        if overrides.get("sample_size", size) != size:
            raise ConvertError(f"--config sample_size={overrides['sample_size']} contradicts {key} ({size})")
        return size
    size = overrides.get("sample_size", default)
    if "sample_size" not in overrides:
        notes.append(f"no {key} in the checkpoint: latent size {size} assumed (override with sample_size=...)")
    return size


def add_pos_embed_check(plan: Plan, sd: dict, key: str) -> None:
    """When the checkpoint holds its fixed sin-cos table ``key``, check after loading that it
    equals the one diffusers recomputes."""
    if key not in sd:
        return
    stored = sd[key]

    def check(model):
        ours = model.pos_embed.pos_embed
        diff = (stored.float().reshape(ours.shape) - ours.float()).abs().max().item()
        if not diff <= 1e-4:
            raise ConvertError(
                f"{key} is not the fixed 2-D sin-cos embedding diffusers computes (max |diff| {diff:.3g}); "
                "a learned positional embedding cannot be carried over"
            )

    plan.checks.append(check)


def patch_embedding(sd: dict, key: str) -> tuple[int, int, int]:
    """(width, input channels, patch size) from the patchify conv kernel ``key``."""
    w = sd[key]
    if w.dim() != 4 or w.shape[2] != w.shape[3]:
        raise ConvertError(f"{key} should be a square conv kernel (D, C, p, p), got {tuple(w.shape)}")
    return int(w.shape[0]), int(w.shape[1]), int(w.shape[2])


def transformer_shape(heads: int, dim: int, in_ch: int, out_ch: int, depth: int) -> dict:
    """The leading diffusers config fields every layout sets (in this order)."""
    return dict(
        num_attention_heads=heads,
        attention_head_dim=dim // heads,
        in_channels=in_ch,
        out_channels=out_ch,
        num_layers=depth,
    )


def out_channels_of(sd: dict, key: str, patch: int) -> int:
    """Output channels of the final projection ``key`` (``patch^2 * channels`` rows)."""
    out_rows = int(sd[key].shape[0])
    if out_rows % (patch * patch):
        name = key.removesuffix(".weight")
        raise ConvertError(f"{name} has {out_rows} outputs, not a multiple of patch^2={patch * patch}")
    return out_rows // (patch * patch)


OVERRIDE_TYPES = {
    "num_heads": int, "sample_size": int, "num_classes": int, "video_length": int,
    "norm_eps": float, "activation_fn": str,
}  # fmt: skip


def check_overrides(overrides: dict, allowed: set[str], layout: str) -> None:
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise ConvertError(f"unknown --config key(s) {unknown} for {layout!r}; valid: {sorted(allowed)}")
    for key, value in overrides.items():
        kind = OVERRIDE_TYPES[key]
        if kind is str:
            if not isinstance(value, str):
                raise ConvertError(f"--config {key}={value!r}: expected a string")
            continue
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or value <= 0 or (kind is int and not isinstance(value, int)):
            raise ConvertError(f"--config {key}={value!r}: expected a positive {kind.__name__}")



# ---------------------------------------------------------------------------- Skip-DiT long skips
def skip_linear_prefix(sd: dict) -> str:
    """``"linear."`` for ``ResidualLinear`` projections (``skip_linears.{j}.linear.*``, also the
    answer when there are none), ``""`` for flat ``skip_linears.{j}.weight``."""
    nested = any(re.match(r"skip_linears\.\d+\.linear\.", k) for k in sd) or not any(
        re.match(r"skip_linears\.\d+\.(weight|bias)$", k) for k in sd
    )
    return "linear." if nested else ""


def skip_shapes(count: int, dim: int, lin: str) -> dict[str, tuple]:
    """Expected source shapes of ``count`` long skips of width ``dim`` (norm over 2D, 2D -> D)."""
    shapes: dict[str, tuple] = {}
    for j in range(count):
        shapes.update({
            f"skip_norms.{j}.weight": (2 * dim,), f"skip_norms.{j}.bias": (2 * dim,),
            f"skip_linears.{j}.{lin}weight": (dim, 2 * dim), f"skip_linears.{j}.{lin}bias": (dim,),
        })  # fmt: skip
    return shapes


def skip_weights(sd: dict, count: int, lin: str) -> dict[int, dict[str, torch.Tensor]]:
    """j -> the norm / linear weights of long skip j, named as dit-cache's adapters name them."""
    return {
        j: {
            "norm.weight": sd[f"skip_norms.{j}.weight"],
            "norm.bias": sd[f"skip_norms.{j}.bias"],
            "linear.weight": sd[f"skip_linears.{j}.{lin}weight"],
            "linear.bias": sd[f"skip_linears.{j}.{lin}bias"],
        }
        for j in range(count)
    }
