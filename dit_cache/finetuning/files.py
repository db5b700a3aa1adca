"""Atomic file writes (a temporary file in the same folder, then ``os.replace``): a reader sees
the old file or the new one, never a torn one."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file


def atomic_save_file(tensors: dict, path: Path, metadata: dict | None = None):
    """safetensors ``save_file`` of ``tensors`` to ``path``, atomically."""
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
    atomic_save_file(tensors, Path(path), meta)



def write_json(path: Path, obj):
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, default=str)
        f.write("\n")
    os.replace(tmp, path)
