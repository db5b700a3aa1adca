"""Reading a checkpoint safely: plain tensors only (``torch.load(weights_only=True)``) or
safetensors, the sub-dict holding the weights, and wrapper prefixes stripped."""
from __future__ import annotations

import argparse
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from .errors import ConvertError

SUBDICT_KEYS = ("ema", "model", "state_dict", "module")  # in order of preference
# Classes a DiT-style training checkpoint may pickle besides tensors; harmless to construct.
SAFE_GLOBALS = [argparse.Namespace]


def _unpickler_detail(text: str, fallback: str = "unreadable pickle") -> str:
    """The reason in torch's weights-only refusal, without its advice to load unsafely."""
    text = text.split("WeightsUnpickler error:", 1)[-1]
    for line in text.splitlines():
        line = re.sub(r"\x1b\[[0-9;]*m", "", line).strip()
        if line and not re.search(r"weights.only|trust|check the documentation|add_safe_globals|safe_globals", line, re.IGNORECASE):
            return line
    return fallback


def _torch_load(path: Path):
    with torch.serialization.safe_globals(SAFE_GLOBALS):
        try:
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as err:
                if "mmap" not in str(err):
                    raise
                return torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
        except pickle.UnpicklingError as err:
            text = str(err)
            code = re.search(r"GLOBAL ([\w.]+)", text, re.IGNORECASE)  # torch <= 2.12 and >= 2.13 wordings
            if code:
                name = code.group(1)
                module, _, attr = name.rpartition(".")
                if module in ("posix", "nt"):  # how os.* functions are pickled
                    name += f", i.e. os.{attr}"
                raise ConvertError(
                    f"{path} is a pickle that needs code to load ({name}); dit-cache reads plain tensors "
                    "only and never runs code from a checkpoint. Use a .safetensors copy of the weights, or a "
                    "state dict saved with torch.save(model.state_dict(), path)"
                ) from None
            raise ConvertError(f"{path} cannot be read as a plain-tensor torch checkpoint: {_unpickler_detail(text)}") from None
        except ConvertError:
            raise
        except Exception as err:  # noqa: BLE001 - truncated / not a torch file
            detail = _unpickler_detail(str(err), fallback="")
            raise ConvertError(f"{path} cannot be read as a torch checkpoint: {type(err).__name__}: {detail}") from None


def _is_state_dict(obj) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(torch.is_tensor(v) for v in obj.values())


def _strip_prefixes(sd: dict) -> dict:
    for prefix in ("module.", "_orig_mod."):  # DDP / torch.compile wrappers
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


def read_checkpoint(path, checkpoint_key: str | None = None) -> tuple[dict[str, torch.Tensor], str | None]:
    """Read `path` and return ``(flat state dict, sub-dict path used or None)``."""
    path = Path(path)
    if not path.is_file():
        raise ConvertError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj = load_file(str(path))
        except Exception as err:  # noqa: BLE001
            raise ConvertError(f"{path} cannot be read as safetensors: {err}") from None
    else:
        obj = _torch_load(path)
    picked: list[str] = []
    if checkpoint_key:
        for part in checkpoint_key.split("."):
            if not isinstance(obj, Mapping) or part not in obj:
                have = sorted(map(str, obj)) if isinstance(obj, Mapping) else type(obj).__name__
                raise ConvertError(f"{path} has no entry {checkpoint_key!r} (at {part!r}; available: {have})")
            obj, picked = obj[part], picked + [part]
    else:
        while isinstance(obj, Mapping) and not _is_state_dict(obj):
            sub = next((k for k in SUBDICT_KEYS if isinstance(obj.get(k), Mapping)), None)
            if sub is None:
                break
            obj, picked = obj[sub], picked + [sub]
    where = f"{path}" + (f" [{'.'.join(picked)}]" if picked else "")
    if not isinstance(obj, Mapping):
        raise ConvertError(f"{where} does not hold a state dict (a mapping of names to tensors), but a {type(obj).__name__}")
    if not obj:
        raise ConvertError(f"{where} is an empty state dict")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if bad:
        sample = ", ".join(f"{k!r}: {type(obj[k]).__name__}" for k in bad[:4])
        raise ConvertError(
            f"{where} is not a state dict: {len(bad)} of {len(obj)} entries are not tensors ({sample}); "
            f"pick the sub-dict holding the weights with --key (tried {', '.join(SUBDICT_KEYS)})"
        )
    return _strip_prefixes(dict(obj)), (".".join(picked) or None)
