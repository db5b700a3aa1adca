"""Inputs and outputs of `dit_cache.finetune`: VAE latents (with an on-disk cache), the saved
result folder, and `load_finetuned`.

Result folder (``output_dir``)::

    transformer/            save_pretrained of the trained model *without* inserted adapters
                            (EMA weights unless save_ema=False; fp16 when save_fp16=True)
    adapters.safetensors    dit_cache.save_adapters of the long skips (absent for a vanilla model)
    scheduler/              the training noise schedule (DDPMScheduler config)
    finetune.json           model class, fusion, config, data / conditioning, figures, command
    train_log.jsonl         one JSON object per step
    checkpoints/            resumable checkpoints (see finetune_state)
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..runtime.patch_state import LSC_ATTR

META_FILE = "finetune.json"
ADAPTER_FILE = "adapters.safetensors"


# ----------------------------------------------------------------------------------------
# Latents
# ----------------------------------------------------------------------------------------


def vae_scale_factor(vae) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


def vae_fingerprint(vae) -> str:
    h = hashlib.sha256()
    h.update(type(vae).__name__.encode())
    h.update(json.dumps({k: v for k, v in dict(vae.config).items() if not k.startswith("_")}, sort_keys=True, default=str).encode())
    for name, t in sorted(vae.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class LatentSource:
    """Scaled VAE latents of every sample: ``(mean, std)`` of the posterior (``std`` None when
    the mean is used). ``get`` draws ``mean + std * eps`` from the training generator."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor | None):
        self.mean, self.std = mean, std

    def __len__(self):
        return self.mean.shape[0]

    def get(self, idx: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        mean = self.mean[idx].float()
        if self.std is None:
            return mean
        eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
        return mean + self.std[idx].float() * eps


class PixelSource:
    def __init__(self, dataset, channels: int, size: int | None):
        from .data import adapt

        self.dataset, self.channels, self.size, self._adapt = dataset, channels, size, adapt

    def __len__(self):
        return len(self.dataset)

    def get(self, idx: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self._adapt(self.dataset.batch(idx), self.channels, self.size)


@torch.no_grad()
def _encode(vae, dataset, channels: int, size: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    from .data import adapt

    scale = float(vae.config.scaling_factor)
    shift = float(getattr(vae.config, "shift_factor", None) or 0.0)
    means, stds = [], []
    dtype, device = next(vae.parameters()).dtype, next(vae.parameters()).device  # encode where the VAE lives
    for i in range(0, len(dataset), batch):
        x = adapt(dataset.batch(torch.arange(i, min(i + batch, len(dataset)))), channels, size)
        video = x.dim() == 5
        if video:  # (B, C, F, H, W) -> frames
            b, c, f = x.shape[:3]
            x = x.permute(0, 2, 1, 3, 4).reshape(b * f, c, *x.shape[-2:])
        dist = vae.encode(x.to(device=device, dtype=dtype)).latent_dist
        mean = ((dist.mean.float() - shift) * scale).cpu()
        std = (dist.std.float() * scale).cpu()
        if video:
            mean = mean.reshape(b, f, *mean.shape[1:]).permute(0, 2, 1, 3, 4).contiguous()
            std = std.reshape(b, f, *std.shape[1:]).permute(0, 2, 1, 3, 4).contiguous()
        means.append(mean)
        stds.append(std)
    return torch.cat(means), torch.cat(stds)


def encode_latents(vae, dataset, *, channels: int, size: int, sample: bool, batch: int, cache_dir, ctx) -> tuple[LatentSource, str]:
    """Encode every sample with the pipeline's VAE; with ``cache_dir`` the latents are stored as
    ``latents-<key>.safetensors`` where key = sha256(data, VAE weights + config, size, channels),
    written by rank 0 (atomically) and read by every rank."""
    key = hashlib.sha256(f"{dataset.fingerprint()}|{vae_fingerprint(vae)}|{size}|{channels}".encode()).hexdigest()[:24]
    path = Path(cache_dir) / f"latents-{key}.safetensors" if cache_dir else None
    note = "encoded"
    if path is not None and path.is_file():
        note = f"cached ({path})"
    elif path is not None:
        if ctx.is_main:
            mean, std = _encode(vae, dataset, channels, size, batch)
            path.parent.mkdir(parents=True, exist_ok=True)
            _atomic_save({"mean": mean.contiguous(), "std": std.contiguous()}, path, {"format": "dit-cache-latents"})
            note = f"encoded and cached ({path})"
        ctx.barrier()
    if path is not None:
        tensors = load_file(str(path))
        mean, std = tensors["mean"], tensors["std"]
    else:
        mean, std = _encode(vae, dataset, channels, size, batch)
    return LatentSource(mean, std if sample else None), note


# ----------------------------------------------------------------------------------------
# Saving
# ----------------------------------------------------------------------------------------


def _atomic_save(tensors: dict, path: Path, metadata: dict | None = None):
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def to_fp16_file(path: Path):
    """Rewrite a safetensors file with its float tensors in float16 (metadata kept)."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    tensors = {k: (v.half() if v.is_floating_point() else v) for k, v in tensors.items()}
    _atomic_save(tensors, Path(path), meta)


@contextmanager
def without_inserted_adapters(model):
    """Detach the inserted adapter ModuleDict for the duration (save_pretrained of the base)."""
    lsc = model._modules.pop(LSC_ATTR, None)
    try:
        yield
    finally:
        if lsc is not None:
            model._modules[LSC_ATTR] = lsc


def save_result(model, output_dir: Path, *, scheduler, fp16: bool, meta: dict):
    """Write transformer/, adapters.safetensors, scheduler/ and finetune.json (rank 0 only)."""
    from ..runtime.adapter_io import save_adapters

    output_dir = Path(output_dir)
    tdir = output_dir / "transformer"
    with without_inserted_adapters(model):
        model.save_pretrained(tdir, safe_serialization=True)
    if fp16:
        for f in tdir.glob("*.safetensors"):
            to_fp16_file(f)
    adapter_path = output_dir / ADAPTER_FILE
    if meta.get("adapters") is not None:
        save_adapters(model, adapter_path)
        if fp16:
            to_fp16_file(adapter_path)
    elif adapter_path.exists():
        adapter_path.unlink()
    scheduler.save_config(output_dir / "scheduler")
    write_json(output_dir / META_FILE, meta)


def write_json(path: Path, obj):
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, default=str)
        f.write("\n")
    os.replace(tmp, path)


def patch_with_adapters(model, schedule, fusion, adapter_file, **options):
    """`dit_cache.patch` then `load_adapters` of trained long skips; unpatched again if the
    adapters do not load, so a failure leaves the model as it was."""
    from ..runtime.adapter_io import load_adapters
    from ..api import patch, unpatch

    patch(model, schedule, fusion=fusion, **options)
    try:
        load_adapters(model, adapter_file)
    except BaseException:
        unpatch(model)
        raise
    return model


def load_finetuned(path, schedule="skip-dit", *, pipeline=None, torch_dtype=None, **options):
    """Load a `finetune` result folder: the transformer (``from_pretrained``), patched with
    ``schedule`` (+ ``options``) and its trained adapters when it was trained with long skips.
    A vanilla result (trained without adapters) is returned unpatched, as is any result with
    ``schedule=None`` (for inserted adapters: the base model without them). With ``pipeline``, the transformer replaces ``pipeline.transformer`` and the
    pipeline is returned."""
    import diffusers

    path = Path(path)
    meta_file = path / META_FILE
    if not meta_file.is_file():
        raise ValueError(f"{path} is not a dit-cache finetune result (no {META_FILE})")
    meta = json.loads(meta_file.read_text(encoding="utf-8"))
    cls = getattr(diffusers, meta["model_class"])
    kwargs = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
    model = cls.from_pretrained(path / "transformer", **kwargs)
    if torch_dtype is None:
        model = model.float()
    model.eval().requires_grad_(False)
    adapters = meta.get("adapters")
    if schedule is not None and adapters is not None:
        patch_with_adapters(model, schedule, None if adapters == "native" else adapters, path / ADAPTER_FILE, **options)
    if pipeline is not None:
        pipeline.register_modules(transformer=model)
        return pipeline
    return model
