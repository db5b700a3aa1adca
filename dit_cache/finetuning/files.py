"""Result files of `dit_cache.finetune`, written atomically by `_common.files` (a reader sees the
old file or the new one, never a torn one; modes follow the umask or the replaced file)."""
from __future__ import annotations

from pathlib import Path

from safetensors import safe_open

from .._common.files import save_safetensors


def to_fp16_file(path: Path):
    """Rewrite a safetensors file with its float tensors in float16 (metadata kept)."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    tensors = {k: (v.half() if v.is_floating_point() else v) for k, v in tensors.items()}
    save_safetensors(tensors, Path(path), meta)

