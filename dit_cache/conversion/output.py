"""The output directory of `dit_cache.convert`: assembled under a temporary name next to ``out``
and renamed into place, so it is complete or absent; only a previous convert output is replaced."""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from .._common.files import finish_modes
from .errors import ConvertError

ADAPTER_FILE = "dit_cache_adapters.safetensors"
INFO_FILE = "dit_cache_convert.json"
INFO_FORMAT = "dit-cache-convert"


def check_out(out: Path, overwrite: bool) -> None:
    """Raise unless ``out`` may be written (absent, or a previous convert output with overwrite)."""
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise ConvertError(f"{out} already exists; pass --overwrite (overwrite=True) to replace it")
        if out.is_symlink() or not out.is_dir():
            raise ConvertError(f"refusing to overwrite {out}: not a directory")
        if any(out.iterdir()) and not (out / INFO_FILE).is_file():
            raise ConvertError(f"refusing to overwrite {out}: it was not written by ditcache convert (no {INFO_FILE})")
    if not out.parent.is_dir():
        raise ConvertError(f"cannot create {out}: {out.parent} is not a directory")


def commit(tmp: Path, out: Path, overwrite: bool) -> None:
    """Give the assembled directory ``tmp`` the usual modes and rename it to ``out``."""
    finish_modes(tmp, like=out)
    if out.exists() or out.is_symlink():
        check_out(out, overwrite)
        old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(out, old)
        try:
            os.rename(tmp, out)
        except BaseException:
            os.rename(old, out)
            raise
        shutil.rmtree(old, ignore_errors=True)
        return
    try:
        os.rename(tmp, out)
    except OSError as err:
        raise ConvertError(f"cannot create {out}: {err}") from None
