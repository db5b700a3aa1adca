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

Modules: ``common`` (the Plan, key reports, shared inference), ``dit``, ``latte``.
"""
from .common import Plan, summarize_keys
from .dit import plan_dit
from .latte import plan_latte

PLANNERS = {
    "dit": lambda sd, o: plan_dit(sd, o, with_skips=False),
    "skip-dit": lambda sd, o: plan_dit(sd, o, with_skips=True),
    "latte-skip": plan_latte,
}
LAYOUTS = tuple(PLANNERS)

__all__ = ["LAYOUTS", "PLANNERS", "Plan", "plan_dit", "plan_latte", "summarize_keys"]
