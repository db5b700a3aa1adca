"""What a benchmark runs: a diffusers pipeline (pipeline.py), the bare transformer in its
family's sampling loop (loop.py) or a pixel-space zoo model (zoo.py); load.py picks one."""
from .base import VAE_FACTOR, Runner, RunSettings, resolve_dtype
from .load import check_model_name, load_runner
from .loop import TransformerRunner
from .pipeline import PipelineRunner
from .zoo import ZooRunner, load_zoo_runner

__all__ = [
    "VAE_FACTOR",
    "Runner",
    "RunSettings",
    "resolve_dtype",
    "check_model_name",
    "load_runner",
    "TransformerRunner",
    "PipelineRunner",
    "ZooRunner",
    "load_zoo_runner",
]
