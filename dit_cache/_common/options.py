"""Option values given as text (``--methods fora:interval=3``, ``--config depth=12``, ``--dtype
bf16``), parsed one way everywhere."""
from __future__ import annotations

import json
import re
from typing import Any

import torch

DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}  # fmt: skip
DEVICE_NAME = re.compile(r"cpu|cuda(:\d+)?")  # the devices the tooling runs on (--device)
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


def parse_dtype(value, error: type[Exception] = ValueError) -> torch.dtype:
    """A torch float dtype from its name (``float32``/``fp32``, ``float16``/``fp16``/``half``,
    ``bfloat16``/``bf16``) or itself; `error` is raised for anything else."""
    if isinstance(value, torch.dtype) and value in DTYPES.values():
        return value
    if isinstance(value, str) and value.lower() in DTYPES:
        return DTYPES[value.lower()]
    raise error(f"unknown dtype {value!r}; use one of float32, float16, bfloat16")
