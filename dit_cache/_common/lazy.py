"""Lazy public names for package `__init__`s (PEP 562): the package lists what it exports and
from which module; a module is imported on first access only, so `import dit_cache` and the
`ditcache` command line do not import torch and diffusers before they need them."""
from __future__ import annotations

import importlib
from typing import Callable


def lazy_exports(package: str, exports: dict[str, str], namespace: dict) -> Callable[[str], object]:
    """A module `__getattr__` for `package`: `exports` maps a public name to its module
    (relative, e.g. ``".api"``; ``"."+name`` for a sub-module exported as itself). The value is
    cached in the package's `namespace` on first access."""

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(exports[name], package)
        value = module if exports[name] == f".{name}" else getattr(module, name)
        namespace[name] = value
        return value

    return __getattr__
