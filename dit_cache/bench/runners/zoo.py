"""Benchmarking a zoo model (or any pixel-space `dit_cache.finetune` result folder).

* Sampling: the family's scheduler (DDIM by default) with the model's trained prediction type
  (finetune.json).
* Pixel space: no VAE, the samples are the final latents; DDIM / DDPM clip their x0 estimates
  to the data range [-1, 1] (``clip_sample=True``, the pixel-space convention of diffusers'
  DDPMPipeline), without which a few-step sampler amplifies early eps errors far outside it.
* Guidance: CFG 2.0 unless ``cfg_scale`` is given (see ZOO_CFG_SCALE).
* Conditioning: the family spec's `class_conditioning` (DiT class labels; Latte one-hot class
  tokens, how the zoo's Latte was trained); sample i of seed s is of class ``(s + i) % 10``, so a
  batch of any multiple of 10 is class-balanced.
* Trained long-skip adapters are part of the model's function, so every dit-cache method is
  installed with them (``fusion`` as trained, then ``load_adapters``); ``none`` becomes
  Skip-Cache with ``interval=1`` (patched with the adapters, every step full) and is the
  fidelity reference. ``unpatched`` (the model without its skips), FORA, PAB and the diffusers
  peers (which would run the model without its skips) are reported as n/a on such models:
  compare them on the vanilla model (``mnist-dit``).
* Quality beside PSNR/SSIM: FID-MNIST and class accuracy (`dit_cache.zoo.quality`).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ...adapters.family import family_spec
from ..errors import BenchInputError, PeerUnavailable
from .base import RunSettings, check_geometry, eval_cast, scheduler_for
from .loop import TransformerRunner

FINETUNE_META = "finetune.json"
NO_ADAPTER_METHODS = "would drop this model's trained long skips (compare it on mnist-dit)"


def is_finetune_dir(path: str) -> bool:
    return (Path(path) / FINETUNE_META).is_file()


class ZooRunner(TransformerRunner):
    kind = "zoo-loop"
    vae_factor = 1  # pixel space

    def __init__(self, label: str, model, meta: dict, settings: RunSettings, adapter_file: Path | None = None):
        """`model`: the base transformer (without inserted adapters); `meta`: its finetune.json;
        `adapter_file`: its trained adapters (installed with every dit-cache method)."""
        family = meta["family"]
        eval_cast(model, settings)
        cfg = model.config
        video_length = family_spec(family).video_length(cfg)
        check_geometry(family, int(cfg.patch_size), settings, int(cfg.sample_size), video_length, factor=1)
        from ...zoo.pipelines import ZOO_CFG_SCALE, ZooPipeline, pixel_scheduler

        scheduler = pixel_scheduler(scheduler_for(settings.scheduler, family), meta.get("prediction_type"))
        super().__init__(label, model, family, scheduler, settings)
        if settings.cfg_scale is None:
            self.cfg_scale, self.cfg = ZOO_CFG_SCALE, True
        # the zoo's sampling loop and conditioning live in its pipeline; the runner drives them
        self.pipe = ZooPipeline(transformer=model, scheduler=scheduler)
        self.pipe.set_progress_bar_config(disable=True)
        self.meta = meta
        adapters = meta.get("adapters") if adapter_file is not None else None
        self.adapter_fusion = adapters if adapters in ("residual", "replace") else None
        self.adapter_file = adapter_file if self.adapter_fusion else None
        self._quality = None
        self.zoo_name: str | None = None  # its calibrated schedule (method `calibrated`)

    def install_dit_cache(self, name, options: dict) -> None:
        """With the zoo model's trained adapters (see the module doc); ``calibrated`` is its
        shipped schedule file."""
        from ...finetuning.io import patch_with_adapters, trained_adapter_schedule
        from ...zoo import zoo_schedule

        name = zoo_schedule(self.zoo_name, name)
        if not self.adapter_fusion:
            super().install_dit_cache(name, options)
            return
        mapped = trained_adapter_schedule(name, options)
        if mapped is None:
            raise PeerUnavailable(f"{name} {NO_ADAPTER_METHODS}")
        patch_with_adapters(self.patch_target, mapped[0], self.adapter_fusion, self.adapter_file, **mapped[1])

    def labels(self, seed: int) -> torch.Tensor:
        return torch.tensor([(seed + i) % 10 for i in range(self.s.batch)])

    def prepare(self, seed: int) -> dict:
        prepared = super().prepare(seed)
        labels = self.labels(seed).to(self.s.device)
        prepared["cond"].update(self.pipe.conditioning(labels, self.cfg_scale, self.s.device, self.s.dtype))
        prepared["labels"] = labels.cpu()
        return prepared

    def generate(self, prepared: dict, steps: int | None = None) -> torch.Tensor:
        from ...runtime.patch_state import get_state

        if self.adapter_fusion and get_state(self.transformer) is None:
            raise RuntimeError(
                f"{self.label} was trained with long-skip adapters; without them it is another function. "
                "Install a dit-cache method first (the bench does; `none` = skip-dit with interval=1)."
            )
        seed = prepared["seed"]
        with self.seeded_rng(seed):  # as TransformerRunner.generate, through the pipeline's loop
            return self.pipe.denoise_latents(
                prepared["noise"], prepared["cond"], steps or self.s.steps, self.cfg_scale,
                generator=torch.Generator(device=self.s.device).manual_seed(seed),
            )

    def describe(self) -> dict:
        return {**super().describe(), "zoo": {k: self.meta.get(k) for k in ("adapters", "steps", "data", "command")}}

    def quality(self, outputs: dict[int, torch.Tensor]) -> dict:
        """FID-MNIST and class accuracy of all seeds' samples."""
        from ...zoo.quality import MnistQuality

        if self._quality is None:
            self._quality = MnistQuality(video=self.spec.is_video)
        seeds = sorted(outputs)
        samples = torch.cat([outputs[s].float().cpu() for s in seeds])
        labels = torch.cat([self.labels(s) for s in seeds])
        out = {"class_acc": self._quality.class_accuracy(samples, labels), "n_quality": len(samples)}
        out["fid_mnist"] = self._quality.fid(samples) if len(samples) >= 2 else None
        out["fid_floor"] = self._quality.fid_floor(len(samples)) if len(samples) >= 2 else None
        return out


def runner_from_folder(label: str, folder: Path, settings: RunSettings) -> ZooRunner:
    from ...finetuning.io import ADAPTER_FILE, load_finetuned

    meta = json.loads((folder / FINETUNE_META).read_text(encoding="utf-8"))
    if "latent" in str(meta.get("data", {}).get("space", "")):
        raise BenchInputError(f"{folder} was trained in a VAE's latent space; bench its pipeline instead")
    try:
        model = load_finetuned(folder, schedule=None)
    except Exception as err:  # noqa: BLE001 - any load failure is bad input here
        raise BenchInputError(f"cannot load the model in {folder}: {type(err).__name__}: {err}") from None
    return ZooRunner(label, model, meta, settings, adapter_file=folder / ADAPTER_FILE)


def load_zoo_runner(model: str, settings: RunSettings) -> ZooRunner:
    from ... import zoo

    if model in zoo.ZOO_MODELS:
        try:
            folder = zoo.path(model)
        except FileNotFoundError as err:
            raise BenchInputError(str(err)) from None
        runner = runner_from_folder(model, folder, settings)
        runner.zoo_name = model
        return runner
    folder = Path(model)
    return runner_from_folder(folder.name or model, folder, settings)
