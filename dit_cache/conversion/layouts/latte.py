"""The ``latte-skip`` layout (Skip-DiT ``LatteT2V_skip``) -> ``LatteTransformer3DModel``; the key
mapping: see `dit_cache.conversion.layouts`."""
from __future__ import annotations

import re

import torch

from ..errors import ConvertError
from .common import (
    Plan, add_pos_embed_check, check_keys, check_overrides, depth_of, heads_of, out_channels_of,
    patch_embedding, require_keys, sample_size_of, skip_linear_prefix, skip_shapes, skip_weights,
    transformer_shape,
)
from .dit import DIT_HEADS

LATTE_HEADS = {1152: 16, **DIT_HEADS}
LATTE_OVERRIDES = {"num_heads", "sample_size", "video_length", "norm_eps", "activation_fn"}
LATTE_IGNORABLE = ("caption_projection.y_embedding",)  # unused buffer of old diffusers' CaptionProjection


def plan_latte(sd: dict, overrides: dict) -> Plan:
    """The plan of a Latte-skip state dict (keys already diffusers', plus the long skips)."""
    from diffusers import LatteTransformer3DModel

    layout = "latte-skip"
    check_overrides(overrides, LATTE_OVERRIDES, layout)
    hint = "This looks like a DiT-layout checkpoint (--from dit or skip-dit)." if "x_embedder.proj.weight" in sd else ""
    anchors = [
        "pos_embed.proj.weight",
        "proj_out.weight",
        "caption_projection.linear_1.weight",
        "transformer_blocks.0.attn2.to_k.weight",
        "transformer_blocks.0.ff.net.0.proj.weight",
    ]
    require_keys(sd, anchors, layout, hint)
    if not any(k.startswith(("skip_norms.", "skip_linears.")) for k in sd):
        hint = "It has no skip_norms/skip_linears: a plain Latte checkpoint, not Latte-skip."
    dim, in_ch, patch = patch_embedding(sd, "pos_embed.proj.weight")
    depth = depth_of(sd, "transformer_blocks")
    if depth % 2 or depth < 4:
        raise ConvertError(f"a Latte-skip model needs an even depth >= 4 (P/2 long skips), this one has {depth} pairs")
    heads = heads_of(dim, overrides, LATTE_HEADS, "Latte")
    out_ch = out_channels_of(sd, "proj_out.weight", patch)
    ff_rows = int(sd["transformer_blocks.0.ff.net.0.proj.weight"].shape[0])
    activation = overrides.get("activation_fn", "geglu" if ff_rows == 8 * dim else "gelu-approximate")
    notes: list[str] = []
    sample = sample_size_of(sd, "pos_embed.pos_embed", patch, overrides, 64, notes)
    if "temp_pos_embed" in sd:
        video_length = int(sd["temp_pos_embed"].shape[1])
        if overrides.get("video_length", video_length) != video_length:
            raise ConvertError(f"--config video_length={overrides['video_length']} contradicts temp_pos_embed ({video_length})")
    else:
        video_length = overrides.get("video_length", 16)
    config = dict(
        **transformer_shape(heads, dim, in_ch, out_ch, depth),
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
    lin = skip_linear_prefix(sd)
    D = dim
    shapes.update(skip_shapes(depth // 2, D, lin))
    optional = {
        "pos_embed.pos_embed": (1, (sample // patch) ** 2, D),
        "temp_pos_embed": (1, video_length, D),
        **{k: None for k in LATTE_IGNORABLE},
    }
    check_keys(sd, shapes, optional, layout, hint)
    tensors = {k: sd[src_name(k)] for k in meta.state_dict()}
    skips = skip_weights(sd, depth // 2, lin)
    if "temp_pos_embed" not in sd and "video_length" not in overrides:
        notes.append(f"video_length {video_length} assumed (temporal sin-cos table; override with video_length=...)")
    if "activation_fn" not in overrides and ff_rows != 8 * dim:
        notes.append("activation gelu-approximate assumed (Latte-1); override with activation_fn=...")
    ignored = [k for k in optional if k in sd]
    plan = Plan(LatteTransformer3DModel, config, tensors, skips, ignored, notes)
    add_pos_embed_check(plan, sd, "pos_embed.pos_embed")
    if "temp_pos_embed" in sd:
        stored = sd["temp_pos_embed"]

        def check_temporal(model):
            diff = (stored.float() - model.temp_pos_embed.float()).abs().max().item()
            if not diff <= 1e-4:
                raise ConvertError(f"temp_pos_embed is not the fixed 1-D sin-cos table diffusers computes (max |diff| {diff:.3g})")

        plan.checks.append(check_temporal)
    return plan
