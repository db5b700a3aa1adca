"""Which backend runs the fused op, and why Triton can or cannot run here."""

from __future__ import annotations

import functools
import os

import torch

__all__ = ["BACKENDS", "resolve_backend", "triton_interpret_enabled", "triton_unavailable_reason"]

BACKENDS = ("auto", "torch", "triton", "reference")


@functools.lru_cache(maxsize=None)
def _triton_import_error() -> str | None:
    # Imported on first need only: triton is an optional extra (~1 GB) and slow to import.
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install raising anything else
        return f"{type(exc).__name__}: {exc}"
    return None


def triton_interpret_enabled() -> bool:
    """True when TRITON_INTERPRET=1: Triton kernels then run in its interpreter, on CPU too."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_unavailable_reason(device: torch.device | str | None = None) -> str | None:
    """None if the Triton kernel can run on tensors on ``device``, else why not + what to do."""
    err = _triton_import_error()
    if err is not None:
        return f"triton is not importable ({err}); install it with `pip install dit-cache[triton]`"
    if triton_interpret_enabled():
        return None  # the interpreter runs anywhere (numpy underneath)
    dev = torch.device(device) if device is not None else None
    hint = "use backend='torch', or set TRITON_INTERPRET=1 to run the (slow) Triton interpreter"
    if dev is not None and dev.type != "cuda":
        return (
            f"the Triton kernel runs on CUDA tensors only, got tensors on '{dev.type}'; "
            f"move them to a CUDA device or {hint}"
        )
    if not torch.cuda.is_available():
        return f"no CUDA device is available (torch.cuda.is_available() is False); {hint}"
    major, minor = torch.cuda.get_device_capability(dev)
    if major < 7:
        return f"the CUDA device has compute capability {major}.{minor}; Triton needs >= 7.0; {hint}"
    return None


def resolve_backend(backend: str = "auto", device: torch.device | str | None = None) -> str:
    """Map a backend request to "torch" | "triton" | "reference".

    "auto" picks "triton" only if the tensors are on CUDA (``device``; None means "assume the
    default CUDA device"), CUDA is available and triton imports; otherwise the folded torch
    path. It never picks the interpreter. An explicit "triton" that cannot run raises
    RuntimeError saying why, unless TRITON_INTERPRET=1.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    if backend in ("torch", "reference"):
        return backend
    if backend == "triton":
        reason = triton_unavailable_reason(device)
        if reason is not None:
            raise RuntimeError(f"backend='triton' cannot run: {reason}")
        return "triton"
    # auto: cheap checks first so CPU runs never import triton
    if device is not None and torch.device(device).type != "cuda":
        return "torch"
    if not torch.cuda.is_available() or _triton_import_error() is not None:
        return "torch"
    return "triton"
