"""DiT-XL/2 class-to-image (`DiTTransformer2DModel`): 28 adaLN-zero blocks, no native skips.

Unit = one block; block j feeds block N-1-j (Skip-DiT: push 0..13, pop at 14..27)."""
from __future__ import annotations

import functools

import torch
from diffusers import DiTTransformer2DModel
from torch import nn

from .base import BackboneAdapter, SkipCacheDefaults
from .family import Conditioning, FamilySpec, real_size
from .tiny_parts import TINY_VAE


class DiTAdapter(BackboneAdapter):
    model_class = DiTTransformer2DModel
    family = "dit"
    # Reference: 8 of 28 blocks on a cached step (0-3 and 24-27), never full by t, t<=20 closes.
    defaults = SkipCacheDefaults(interval=2, shallow=4, start=1000.0, close=20.0)

    def units(self, model: nn.Module) -> list[list[nn.Module]]:
        return [[block] for block in model.transformer_blocks]

    def hidden_dim(self, model: nn.Module) -> int:
        return model.inner_dim


# ------------------------------------------------------------------------------------------
# Tooling side: configs, pipeline, sampling loop, fine-tuning conditioning
# ------------------------------------------------------------------------------------------

# ImageNet classes 0-9 (the ids the DiT pipeline needs are the ImageNet ids).
IMAGENET_ID2LABEL = {
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

# facebook/DiT-XL-2-256; Latte-1 and PixArt-alpha train on the same schedule.
DIT_NOISE_CONFIG = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=0.0001, beta_end=0.02,
                        prediction_type="epsilon")


def _dit_config(heads: int, head_dim: int, layers: int, sample_size: int, **extra) -> dict:
    return dict(
        num_attention_heads=heads,
        attention_head_dim=head_dim,
        in_channels=4,
        out_channels=8,  # learned sigma, like DiT-XL/2
        num_layers=layers,
        sample_size=sample_size,
        patch_size=2,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,  # DiTPipeline hard-codes the null class id 1000
        norm_type="ada_norm_zero",
        norm_elementwise_affine=False,
        attention_bias=True,
        **extra,
    )


_REAL = dict(norm_num_groups=32, upcast_attention=False)

DIT_MODEL_CONFIGS = {
    "tiny-dit": {
        "tiny": True,
        "transformer": _dit_config(2, 32, 6, 16),
        "vae": dict(TINY_VAE, scaling_factor=0.18215),
        "id2label": IMAGENET_ID2LABEL,
        "resolution": 128,  # pixels (16x16 latent)
        "num_frames": None,
        "guidance_scale": 4.0,
    },
    "dit-xl-2": real_size(_dit_config(16, 72, 28, 32, **_REAL), reference="facebook/DiT-XL-2-256", resolution=256,
                          guidance_scale=4.0),
    # DiT-S/2 (the DiT paper's smallest model, 33M params + diffusers' per-block embedders):
    # mid-size, so `ditcache bench` measures compute rather than Python overhead on a CPU.
    "dit-s-2": real_size(_dit_config(6, 64, 12, 32, **_REAL), resolution=256, guidance_scale=4.0),
}


class DiTFamily(FamilySpec):
    adapter_class = DiTAdapter
    pipeline_class_name = "DiTPipeline"
    pipeline_latent_output = False  # it always decodes
    pipeline_sets_resolution = False  # no height / width: always the transformer's sample_size
    default_cfg_scale = 4.0
    cfg_batched_kwargs = ("hidden_states", "timestep", "class_labels")
    noise_config = DIT_NOISE_CONFIG
    model_configs = DIT_MODEL_CONFIGS

    def scheduler(self, kind, cls, kwargs, raw=False):
        if kind == "euler" and not raw:
            cls = dit_pipeline_euler_class()
        return cls(**kwargs)

    def tiny_pipeline_parts(self, config):
        return dict(id2label=dict(config["id2label"]))

    def pipeline_kwargs(self, *, labels, prompts, resolution, frames):
        return dict(class_labels=labels, output_type="pt")

    def bench_labels(self, config, seed: int, batch: int) -> list[int]:
        """Class labels of bench seed `seed`: spread over the classes, different per seed."""
        n = int(config.num_embeds_ada_norm or 1000)
        return [(seed * 97 + i) % n for i in range(batch)]

    def loop_conditioning(self, transformer, *, seed, batch, cfg, frames, resolution, latent_side, generator,
                          device, dtype):
        n = int(transformer.config.num_embeds_ada_norm or 1000)
        labels = torch.tensor(self.bench_labels(transformer.config, seed, batch), device=device)
        if cfg:
            labels = torch.cat([labels, torch.full((batch,), n, device=device, dtype=labels.dtype)])
        return dict(class_labels=labels)

    def class_conditioning(self, transformer, labels, cfg, device, dtype):
        null = torch.full_like(labels, int(transformer.config.num_embeds_ada_norm))
        return dict(class_labels=torch.cat([labels, null]) if cfg else labels)

    def denoise(self, transformer, noise, cond, scheduler, *, cfg_scale, step_kwargs, progress=None):
        """DiTPipeline.__call__'s loop, line for line (minus the VAE): CFG is [cond, null] and
        the scheduler steps the doubled batch."""
        sched, cfg = scheduler, cfg_scale is not None
        channels = int(transformer.config.in_channels)
        x = torch.cat([noise] * 2) if cfg else noise
        labels = cond["class_labels"]
        for t in progress(sched.timesteps) if progress else sched.timesteps:
            if cfg:
                half = x[: len(x) // 2]
                x = torch.cat([half, half], dim=0)
            x = sched.scale_model_input(x, t)
            tt = t[None].to(x.device) if torch.is_tensor(t) and t.dim() == 0 else torch.as_tensor([t], device=x.device)
            noise_pred = transformer(x, timestep=tt.expand(x.shape[0]), class_labels=labels).sample
            if cfg:
                eps, rest = noise_pred[:, :channels], noise_pred[:, channels:]
                cond_eps, uncond_eps = torch.split(eps, len(eps) // 2, dim=0)
                half_eps = uncond_eps + cfg_scale * (cond_eps - uncond_eps)
                eps = torch.cat([half_eps, half_eps], dim=0)
                noise_pred = torch.cat([eps, rest], dim=1)
            if int(transformer.config.out_channels) // 2 == channels:
                model_output, _ = torch.split(noise_pred, channels, dim=1)
            else:
                model_output = noise_pred
            x = sched.step(model_output, t, x).prev_sample
        return x.chunk(2, dim=0)[0] if cfg else x

    def finetune_conditioning(self, model, dataset, pipe, *, latent_hw, vae_scale, device, warn):
        """Class labels; the null class is ``num_embeds_ada_norm`` (DiTPipeline's unconditional row)."""
        num_classes = int(model.config.num_embeds_ada_norm)
        n = len(dataset)
        if dataset.labels is None:
            warn("the data has no labels: DiT is trained unconditionally (every sample gets the null class)")
            return Conditioning(torch.full((n,), num_classes), num_classes, index_kwarg="class_labels",
                                description="unconditional (null class)")
        ids = torch.tensor(_class_ids(dataset.class_names, pipe, num_classes), dtype=torch.long)
        return Conditioning(ids[dataset.labels], num_classes, index_kwarg="class_labels",
                            description=f"class labels ({len(ids)} classes, null id {num_classes})")

    def transformer_inputs(self, transformer_config, *, batch, timestep, randn, generator, device, dtype, transformer):
        tc, s = transformer_config, transformer_config["sample_size"]
        return dict(
            hidden_states=randn(batch, tc["in_channels"], s, s),
            timestep=torch.full((batch,), int(timestep), dtype=torch.long, device=device),
            class_labels=torch.randint(0, tc["num_embeds_ada_norm"], (batch,), generator=generator).to(device),
        )


def _class_ids(class_names: list[str], pipe, num_classes: int) -> list[int]:
    """Integer class names ("207") as they are, else the pipeline's ImageNet names, else sorted order."""
    if all(n.strip().isdigit() for n in class_names):
        ids = [int(n) for n in class_names]
    else:
        table = getattr(pipe, "labels", None) or {}
        if table and all(n in table for n in class_names):
            ids = [int(table[n]) for n in class_names]
        else:
            ids = list(range(len(class_names)))
    if ids and max(ids) >= num_classes:
        raise ValueError(f"class id {max(ids)} does not exist: the model has {num_classes} classes")
    return ids


@functools.lru_cache(maxsize=None)
def dit_pipeline_euler_class():
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
