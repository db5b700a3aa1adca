"""Registries keyed by type: backbone adapters by model class (looked up along the MRO), cache
methods by config class.

Adding a backbone or a method registers one object; no existing if/elif is touched. The
built-in methods register themselves when `dit_cache.methods` is imported."""
from __future__ import annotations

from torch import nn

from ..adapters import BUILTIN_ADAPTERS, BackboneAdapter

_ADAPTERS: dict[type, BackboneAdapter] = {}
_METHODS: dict[type, type] = {}


def register_adapter(model_class: type[nn.Module], adapter: BackboneAdapter) -> None:
    """Teach dit-cache a new model class (or override a built-in one).

    `adapter` is a `dit_cache.adapters.BackboneAdapter` subclass instance that lists the
    model's units (blocks) and its shallow/deep pairing."""
    if not isinstance(adapter, BackboneAdapter):
        raise TypeError(f"adapter must be a dit_cache.adapters.BackboneAdapter, got {type(adapter).__name__}")
    _ADAPTERS[model_class] = adapter


def supported_models() -> list[str]:
    return [cls.__name__ for cls in _ADAPTERS]


def get_adapter(model: nn.Module) -> BackboneAdapter:
    for cls in type(model).__mro__:
        if cls in _ADAPTERS:
            return _ADAPTERS[cls]
    raise ValueError(
        f"dit-cache does not support {type(model).__name__}. Supported model classes: "
        f"{', '.join(supported_models())}. To add one, subclass dit_cache.adapters.BackboneAdapter "
        "(list its blocks as units and its long-skip pairs) and call "
        f"dit_cache.register_adapter({type(model).__name__}, YourAdapter())."
    )


def register_method(config_class: type):
    """Class decorator: `@register_method(MyConfig) class MyMethod(CacheMethod): ...`."""

    def wrap(method_class: type) -> type:
        _METHODS[config_class] = method_class
        return method_class

    return wrap


def get_method(config: object) -> type:
    try:
        return _METHODS[type(config)]
    except KeyError:
        known = ", ".join(cls.__name__ for cls in _METHODS)
        raise TypeError(
            f"no cache method is registered for {type(config).__name__}; known configs: {known}. "
            "Pass a preset name (see dit_cache.presets()) or register a method with "
            "dit_cache.register_method."
        ) from None


for _adapter in BUILTIN_ADAPTERS:
    register_adapter(_adapter.model_class, _adapter)
