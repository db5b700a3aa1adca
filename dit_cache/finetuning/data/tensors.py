"""Samples held in memory as one tensor (`InMemoryDataset`) and their conversion to a model's
channels and size (`adapt`). Layouts and value ranges: see `dit_cache.finetuning.data`."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F


class DataError(ValueError):
    """The data cannot be used (missing path, empty folder, inconsistent sizes...)."""


@dataclass
class InMemoryDataset:
    """Samples as one tensor plus optional labels / captions (see the module docstring)."""

    x: torch.Tensor
    labels: torch.Tensor | None = None
    captions: list[str] | None = None
    class_names: list[str] | None = None
    name: str = "in-memory"
    _fingerprint: str | None = field(default=None, repr=False)

    def __post_init__(self):
        if not torch.is_tensor(self.x):
            self.x = torch.as_tensor(np.asarray(self.x))
        if self.x.dim() not in (4, 5):
            raise DataError(
                f"data must be (N, C, H, W) images or (N, C, F, H, W) clips, got shape {tuple(self.x.shape)}"
            )
        if self.x.dtype != torch.uint8 and not self.x.is_floating_point():
            raise DataError(f"data must be uint8 (0-255) or float ([-1, 1]), got {self.x.dtype}")
        n = self.x.shape[0]
        if n == 0:
            raise DataError(f"{self.name}: no samples")
        if self.labels is not None:
            self.labels = torch.as_tensor(self.labels, dtype=torch.long).reshape(-1)
            if self.labels.numel() != n:
                raise DataError(f"{self.name}: {self.labels.numel()} labels for {n} samples")
            if self.labels.min() < 0:
                raise DataError(f"{self.name}: labels must be >= 0")
            if self.class_names is None:
                self.class_names = [str(i) for i in range(int(self.labels.max()) + 1)]
            elif int(self.labels.max()) >= len(self.class_names):
                raise DataError(f"{self.name}: label {int(self.labels.max())} has no class name")
        if self.captions is not None:
            self.captions = [str(c) for c in self.captions]
            if len(self.captions) != n:
                raise DataError(f"{self.name}: {len(self.captions)} captions for {n} samples")

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def is_video(self) -> bool:
        return self.x.dim() == 5

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def batch(self, index: torch.Tensor | Sequence[int] | None = None) -> torch.Tensor:
        """Float32 samples in [-1, 1] (all of them when ``index`` is None)."""
        x = self.x if index is None else self.x[torch.as_tensor(index, dtype=torch.long)]
        return to_float(x)

    def caption_list(self) -> list[str] | None:
        """Per-sample captions: the captions, else the class names of the labels, else None."""
        if self.captions is not None:
            return list(self.captions)
        if self.labels is not None:
            return [self.class_names[i] for i in self.labels.tolist()]
        return None

    def fingerprint(self) -> str:
        """sha256 of the pixels, shape and dtype (names the latent cache)."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            h.update(f"{tuple(self.x.shape)}|{self.x.dtype}".encode())
            h.update(self.x.contiguous().numpy().tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 0-255 -> float32 in [-1, 1]; float samples are only cast to float32."""
    if x.dtype == torch.uint8:
        return x.float().div_(127.5).sub_(1.0)
    return x.float()



def adapt(x: torch.Tensor, channels: int | None = None, size: int | None = None) -> torch.Tensor:
    """Float samples (N, C, [F,] H, W) in [-1, 1] converted to ``channels`` (1 <-> 3: repeat, or
    ITU-R 601 luma) and resized (bilinear, antialiased) to ``size`` x ``size``."""
    video = x.dim() == 5
    if channels is not None and x.shape[1] != channels:
        if x.shape[1] == 1:
            x = x.repeat_interleave(channels, dim=1)
        elif x.shape[1] == 3 and channels == 1:
            w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype).view(1, 3, *([1] * (x.dim() - 2)))
            x = (x * w).sum(dim=1, keepdim=True)
        else:
            raise DataError(f"cannot convert {x.shape[1]}-channel data to {channels} channels")
    if size is not None and (x.shape[-2] != size or x.shape[-1] != size):
        if video:
            n, c, f, h, w = x.shape
            flat = x.permute(0, 2, 1, 3, 4).reshape(n * f, c, h, w)
            flat = F.interpolate(flat, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            x = flat.reshape(n, f, c, size, size).permute(0, 2, 1, 3, 4).contiguous()
        else:
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        x = x.clamp_(-1.0, 1.0)
    return x

