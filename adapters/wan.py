"""Wan 2.1 / 2.2 text-to-video (`WanTransformer3DModel`): one stream of `WanTransformerBlock`s
over every frame's tokens at once (3-D RoPE; self-attention, cross-attention to UMT5 tokens,
FFN), sampled with flow matching.

Unit = one block; block j feeds block N-1-j (30 blocks: 0..14 feed 29..15). The tokens of all
frames form one sequence (tens of thousands at 480p x 81 frames), so the skip fusion is per
token and splits along the sequence like everything else under context parallelism. Sites:
`attn1` (spatio-temporal self-attention; PAB's "spatial" kind, as there is no separate temporal
attention), `attn2` (cross) and `ffn` (mlp); each reads its own norm (norm1 / norm2 / norm3).
Classifier-free guidance is two sequential calls per step (cond, then uncond)."""
from __future__ import annotations

import torch
from diffusers import WanTransformer3DModel
from torch import nn

from .base import BackboneAdapter, SkipCacheDefaults, plain_norm
from .family import FamilySpec, real_size
from .tiny_parts import TINY_T5, t5_tokenizer, tiny_t5


class WanAdapter(BackboneAdapter):
    model_class = WanTransformer3DModel
    family = "wan"
    site_attrs = {"attn1": "spatial", "attn2": "cross", "ffn": "mlp"}  # attn1 sees every frame at once
    # 4 of 28 blocks at each end on a cached step (depth-scaled); flow-matching timesteps run
    # 1000 -> ~0 with most of the structure laid down early, so the first steps stay full.
    defaults = SkipCacheDefaults(interval=2, shallow=4, start=900.0, close=50.0, reference_units=28)

    def units(self, model: nn.Module) -> list[list[nn.Module]]:
        return [[block] for block in model.blocks]

    def hidden_dim(self, model: nn.Module) -> int:
        return model.config.num_attention_heads * model.config.attention_head_dim

    def input_norm(self, block: nn.Module, attr: str) -> nn.Module | None:
        # attn1(norm1(x) * (1 + scale) + shift), attn2(norm2(x), text), ffn(norm3(x) * ... + ...)
        return plain_norm({"attn1": block.norm1, "attn2": block.norm2, "ffn": block.norm3}[attr])


# ------------------------------------------------------------------------------------------
# Tooling side: configs, pipeline, sampling loop
# ------------------------------------------------------------------------------------------

WAN_TEXT_LEN = 512  # WanPipeline's max_sequence_length
VAE_TEMPORAL = 4  # AutoencoderKLWan: 4x in time (1 + 4k frames -> 1 + k latent frames)

# Wan-AI/Wan2.1-T2V-1.3B-Diffusers samples with flow_shift 3.0 at 480p (5.0 at 720p)
WAN_NOISE_CONFIG = dict(num_train_timesteps=1000, shift=3.0)


def _wan_config(heads: int, head_dim: int, layers: int, ffn_dim: int, text_dim: int) -> dict:
    return dict(
        patch_size=(1, 2, 2),
        num_attention_heads=heads,
        attention_head_dim=head_dim,
        in_channels=16,
        out_channels=16,
        text_dim=text_dim,
        freq_dim=256,
        ffn_dim=ffn_dim,
        num_layers=layers,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=1e-6,
        image_dim=None,
        added_kv_proj_dim=None,
        rope_max_seq_len=1024,
    )


# The smallest AutoencoderKLWan: the pipeline only reads its scale factors and latent statistics
# (it returns latents), but builds the model.
TINY_WAN_VAE = dict(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, attn_scales=[],
                    temperal_downsample=[False, True, True])

WAN_MODEL_CONFIGS = {
    "tiny-wan": {
        "tiny": True,
        # 6 blocks, D=64 (2 heads x 32: RoPE splits the head dim over t, h, w), text_dim == tiny T5 d_model
        "transformer": _wan_config(2, 32, 6, 128, TINY_T5["d_model"]),
        "vae": TINY_WAN_VAE,
        "text_encoder": TINY_T5,
        "resolution": 128,
        "num_frames": 3,  # latent frames (9 video frames)
        "guidance_scale": 5.0,
    },
    # 30 blocks, D=1536 (12 x 128); 480 x 480 px, 21 latent frames (81 video frames): 18,900 tokens
    "wan2.1-1.3b": real_size(_wan_config(12, 128, 30, 8960, 4096), reference="Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
                             resolution=480, num_frames=21, guidance_scale=5.0),
}


class WanFamily(FamilySpec):
    adapter_class = WanAdapter
    pipeline_class_name = "WanPipeline"
    is_video = True
    tensor_format = "BCFHW"
    default_cfg_scale = 5.0
    default_resolution = 480  # Wan 2.1's 480p (square here; the pipeline's default is 832 x 480)
    cfg_batched_kwargs = ()  # CFG is two sequential calls, never one batch
    schedulers = ("flow-euler",)
    default_scheduler = "flow-euler"
    noise_config = WAN_NOISE_CONFIG
    model_configs = WAN_MODEL_CONFIGS

    def video_length(self, config) -> int | None:
        return None  # RoPE: any number of frames (default_frames when not given)

    def spatial_patch(self, config) -> int:
        return int(_get(config, "patch_size")[1])

    def tiny_vae(self, config):
        from diffusers import AutoencoderKLWan

        return AutoencoderKLWan(**config["vae"]).eval().requires_grad_(False)

    def tiny_pipeline_parts(self, config):
        from transformers import UMT5Config, UMT5EncoderModel

        tok = t5_tokenizer()
        encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(tok), **config["text_encoder"]))
        return dict(tokenizer=tok, text_encoder=encoder.eval().requires_grad_(False))

    def pipeline_kwargs(self, *, labels, prompts, resolution, frames):
        return dict(prompt=prompts, negative_prompt="", height=resolution, width=resolution,
                    num_frames=(frames - 1) * VAE_TEMPORAL + 1, output_type="latent")

    def loop_conditioning(self, transformer, *, seed, batch, cfg, frames, resolution, latent_side, generator,
                          device, dtype):
        dim = int(transformer.config.text_dim)
        text = torch.randn(batch, WAN_TEXT_LEN, dim, generator=generator).to(device=device, dtype=dtype)
        if not cfg:
            return dict(encoder_hidden_states=text)
        null = torch.randn(batch, WAN_TEXT_LEN, dim, generator=generator).to(device=device, dtype=dtype)
        return dict(encoder_hidden_states=text, negative_encoder_hidden_states=null)

    def model_output(self, transformer, x, t, cond):
        tt = t[None].to(x.device) if torch.is_tensor(t) else torch.tensor([t], device=x.device)
        return transformer(hidden_states=x, timestep=tt.expand(x.shape[0]), return_dict=False, **cond)[0]

    def denoise(self, transformer, noise, cond, scheduler, *, cfg_scale, step_kwargs, progress=None):
        """WanPipeline's loop: the conditional call, then (with CFG) the unconditional one, on the
        same latents."""
        text = {"encoder_hidden_states": cond["encoder_hidden_states"]}
        null = {"encoder_hidden_states": cond.get("negative_encoder_hidden_states")}
        latents = noise
        for t in progress(scheduler.timesteps) if progress else scheduler.timesteps:
            out = self.model_output(transformer, latents, t, text)
            if cfg_scale is not None:
                uncond = self.model_output(transformer, latents, t, null)
                out = uncond + cfg_scale * (out - uncond)
            latents = scheduler.step(out, t, latents, return_dict=False)[0]
        return latents

    def transformer_inputs(self, transformer_config, *, batch, timestep, randn, generator, device, dtype, transformer):
        tc = transformer_config
        return dict(
            hidden_states=randn(batch, tc["in_channels"], 3, 16, 16),  # 3 latent frames of 16 x 16
            timestep=torch.full((batch,), float(timestep), device=device),
            encoder_hidden_states=randn(batch, 16, tc["text_dim"]),
        )


def _get(config, key):
    return config[key] if isinstance(config, dict) else getattr(config, key)
