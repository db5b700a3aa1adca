"""Build diffusers transformers (DiT, Latte, Hunyuan-DiT, PixArt, SD3, FLUX, Wan) and whole
pipelines fully offline.

Nothing here touches the network: every model is constructed from a config with random
weights drawn from a seeded RNG, and every pipeline is assembled from tiny local components.
The configs come from each family's `FamilySpec` (adapters/<family>.py); this package only
builds them (builders.py: transformers and forward inputs; schedulers.py; pipelines.py).

==================  ========  ==========================================================
name                family    what
==================  ========  ==========================================================
``tiny-dit``        dit       6 blocks, D=64 (2 heads x 32), 16x16 latent, patch 2
``tiny-latte``      latte     4 spatial + 4 temporal blocks, D=64, 4 frames, 16x16 latent
``tiny-hunyuan``    hunyuan   6 blocks (2 long skips), D=64, 16x16 latent (128 px)
``dit-xl-2``        dit       DiT-XL/2: 28 blocks, D=1152 (16 x 72), 32x32 latent
``dit-s-2``         dit       DiT-S/2: 12 blocks, D=384 (6 x 64), 32x32 latent (bench default)
``latte-1``         latte     Latte-1: 28 spatial + 28 temporal blocks, D=1152
``hunyuan-dit``     hunyuan   Hunyuan-DiT v1.1: 40 blocks, D=1408 (16 x 88)
``tiny-pixart``     pixart    6 blocks, D=64, 16x16 latent, T5 text (PixArtSigmaPipeline)
``tiny-sd3``        sd3       6 joint blocks (3 with dual attention), D=64, 16x16 latent, CLIP x2 + T5
``tiny-flux``       flux      2 dual-stream + 4 single-stream blocks, D=64, 8x8 packed latent, CLIP + T5
``tiny-wan``        wan       6 blocks, D=64, 3 latent frames x 16x16, UMT5 text, flow matching
``pixart-sigma``    pixart    PixArt-Sigma-XL-2-1024: 28 blocks, D=1152 (16 x 72), 128x128 latent
``sd3.5-medium``    sd3       SD3.5-Medium: 24 joint blocks (13 dual attention), D=1536 (24 x 64), 1024 px
``flux.1-dev``      flux      FLUX.1-dev: 19 dual + 38 single blocks, D=3072 (24 x 128), 1024 px
``wan2.1-1.3b``     wan       Wan2.1-T2V-1.3B: 30 blocks, D=1536 (12 x 128), 480 px
==================  ========  ==========================================================

The real-size names are *architecture* configs only (random weights: 0.75 B / 1.06 B /
1.5 B parameters; PixArt-Sigma 0.61 B, SD3.5-Medium 2.24 B, FLUX.1-dev 11.9 B, Wan 2.1 1.4 B).
Build them on ``device="meta"`` to inspect structure without allocating memory; only the tiny names have pipelines.
"""
from ..adapters.hunyuan import hunyuan_rotary_emb

from .builders import (
    MODEL_CONFIGS,
    TINY_MODELS,
    build_transformer,
    family_of,
    model_config,
    reinit_zero_linears,
    transformer_blocks,
    transformer_inputs,
)
from .pipelines import PROMPTS, build_pipeline, pipeline_inputs, pipeline_output, run_pipeline
from .schedulers import SCHEDULER_NAMES, SCHEDULERS, build_scheduler

__all__ = [
    "MODEL_CONFIGS",
    "TINY_MODELS",
    "SCHEDULERS",
    "SCHEDULER_NAMES",
    "PROMPTS",
    "build_transformer",
    "build_pipeline",
    "build_scheduler",
    "pipeline_inputs",
    "transformer_inputs",
    "run_pipeline",
    "pipeline_output",
    "transformer_blocks",
    "family_of",
    "model_config",
    "reinit_zero_linears",
    "hunyuan_rotary_emb",
]
