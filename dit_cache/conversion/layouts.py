"""Checkpoint layouts `ditcache convert` understands, and how each maps onto diffusers.

A layout turns a flat source state dict into a :class:`Plan`: the diffusers model class and
config, the diffusers state dict, the long-skip weights (Skip-DiT layouts) and the checks
to run on the built model. Every key of the source is accounted for: it is mapped, or
knowingly ignored (recomputed buffers), or reported as unexpected.

- ``dit`` (facebookresearch/DiT ``models.py``): ``x_embedder.proj``, ``t_embedder.mlp.{0,2}``,
  ``y_embedder.embedding_table``, ``pos_embed`` (fixed sin-cos; optional), ``blocks.{i}.{norm1,
  attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2, adaLN_modulation.1}`` and ``final_layer.{linear,
  adaLN_modulation.1}`` -> ``DiTTransformer2DModel``. diffusers keeps a copy of the timestep
  and class embedders inside every block's ``AdaLayerNormZero`` (``norm1.emb``), so they are
  copied into each block; ``qkv`` is split into ``to_q/to_k/to_v``.
- ``skip-dit`` (OpenSparseLLMs/Skip-DiT ``DiT_skip``): the DiT keys plus ``skip_norms.{j}``
  (LayerNorm 2D) and ``skip_linears.{j}.linear`` (``ResidualLinear`` wrapping a 2D->D Linear;
  a flat ``skip_linears.{j}.weight`` is accepted too), j = 0..N/2-1 serving deep block N/2+j,
  fed by shallow block N/2-1-j (a stack: push after blocks 0..N/2-1, pop before N/2..N-1).
- ``latte-skip`` (Skip-DiT ``LatteT2V_skip``, the Latte-1 text-to-video model built from
  diffusers modules): keys already named like ``LatteTransformer3DModel`` (``pos_embed.proj``,
  ``transformer_blocks``, ``temporal_transformer_blocks``, ``adaln_single``,
  ``caption_projection``, ``scale_shift_table``, ``proj_out``) plus model-level
  ``skip_norms.{j}`` / ``skip_linears.{j}.linear``, j = 0..P/2-1 fused before the spatial block
  of pair P/2+j with the output of pair P/2-1-j. The reference temporal block names its FF
  norm ``norm3`` (diffusers: ``norm2``); Latte-1 norms carry no weights, renamed if they do.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable

import torch

# facebookresearch/DiT model table: width -> heads (XL, L, B, S). Heads cannot be read
# from the weights (qkv is D x 3D for any head count).
DIT_HEADS = {1152: 16, 1024: 16, 768: 12, 384: 6}
TIMESTEP_FREQ_DIM = 256  # diffusers hard-codes the 256-channel sinusoid, as DiT does


class ConvertError(ValueError):
    """The checkpoint cannot be converted (bad file, unknown or partial layout, bad config)."""


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


def _need(sd: dict, anchors: list[str], layout: str, hint: str = "") -> None:
    missing = [k for k in anchors if k not in sd]
    if missing:
        raise ConvertError(
            f"checkpoint does not look like the {layout!r} layout: missing {summarize_keys(missing)} "
            f"(needed to infer the architecture); it holds {len(sd)} tensors: {summarize_keys(sd, limit=10)}"
            + (f". {hint}" if hint else "")
        )


def _depth(sd: dict, prefix: str) -> int:
    idx = [int(m.group(1)) for k in sd if (m := re.match(re.escape(prefix) + r"\.(\d+)\.", k))]
    return max(idx) + 1 if idx else 0


def _heads(width: int, overrides: dict, table: dict[int, int], what: str) -> int:
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


def _grid_side(tokens: int, what: str) -> int:
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise ConvertError(f"{what} has {tokens} positions, not a square grid")
    return side


def _sample_size(sd: dict, key: str, patch: int, overrides: dict, default: int, notes: list[str]) -> int:
    if key in sd:
        t = sd[key]
        if t.dim() != 3:
            raise ConvertError(f"{key} should be (1, tokens, width), got shape {tuple(t.shape)}")
        size = _grid_side(t.shape[1], key) * patch
        if overrides.get("sample_size", size) != size:
            raise ConvertError(f"--config sample_size={overrides['sample_size']} contradicts {key} ({size})")
        return size
    size = overrides.get("sample_size", default)
    if "sample_size" not in overrides:
        notes.append(f"no {key} in the checkpoint: latent size {size} assumed (override with sample_size=...)")
    return size


def _pos_embed_check(sd: dict, key: str):
    """The checkpoint's fixed sin-cos table must equal the one diffusers recomputes."""
    if key not in sd:
        return None
    stored = sd[key]

    def check(model):
        ours = model.pos_embed.pos_embed
        diff = (stored.float().reshape(ours.shape) - ours.float()).abs().max().item()
        if not diff <= 1e-4:
            raise ConvertError(
                f"{key} is not the fixed 2-D sin-cos embedding diffusers computes (max |diff| {diff:.3g}); "
                "a learned positional embedding cannot be carried over"
            )

    return check


OVERRIDE_TYPES = {
    "num_heads": int, "sample_size": int, "num_classes": int, "video_length": int,
    "norm_eps": float, "activation_fn": str,
}  # fmt: skip


def _check_overrides(overrides: dict, allowed: set[str], layout: str) -> None:
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


# ---------------------------------------------------------------------------- DiT / Skip-DiT
DIT_OVERRIDES = {"num_heads", "sample_size", "num_classes"}


def plan_dit(sd: dict, overrides: dict, with_skips: bool) -> Plan:
    from diffusers import DiTTransformer2DModel

    layout = "skip-dit" if with_skips else "dit"
    _check_overrides(overrides, DIT_OVERRIDES, layout)
    other = "latte-skip" if any(k.startswith("temporal_transformer_blocks.") for k in sd) else None
    hint = f"This looks like a {other!r} checkpoint (--from {other})." if other else ""
    _need(sd, ["x_embedder.proj.weight", "y_embedder.embedding_table.weight", "final_layer.linear.weight"], layout, hint)
    has_skips = any(k.startswith(("skip_norms.", "skip_linears.")) for k in sd)
    if has_skips and not with_skips:
        hint = "It carries skip_norms/skip_linears: use --from skip-dit."
    elif with_skips and not has_skips:
        hint = "It has no skip_norms/skip_linears: use --from dit."

    w = sd["x_embedder.proj.weight"]
    if w.dim() != 4 or w.shape[2] != w.shape[3]:
        raise ConvertError(f"x_embedder.proj.weight should be a square conv kernel (D, C, p, p), got {tuple(w.shape)}")
    dim, in_ch, patch = int(w.shape[0]), int(w.shape[1]), int(w.shape[2])
    depth = _depth(sd, "blocks")
    if depth == 0:
        raise ConvertError(f"checkpoint has no blocks.{{i}} keys; not a {layout!r} checkpoint")
    heads = _heads(dim, overrides, DIT_HEADS, "DiT")
    rows = int(sd["y_embedder.embedding_table.weight"].shape[0])
    num_classes = overrides.get("num_classes", rows - 1)
    if num_classes not in (rows - 1, rows):
        raise ConvertError(f"num_classes={num_classes} does not fit a label table of {rows} rows")
    out_rows = int(sd["final_layer.linear.weight"].shape[0])
    if out_rows % (patch * patch):
        raise ConvertError(f"final_layer.linear has {out_rows} outputs, not a multiple of patch^2={patch * patch}")
    out_ch = out_rows // (patch * patch)
    notes: list[str] = []
    sample = _sample_size(sd, "pos_embed", patch, overrides, 32, notes)
    if with_skips and (depth % 2 or depth < 4):
        raise ConvertError(f"a Skip-DiT model needs an even depth >= 4 (N/2 long skips), this one has {depth} blocks")

    D, H = dim, 4 * dim
    expected = {
        "x_embedder.proj.weight": (D, in_ch, patch, patch),
        "x_embedder.proj.bias": (D,),
        "t_embedder.mlp.0.weight": (D, TIMESTEP_FREQ_DIM),
        "t_embedder.mlp.0.bias": (D,),
        "t_embedder.mlp.2.weight": (D, D),
        "t_embedder.mlp.2.bias": (D,),
        "y_embedder.embedding_table.weight": (rows, D),
        "final_layer.linear.weight": (patch * patch * out_ch, D),
        "final_layer.linear.bias": (patch * patch * out_ch,),
        "final_layer.adaLN_modulation.1.weight": (2 * D, D),
        "final_layer.adaLN_modulation.1.bias": (2 * D,),
    }
    for i in range(depth):
        b = f"blocks.{i}."
        expected.update({
            b + "attn.qkv.weight": (3 * D, D), b + "attn.qkv.bias": (3 * D,),
            b + "attn.proj.weight": (D, D), b + "attn.proj.bias": (D,),
            b + "mlp.fc1.weight": (H, D), b + "mlp.fc1.bias": (H,),
            b + "mlp.fc2.weight": (D, H), b + "mlp.fc2.bias": (D,),
            b + "adaLN_modulation.1.weight": (6 * D, D), b + "adaLN_modulation.1.bias": (6 * D,),
        })  # fmt: skip
    nested = any(re.match(r"skip_linears\.\d+\.linear\.", k) for k in sd) or not any(
        re.match(r"skip_linears\.\d+\.(weight|bias)$", k) for k in sd
    )
    lin = "linear." if nested else ""
    if with_skips:
        for j in range(depth // 2):
            expected.update({
                f"skip_norms.{j}.weight": (2 * D,), f"skip_norms.{j}.bias": (2 * D,),
                f"skip_linears.{j}.{lin}weight": (D, 2 * D), f"skip_linears.{j}.{lin}bias": (D,),
            })  # fmt: skip
    check_keys(sd, expected, {"pos_embed": (1, (sample // patch) ** 2, D)}, layout, hint)

    table = sd["y_embedder.embedding_table.weight"]
    if num_classes == rows:  # trained without label dropout: diffusers always has the CFG null row
        table = torch.cat([table, table.new_zeros(1, D)])
        notes.append("label table has no CFG null-class row; a zero row was appended (class id num_classes)")
    t = {
        "pos_embed.proj.weight": sd["x_embedder.proj.weight"],
        "pos_embed.proj.bias": sd["x_embedder.proj.bias"],
        "proj_out_1.weight": sd["final_layer.adaLN_modulation.1.weight"],
        "proj_out_1.bias": sd["final_layer.adaLN_modulation.1.bias"],
        "proj_out_2.weight": sd["final_layer.linear.weight"],
        "proj_out_2.bias": sd["final_layer.linear.bias"],
    }
    for i in range(depth):
        src, dst = f"blocks.{i}.", f"transformer_blocks.{i}."
        emb = dst + "norm1.emb."
        for part in ("weight", "bias"):
            # every diffusers block owns a copy of the shared embedders (clone: no shared storage)
            t[emb + f"timestep_embedder.linear_1.{part}"] = sd[f"t_embedder.mlp.0.{part}"].clone()
            t[emb + f"timestep_embedder.linear_2.{part}"] = sd[f"t_embedder.mlp.2.{part}"].clone()
            q, k, v = sd[src + f"attn.qkv.{part}"].chunk(3, dim=0)  # timm: rows are [q; k; v]
            t[dst + f"attn1.to_q.{part}"], t[dst + f"attn1.to_k.{part}"], t[dst + f"attn1.to_v.{part}"] = q, k, v
            t[dst + f"attn1.to_out.0.{part}"] = sd[src + f"attn.proj.{part}"]
            t[dst + f"ff.net.0.proj.{part}"] = sd[src + f"mlp.fc1.{part}"]
            t[dst + f"ff.net.2.{part}"] = sd[src + f"mlp.fc2.{part}"]
            # (shift, scale, gate) x (msa, mlp): same chunk order in DiT and AdaLayerNormZero
            t[dst + f"norm1.linear.{part}"] = sd[src + f"adaLN_modulation.1.{part}"]
        t[emb + "class_embedder.embedding_table.weight"] = table.clone()
    skips = {}
    if with_skips:
        skips = {
            j: {
                "norm.weight": sd[f"skip_norms.{j}.weight"],
                "norm.bias": sd[f"skip_norms.{j}.bias"],
                "linear.weight": sd[f"skip_linears.{j}.{lin}weight"],
                "linear.bias": sd[f"skip_linears.{j}.{lin}bias"],
            }
            for j in range(depth // 2)
        }
    config = dict(
        num_attention_heads=heads,
        attention_head_dim=dim // heads,
        in_channels=in_ch,
        out_channels=out_ch,
        num_layers=depth,
        sample_size=sample,
        patch_size=patch,
        activation_fn="gelu-approximate",  # DiT: GELU(approximate="tanh")
        num_embeds_ada_norm=num_classes,
        norm_type="ada_norm_zero",
        norm_elementwise_affine=False,
        norm_eps=1e-6,  # DiT's LayerNorms use 1e-6 (diffusers' default 1e-5 would differ in norm3)
        attention_bias=True,
        upcast_attention=False,
    )
    if out_ch == 2 * in_ch:
        notes.append("learned sigma: the output holds eps and the variance channels (out_channels = 2 x in)")
    notes.append(
        "diffusers' DiT timestep sinusoid uses frequencies 10000^(-k/127) where DiT uses 10000^(-k/128) "
        "(the same holds for facebook/DiT-XL-2-256); the weights are converted exactly - call "
        "dit_cache.use_original_dit_timestep_embedding(model) after loading to compute the original function"
    )
    plan = Plan(DiTTransformer2DModel, config, t, skips, ["pos_embed"] if "pos_embed" in sd else [], notes)
    check = _pos_embed_check(sd, "pos_embed")
    if check:
        plan.checks.append(check)
    return plan


# ---------------------------------------------------------------------------- Latte T2V skip
LATTE_HEADS = {1152: 16, **DIT_HEADS}
LATTE_OVERRIDES = {"num_heads", "sample_size", "video_length", "norm_eps", "activation_fn"}
LATTE_IGNORABLE = ("caption_projection.y_embedding",)  # unused buffer of old diffusers' CaptionProjection


def plan_latte(sd: dict, overrides: dict) -> Plan:
    from diffusers import LatteTransformer3DModel

    layout = "latte-skip"
    _check_overrides(overrides, LATTE_OVERRIDES, layout)
    hint = "This looks like a DiT-layout checkpoint (--from dit or skip-dit)." if "x_embedder.proj.weight" in sd else ""
    anchors = [
        "pos_embed.proj.weight",
        "proj_out.weight",
        "caption_projection.linear_1.weight",
        "transformer_blocks.0.attn2.to_k.weight",
        "transformer_blocks.0.ff.net.0.proj.weight",
    ]
    _need(sd, anchors, layout, hint)
    if not any(k.startswith(("skip_norms.", "skip_linears.")) for k in sd):
        hint = "It has no skip_norms/skip_linears: a plain Latte checkpoint, not Latte-skip."
    w = sd["pos_embed.proj.weight"]
    if w.dim() != 4 or w.shape[2] != w.shape[3]:
        raise ConvertError(f"pos_embed.proj.weight should be a square conv kernel (D, C, p, p), got {tuple(w.shape)}")
    dim, in_ch, patch = int(w.shape[0]), int(w.shape[1]), int(w.shape[2])
    depth = _depth(sd, "transformer_blocks")
    if depth % 2 or depth < 4:
        raise ConvertError(f"a Latte-skip model needs an even depth >= 4 (P/2 long skips), this one has {depth} pairs")
    heads = _heads(dim, overrides, LATTE_HEADS, "Latte")
    out_rows = int(sd["proj_out.weight"].shape[0])
    if out_rows % (patch * patch):
        raise ConvertError(f"proj_out has {out_rows} outputs, not a multiple of patch^2={patch * patch}")
    ff_rows = int(sd["transformer_blocks.0.ff.net.0.proj.weight"].shape[0])
    activation = overrides.get("activation_fn", "geglu" if ff_rows == 8 * dim else "gelu-approximate")
    notes: list[str] = []
    sample = _sample_size(sd, "pos_embed.pos_embed", patch, overrides, 64, notes)
    if "temp_pos_embed" in sd:
        video_length = int(sd["temp_pos_embed"].shape[1])
        if overrides.get("video_length", video_length) != video_length:
            raise ConvertError(f"--config video_length={overrides['video_length']} contradicts temp_pos_embed ({video_length})")
    else:
        video_length = overrides.get("video_length", 16)
    config = dict(
        num_attention_heads=heads,
        attention_head_dim=dim // heads,
        in_channels=in_ch,
        out_channels=out_rows // (patch * patch),
        num_layers=depth,
        cross_attention_dim=int(sd["transformer_blocks.0.attn2.to_k.weight"].shape[1]),
        attention_bias="transformer_blocks.0.attn1.to_q.bias" in sd,
        sample_size=sample,
        patch_size=patch,
        activation_fn=activation,
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine="transformer_blocks.0.norm1.weight" in sd,
        norm_eps=overrides.get("norm_eps", 1e-6),
        caption_channels=int(sd["caption_projection.linear_1.weight"].shape[1]),
        video_length=video_length,
    )
    # Expected source keys: the diffusers model's own state dict (built on the meta device),
    # with the reference temporal block's FF norm named norm3.
    with torch.device("meta"):
        try:
            meta = LatteTransformer3DModel(**config)
        except Exception as err:  # noqa: BLE001 - an inconsistent inferred config
            raise ConvertError(f"cannot build LatteTransformer3DModel from the inferred config {config}: {err}") from err

    def src_name(key: str) -> str:
        return re.sub(r"^(temporal_transformer_blocks\.\d+\.)norm2\.", r"\1norm3.", key)

    shapes = {src_name(k): tuple(v.shape) for k, v in meta.state_dict().items()}
    nested = any(re.match(r"skip_linears\.\d+\.linear\.", k) for k in sd) or not any(
        re.match(r"skip_linears\.\d+\.(weight|bias)$", k) for k in sd
    )
    lin = "linear." if nested else ""
    D = dim
    for j in range(depth // 2):
        shapes.update({
            f"skip_norms.{j}.weight": (2 * D,), f"skip_norms.{j}.bias": (2 * D,),
            f"skip_linears.{j}.{lin}weight": (D, 2 * D), f"skip_linears.{j}.{lin}bias": (D,),
        })  # fmt: skip
    optional = {
        "pos_embed.pos_embed": (1, (sample // patch) ** 2, D),
        "temp_pos_embed": (1, video_length, D),
        **{k: None for k in LATTE_IGNORABLE},
    }
    check_keys(sd, shapes, optional, layout, hint)
    tensors = {k: sd[src_name(k)] for k in meta.state_dict()}
    skips = {
        j: {
            "norm.weight": sd[f"skip_norms.{j}.weight"],
            "norm.bias": sd[f"skip_norms.{j}.bias"],
            "linear.weight": sd[f"skip_linears.{j}.{lin}weight"],
            "linear.bias": sd[f"skip_linears.{j}.{lin}bias"],
        }
        for j in range(depth // 2)
    }
    if "temp_pos_embed" not in sd and "video_length" not in overrides:
        notes.append(f"video_length {video_length} assumed (temporal sin-cos table; override with video_length=...)")
    if "activation_fn" not in overrides and ff_rows != 8 * dim:
        notes.append("activation gelu-approximate assumed (Latte-1); override with activation_fn=...")
    ignored = [k for k in optional if k in sd]
    plan = Plan(LatteTransformer3DModel, config, tensors, skips, ignored, notes)
    check = _pos_embed_check(sd, "pos_embed.pos_embed")
    if check:
        plan.checks.append(check)
    if "temp_pos_embed" in sd:
        stored = sd["temp_pos_embed"]

        def check_temporal(model):
            diff = (stored.float() - model.temp_pos_embed.float()).abs().max().item()
            if not diff <= 1e-4:
                raise ConvertError(f"temp_pos_embed is not the fixed 1-D sin-cos table diffusers computes (max |diff| {diff:.3g})")

        plan.checks.append(check_temporal)
    return plan


PLANNERS = {
    "dit": lambda sd, o: plan_dit(sd, o, with_skips=False),
    "skip-dit": lambda sd, o: plan_dit(sd, o, with_skips=True),
    "latte-skip": plan_latte,
}
