"""Folders of images and of clips as `InMemoryDataset`s (the layouts: see
`dit_cache.finetuning.data`)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .tensors import DataError, InMemoryDataset, adapt, to_float

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


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


def check_dir(root) -> Path:
    """``root`` as a Path; a DataError when it is missing or not a folder."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"data path {str(root)!r} does not exist")
    if not root.is_dir():
        raise DataError(f"data path {str(root)!r} is not a folder (expected a folder of images or clips)")
    return root


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


Items = list[tuple[Path, "int | None"]]  # (sample path, class index or None)


def _collect(top: list[Path], root: Path, find: Callable[[Path], list[Path]]) -> tuple[Items, list[str] | None]:
    """Unlabelled samples directly in root when there are any, else the samples of every class
    sub-folder (labels from the sorted sub-folder names; folders without samples are skipped)."""
    if top:
        return [(p, None) for p in top], None
    items: Items = []
    class_names: list[str] = []
    for d in _class_dirs(root):
        found = find(d)
        if found:
            items += [(p, len(class_names)) for p in found]
            class_names.append(d.name)
    return items, class_names


def _dataset(x: torch.Tensor, items: Items, own: list[str | None], class_names, root: Path) -> InMemoryDataset:
    """The dataset of the collected samples; a sample without its own caption is captioned with
    its class name (or "") when any sample has one."""
    labels = torch.tensor([c for _, c in items], dtype=torch.long) if class_names else None
    captions = None
    if any(c is not None for c in own):
        captions = [c if c is not None else (class_names[lab] if class_names else "") for c, (_, lab) in zip(own, items)]
    return InMemoryDataset(x, labels=labels, captions=captions, class_names=class_names, name=str(root))


def load_image_folder(root, resolution: int | None = None, channels: int = 3) -> InMemoryDataset:
    """``root/<class>/<image>`` (labelled) or ``root/<image>`` (unlabelled); see the package doc."""
    root = check_dir(root)
    top = sorted(p for p in root.iterdir() if _is_image(p))
    items, class_names = _collect(top, root, lambda d: sorted(p for p in d.rglob("*") if _is_image(p)))
    if not items:
        raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {str(root)!r} or its class sub-folders")
    x = _stack([_load_image(p, channels, resolution) for p, _ in items], f"images in {root}")
    own = [_read_caption(p.with_suffix(".txt")) for p, _ in items]
    return _dataset(x, items, own, class_names, root)


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


def holds_clips(root: Path) -> bool:
    """Whether a folder reads as clips: clip items and no images at its top, or (with no images
    at the top) a class sub-folder holding clip items and no images."""
    video = bool(_clip_items(root)) and not any(_is_image(p) for p in root.iterdir())
    if not video and not any(_is_image(p) for p in root.iterdir()):
        video = any(_clip_items(d) and not any(_is_image(q) for q in d.iterdir()) for d in _class_dirs(root))
    return video


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
    """``root/[<class>/]<clip>/frames...`` or ``root/[<class>/]<clip>.npy``; see the package doc."""
    if num_frames < 1 or frame_stride < 1:
        raise DataError("num_frames and frame_stride must be >= 1")
    root = check_dir(root)
    items, class_names = _collect(_clip_items(root), root, _clip_items)
    if not items:
        raise DataError(
            f"no clips in {str(root)!r}: expected sub-folders of frame images or .npy arrays "
            "(optionally inside class sub-folders)"
        )
    arrays = [_load_clip(p, num_frames, frame_stride, channels, resolution) for p, _ in items]
    x = _stack(arrays, f"clips in {root}").permute(0, 2, 1, 3, 4).contiguous()  # (N, C, F, H, W)
    own = [
        _read_caption(p.with_suffix(".txt"), p / "caption.txt") if p.is_dir() else _read_caption(p.with_suffix(".txt"))
        for p, _ in items
    ]
    return _dataset(x, items, own, class_names, root)
