"""`run_bench`: one model, every method, measured side by side (see the package docstring)."""
from __future__ import annotations

import os

import torch

from .config import BenchConfig, check_config
from .._common.dist import setup_distributed
from .._common.progress import ProgressBar
from .errors import BenchInputError
from .install import validate_method
from .machine import choose_threads
from .table import latency_noise
from .measure import measure
from .meta import run_meta
from .calibrated import check_calibration_seeds
from .results import BenchResult
from .rows import build_rows
from .runners import RunSettings, load_runner, resolve_dtype
from .specs import methods_for


def resolve_device(device: str | None, local_rank: int = 0) -> str:
    """cuda if available (this rank's GPU under torchrun), else cpu."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        device = f"cuda:{local_rank}"
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise BenchInputError("--device cuda requested but CUDA is not available")
    return device


def run_bench(config: BenchConfig, progress: bool = False, console=None) -> BenchResult:
    """Run the benchmark; raises BenchInputError on bad input (before any heavy work)."""
    check_config(config)
    specs = methods_for(config.model, config.methods)
    check_calibration_seeds(specs, config.seeds)
    device_type = torch.device(config.device).type if config.device else ("cuda" if torch.cuda.is_available() else "cpu")
    dist = setup_distributed(device_type)
    try:
        device = resolve_device(config.device, dist.local_rank)
        threads, threads_why = config.threads, "--threads"
        if threads is None and torch.device(device).type == "cpu":
            threads, threads_why = choose_threads(dist.local_world_size)
            threads_why += "; --threads N to choose"
        if threads is not None:
            torch.set_num_threads(threads)
        settings = RunSettings(
            steps=config.steps, scheduler=config.scheduler, resolution=config.resolution, frames=config.frames,
            batch=config.batch, cfg_scale=config.cfg_scale, dtype=resolve_dtype(config.dtype), device=device,
            loop=config.loop,
        )
        runner = load_runner(config.model, settings)
        unavailable = {s.label: validate_method(s, runner) for s in specs}
        seeds = list(config.seeds)[dist.rank :: dist.world_size]
        prepared = {seed: runner.prepare(seed) for seed in seeds}
        n_ok = sum(v is None for v in unavailable.values())
        timed = config.repeats * len(seeds) * (2 * max(0, n_ok - 1) if config.order == "paired" else n_ok)
        total = (1 + max(0, config.warmup - 1)) * n_ok + timed
        bar = ProgressBar("[bold]{task.description}", total if seeds else 0, enabled=progress and dist.is_main, console=console)
        with bar:
            local = measure(specs, runner, seeds, prepared, config, bar, device, unavailable)
        gathered = dist.gather({"rank": dist.rank, "seeds": seeds, "methods": local})
        if dist.rank != 0:
            return BenchResult(rows=[], meta={"rank": dist.rank}, rank=dist.rank)
        timesteps = runner.timesteps()
        rows = build_rows(specs, gathered, runner.label, timesteps)
        meta = run_meta(config, runner, dist.world_size, threads, device, rows, timesteps)
        meta["threads_why"] = threads_why
        result = BenchResult(rows=rows, meta=meta, rank=0)
        noise = latency_noise(result)
        meta["latency_noise"] = None if noise is None else {"iqr_over_median": noise[0], "method": noise[1]}
        return result
    finally:
        dist.close()
