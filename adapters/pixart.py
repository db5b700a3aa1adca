"""PixArt-alpha / PixArt-Sigma text-to-image (`PixArtTransformer2DModel`): one stream of
adaLN-single `BasicTransformerBlock`s (self-attention, cross-attention to T5 tokens, MLP).

Unit = one block; block j feeds block N-1-j, as in DiT (28 blocks: 0..13 feed 27..14). The
fusion and the Skip-Cache substitution act on the image tokens only; the text tokens are an
argument of every block (`encoder_hidden_states`), never a stream. FORA / PAB reach `attn1`
(spatial), `attn2` (cross) and `ff`; the norms a reusing site alone reads are skipped by the
base adapter's `input_norm` (the ada_norm_single layout: norm1 before attn1, norm2 before ff)."""
from __future__ import annotations

import torch
from diffusers import PixArtTransformer2DModel
from torch import nn

from .base import BackboneAdapter, SkipCacheDefaults
from .dit import DIT_NOISE_CONFIG
from .family import FamilySpec, real_size
from .tiny_parts import TINY_T5, TINY_VAE, t5_tokenizer, tiny_t5


class PixArtAdapter(BackboneAdapter):
    model_class = PixArtTransformer2DModel
    family = "pixart"
    # DiT's reference: 4 of 28 blocks at each end run on a cached step (depth-scaled: 1 of 6).
    defaults = SkipCacheDefaults(interval=2, shallow=4, start=1000.0, close=20.0)

    def units(self, model: nn.Module) -> list[list[nn.Module]]:
        return [[block] for block in model.transformer_blocks]

    def hidden_dim(self, model: nn.Module) -> int:
        return model.inner_dim


# ------------------------------------------------------------------------------------------
# Tooling side: configs, pipeline, sampling loop
# ------------------------------------------------------------------------------------------

PIXART_TEXT_LEN = 300  # PixArtSigmaPipeline's max_sequence_length


def _pixart_config(heads: int, head_dim: int, layers: int, caption_channels: int, sample_size: int, **extra) -> dict:
    return dict(
        num_attention_heads=heads,
        attention_head_dim=head_dim,
        in_channels=4,
        out_channels=8,  # learned sigma
        num_layers=layers,
        cross_attention_dim=heads * head_dim,  # caption_projection maps T5 features to the inner dim
        caption_channels=caption_channels,
        sample_size=sample_size,
        patch_size=2,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
        attention_bias=True,
        use_additional_conditions=False,  # PixArt-Sigma: no resolution / aspect-ratio embedding
        **extra,
    )


PIXART_MODEL_CONFIGS = {
    "tiny-pixart": {
        "tiny": True,
        # 6 blocks, D=64; caption_channels == the tiny T5's d_model
        "transformer": _pixart_config(2, 32, 6, TINY_T5["d_model"], 16),
        "vae": dict(TINY_VAE, scaling_factor=0.13025),
        "text_encoder": TINY_T5,
        "resolution": 128,
        "num_frames": None,
        "guidance_scale": 4.5,
    },
    "pixart-sigma": real_size(_pixart_config(16, 72, 28, 4096, 128, interpolation_scale=2, dropout=0.0),
                              reference="PixArt-alpha/PixArt-Sigma-XL-2-1024-MS", resolution=1024,
                              guidance_scale=4.5),
}


class PixArtFamily(FamilySpec):
    adapter_class = PixArtAdapter
    pipeline_class_name = "PixArtSigmaPipeline"
    default_cfg_scale = 4.5
    cfg_batched_kwargs = ("hidden_states", "encoder_hidden_states", "timestep", "encoder_attention_mask")
    noise_config = DIT_NOISE_CONFIG  # PixArt trains on the DiT/ADM schedule
    model_configs = PIXART_MODEL_CONFIGS

    def tiny_pipeline_parts(self, config):
        tok = t5_tokenizer()
        return dict(tokenizer=tok, text_encoder=tiny_t5(config["text_encoder"], len(tok)))

    def pipeline_kwargs(self, *, labels, prompts, resolution, frames):
        # resolution binning would map 128 px to a 1024 px aspect bucket; clean_caption needs bs4 / ftfy
        return dict(prompt=prompts, negative_prompt="", height=resolution, width=resolution, output_type="latent",
                    clean_caption=False, use_resolution_binning=False)

    def loop_conditioning(self, transformer, *, seed, batch, cfg, frames, resolution, latent_side, generator,
                          device, dtype):
        nb = 2 * batch if cfg else batch
        text = torch.randn(nb, PIXART_TEXT_LEN, int(transformer.config.caption_channels), generator=generator)
        return dict(encoder_hidden_states=text.to(device=device, dtype=dtype),
                    added_cond_kwargs={"resolution": None, "aspect_ratio": None})

    def model_output(self, transformer, x, t, cond):
        tt = t[None].to(x.device) if torch.is_tensor(t) else torch.tensor([t], device=x.device)
        out = transformer(hidden_states=x, timestep=tt.expand(x.shape[0]), return_dict=False, **cond)[0]
        c = transformer.config
        # the pipeline drops the learned-sigma half whatever the scheduler (per channel, so before CFG is the same)
        return out.chunk(2, dim=1)[0] if c.out_channels // 2 == c.in_channels else out

    def transformer_inputs(self, transformer_config, *, batch, timestep, randn, generator, device, dtype, transformer):
        tc, s = transformer_config, transformer_config["sample_size"]
        return dict(
            hidden_states=randn(batch, tc["in_channels"], s, s),
            timestep=torch.full((batch,), int(timestep), dtype=torch.long, device=device),
            encoder_hidden_states=randn(batch, 16, tc["caption_channels"]),
            added_cond_kwargs={"resolution": None, "aspect_ratio": None},
        )
