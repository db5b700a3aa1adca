"""Build diffusers DiT / Latte / Hunyuan-DiT transformers and whole pipelines fully offline.

Nothing here touches the network: every model is constructed from a config with random
weights drawn from a seeded RNG, and every pipeline is assembled from tiny local
components (tiny ``AutoencoderKL``, tiny ``T5EncoderModel`` / ``BertModel`` and tokenizers
built in memory from a small word list).

Model names (see :data:`MODEL_CONFIGS`):

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
==================  ========  ==========================================================

The real-size names are *architecture* configs only (random weights: 0.75 B / 1.06 B /
1.5 B parameters). Build them on ``device="meta"`` to inspect structure without allocating
memory; only the tiny names have pipelines.

Random initialisation
---------------------
:func:`build_transformer` draws weights under ``torch.manual_seed(seed)`` inside
:func:`torch.random.fork_rng` (the caller's global RNG is left untouched), so the same
seed gives bit-identical weights. The original DiT / PixArt / Hunyuan training code
zero-initialises the adaLN modulation and output projections ("adaLN-zero"), which makes
every block an identity map at init and would let a caching bug (a skipped or reused
block) go unnoticed in tests. diffusers 0.42 builds those layers with PyTorch's default
(non-zero) ``nn.Linear`` init, so no block is an identity; as a safeguard for other
diffusers versions, tiny models additionally get every ``nn.Linear`` whose weight is
identically zero re-initialised from N(0, 0.02) (weight and bias) - see
:func:`_reinit_zero_linears`. The tests check that perturbing any single block changes
the output.

Schedulers
----------
:data:`SCHEDULERS` maps ``"ddim"``, ``"ddpm"``, ``"dpm++"``, ``"euler"`` to a factory
``factory(name_or_family, raw=False) -> scheduler`` for that family's pipeline, with a
training-noise config matching the family:

* dit:     1000 steps, linear betas 1e-4..0.02, epsilon prediction (facebook/DiT-XL-2-256)
* latte:   same betas (PixArt-alpha / Latte-1 use the DiT/ADM schedule), epsilon
* hunyuan: 1000 steps, scaled_linear betas 0.00085..0.03, ``steps_offset=1``,
  v-prediction (Tencent-Hunyuan/HunyuanDiT-Diffusers scheduler config)

All 12 (family x scheduler) combinations run with the installed diffusers (0.42.1).
Latte and Hunyuan pipelines call ``scheduler.scale_model_input`` and multiply the initial
noise by ``init_noise_sigma``, so Euler is correct there (checked in the 0.42.1 source).
``DiTPipeline`` does neither correctly: it starts from N(0, 1) noise and passes the
*scaled* model input to ``scheduler.step``. Stock ``EulerDiscreteScheduler`` therefore runs
without error but samples the wrong trajectory (final latents ~97 % off a reference Euler
loop and nearly independent of the seed). ``SCHEDULERS["euler"]("dit")`` returns
``DiTPipelineEulerScheduler`` (see :func:`_dit_pipeline_euler_class`), which makes
DiTPipeline + Euler match a reference loop to float rounding; pass ``raw=True`` to
:func:`build_scheduler` for the stock class. DDIM / DDPM / DPM++ have an identity
``scale_model_input`` and are unaffected. Every pipeline drops the learned-variance half
of the transformer output before ``scheduler.step`` (``variance_type`` is left at the
fixed default: with random weights a "learned_range" variance can blow up).

With random weights an epsilon-prediction model cannot denoise, so DiT / Latte latents
grow large (std ~10-20 after 3 DDIM steps, ~100-1000 with DPM++/Euler); Hunyuan
(v-prediction) stays O(1). Compare runs with relative errors.

Caveats
-------
* Determinism: ``DiTPipeline`` does not pass its ``generator`` to ``scheduler.step``, so
  DDPM's per-step noise comes from the *global* torch RNG, and a ``torch.Generator`` is
  consumed by a run. :func:`run_pipeline` re-seeds both (inside ``fork_rng``) and gives
  bit-identical repeated runs for every family and scheduler.
* DiTPipeline always decodes and clamps to [0, 1] (no ``output_type="latent"``); with
  random weights that saturates, so compare ``run_pipeline(..., return_latents=True)``.
* Threads: on the 2-vCPU machines, tiny models with ``torch.set_num_threads(2)`` were
  50-100x slower when the other vCPU was busy (OpenMP spin-waiting; a 35 ms 3-step run
  took 2-4 s). Use one thread for tiny models (or ``OMP_WAIT_POLICY=PASSIVE``).
* The in-memory ``T5Tokenizer(vocab=[(piece, score), ...])`` construction needs
  transformers >= 5 (tokenizers backend; no sentencepiece model file).
"""

from __future__ import annotations

import copy
import functools
import os
import tempfile
from typing import Any, Callable

import torch

__all__ = [
    "MODEL_CONFIGS",
    "TINY_MODELS",
    "SCHEDULERS",
    "SCHEDULER_NAMES",
    "build_transformer",
    "build_pipeline",
    "build_scheduler",
    "pipeline_inputs",
    "transformer_inputs",
    "run_pipeline",
    "pipeline_output",
    "transformer_blocks",
    "family_of",
    "hunyuan_rotary_emb",
]

# ----------------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------------

# Small word list shared by the in-memory T5 (unigram) and BERT (wordpiece) tokenizers.
_WORDS = (
    "a an the of on in at with and to by under over near from is are "
    "photo painting picture drawing video clip render sketch portrait "
    "cat dog bird fish horse car boat tree flower house city street sky sea "
    "beach mountain river forest field road bridge castle person man woman child "
    "red green blue yellow white black orange purple pink brown gray golden "
    "small big tiny large old new young happy sad bright dark sunny rainy "
    "running walking flying swimming sitting standing sleeping playing "
    "day night morning evening sunset sunrise winter summer spring autumn "
    "high quality detailed beautiful realistic cinematic slow motion camera"
).split()

# ImageNet classes 0-9 (the ids the DiT pipeline needs are the ImageNet ids).
_IMAGENET_ID2LABEL = {
    0: "tench, Tinca tinca",
    1: "goldfish, Carassius auratus",
    2: "great white shark, white shark, man-eater, man-eating shark, Carcharodon carcharias",
    3: "tiger shark, Galeocerdo cuvieri",
    4: "hammerhead, hammerhead shark",
    5: "electric ray, crampfish, numbfish, torpedo",
    6: "stingray",
    7: "cock",
    8: "hen",
    9: "ostrich, Struthio camelus",
}

# Tiny VAE: 4 blocks -> 8x spatial downsampling like the real SD VAE. Hunyuan's pipeline
# hard-codes `height // 8` when it builds the rotary embedding, so a 2-block VAE would
# desynchronise latents and RoPE; we use the same factor for every family.
_TINY_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(8, 8, 16, 16),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=8,
    sample_size=128,
)

_TINY_T5 = dict(
    d_model=32,
    d_kv=16,
    d_ff=64,
    num_layers=2,
    num_heads=2,
    relative_attention_num_buckets=8,
    relative_attention_max_distance=32,
    dropout_rate=0.0,
    feed_forward_proj="gated-gelu",
    is_encoder_decoder=False,
    use_cache=False,
    pad_token_id=0,
    eos_token_id=1,
    decoder_start_token_id=0,
)

_TINY_BERT = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=128,  # the Hunyuan pipeline pads BERT prompts to 77 tokens
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
    type_vocab_size=2,
    pad_token_id=0,
)

MODEL_CONFIGS: dict[str, dict[str, Any]] = {
    # ---------------------------------------------------------------- tiny (tests, demo)
    "tiny-dit": {
        "family": "dit",
        "tiny": True,
        "transformer": dict(
            num_attention_heads=2,
            attention_head_dim=32,
            in_channels=4,
            out_channels=8,  # learned sigma, like DiT-XL/2
            num_layers=6,
            sample_size=16,
            patch_size=2,
            activation_fn="gelu-approximate",
            num_embeds_ada_norm=1000,  # DiTPipeline hard-codes the null class id 1000
            norm_type="ada_norm_zero",
            norm_elementwise_affine=False,
            attention_bias=True,
        ),
        "vae": dict(_TINY_VAE, scaling_factor=0.18215),
        "id2label": _IMAGENET_ID2LABEL,
        "resolution": 128,  # pixels (16x16 latent)
        "num_frames": None,
        "guidance_scale": 4.0,
    },
    "tiny-latte": {
        "family": "latte",
        "tiny": True,
        "transformer": dict(
            num_attention_heads=2,
            attention_head_dim=32,
            in_channels=4,
            out_channels=8,
            num_layers=4,  # 4 spatial + 4 temporal blocks
            cross_attention_dim=64,  # == inner dim (caption_projection maps to inner dim)
            caption_channels=32,  # == tiny T5 d_model
            sample_size=16,
            patch_size=2,
            activation_fn="gelu-approximate",
            num_embeds_ada_norm=1000,
            norm_type="ada_norm_single",
            norm_elementwise_affine=False,
            norm_eps=1e-6,
            attention_bias=True,
            video_length=4,
        ),
        "vae": dict(_TINY_VAE, scaling_factor=0.18215),
        "text_encoder": _TINY_T5,
        "resolution": 128,
        "num_frames": 4,
        "guidance_scale": 7.5,
    },
    "tiny-hunyuan": {
        "family": "hunyuan",
        "tiny": True,
        "transformer": dict(
            num_attention_heads=2,
            attention_head_dim=32,
            hidden_size=64,  # must equal heads * head_dim
            in_channels=4,
            patch_size=2,
            sample_size=16,
            num_layers=6,  # even: blocks 4,5 take long skips from blocks 1,0
            mlp_ratio=4.0,
            activation_fn="gelu-approximate",
            learn_sigma=True,
            cross_attention_dim=32,  # == tiny BERT hidden size
            cross_attention_dim_t5=32,  # == tiny T5 d_model (divisible by the pooler's 8 heads)
            pooled_projection_dim=32,
            text_len=77,  # the pipeline pads BERT prompts to 77 tokens
            text_len_t5=256,  # ... and T5 prompts to 256 (the attention pool needs exactly this)
            norm_type="layer_norm",
            use_style_cond_and_image_meta_size=True,
        ),
        "vae": dict(_TINY_VAE, scaling_factor=0.13025),
        "text_encoder": _TINY_BERT,
        "text_encoder_2": _TINY_T5,
        "resolution": 128,  # must be a multiple of 16 (pipeline floors to 16)
        "num_frames": None,
        "guidance_scale": 5.0,
    },
    # ---------------------------------------------------------------- real-size (meta only in tests)
    "dit-xl-2": {
        "family": "dit",
        "tiny": False,
        "reference": "facebook/DiT-XL-2-256",
        "transformer": dict(
            num_attention_heads=16,
            attention_head_dim=72,
            in_channels=4,
            out_channels=8,
            num_layers=28,
            sample_size=32,
            patch_size=2,
            activation_fn="gelu-approximate",
            num_embeds_ada_norm=1000,
            norm_type="ada_norm_zero",
            norm_elementwise_affine=False,
            attention_bias=True,
            norm_num_groups=32,
            upcast_attention=False,
        ),
        "resolution": 256,
        "num_frames": None,
        "guidance_scale": 4.0,
    },
    # DiT-S/2 (the DiT paper's smallest model, 33M params + diffusers' per-block embedders):
    # mid-size, so `ditcache bench` measures compute rather than Python overhead on a CPU.
    "dit-s-2": {
        "family": "dit",
        "tiny": False,
        "transformer": dict(
            num_attention_heads=6,
            attention_head_dim=64,
            in_channels=4,
            out_channels=8,
            num_layers=12,
            sample_size=32,
            patch_size=2,
            activation_fn="gelu-approximate",
            num_embeds_ada_norm=1000,
            norm_type="ada_norm_zero",
            norm_elementwise_affine=False,
            attention_bias=True,
            norm_num_groups=32,
            upcast_attention=False,
        ),
        "resolution": 256,
        "num_frames": None,
        "guidance_scale": 4.0,
    },
    "latte-1": {
        "family": "latte",
        "tiny": False,
        "reference": "maxin-cn/Latte-1",
        "transformer": dict(
            num_attention_heads=16,
            attention_head_dim=72,
            in_channels=4,
            out_channels=8,
            num_layers=28,
            cross_attention_dim=1152,
            caption_channels=4096,
            sample_size=64,
            patch_size=2,
            activation_fn="gelu-approximate",
            num_embeds_ada_norm=1000,
            norm_type="ada_norm_single",
            norm_elementwise_affine=False,
            norm_eps=1e-6,
            attention_bias=True,
            dropout=0.0,
            video_length=16,
        ),
        "resolution": 512,
        "num_frames": 16,
        "guidance_scale": 7.5,
    },
    "hunyuan-dit": {
        "family": "hunyuan",
        "tiny": False,
        "reference": "Tencent-Hunyuan/HunyuanDiT-v1.1-Diffusers",
        "transformer": dict(
            num_attention_heads=16,
            attention_head_dim=88,
            hidden_size=1408,
            in_channels=4,
            patch_size=2,
            sample_size=128,
            num_layers=40,
            mlp_ratio=4.3637,
            activation_fn="gelu-approximate",
            learn_sigma=True,
            cross_attention_dim=1024,
            cross_attention_dim_t5=2048,
            pooled_projection_dim=1024,
            text_len=77,
            text_len_t5=256,
            norm_type="layer_norm",
            use_style_cond_and_image_meta_size=True,  # v1.0/v1.1; v1.2 sets False
        ),
        "resolution": 1024,
        "num_frames": None,
        "guidance_scale": 5.0,
    },
}

TINY_MODELS: tuple[str, ...] = tuple(n for n, c in MODEL_CONFIGS.items() if c["tiny"])

_FAMILIES = ("dit", "latte", "hunyuan")


def _config(name: str) -> dict[str, Any]:
    try:
        return MODEL_CONFIGS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {sorted(MODEL_CONFIGS)}") from None


def family_of(name_or_family: str) -> str:
    """``"dit"`` / ``"latte"`` / ``"hunyuan"`` for a model name (or a family name)."""
    if name_or_family in _FAMILIES:
        return name_or_family
    return _config(name_or_family)["family"]


def _transformer_class(family: str):
    import diffusers

    return {
        "dit": diffusers.DiTTransformer2DModel,
        "latte": diffusers.LatteTransformer3DModel,
        "hunyuan": diffusers.HunyuanDiT2DModel,
    }[family]


# ----------------------------------------------------------------------------------------
# Transformers
# ----------------------------------------------------------------------------------------


@torch.no_grad()
def _reinit_zero_linears(model: torch.nn.Module, std: float = 0.02) -> list[str]:
    """Give every ``nn.Linear`` whose weight is identically zero small random values.

    Guards against adaLN-zero style init (zero modulation / output projections make a
    DiT block an identity map and the model output independent of the blocks). Draws from
    the current (seeded) RNG. Returns the names of re-initialised modules.
    """
    changed = []
    for mod_name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and not torch.any(mod.weight):
            mod.weight.normal_(0.0, std)
            if mod.bias is not None:
                mod.bias.normal_(0.0, std)
            changed.append(mod_name)
    return changed


def build_transformer(
    name: str,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> torch.nn.Module:
    """Build the diffusers transformer for ``name`` with seeded random weights.

    The model is returned in eval mode with ``requires_grad`` off for every parameter
    (call ``.requires_grad_(True)`` / ``.train()`` to fine-tune).

    ``device="meta"`` builds without allocating weights (use it for the real-size
    configs in tests). On other devices the weights are drawn on the CPU in float32 under
    ``torch.manual_seed(seed)`` (global RNG state is restored afterwards), then moved to
    ``device`` / ``dtype``; the same seed gives bit-identical weights. Tiny models also get
    zero-initialised linears re-initialised (see module docstring).
    """
    cfg = _config(name)
    cls = _transformer_class(cfg["family"])
    kwargs = copy.deepcopy(cfg["transformer"])
    if torch.device(device).type == "meta":
        with torch.device("meta"):
            model = cls(**kwargs)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = cls(**kwargs)
            if cfg["tiny"]:
                _reinit_zero_linears(model)
    if dtype != torch.float32 or torch.device(device).type not in ("cpu", "meta"):
        # nn.Module.to, not ModelMixin.to: diffusers 0.42 warns about "modules that should be
        # kept in float32: []" on every dtype cast even when there are none.
        torch.nn.Module.to(model, device=device, dtype=dtype)
    return model.eval().requires_grad_(False)


def transformer_blocks(transformer: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The transformer's blocks as ``(qualified_name, module)`` in execution order.

    DiT: ``transformer_blocks.i``; Latte: ``transformer_blocks.i`` (spatial) interleaved
    with ``temporal_transformer_blocks.i``; Hunyuan: ``blocks.i``.
    """
    if hasattr(transformer, "temporal_transformer_blocks"):
        out = []
        for i, (s, t) in enumerate(
            zip(transformer.transformer_blocks, transformer.temporal_transformer_blocks)
        ):
            out += [(f"transformer_blocks.{i}", s), (f"temporal_transformer_blocks.{i}", t)]
        return out
    if hasattr(transformer, "blocks"):
        return [(f"blocks.{i}", b) for i, b in enumerate(transformer.blocks)]
    return [(f"transformer_blocks.{i}", b) for i, b in enumerate(transformer.transformer_blocks)]


def hunyuan_rotary_emb(transformer: torch.nn.Module, latent_height: int, latent_width: int, device="cpu"):
    """The 2-D RoPE ``(cos, sin)`` exactly as ``HunyuanDiTPipeline`` builds it.

    The pipeline works in pixels and hard-codes an 8x VAE (``grid = height // 8 // patch``,
    ``base_size = 512 // 8 // patch``); here the latent size is given directly.
    """
    from diffusers.models.embeddings import get_2d_rotary_pos_embed
    from diffusers.pipelines.hunyuandit.pipeline_hunyuandit import get_resize_crop_region_for_grid

    patch = transformer.config.patch_size
    grid_h, grid_w = latent_height // patch, latent_width // patch
    base_size = 512 // 8 // patch
    crops = get_resize_crop_region_for_grid((grid_h, grid_w), base_size)
    return get_2d_rotary_pos_embed(
        transformer.inner_dim // transformer.num_heads,
        crops,
        (grid_h, grid_w),
        device=device,
        output_type="pt",
    )


def transformer_inputs(
    name: str,
    batch: int = 2,
    seed: int = 0,
    timestep: int | float = 500,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    transformer: torch.nn.Module | None = None,
) -> dict[str, Any]:
    """Random, correctly shaped kwargs for ``transformer(**inputs)`` (seeded, no global RNG use).

    Shapes follow the family's pipeline at the config's native latent size:

    * dit: ``hidden_states`` (B, C, S, S), ``timestep`` int64 (B,), ``class_labels`` int64 (B,)
    * latte: ``hidden_states`` (B, C, F, S, S) with F = ``video_length``, ``timestep`` int64,
      ``encoder_hidden_states`` (B, 16, caption_channels)
    * hunyuan: ``hidden_states`` (B, C, S, S), ``timestep`` float (B,),
      ``encoder_hidden_states`` (B, text_len, cross_attention_dim) + ``text_embedding_mask``,
      ``encoder_hidden_states_t5`` (B, text_len_t5, cross_attention_dim_t5) +
      ``text_embedding_mask_t5``, ``image_meta_size`` (B, 6), ``style`` (B,),
      ``image_rotary_emb`` (cos, sin) as the pipeline builds it.

    ``return_dict=False`` is included, so ``transformer(**inputs)[0]`` is the output tensor.
    ``transformer`` is only used for Hunyuan's RoPE (any instance of the config works; a
    meta-device one is fine).
    """
    cfg = _config(name)
    fam = cfg["family"]
    tc = cfg["transformer"]
    g = torch.Generator().manual_seed(seed)
    s = tc["sample_size"]
    c = tc["in_channels"]

    def randn(*shape):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    if fam == "dit":
        return dict(
            hidden_states=randn(batch, c, s, s),
            timestep=torch.full((batch,), int(timestep), dtype=torch.long, device=device),
            class_labels=torch.randint(0, tc["num_embeds_ada_norm"], (batch,), generator=g).to(device),
            return_dict=False,
        )
    if fam == "latte":
        return dict(
            hidden_states=randn(batch, c, tc["video_length"], s, s),
            timestep=torch.full((batch,), int(timestep), dtype=torch.long, device=device),
            encoder_hidden_states=randn(batch, 16, tc["caption_channels"]),
            return_dict=False,
        )
    # hunyuan
    text_len, text_len_t5 = tc["text_len"], tc["text_len_t5"]

    def mask(length):
        m = torch.zeros(batch, length, dtype=torch.long)
        for b in range(batch):  # a few real tokens then padding, like a tokenised prompt
            m[b, : 3 + int(torch.randint(0, 8, (1,), generator=g))] = 1
        return m.to(device)

    if transformer is None:
        transformer = build_transformer(name, device="meta")
    px = s * 8
    return dict(
        hidden_states=randn(batch, c, s, s),
        timestep=torch.full((batch,), float(timestep), dtype=dtype, device=device),
        encoder_hidden_states=randn(batch, text_len, tc["cross_attention_dim"]),
        text_embedding_mask=mask(text_len),
        encoder_hidden_states_t5=randn(batch, text_len_t5, tc["cross_attention_dim_t5"]),
        text_embedding_mask_t5=mask(text_len_t5),
        image_meta_size=torch.tensor([[1024, 1024, px, px, 0, 0]] * batch, dtype=dtype, device=device),
        style=torch.zeros(batch, dtype=torch.long, device=device),
        image_rotary_emb=hunyuan_rotary_emb(transformer, s, s, device=device),
        return_dict=False,
    )


# ----------------------------------------------------------------------------------------
# Schedulers
# ----------------------------------------------------------------------------------------

_NOISE_CONFIGS: dict[str, dict[str, Any]] = {
    "dit": dict(
        num_train_timesteps=1000,
        beta_schedule="linear",
        beta_start=0.0001,
        beta_end=0.02,
        prediction_type="epsilon",
    ),
    "latte": dict(
        num_train_timesteps=1000,
        beta_schedule="linear",
        beta_start=0.0001,
        beta_end=0.02,
        prediction_type="epsilon",
    ),
    "hunyuan": dict(
        num_train_timesteps=1000,
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.03,
        prediction_type="v_prediction",
        steps_offset=1,
    ),
}


@functools.lru_cache(maxsize=None)
def _dit_pipeline_euler_class():
    from diffusers import EulerDiscreteScheduler

    class DiTPipelineEulerScheduler(EulerDiscreteScheduler):
        """``EulerDiscreteScheduler`` adapted to ``DiTPipeline``'s sampling loop.

        DiTPipeline (diffusers <= 0.42) (1) never multiplies its initial noise by
        ``init_noise_sigma`` and (2) overwrites its latents with the output of
        ``scale_model_input`` and passes *that* to ``step``. Stock Euler therefore runs
        without error but samples the wrong ODE (the result barely depends on the seed).
        This subclass makes the pipeline's tensor the *scaled* state
        ``y = x / sqrt(sigma**2 + 1)``: ``scale_model_input`` is the identity and ``step``
        converts ``y -> x``, takes the ordinary Euler step and converts back. With
        ``timestep_spacing="linspace"`` the pipeline's N(0, 1) start is then exactly
        ``x ~ N(0, init_noise_sigma**2)`` and the last sigma is 0, so the final latents
        equal a correct Euler run. Use it only with DiTPipeline; it is not a registered
        diffusers class (``save_pretrained`` / ``from_pretrained`` cannot round-trip it).
        """

        def scale_model_input(self, sample, timestep):
            if self.step_index is None:
                self._init_step_index(timestep)
            self.is_scale_input_called = True
            return sample

        def step(self, model_output, timestep, sample, *args, return_dict: bool = True, **kwargs):
            if self.step_index is None:
                self._init_step_index(timestep)
            sigma = self.sigmas[self.step_index]
            sigma_next = self.sigmas[self.step_index + 1]
            x = sample * (sigma**2 + 1) ** 0.5
            out = super().step(model_output, timestep, x, *args, return_dict=return_dict, **kwargs)
            scale_next = (sigma_next**2 + 1) ** 0.5
            if return_dict:
                out.prev_sample = out.prev_sample / scale_next
                return out
            return (out[0] / scale_next,) + tuple(out[1:])

    return DiTPipelineEulerScheduler


def _ddim(name_or_family: str, raw: bool = False):
    from diffusers import DDIMScheduler

    fam = family_of(name_or_family)
    extra = dict(set_alpha_to_one=False) if fam == "hunyuan" else {}
    return DDIMScheduler(**_NOISE_CONFIGS[fam], clip_sample=False, **extra)


def _ddpm(name_or_family: str, raw: bool = False):
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        **_NOISE_CONFIGS[family_of(name_or_family)], clip_sample=False, variance_type="fixed_small"
    )


def _dpmpp(name_or_family: str, raw: bool = False):
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler(
        **_NOISE_CONFIGS[family_of(name_or_family)], algorithm_type="dpmsolver++", solver_order=2
    )


def _euler(name_or_family: str, raw: bool = False):
    from diffusers import EulerDiscreteScheduler

    fam = family_of(name_or_family)
    cls = _dit_pipeline_euler_class() if fam == "dit" and not raw else EulerDiscreteScheduler
    return cls(**_NOISE_CONFIGS[fam], timestep_spacing="linspace")


SCHEDULERS: dict[str, Callable[..., Any]] = {
    "ddim": _ddim,
    "ddpm": _ddpm,
    "dpm++": _dpmpp,
    "euler": _euler,
}
SCHEDULER_NAMES: tuple[str, ...] = tuple(SCHEDULERS)


def build_scheduler(scheduler: str, name_or_family: str, raw: bool = False):
    """``SCHEDULERS[scheduler](name_or_family, raw=raw)`` with a clear error for unknown names.

    The result is meant for the family's diffusers pipeline. ``raw=True`` returns the
    stock diffusers class even where the pipeline needs an adapted one (only
    ``("euler", "dit")``, see :func:`_dit_pipeline_euler_class`) - use it for a
    hand-written sampling loop.
    """
    try:
        factory = SCHEDULERS[scheduler]
    except KeyError:
        raise ValueError(f"unknown scheduler {scheduler!r}; known: {list(SCHEDULERS)}") from None
    return factory(name_or_family, raw=raw)


# ----------------------------------------------------------------------------------------
# Pipelines
# ----------------------------------------------------------------------------------------


def _t5_tokenizer():
    from transformers import T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [("\u2581" + w, -1.0 - 0.01 * i) for i, w in enumerate(_WORDS)]
    vocab += [(ch, -5.0) for ch in "abcdefghijklmnopqrstuvwxyz0123456789,.-'"]
    tok = T5Tokenizer(vocab=vocab, extra_ids=0)
    tok.model_max_length = 512
    return tok


def _bert_tokenizer():
    from transformers import BertTokenizer

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])}
    for w in _WORDS + list("abcdefghijklmnopqrstuvwxyz0123456789,.-'"):
        vocab.setdefault(w, len(vocab))
    try:
        tok = BertTokenizer(vocab=vocab)
    except TypeError:  # transformers < 5: slow tokenizer wants a vocab file
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "vocab.txt")
            with open(path, "w", encoding="utf-8") as f:
                f.write("\n".join(sorted(vocab, key=vocab.get)) + "\n")
            tok = BertTokenizer(vocab_file=path)
    tok.model_max_length = 512
    return tok


def _tiny_t5(cfg: dict, vocab_size: int):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=vocab_size, **cfg)).eval().requires_grad_(False)


def _tiny_bert(cfg: dict, vocab_size: int):
    from transformers import BertConfig, BertModel

    return BertModel(BertConfig(vocab_size=vocab_size, **cfg)).eval().requires_grad_(False)


def build_pipeline(name: str, seed: int = 0, scheduler: str = "ddim"):
    """Assemble a full diffusers pipeline for a tiny model from local components.

    ``tiny-dit`` -> ``DiTPipeline``, ``tiny-latte`` -> ``LattePipeline``,
    ``tiny-hunyuan`` -> ``HunyuanDiTPipeline`` (no safety checker). Every component is in
    eval mode with seeded random weights; the progress bar is disabled. ``scheduler`` is a
    key of :data:`SCHEDULERS`. Real-size names raise ``ValueError``.
    """
    cfg = _config(name)
    if not cfg["tiny"]:
        raise ValueError(
            f"build_pipeline only builds tiny models ({', '.join(TINY_MODELS)}); {name!r} is a "
            "real-size architecture config - use build_transformer(name, device='meta')"
        )
    fam = cfg["family"]
    sched = build_scheduler(scheduler, fam)
    import diffusers
    from diffusers import AutoencoderKL

    transformer = build_transformer(name, seed=seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(**cfg["vae"]).eval().requires_grad_(False)
        if fam == "dit":
            pipe = diffusers.DiTPipeline(
                transformer=transformer, vae=vae, scheduler=sched, id2label=dict(cfg["id2label"])
            )
        elif fam == "latte":
            tok = _t5_tokenizer()
            te = _tiny_t5(cfg["text_encoder"], len(tok))
            pipe = diffusers.LattePipeline(
                tokenizer=tok, text_encoder=te, vae=vae, transformer=transformer, scheduler=sched
            )
        else:
            tok = _bert_tokenizer()
            te = _tiny_bert(cfg["text_encoder"], len(tok))
            tok2 = _t5_tokenizer()
            te2 = _tiny_t5(cfg["text_encoder_2"], len(tok2))
            pipe = diffusers.HunyuanDiTPipeline(
                vae=vae,
                text_encoder=te,
                tokenizer=tok,
                transformer=transformer,
                scheduler=sched,
                safety_checker=None,
                feature_extractor=None,
                requires_safety_checker=False,
                text_encoder_2=te2,
                tokenizer_2=tok2,
            )
    pipe.set_progress_bar_config(disable=True)
    return pipe


_PROMPTS = (
    "a photo of a red cat sitting on a tree",
    "a painting of a small boat on the sea at sunset",
    "a video of a dog running on the beach",
    "a blue bird flying over a green field",
)


def pipeline_inputs(
    name: str,
    num_inference_steps: int = 4,
    guidance_scale: float | None = None,
    seed: int = 0,
    batch: int = 1,
    **over: Any,
) -> dict[str, Any]:
    """kwargs for ``pipe(**inputs)``: fast, deterministic, returning a tensor.

    ``guidance_scale=None`` uses the family default (DiT 4.0, Latte 7.5, Hunyuan 5.0),
    i.e. classifier-free guidance is on and the transformer sees batch ``2 * batch``.
    ``generator`` is a fresh ``torch.Generator`` seeded with ``seed`` (it is consumed by a
    run: build new inputs, or use :func:`run_pipeline`, to repeat a run). Output types:
    DiT ``"pt"`` (decoded images, (B, 3, H, W); DiTPipeline has no latent output), Latte
    and Hunyuan ``"latent"`` ((B, C, F, h, w) / (B, C, h, w)). Latte gets
    ``clean_caption=False`` (needs bs4/ftfy otherwise), Hunyuan
    ``use_resolution_binning=False`` (a ``__call__`` argument in diffusers 0.42; with it on,
    128 px would be resized to 1024 px). ``**over`` overrides anything.
    """
    cfg = _config(name)
    if not cfg["tiny"]:
        raise ValueError(f"pipeline_inputs is for tiny models ({', '.join(TINY_MODELS)}), got {name!r}")
    fam = cfg["family"]
    gs = cfg["guidance_scale"] if guidance_scale is None else guidance_scale
    gen = torch.Generator().manual_seed(seed)
    common = dict(num_inference_steps=num_inference_steps, guidance_scale=gs, generator=gen)
    prompts = [_PROMPTS[i % len(_PROMPTS)] for i in range(batch)]
    if fam == "dit":
        labels = sorted(cfg["id2label"])
        class_labels = [labels[i % len(labels)] for i in range(batch)]
        inputs = dict(class_labels=class_labels, output_type="pt", **common)
    elif fam == "latte":
        inputs = dict(
            prompt=prompts,
            negative_prompt="",
            video_length=cfg["num_frames"],
            height=cfg["resolution"],
            width=cfg["resolution"],
            output_type="latent",
            clean_caption=False,
            **common,
        )
    else:
        inputs = dict(
            prompt=prompts,
            height=cfg["resolution"],
            width=cfg["resolution"],
            output_type="latent",
            use_resolution_binning=False,
            **common,
        )
    inputs.update(over)
    return inputs


def pipeline_output(result: Any) -> torch.Tensor:
    """The tensor inside a pipeline result (``.images`` / ``.frames`` / tuple[0])."""
    if isinstance(result, tuple):
        out = result[0]
    elif hasattr(result, "frames"):
        out = result.frames
    else:
        out = result.images
    if not torch.is_tensor(out):
        raise TypeError(
            f"pipeline returned {type(out).__name__}, not a tensor; use output_type='pt' or 'latent'"
        )
    return out


def run_pipeline(
    pipe, inputs: dict[str, Any], seed: int | None = None, return_latents: bool = False
) -> torch.Tensor:
    """Run ``pipe(**inputs)`` reproducibly and return the output tensor.

    Re-seeds ``inputs["generator"]`` (so the same dict can be run again) and the global
    torch RNG inside :func:`torch.random.fork_rng` (DiTPipeline draws DDPM step noise from
    the global RNG). ``seed`` defaults to the generator's initial seed.

    ``return_latents=True`` returns the final denoised latents for every family: Latte and
    Hunyuan are run with ``output_type="latent"``; DiTPipeline always decodes and clamps to
    [0, 1] (which saturates with random weights), so its latents are captured at the
    ``vae.decode`` call and un-scaled by ``vae.config.scaling_factor``.
    """
    gen = inputs.get("generator")
    if seed is None:
        seed = gen.initial_seed() if isinstance(gen, torch.Generator) else 0
    if isinstance(gen, torch.Generator):
        gen.manual_seed(seed)
    captured: list[torch.Tensor] = []
    is_dit = type(pipe).__name__ == "DiTPipeline"
    if return_latents and not is_dit:
        inputs = {**inputs, "output_type": "latent"}
    vae = getattr(pipe, "vae", None)
    patched = return_latents and is_dit
    if patched:
        orig_decode = vae.decode

        def decode(z, *args, **kwargs):
            captured.append(z * vae.config.scaling_factor)
            return orig_decode(z, *args, **kwargs)

        vae.decode = decode
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(seed)
            out = pipeline_output(pipe(**inputs))
    finally:
        if patched:
            del vae.decode  # drop the instance attribute, back to the class method
    return captured[-1] if patched else out
