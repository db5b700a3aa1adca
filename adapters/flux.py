"""FLUX.1 text-to-image (`FluxTransformer2DModel`): 19 dual-stream `FluxTransformerBlock`s (image
and text tokens with weights of their own, one joint attention) then 38 single-stream
`FluxSingleTransformerBlock`s (shared weights over [text, image] tokens, attention and MLP in
parallel), RoPE over (text, image) position ids; flow matching. FLUX.1-dev embeds the guidance
scale (`guidance`) and samples without CFG; FLUX.1-schnell has neither.

Units: every block in execution order, the dual blocks then the single ones, one block each
(57). In diffusers 0.42 both kinds take ``(hidden_states, encoder_hidden_states, temb,
image_rotary_emb, joint_attention_kwargs)`` and return ``(encoder_hidden_states,
hidden_states)``: a single block concatenates [text, image] inside and splits the result again,
so at every block boundary the two streams are apart and one `BlockIO` serves both kinds.

Pairing: unit j feeds unit U-1-j, so the 19 dual blocks feed the 19 deepest single blocks
(units 0 -> 56 ... 18 -> 38), units 19..27 feed 37..29, unit 28 has no skip. The long skip
carries the image stream only. A deep single block receives the image tokens as its own
`hidden_states`, so the fusion Linear(LN(cat[x, s])) rewrites its image tokens before the block
concatenates the text ones, which enter unfused. Not the text stream: after the dual blocks text
tokens have no weights of their own, the output (`norm_out`, `proj_out`) reads the image tokens
only, and a second adapter per pair would double the inserted weights for a stream that is
attention context; Skip-Cache's cache point still stores both streams at the deep entry
(unit U-k), so on a cached step the deep blocks see the image and the text of one full step.

FORA / PAB sites: dual blocks `attn` (joint attention over image + text: "spatial", a tuple
output), `ff` and `ff_context` ("mlp"); single blocks `attn` ("spatial") and `proj_mlp` ("mlp").
A single block's MLP has no module of its own: ``proj_out(cat[attn, act_mlp(proj_mlp(x))])``;
reusing `proj_mlp`'s output skips the MLP up-projection (D -> 4D), and `proj_out` (the fused
attention / MLP output projection, 5D -> D) is a "fused" site that reuses when both do.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from diffusers import FluxTransformer2DModel
from diffusers.models.transformers.transformer_flux import FluxTransformerBlock
from torch import nn

from .base import BackboneAdapter, BlockIO, Site, SkipCacheDefaults, plain_norm
from .family import FamilySpec, real_size
from .tiny_parts import TINY_T5, TINY_VAE, clip_tokenizer, t5_tokenizer, tiny_t5


class FluxAdapter(BackboneAdapter):
    model_class = FluxTransformer2DModel
    family = "flux"
    block_io = BlockIO(("hidden_states", "encoder_hidden_states"), ("encoder_hidden_states", "hidden_states"))
    # Dual blocks lack proj_mlp and single blocks ff / ff_context: each block gets the attrs it has.
    site_attrs = {"attn": "spatial", "ff": "mlp", "ff_context": "mlp", "proj_mlp": "mlp"}
    # 4 of 28 units at each end, depth-scaled (57 units: 8, i.e. dual 0-7 and single 30-37). The
    # windows are Latte text-to-video's (full while t >= 700, t <= 50 closes) moved to the same
    # signal-to-noise ratio: on the DiT linear-beta schedule t=700 and t=50 are flow sigmas 0.92
    # and 0.15. close is raised to 200 because FLUX's shifted schedule never gets that low:
    # 28 steps at 1024 px end ..., 275, 195, 105, and t <= 200 keeps the final step full.
    defaults = SkipCacheDefaults(interval=2, shallow=4, start=920.0, close=200.0, reference_units=28)

    def units(self, model: nn.Module) -> list[list[nn.Module]]:
        return [[block] for block in (*model.transformer_blocks, *model.single_transformer_blocks)]

    def hidden_dim(self, model: nn.Module) -> int:
        return model.inner_dim

    def timestep(self, model: nn.Module, args: tuple, kwargs: dict[str, Any]) -> Any:
        # FluxPipeline passes timestep / 1000 (the model multiplies it back): in the scheduler's
        # 1000 -> 0 units Skip-Cache's start / close, PAB's windows and calibrated plans read the
        # same scale as on every other family.
        t = super().timestep(model, args, kwargs)
        return None if t is None else t * 1000

    def reuse_sites(self, model: nn.Module) -> list[tuple[Site, nn.Module]]:
        # A single block's `proj_out(cat[attn, act_mlp(proj_mlp(x))])` is a function of its two
        # sites' outputs alone: a "fused" site, reused when both hand back stored outputs (FORA,
        # a plan's A step), which skips the block's largest matmul (5D -> D) at no cost in fidelity.
        sites = super().reuse_sites(model)
        names = {id(m): n for n, m in model.named_modules()}
        first_single = len(model.transformer_blocks)
        for index, block in enumerate(model.single_transformer_blocks, start=first_single):
            reads = (names[id(block.attn)], names[id(block.proj_mlp)])
            sites.append((Site(names[id(block.proj_out)], "fused", index, reads=reads), block.proj_out))
        return sites

    def input_norm(self, block: nn.Module, attr: str) -> nn.Module | None:
        if not isinstance(block, FluxTransformerBlock):
            return None  # single block: norm(cat[text, image]) feeds attn and proj_mlp both
        # attn(norm1(x), norm1_context(c)): norm1's LayerNorm is read by attn alone (the gates and
        # the MLP's shift / scale come from norm1.linear, which runs); a site has one norm, so
        # norm1_context's (over the shorter text stream) always runs. ff(norm2(x) * (1 + s) + m),
        # ff_context(norm2_context(c) * ...): plain LayerNorms, one reader each.
        return plain_norm({"attn": block.norm1, "ff": block.norm2, "ff_context": block.norm2_context}[attr])


# ------------------------------------------------------------------------------------------
# Tooling side: configs, pipeline, sampling loop
# ------------------------------------------------------------------------------------------

FLUX_TEXT_LEN = 512  # FluxPipeline's max_sequence_length (T5 tokens)
FLUX_GUIDANCE = 3.5  # FluxPipeline's default guidance_scale: the embedded guidance of FLUX.1-dev
VAE_PACKED = 16  # pixels per token side: 8x VAE, then 2x2 latent patches packed into one token

# black-forest-labs/FLUX.1-dev scheduler config (FluxPipeline shifts its sigmas by the image's tokens)
FLUX_NOISE_CONFIG = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                         max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)

# CLIP text encoder: FluxPipeline reads only its pooled output (pooled_projection_dim = hidden_size)
TINY_CLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                 max_position_embeddings=77, projection_dim=32, hidden_act="quick_gelu")


def _flux_config(layers: int, single_layers: int, heads: int, head_dim: int, joint_dim: int, pooled_dim: int,
                 rope: tuple[int, int, int], guidance: bool = True) -> dict:
    return dict(
        patch_size=1,
        in_channels=64,  # 16 latent channels x 2x2 packing
        num_layers=layers,
        num_single_layers=single_layers,
        attention_head_dim=head_dim,
        num_attention_heads=heads,
        joint_attention_dim=joint_dim,  # T5 d_model
        pooled_projection_dim=pooled_dim,  # CLIP hidden size
        guidance_embeds=guidance,
        axes_dims_rope=rope,  # (text/index, row, column) rotary dims, summing to head_dim
    )


FLUX_MODEL_CONFIGS = {
    "tiny-flux": {
        "tiny": True,
        # 2 dual + 4 single blocks, D=64 (2 heads x 32)
        "transformer": _flux_config(2, 4, 2, 32, TINY_T5["d_model"], TINY_CLIP["hidden_size"], (8, 12, 12)),
        # FLUX's VAE: 16 latent channels, shifted and scaled, no quant convs
        "vae": dict(TINY_VAE, latent_channels=16, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
                    use_post_quant_conv=False),
        "text_encoder": TINY_CLIP,
        "text_encoder_2": TINY_T5,
        "resolution": 128,  # 16x16 latent, 8x8 = 64 image tokens
        "num_frames": None,
        "guidance_scale": FLUX_GUIDANCE,
    },
    "flux.1-dev": real_size(_flux_config(19, 38, 24, 128, 4096, 768, (16, 56, 56)),
                            reference="black-forest-labs/FLUX.1-dev", resolution=1024, guidance_scale=FLUX_GUIDANCE),
}


def tiny_clip(cfg: dict, tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    # eos must not be 2: CLIP's pooler then takes the argmax token id instead of the first eos
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    return CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), **ids, **cfg)).eval().requires_grad_(False)


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) latents -> (B, hw/4, 4C) tokens, as FluxPipeline packs them."""
    from diffusers.pipelines.flux.pipeline_flux import FluxPipeline

    b, c, h, w = latents.shape
    return FluxPipeline._pack_latents(latents, b, c, h, w)


def unpack_latents(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The inverse of `pack_latents` for an h x w latent."""
    from diffusers.pipelines.flux.pipeline_flux import FluxPipeline

    return FluxPipeline._unpack_latents(tokens, h * 8, w * 8, 8)  # it takes pixels and the VAE factor


def image_ids(grid_h: int, grid_w: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(grid_h * grid_w, 3) RoPE ids of the packed image tokens: (0, row, column)."""
    from diffusers.pipelines.flux.pipeline_flux import FluxPipeline

    return FluxPipeline._prepare_latent_image_ids(1, grid_h, grid_w, device, dtype)


class FluxFamily(FamilySpec):
    adapter_class = FluxAdapter
    pipeline_class_name = "FluxPipeline"
    # The transformer input is packed tokens (B, L, 4C), a layout diffusers' FasterCache has no
    # name for (its own TODO calls it "BSC"): it refuses it, rather than FFT over (tokens, channels).
    tensor_format = "BSC"
    # FLUX.1 samples without CFG (dev embeds the guidance scale, FLUX_GUIDANCE); a scale > 1 is
    # FluxPipeline's true_cfg_scale: here the [uncond, cond] halves are batched
    default_cfg_scale = 1.0
    default_resolution = 1024  # FluxPipeline's default
    cfg_batched_kwargs = ("hidden_states", "timestep", "encoder_hidden_states", "pooled_projections", "guidance")
    scales_model_input = False  # FluxPipeline: plain noise, packed tokens, the velocity to scheduler.step
    schedulers = ("flow-euler",)
    default_scheduler = "flow-euler"
    noise_config = FLUX_NOISE_CONFIG
    model_configs = FLUX_MODEL_CONFIGS

    def latent_shape(self, batch: int, channels: int, side: int, frames: int | None) -> tuple[int, ...]:
        # the noise FluxPipeline draws (B, C/4, h, w) before packing; `denoise` packs and unpacks
        return (batch, channels // 4, side, side)

    def spatial_patch(self, config) -> int:
        return 2  # patch_size 1 on tokens that are 2x2-packed latents

    def set_timesteps(self, scheduler, steps: int, *, resolution: int, device=None) -> None:
        """FluxPipeline's schedule: sigmas linspace(1, 1/steps) shifted by mu = calculate_shift(
        image tokens), the packed tokens of a `resolution` px square."""
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps

        image_tokens = (int(resolution) // VAE_PACKED) ** 2
        c = scheduler.config
        sigmas = None if c.get("use_flow_sigmas", False) else np.linspace(1.0, 1 / steps, steps)
        mu = calculate_shift(image_tokens, c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096),
                             c.get("base_shift", 0.5), c.get("max_shift", 1.15))
        retrieve_timesteps(scheduler, steps, device, sigmas=sigmas, mu=mu)

    def tiny_pipeline_parts(self, config):
        tok, tok2 = clip_tokenizer(TINY_CLIP["max_position_embeddings"]), t5_tokenizer()
        return dict(tokenizer=tok, text_encoder=tiny_clip(config["text_encoder"], tok),
                    tokenizer_2=tok2, text_encoder_2=tiny_t5(config["text_encoder_2"], len(tok2)))

    def pipeline_kwargs(self, *, labels, prompts, resolution, frames):
        # packed latents (B, L, 64): FluxPipeline unpacks only to decode
        return dict(prompt=prompts, height=resolution, width=resolution, output_type="latent")

    def pipeline_guidance(self, cfg_scale: float) -> dict:
        # FluxPipeline's guidance_scale is FLUX.1-dev's embedded guidance; CFG is its true_cfg_scale
        true_cfg = {"true_cfg_scale": cfg_scale, "negative_prompt": ""} if cfg_scale > 1 else {}
        return {"guidance_scale": FLUX_GUIDANCE, **true_cfg}

    def pipeline_latents(self, output: torch.Tensor, resolution: int) -> torch.Tensor:
        """FluxPipeline's output_type="latent" result (packed tokens) as (B, C, h, w) latents, the
        layout `denoise` returns and the bench's fidelity metrics read."""
        side = resolution // 8
        return unpack_latents(output, side, side)

    def loop_conditioning(self, transformer, *, seed, batch, cfg, frames, resolution, latent_side, generator,
                          device, dtype):
        c = transformer.config
        nb = 2 * batch if cfg else batch
        text = torch.randn(nb, FLUX_TEXT_LEN, int(c.joint_attention_dim), generator=generator)
        pooled = torch.randn(nb, int(c.pooled_projection_dim), generator=generator)
        return dict(
            encoder_hidden_states=text.to(device=device, dtype=dtype),
            pooled_projections=pooled.to(device=device, dtype=dtype),
            txt_ids=torch.zeros(FLUX_TEXT_LEN, 3, device=device, dtype=dtype),
            img_ids=image_ids(latent_side // 2, latent_side // 2, device, dtype),
            guidance=self.guidance(transformer, nb, device),
        )

    @staticmethod
    def guidance(transformer: nn.Module, batch: int, device, scale: float = FLUX_GUIDANCE) -> torch.Tensor | None:
        """The `guidance` input as FluxPipeline makes it: float32 (batch,), None without a guidance
        embedding (FLUX.1-schnell)."""
        if not transformer.config.guidance_embeds:
            return None
        return torch.full([1], scale, device=device, dtype=torch.float32).expand(batch)

    @staticmethod
    def model_timestep(t):
        """The transformer's timestep input for scheduler timestep `t` (FluxPipeline divides by 1000)."""
        return t / 1000

    def model_output(self, transformer, x, t, cond):
        # FluxPipeline: timestep = t.expand(B).to(latents.dtype), passed as timestep / 1000
        tt = torch.as_tensor(t, device=x.device).expand(x.shape[0]).to(x.dtype)
        return transformer(hidden_states=x, timestep=self.model_timestep(tt), return_dict=False, **cond)[0]

    def denoise(self, transformer, noise, cond, scheduler, *, cfg_scale, step_kwargs, progress=None):
        """FluxPipeline's loop on (B, C, h, w) noise (packed first, unpacked at the end; timesteps
        set with `set_timesteps`). `cfg_scale` None: one call per step (FLUX.1-dev's guidance
        embedding is `cond["guidance"]`); otherwise true CFG with the [uncond, cond] halves of
        `cond` batched in one call, ``uncond + cfg_scale * (cond - uncond)`` as the pipeline."""
        h, w = noise.shape[-2:]
        scheduler.set_begin_index(0)
        latents = super().denoise(transformer, pack_latents(noise), cond, scheduler, cfg_scale=cfg_scale,
                                  step_kwargs=step_kwargs, progress=progress)
        return unpack_latents(latents, h, w)

    def transformer_inputs(self, transformer_config, *, batch, timestep, randn, generator, device, dtype, transformer):
        tc, grid, text_len = transformer_config, 8, 16  # 8x8 tokens: a 128 px image
        return dict(
            hidden_states=randn(batch, grid * grid, tc["in_channels"]),
            encoder_hidden_states=randn(batch, text_len, tc["joint_attention_dim"]),
            pooled_projections=randn(batch, tc["pooled_projection_dim"]),
            timestep=torch.full((batch,), self.model_timestep(float(timestep)), dtype=dtype, device=device),
            img_ids=image_ids(grid, grid, device, dtype),
            txt_ids=torch.zeros(text_len, 3, device=device, dtype=dtype),
            guidance=(torch.full((batch,), FLUX_GUIDANCE, device=device) if tc.get("guidance_embeds") else None),
        )
