"""What identifies a model's architecture in a schedule file: its class and a hash of its config."""
from __future__ import annotations

import hashlib
import json

from torch import nn

#: config keys that name where a model came from, not what it computes
_PROVENANCE = ("_name_or_path", "_diffusers_version", "_class_name", "_use_default_values")


def config_hash(model: nn.Module) -> str:
    """16 hex digits of sha256 over the model's diffusers config (sorted JSON), provenance keys
    left out; a model without a config hashes its class name."""
    config = getattr(model, "config", None)
    items = {k: v for k, v in dict(config).items() if k not in _PROVENANCE} if config is not None else {"class": type(model).__name__}
    text = json.dumps(items, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
