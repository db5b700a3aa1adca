"""The options of `dit_cache.convert` as text: architecture overrides (JSON file, JSON object or
``k=v[,k=v]``) and the weight dtype."""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch

from .._common.options import DTYPES, parse_dtype, parse_value
from .errors import ConvertError

CONFIG_ALIASES = {"num_attention_heads": "num_heads", "heads": "num_heads", "input_size": "sample_size"}


def _parse_config_item(item: str) -> dict:
    text = item.strip()
    if os.path.isfile(text):
        try:
            data = json.loads(Path(text).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ConvertError(f"--config file {text}: not valid JSON ({err})") from None
    elif text.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConvertError(f"--config {text!r}: not valid JSON ({err})") from None
    elif "=" in text:
        data = {}
        for pair in filter(None, (p.strip() for p in text.split(","))):
            key, sep, value = pair.partition("=")
            if not sep or not key.strip():
                raise ConvertError(f"--config {pair!r}: expected key=value")
            data[key.strip()] = parse_value(value)
    else:
        raise ConvertError(f"--config {item!r}: expected a JSON file, a JSON object or key=value[,key=value]")
    if not isinstance(data, dict):
        raise ConvertError(f"--config {item!r}: expected a JSON object, got {type(data).__name__}")
    return data


def parse_config(spec) -> dict:
    """Overrides from a dict, a JSON file / JSON object / ``k=v[,k=v]`` string, or a list of those."""
    if spec is None:
        return {}
    if isinstance(spec, Mapping):
        data = dict(spec)
    elif isinstance(spec, (str, os.PathLike)):
        data = _parse_config_item(os.fspath(spec))
    elif isinstance(spec, (list, tuple)):
        data = {}
        for item in spec:
            data.update(parse_config(item))
    else:
        raise ConvertError(f"config must be a dict, a string or a list of strings, got {type(spec).__name__}")
    return {CONFIG_ALIASES.get(k, k): v for k, v in data.items()}


def resolve_dtype(dtype, tensors: dict[str, torch.Tensor]) -> torch.dtype:
    """``dtype`` (a name or torch dtype) checked, or the tensors' one float dtype (else float32)."""
    if dtype is None:
        found = {v.dtype for v in tensors.values() if v.is_floating_point()}
        return found.pop() if len(found) == 1 else torch.float32
    try:
        return parse_dtype(dtype, case_sensitive=True)
    except ValueError:
        raise ConvertError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}") from None
