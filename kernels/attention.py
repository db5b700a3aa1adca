"""Optional xformers attention for diffusers models (GPU-only extra)."""

from __future__ import annotations

import importlib.util

import torch

__all__ = ["enable_xformers", "xformers_available"]

_INSTALL = "`pip install dit-cache[xformers]`"


def xformers_available() -> tuple[bool, str]:
    """(True, description) if xformers attention can run here, else (False, what is missing)."""
    missing = []
    # find_spec first: importing a CUDA-built xformers beside a CPU torch warns loudly.
    if importlib.util.find_spec("xformers") is None:
        missing.append(f"the xformers package is not installed ({_INSTALL})")
    if not torch.cuda.is_available():
        missing.append("no CUDA device is available (xformers memory-efficient attention needs CUDA)")
    if missing:
        return False, "; ".join(missing)
    try:
        import xformers
        import xformers.ops  # noqa: F401
    except Exception as exc:  # a build for another torch/CUDA raises on import
        return False, f"xformers is installed but does not import ({type(exc).__name__}: {exc}); reinstall with {_INSTALL}"
    return True, f"xformers {getattr(xformers, '__version__', '?')} on CUDA"


def enable_xformers(model):
    """Switch a diffusers model to xformers attention via its own
    ``enable_xformers_memory_efficient_attention()``. Raises RuntimeError naming what is
    missing when xformers or CUDA is not available. Returns the model."""
    ok, reason = xformers_available()
    if not ok:
        raise RuntimeError(
            f"cannot enable xformers attention: {reason}. It needs a CUDA GPU and {_INSTALL}; "
            "without it diffusers' default (PyTorch SDPA) attention is used."
        )
    enable = getattr(model, "enable_xformers_memory_efficient_attention", None)
    if enable is None:
        raise TypeError(f"{type(model).__name__} has no enable_xformers_memory_efficient_attention()")
    enable()
    return model
