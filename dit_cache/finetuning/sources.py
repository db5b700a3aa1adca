"""Where `dit_cache.finetune` draws its training samples from: the data's pixels adapted to the
model, or VAE latents encoded once (optionally cached on disk)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from .data import adapt
from .._common.files import save_safetensors


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
    """The samples themselves (pixel-space training), converted to the model's channels and size."""

    def __init__(self, dataset, channels: int, size: int | None):
        self.dataset, self.channels, self.size = dataset, channels, size

    def __len__(self):
        return len(self.dataset)

    def get(self, idx: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return adapt(self.dataset.batch(idx), self.channels, self.size)


@torch.no_grad()
def _encode(vae, dataset, channels: int, size: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
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
            save_safetensors({"mean": mean.contiguous(), "std": std.contiguous()}, path, {"format": "dit-cache-latents"})
            note = f"encoded and cached ({path})"
        ctx.barrier()
    if path is not None:
        tensors = load_file(str(path))
        mean, std = tensors["mean"], tensors["std"]
    else:
        mean, std = _encode(vae, dataset, channels, size, batch)
    return LatentSource(mean, std if sample else None), note

