"""The diffusion training objective and the per-family conditioning of `dit_cache.finetune`.

Objective: ``x_t = DDPMScheduler.add_noise(x_0, eps, t)`` with ``t`` uniform over the scheduler's
``num_train_timesteps``; the model predicts ``eps`` (``prediction_type="epsilon"``),
``scheduler.get_velocity(x_0, eps, t)`` (``"v_prediction"``) or ``x_0`` (``"sample"``); the loss
is the mean squared error in float32. A model with learned sigma (output channels = 2 x input
channels: DiT-XL/2, Latte, Hunyuan-DiT) is trained on the first half of its output only: the
variational-bound term that trains the variance half in the DiT recipe is *not* trained here, so
sample with a fixed-variance scheduler (every diffusers pipeline of these models drops the
variance half anyway).

Conditioning (with classifier-free-guidance dropout: each sample's condition is replaced by the
null condition with probability ``cond_dropout``):

* DiT: ``class_labels``; the null class is ``config.num_embeds_ada_norm`` (the row DiTPipeline
  uses for the unconditional branch). Labels come from the data's class names when they are
  integers ("207"), else from the pipeline's ``labels`` (ImageNet names), else the sorted order.
* Latte / Hunyuan-DiT with their pipeline: captions (or class names) encoded once per unique
  caption with the pipeline's own tokenizers / text encoders, exactly as the pipeline encodes a
  batch of prompts; the null condition is the pipeline's embedding of the empty negative prompt.
* Latte without text encoder (a bare model, e.g. the pixel-space MNIST zoo): the label is given
  through ``encoder_hidden_states`` as one token, :func:`class_tokens` (one-hot in
  ``caption_channels``); the null condition is the zero token.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

DEFAULT_NOISE_CONFIG = dict(
    num_train_timesteps=1000,
    beta_schedule="linear",
    beta_start=0.0001,
    beta_end=0.02,
    prediction_type="epsilon",
    clip_sample=False,
)
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def training_scheduler(source=None, **overrides):
    """A ``DDPMScheduler`` holding the training noise schedule of ``source``: a scheduler, a
    pipeline (its ``.scheduler``), a config dict, a path to a scheduler folder / json, or None
    (the DiT schedule: 1000 linear betas 1e-4..0.02, epsilon). ``overrides`` (e.g.
    ``prediction_type="v_prediction"``, ``beta_schedule="squaredcos_cap_v2"``) replace config keys."""
    from diffusers import DDPMScheduler

    overrides = {k: v for k, v in overrides.items() if v is not None}
    if source is None:
        config = dict(DEFAULT_NOISE_CONFIG)
    elif hasattr(source, "scheduler") and hasattr(source.scheduler, "config"):
        config = dict(source.scheduler.config)
    elif hasattr(source, "config"):
        config = dict(source.config)
    elif isinstance(source, dict):
        config = dict(source)
    else:
        import os

        path = os.fspath(source)
        config = dict(DDPMScheduler.load_config(path))
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    config.update(overrides)
    scheduler = DDPMScheduler.from_config(config)
    if scheduler.config.prediction_type not in PREDICTION_TYPES:
        raise ValueError(
            f"prediction_type {scheduler.config.prediction_type!r} is not trainable here; use one of {PREDICTION_TYPES}"
        )
    return scheduler


class DiffusionObjective:
    """Noising and targets for one scheduler config (see the module docstring)."""

    def __init__(self, scheduler):
        self.scheduler = scheduler
        self.num_timesteps = int(scheduler.config.num_train_timesteps)
        self.prediction_type = scheduler.config.prediction_type

    def draw(self, x0: torch.Tensor, generator: torch.Generator):
        """(noisy x_t, integer timesteps t, target) for clean samples x0 (on CPU, float32)."""
        t = torch.randint(0, self.num_timesteps, (x0.shape[0],), generator=generator, dtype=torch.long)
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
        noisy = self.scheduler.add_noise(x0, noise, t)
        if self.prediction_type == "epsilon":
            target = noise
        elif self.prediction_type == "v_prediction":
            target = self.scheduler.get_velocity(x0, noise, t)
        else:
            target = x0
        return noisy, t, target

    @staticmethod
    def loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        c = target.shape[1]
        if pred.shape[1] == 2 * c:  # learned sigma: the variance half is not trained (no VLB term)
            pred = pred[:, :c]
        elif pred.shape[1] != c:
            raise ValueError(f"model outputs {pred.shape[1]} channels for {c}-channel inputs")
        return torch.nn.functional.mse_loss(pred.float(), target.float())


# ----------------------------------------------------------------------------------------
# Conditioning
# ----------------------------------------------------------------------------------------


def class_tokens(labels: torch.Tensor, dim: int, num_classes: int | None = None) -> torch.Tensor:
    """Labels (B,) -> ``encoder_hidden_states`` (B, 1, dim) for a text-conditioned model trained
    on classes without a text encoder: one-hot of the label (label < 0 = the null condition =
    the zero token). Needs ``dim >= num_classes``."""
    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    if num_classes is not None and num_classes > dim:
        raise ValueError(f"class tokens need caption_channels >= number of classes ({num_classes} > {dim})")
    if labels.numel() and int(labels.max()) >= dim:
        raise ValueError(f"label {int(labels.max())} does not fit a one-hot token of size {dim}")
    out = torch.zeros(labels.numel(), 1, dim)
    keep = labels >= 0
    out[keep, 0, labels[keep]] = 1.0
    return out


@dataclass
class Conditioning:
    """Per-sample condition rows plus the tables they index; row ``null_index`` is the null
    condition. ``index_kwarg``: pass the rows themselves (DiT ``class_labels``)."""

    index: torch.Tensor  # (N,) long
    null_index: int
    tables: dict[str, torch.Tensor] = field(default_factory=dict)
    index_kwarg: str | None = None
    constant: Callable[[int], dict[str, Any]] | None = None
    description: str = ""

    def kwargs(self, sample_idx: torch.Tensor, drop: torch.Tensor, device) -> dict[str, Any]:
        rows = self.index[sample_idx].clone()
        rows[drop] = self.null_index
        out: dict[str, Any] = {k: t[rows].to(device) for k, t in self.tables.items()}
        if self.index_kwarg is not None:
            out[self.index_kwarg] = rows.to(device)
        if self.constant is not None:
            out.update(self.constant(len(rows)))
        return out


def _dit_class_ids(class_names: list[str], pipe, num_classes: int) -> list[int]:
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


def _dit(model, dataset, pipe, warn) -> Conditioning:
    num_classes = int(model.config.num_embeds_ada_norm)
    n = len(dataset)
    if dataset.labels is None:
        warn("the data has no labels: DiT is trained unconditionally (every sample gets the null class)")
        return Conditioning(torch.full((n,), num_classes), num_classes, index_kwarg="class_labels",
                            description="unconditional (null class)")
    ids = torch.tensor(_dit_class_ids(dataset.class_names, pipe, num_classes), dtype=torch.long)
    return Conditioning(ids[dataset.labels], num_classes, index_kwarg="class_labels",
                        description=f"class labels ({len(ids)} classes, null id {num_classes})")


def _unique(captions: list[str]) -> tuple[list[str], torch.Tensor]:
    order: dict[str, int] = {}
    index = [order.setdefault(c, len(order)) for c in captions]
    return list(order), torch.tensor(index, dtype=torch.long)


@torch.no_grad()
def _latte_text(pipe, unique: list[str], device, chunk: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
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


def _latte(model, dataset, pipe, warn) -> Conditioning:
    n = len(dataset)
    has_text = pipe is not None and getattr(pipe, "text_encoder", None) is not None
    if has_text:
        captions = dataset.caption_list()
        if captions is None:
            warn("the data has no captions or labels: Latte is trained on the empty caption only")
            captions = [""] * n
        unique, index = _unique(captions)
        table, null = _latte_text(pipe, unique, _device_of(pipe.text_encoder))
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


@torch.no_grad()
def _hunyuan_text(pipe, unique: list[str], device, chunk: int = 64):
    cols: dict[str, list[torch.Tensor]] = {k: [] for k in ("e1", "m1", "e2", "m2")}
    nulls = {}
    for i in range(0, len(unique), chunk):
        part = unique[i : i + chunk]
        for idx, length, e, m in ((0, 77, "e1", "m1"), (1, 256, "e2", "m2")):
            pos, neg, pmask, nmask = pipe.encode_prompt(
                prompt=part, device=device, dtype=torch.float32, num_images_per_prompt=1,
                do_classifier_free_guidance=True, negative_prompt=None, max_sequence_length=length,
                text_encoder_index=idx,
            )
            cols[e].append(pos.float().cpu())
            cols[m].append(pmask.cpu())
            nulls[e], nulls[m] = neg[0].float().cpu(), nmask[0].cpu()
    return {k: torch.cat(v + [nulls[k][None]]) for k, v in cols.items()}


def _hunyuan(model, dataset, pipe, warn, latent_hw: tuple[int, int], vae_scale: int, device) -> Conditioning:
    if pipe is None or getattr(pipe, "text_encoder", None) is None or getattr(pipe, "text_encoder_2", None) is None:
        raise ValueError("training Hunyuan-DiT needs its pipeline's two text encoders: pass the pipeline (--pipeline)")
    from ..testing.models import hunyuan_rotary_emb

    n = len(dataset)
    captions = dataset.caption_list()
    if captions is None:
        warn("the data has no captions or labels: Hunyuan-DiT is trained on the empty caption only")
        captions = [""] * n
    unique, index = _unique(captions)
    t = _hunyuan_text(pipe, unique, _device_of(pipe.text_encoder))
    tables = {
        "encoder_hidden_states": t["e1"],
        "text_embedding_mask": t["m1"],
        "encoder_hidden_states_t5": t["e2"],
        "text_embedding_mask_t5": t["m2"],
    }
    h, w = latent_hw
    rope = hunyuan_rotary_emb(model, h, w, device=device)
    meta = torch.tensor([[1024.0, 1024.0, h * vae_scale, w * vae_scale, 0.0, 0.0]])

    def constant(b: int) -> dict[str, Any]:
        return dict(
            image_meta_size=meta.repeat(b, 1).to(device),
            style=torch.zeros(b, dtype=torch.long, device=device),
            image_rotary_emb=rope,
        )

    return Conditioning(index, len(unique), tables, constant=constant,
                        description=f"captions via the pipeline's BERT + T5 ({len(unique)} unique)")


def _device_of(module) -> torch.device:
    try:
        return next(module.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def build_conditioning(family: str, model, dataset, pipe, *, latent_hw, vae_scale: int, device, warn) -> Conditioning:
    if family == "dit":
        return _dit(model, dataset, pipe, warn)
    if family == "latte":
        return _latte(model, dataset, pipe, warn)
    if family == "hunyuan":
        return _hunyuan(model, dataset, pipe, warn, latent_hw, vae_scale, device)
    raise ValueError(f"finetune does not know how to condition a {family!r} model")


def timestep_for_model(family: str, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """DiT / Latte take integer timesteps; the Hunyuan pipeline passes floats."""
    return t.to(dtype) if family == "hunyuan" else t
