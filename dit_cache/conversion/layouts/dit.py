"""The ``dit`` and ``skip-dit`` layouts (facebookresearch/DiT, OpenSparseLLMs/Skip-DiT
``DiT_skip``) -> ``DiTTransformer2DModel``; the key mapping: see `dit_cache.conversion.layouts`."""
from __future__ import annotations

import torch

from ..errors import ConvertError
from .common import (
    TIMESTEP_FREQ_DIM, Plan, add_pos_embed_check, check_keys, check_overrides, depth_of, heads_of,
    out_channels_of, patch_embedding, require_keys, sample_size_of, skip_linear_prefix, skip_shapes, skip_weights,
    transformer_shape,
)

# facebookresearch/DiT model table: width -> heads (XL, L, B, S). Heads cannot be read
# from the weights (qkv is D x 3D for any head count).
DIT_HEADS = {1152: 16, 1024: 16, 768: 12, 384: 6}
DIT_OVERRIDES = {"num_heads", "sample_size", "num_classes"}


def plan_dit(sd: dict, overrides: dict, with_skips: bool) -> Plan:
    """The plan of a DiT state dict (``with_skips``: a Skip-DiT one, carrying its long skips)."""
    from diffusers import DiTTransformer2DModel

    layout = "skip-dit" if with_skips else "dit"
    check_overrides(overrides, DIT_OVERRIDES, layout)
    other = "latte-skip" if any(k.startswith("temporal_transformer_blocks.") for k in sd) else None
    hint = f"This looks like a {other!r} checkpoint (--from {other})." if other else ""
    require_keys(sd, ["x_embedder.proj.weight", "y_embedder.embedding_table.weight", "final_layer.linear.weight"], layout, hint)
    has_skips = any(k.startswith(("skip_norms.", "skip_linears.")) for k in sd)
    if has_skips and not with_skips:
        hint = "It carries skip_norms/skip_linears: use --from skip-dit."
    elif with_skips and not has_skips:
        hint = "It has no skip_norms/skip_linears: use --from dit."

    dim, in_ch, patch = patch_embedding(sd, "x_embedder.proj.weight")
    depth = depth_of(sd, "blocks")
    if depth == 0:
        raise ConvertError(f"checkpoint has no blocks.{{i}} keys; not a {layout!r} checkpoint")
    heads = heads_of(dim, overrides, DIT_HEADS, "DiT")
    rows = int(sd["y_embedder.embedding_table.weight"].shape[0])
    num_classes = overrides.get("num_classes", rows - 1)
    if num_classes not in (rows - 1, rows):
        raise ConvertError(f"num_classes={num_classes} does not fit a label table of {rows} rows")
    out_ch = out_channels_of(sd, "final_layer.linear.weight", patch)
    notes: list[str] = []
    sample = sample_size_of(sd, "pos_embed", patch, overrides, 32, notes)
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
    lin = skip_linear_prefix(sd)
    if with_skips:
        expected.update(skip_shapes(depth // 2, D, lin))
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
    skips = skip_weights(sd, depth // 2, lin) if with_skips else {}
    config = dict(
        **transformer_shape(heads, dim, in_ch, out_ch, depth),
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
    add_pos_embed_check(plan, sd, "pos_embed")
    return plan
