"""Latte text/class-to-video (`LatteTransformer3DModel`): alternating spatial and temporal blocks.

Unit = (spatial block, temporal block) pair. The output of pair p (after its temporal block,
back in the `(b f) t d` layout the model restores after every pair) fuses before the SPATIAL
block of pair P-1-p; temporal blocks get no fusion. The entry hook of spatial block p+1 sees
exactly that restored output, which is why the fusion lives there."""
from __future__ import annotations

import torch
from diffusers import LatteTransformer3DModel
from torch import nn

from .base import BackboneAdapter, SkipCacheDefaults
from .dit import DIT_NOISE_CONFIG
from .family import Conditioning, FamilySpec, class_tokens, module_device, real_size, unique_captions
from .tiny_parts import TINY_T5, TINY_VAE, t5_tokenizer, tiny_t5


class LatteAdapter(BackboneAdapter):
    model_class = LatteTransformer3DModel
    family = "latte"
    # Reference (text-to-video): 2 of 28 pairs run on a cached step, full while t >= 700.
    defaults = SkipCacheDefaults(interval=2, shallow=1, start=700.0, close=50.0, reference_units=28)

    def units(self, model: nn.Module) -> list[list[nn.Module]]:
        return [
            [spatial, temporal]
            for spatial, temporal in zip(model.transformer_blocks, model.temporal_transformer_blocks)
        ]

    def hidden_dim(self, model: nn.Module) -> int:
        return model.config.num_attention_heads * model.config.attention_head_dim


# ------------------------------------------------------------------------------------------
# Tooling side: configs, pipeline, sampling loop, fine-tuning conditioning
# ------------------------------------------------------------------------------------------

LATTE_TEXT_LEN = 120  # LattePipeline's max_sequence_length


def _latte_config(heads: int, head_dim: int, layers: int, cross_dim: int, caption_channels: int, sample_size: int,
                  video_length: int, **extra) -> dict:
    return dict(
        num_attention_heads=heads,
        attention_head_dim=head_dim,
        in_channels=4,
        out_channels=8,
        num_layers=layers,  # spatial blocks; as many temporal ones
        cross_attention_dim=cross_dim,
        caption_channels=caption_channels,
        sample_size=sample_size,
        patch_size=2,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
        attention_bias=True,
        **extra,
        video_length=video_length,
    )


LATTE_MODEL_CONFIGS = {
    "tiny-latte": {
        "tiny": True,
        # cross_attention_dim == inner dim (caption_projection maps to it); caption_channels == tiny T5 d_model
        "transformer": _latte_config(2, 32, 4, 64, 32, 16, video_length=4),
        "vae": dict(TINY_VAE, scaling_factor=0.18215),
        "text_encoder": TINY_T5,
        "resolution": 128,
        "num_frames": 4,
        "guidance_scale": 7.5,
    },
    "latte-1": real_size(_latte_config(16, 72, 28, 1152, 4096, 64, video_length=16, dropout=0.0),
                         reference="maxin-cn/Latte-1", resolution=512, num_frames=16, guidance_scale=7.5),
}


class LatteFamily(FamilySpec):
    adapter_class = LatteAdapter
    pipeline_class_name = "LattePipeline"
    is_video = True
    tensor_format = "BCFHW"
    default_cfg_scale = 7.5
    cfg_batched_kwargs = ("hidden_states", "encoder_hidden_states", "timestep", "encoder_attention_mask")
    # the default spatial patterns of diffusers' PAB / FasterCache also match temporal_transformer_blocks.*
    spatial_block_pattern = r"^transformer_blocks"
    noise_config = DIT_NOISE_CONFIG  # PixArt-alpha / Latte-1 use the DiT/ADM schedule
    model_configs = LATTE_MODEL_CONFIGS

    def tiny_pipeline_parts(self, config):
        tok = t5_tokenizer()
        return dict(tokenizer=tok, text_encoder=tiny_t5(config["text_encoder"], len(tok)))

    def pipeline_kwargs(self, *, labels, prompts, resolution, frames):
        # clean_caption needs bs4 / ftfy
        return dict(prompt=prompts, negative_prompt="", video_length=frames, height=resolution, width=resolution,
                    output_type="latent", clean_caption=False)

    def loop_conditioning(self, transformer, *, seed, batch, cfg, frames, resolution, latent_side, generator,
                          device, dtype):
        nb = 2 * batch if cfg else batch
        text = torch.randn(nb, LATTE_TEXT_LEN, int(transformer.config.caption_channels), generator=generator)
        return dict(encoder_hidden_states=text.to(device=device, dtype=dtype), enable_temporal_attentions=frames > 1)

    def class_conditioning(self, transformer, labels, cfg, device, dtype):
        """One-hot class tokens (how the zoo's Latte was trained); the null condition is the zero token."""
        dim = int(transformer.config.caption_channels)
        cond = class_tokens(labels.cpu(), dim)
        tokens = torch.cat([class_tokens(torch.full_like(labels.cpu(), -1), dim), cond]) if cfg else cond
        return dict(encoder_hidden_states=tokens.to(device=device, dtype=dtype))

    def model_output(self, transformer, x, t, cond):
        tt = t[None].to(x.device) if torch.is_tensor(t) else torch.tensor([t], device=x.device)
        return transformer(hidden_states=x, timestep=tt.expand(x.shape[0]), return_dict=False, **cond)[0]

    def guided_output(self, out, scheduler):
        if getattr(scheduler.config, "variance_type", None) not in ("learned", "learned_range"):
            out = out.chunk(2, dim=1)[0]
        return out

    def finetune_conditioning(self, model, dataset, pipe, *, latent_hw, vae_scale, device, warn):
        """Captions through the pipeline's T5 when there is one, else one-hot class tokens."""
        n = len(dataset)
        if pipe is not None and getattr(pipe, "text_encoder", None) is not None:
            captions = dataset.caption_list()
            if captions is None:
                warn("the data has no captions or labels: Latte is trained on the empty caption only")
                captions = [""] * n
            unique, index = unique_captions(captions)
            table, null = _encode_captions(pipe, unique, module_device(pipe.text_encoder))
            table = torch.cat([table, null[None]])
            return Conditioning(index, len(unique), {"encoder_hidden_states": table},
                                description=f"captions via the pipeline's text encoder ({len(unique)} unique)")
        dim = int(model.config.caption_channels)
        if dataset.captions is not None and dataset.labels is None:
            raise ValueError("captions need the pipeline's text encoder: pass a Latte pipeline (--pipeline)")
        if dataset.labels is None:
            warn("the data has no labels: Latte is trained unconditionally (zero token)")
            k = 0
            index = torch.zeros(n, dtype=torch.long)
        else:
            k = len(dataset.class_names)
            index = dataset.labels.clone()
        table = torch.cat([class_tokens(torch.arange(k), dim, k), class_tokens(torch.tensor([-1]), dim)])
        return Conditioning(index, k, {"encoder_hidden_states": table},
                            description=f"class tokens (one-hot in {dim} caption channels, {k} classes, null = zeros)")

    def transformer_inputs(self, transformer_config, *, batch, timestep, randn, generator, device, dtype, transformer):
        tc, s = transformer_config, transformer_config["sample_size"]
        return dict(
            hidden_states=randn(batch, tc["in_channels"], tc["video_length"], s, s),
            timestep=torch.full((batch,), int(timestep), dtype=torch.long, device=device),
            encoder_hidden_states=randn(batch, 16, tc["caption_channels"]),
        )


@torch.no_grad()
def _encode_captions(pipe, unique: list[str], device, chunk: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Each caption's T5 embedding as the pipeline encodes a batch of prompts, and the null one."""
    embeds, null = [], None
    for i in range(0, len(unique), chunk):
        part = unique[i : i + chunk]
        prompts = part if len(part) > 1 else part + [""]  # batch >= 2: masked full-length features
        pos, neg = pipe.encode_prompt(
            prompts, do_classifier_free_guidance=True, negative_prompt="", device=device, clean_caption=False
        )
        embeds.append(pos[: len(part)].float().cpu())
        null = neg[0].float().cpu()
    return torch.cat(embeds), null
