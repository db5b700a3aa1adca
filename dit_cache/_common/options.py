"""Option values given as text (``--methods fora:interval=3``, ``--config depth=12``, ``--dtype
bf16``), parsed one way everywhere."""
from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

#: dtype names the options take -> the torch dtype's name (torch is imported only to resolve one)
DTYPES = {
    "float32": "float32", "fp32": "float32",
    "float16": "float16", "fp16": "float16", "half": "float16",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
}  # fmt: skip
#: the built-in schedulers (`--scheduler`; dit_cache.testing.SCHEDULERS builds them)
SCHEDULER_NAMES = ("ddim", "ddpm", "dpm++", "euler", "flow-euler")
DEVICE_NAME = re.compile(r"cpu|cuda(:\d+)?|meta")  # the devices the tooling runs on (--device; meta: FLOPs only)
_WORDS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False, "none": None, "null": None}


def parse_value(text: str) -> Any:
    """JSON (numbers, lists, objects, quoted strings), a word (true/yes/on, false/no/off,
    none/null: any case), ``a/b/c`` (a tuple, e.g. a timestep window ``100/800``), a number,
    else the text itself."""
    text = text.strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    if text.lower() in _WORDS:
        return _WORDS[text.lower()]
    if "/" in text:
        return tuple(parse_value(part) for part in text.split("/") if part != "")
    try:
        return float(text)
    except ValueError:
        return text


def format_value(value: Any) -> str:
    """The text of an option value (the inverse of `parse_value`)."""
    if isinstance(value, tuple):
        return "/".join(format_value(v) for v in value)
    return str(value).lower() if isinstance(value, bool) or value is None else str(value)


def parse_dtype(value, error: type[Exception] = ValueError, *, case_sensitive: bool = False) -> "torch.dtype":
    """A torch float dtype from its name (``float32``/``fp32``, ``float16``/``fp16``/``half``,
    ``bfloat16``/``bf16``) or itself; `error` is raised for anything else."""
    import torch

    if isinstance(value, torch.dtype) and str(value).removeprefix("torch.") in DTYPES.values():
        return value
    if isinstance(value, str):
        name = value if case_sensitive else value.lower()
        if name in DTYPES:
            return getattr(torch, DTYPES[name])
    raise error(f"unknown dtype {value!r}; use one of float32, float16, bfloat16")
