"""`dit_cache.bench`: speed, FLOPs, memory and fidelity of every cache method, side by side.

    from dit_cache.bench import BenchConfig, run_bench
    result = run_bench(BenchConfig(model="tiny-dit", methods=["none", "skip-dit", "fora"], steps=10))
    result.rows          # one dict per method (see ROW_KEYS)
    result.write_json("bench.json"); result.write_csv("bench.csv"); result.plot("bench.png")

What one run does (methods in the order given; `unpatched` and `none` are always added first):

1. per method: install it (``dit_cache.patch`` for presets; diffusers' hooks for the peers),
   run one *instrumented* generation on the first seed, untimed: FLOPs
   (`torch.utils.flop_counter.FlopCounterMode`), peak memory, the step pattern (it doubles as
   the first warm-up generation), then ``warmup - 1`` more untimed generations; remove it;
2. timed generations, ``repeats`` per seed and method. ``order="interleaved"`` (default) runs
   them in rounds, each round installing every method in turn (in a new seeded order after the
   first round) for one generation per seed, so drift of a shared machine hits every method alike;
   ``"sequential"`` runs all of a method's repeats in one installation;
3. fidelity of each seed's final latents against the ``unpatched`` latents of the same seed.

Removing a method restores the model exactly (dit-cache's ``unpatch``; the peers' hooks,
registries and instance ``forward`` attributes are deleted). After every installation a
two-step generation runs untimed, so that what a method builds on its first calls (Skip-Cache's
fresh adapters fold their weights, caches and the allocator get their memory) is not timed.

Speedup is against ``none`` (patched, step tracking on, nothing cached); ideal speedup is
``flops(none) / flops(method)``; efficiency = speedup / ideal speedup. The ``unpatched`` row
shows what patching itself costs.

Scale-out: under ``torchrun`` (``WORLD_SIZE > 1``) the seeds are sharded across ranks
(``seeds[rank::world]``; gloo on CPU, nccl on CUDA), every rank measures its own seeds and rank 0
gathers all rows (``gather_object``) and reports. The cache schedules are static (a step's
decision depends only on its index and timestep), so ranks never need to talk during a
generation.
"""
from __future__ import annotations

import csv
import dataclasses
import datetime
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .specs import (
    UNPATCHED,
    BenchInputError,
    MethodSpec,
    PeerUnavailable,
    apply_method,
    check_method_names,
    default_methods,
    parse_methods,
    validate_method,
)
from .metrics import fidelity, instrumented_run, latency_stats, mean_or_none, mean_psnr
from .runners.base import RunSettings, load_runner, resolve_dtype

__all__ = [
    "BenchConfig", "BenchResult", "SuiteResult", "run_bench", "ROW_KEYS", "DEFAULT_MODEL", "DEFAULT_SUITE",
    "BenchInputError", "render_table",
]

#: The embedded default (``ditcache bench`` with no arguments): the trained zoo's vanilla DiT
#: (FORA, PAB, Skip-Cache with untrained adapters) and its retrofit (Skip-Cache with trained
#: adapters), side by side; see dit_cache.zoo.
DEFAULT_SUITE = ("mnist-dit", "mnist-dit-retrofit")
DEFAULT_MODEL = DEFAULT_SUITE[0]
DEFAULT_STEPS = 20
ZOO_DEFAULT_BATCH = 20  # 2 samples per digit class per seed

#: Methods benchmarked on a zoo model when none are given.
ZOO_DEFAULT_METHODS = {
    "mnist-dit": ["skip-dit-2", "fora-2", "fora-3", "pab-236", "pab-469"],
    "mnist-dit-retrofit": ["skip-dit-2", "skip-dit-3", "skip-dit-4"],
    "mnist-skip-dit": ["skip-dit-2", "skip-dit-3", "skip-dit-4"],
    "mnist-latte": ["skip-dit-2", "skip-dit-3", "fora-2", "pab-236", "pab-469"],
}

#: Keys every row carries (JSON and CSV).
ROW_KEYS = (
    "model", "method", "preset", "kind", "status", "config",
    "latency_s", "latency_iqr_s", "latency_q1_s", "latency_q3_s", "latency_min_s", "n_timed",
    "speedup", "flops", "transformer_flops", "ideal_speedup", "efficiency",
    "peak_mem_bytes", "state_bytes", "activation_peak_bytes", "mem_overhead_bytes",
    "full_steps", "cached_steps", "pattern",
    "psnr", "ssim", "max_abs_err", "n_images", "fid_mnist", "class_acc", "n_quality", "background_cpu",
)


class MissingDependency(RuntimeError):
    """An optional dependency a requested output needs is not installed."""


@dataclass
class BenchConfig:
    model: str = DEFAULT_MODEL
    methods: list[str] | None = None  # None: default_methods()
    steps: int = DEFAULT_STEPS
    scheduler: str | None = None
    resolution: int | None = None
    frames: int | None = None
    batch: int = 1
    cfg_scale: float | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    dtype: str = "float32"
    repeats: int = 3
    warmup: int = 1
    threads: int | None = None
    device: str | None = None  # None: cuda if available else cpu
    loop: bool = False
    flops: bool = True
    memory: bool = True
    max_background: float | None = None  # redo a timed run if other processes used more CPU
    order: str = "interleaved"  # timed runs: round-robin over methods, or "sequential"
    command: list[str] | None = None  # recorded in the JSON


# ------------------------------------------------------------------------------------------
# Distributed
# ------------------------------------------------------------------------------------------


class _Dist:
    def __init__(self, rank: int = 0, world: int = 1, local_rank: int = 0, local_world: int = 1, owned: bool = False):
        self.rank, self.world, self.local_rank, self.local_world, self.owned = rank, world, local_rank, local_world, owned

    @classmethod
    def from_env(cls, device_type: str) -> "_Dist":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as dist

        owned = False
        if device_type == "cuda":  # nccl's gather_object sends from the current device
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
            owned = True
        return cls(
            rank=dist.get_rank(),
            world=dist.get_world_size(),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
            local_world=int(os.environ.get("LOCAL_WORLD_SIZE", str(dist.get_world_size()))),
            owned=owned,
        )

    def gather(self, obj: Any) -> list[Any] | None:
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world if self.rank == 0 else None
        dist.gather_object(obj, out, dst=0)
        return out

    def close(self) -> None:
        if self.owned:
            import torch.distributed as dist

            dist.destroy_process_group()


# ------------------------------------------------------------------------------------------
# Background CPU load (Linux): how much of the machine other processes used during a run
# ------------------------------------------------------------------------------------------


def _machine_jiffies() -> tuple[int, int] | None:
    try:
        with open("/proc/stat", encoding="ascii") as f:
            vals = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    return sum(vals) - idle, sum(vals)


class _BackgroundProbe:
    def __enter__(self):
        self.j0, self.t0 = _machine_jiffies(), os.times()
        return self

    def __exit__(self, *exc):
        j1, t1 = _machine_jiffies(), os.times()
        self.share = None
        if self.j0 is None or j1 is None or j1[1] == self.j0[1]:
            return
        hz = os.sysconf("SC_CLK_TCK")
        busy = (j1[0] - self.j0[0]) / hz
        total = (j1[1] - self.j0[1]) / hz
        mine = (t1.user - self.t0.user) + (t1.system - self.t0.system)
        self.share = max(0.0, busy - mine) / max(total, 1e-9)


# ------------------------------------------------------------------------------------------
# Running
# ------------------------------------------------------------------------------------------


def _resolve_device(device: str | None, dist_local_rank: int = 0) -> str:
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        device = f"cuda:{dist_local_rank}"
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise BenchInputError("--device cuda requested but CUDA is not available")
    return device


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class _Progress:
    """A rich progress bar on rank 0, or nothing."""

    def __init__(self, enabled: bool, total: int, console=None):
        self.bar = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                console=console, transient=False,
            )
            self.bar.start()
            self.task = self.bar.add_task("bench", total=total)

    def update(self, description: str | None = None, advance: int = 0) -> None:
        if self.bar is not None:
            kwargs = {"description": description} if description else {}
            self.bar.update(self.task, advance=advance, **kwargs)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def embedded_default_methods() -> list[str]:
    """`ditcache bench` with no arguments: the default methods plus Skip-Cache with 2 shallow
    blocks at each end (DiT-XL/2's k=4 of 28 blocks, scaled to DiT-S/2's 12)."""
    methods = default_methods()
    at = methods.index("skip-dit") + 1 if "skip-dit" in methods else len(methods)
    return [*methods[:at], "skip-dit:shallow=2", *methods[at:]]


def _specs(config: BenchConfig) -> list[MethodSpec]:
    if config.methods:
        items = config.methods
    elif config.model in ZOO_DEFAULT_METHODS:
        items = ZOO_DEFAULT_METHODS[config.model]
    elif config.model == "dit-s-2":
        items = embedded_default_methods()
    else:
        items = default_methods()
    specs = parse_methods(items)
    if not specs:
        raise BenchInputError("no methods given")
    check_method_names(specs)
    specs = [s for s in specs if s.name != UNPATCHED or s.options]
    if any(s.name == UNPATCHED for s in specs):
        raise BenchInputError("`unpatched` takes no options")
    out = [MethodSpec(UNPATCHED, {}, UNPATCHED)]
    if not any(s.label == "none" for s in specs):
        out.append(MethodSpec("none", {}, "none"))
    return out + specs


def _check_config(config: BenchConfig) -> None:
    for name in ("repeats",):
        if getattr(config, name) < 1:
            raise BenchInputError(f"--{name} must be >= 1, got {getattr(config, name)}")
    if config.warmup < 0:
        raise BenchInputError(f"--warmup must be >= 0, got {config.warmup}")
    if not config.seeds:
        raise BenchInputError("--seeds needs at least one seed")
    if len(set(config.seeds)) != len(config.seeds):
        raise BenchInputError(f"--seeds has duplicates: {config.seeds}")
    if config.order not in ("interleaved", "sequential"):
        raise BenchInputError(f"order must be 'interleaved' or 'sequential', got {config.order!r}")
    if config.threads is not None and config.threads < 1:
        raise BenchInputError(f"--threads must be >= 1, got {config.threads}")


class _Method:
    """One method's measurements on this rank (plain Python data in `local`, gatherable)."""

    def __init__(self, spec: MethodSpec):
        self.spec = spec
        self.local: dict[str, Any] = {"label": spec.label, "status": "ok", "samples": [], "background": []}
        self.outputs: dict[int, torch.Tensor] = {}

    @property
    def ok(self) -> bool:
        return self.local["status"] == "ok"

    def fail(self, err: BaseException) -> None:
        """A peer that cannot run on this model: an `n/a: reason` row, not a crash."""
        if isinstance(err, PeerUnavailable):
            self.local["status"] = f"n/a: {err}"
        else:
            msg = str(err).strip().splitlines()[0] if str(err).strip() else ""
            self.local["status"] = f"n/a: {type(err).__name__}: {msg}"[:200]
        self.local["samples"], self.local["background"] = [], []
        self.outputs.clear()


class _installed:
    """`with _installed(method, runner) as applied:` - install, yield, always remove; peer
    failures (at install or while running) mark the method n/a instead of raising."""

    def __init__(self, method: _Method, runner):
        self.method, self.runner, self.applied = method, runner, None

    def __enter__(self):
        import warnings

        self.warnings = warnings.catch_warnings()
        self.warnings.__enter__()
        if self.method.spec.kind == "peer":  # e.g. FasterCache's torch.meshgrid indexing warning
            warnings.simplefilter("ignore", UserWarning)
        try:
            self.applied = apply_method(self.method.spec, self.runner)
        except PeerUnavailable as err:
            self.method.fail(err)
        return self.applied

    def __exit__(self, exc_type, exc, tb):
        try:
            if self.applied is not None:
                self.applied.remove()
        finally:
            self.warnings.__exit__(None, None, None)
        if exc is not None and isinstance(exc, Exception) and (
            isinstance(exc, PeerUnavailable) or self.method.spec.kind == "peer"
        ):
            self.method.fail(exc)
            return True  # swallowed: reported as an n/a row
        return False


def _prepare_phase(method: _Method, runner, seeds, prepared, config, progress, device) -> None:
    """Instrumented generation (FLOPs, memory, pattern) + extra warm-up generations."""
    spec, local = method.spec, method.local
    with _installed(method, runner) as applied:
        if applied is None:
            return
        local["config"] = applied.config_text()
        if not seeds:
            return
        first = prepared[seeds[0]]
        applied.before_generation()
        progress.update(f"{spec.label}: instrumented run")
        inst = instrumented_run(
            lambda: runner.generate(first), runner.transformer, runner.modules(), device,
            count_flops=config.flops, measure_memory=config.memory,
        )
        stats = applied.stats()
        progress.update(advance=1)
        local.update(
            flops=inst.flops, call_flops=inst.call_flops, peak_mem_bytes=inst.peak_bytes,
            state_bytes=inst.state_bytes, activation_peak_bytes=inst.activation_peak_bytes,
            mem_method=inst.memory_method,
        )
        if stats is not None:
            local.update(
                full_steps=stats["full_steps"], cached_steps=stats["cached_steps"], pattern=stats["pattern"],
                cached_bytes=(stats.get("cached") or {}).get("cached_bytes"),
            )
        for _ in range(max(0, config.warmup - 1)):
            progress.update(f"{spec.label}: warm-up")
            applied.before_generation()
            runner.generate(first)
            progress.update(advance=1)


def _timed_runs(method: _Method, runner, seeds, prepared, config, progress, device, rounds: int, tag: str) -> None:
    """`rounds` timed generations per seed with the method installed once."""
    spec, local = method.spec, method.local
    with _installed(method, runner) as applied:
        if applied is None:
            return
        applied.before_generation()
        runner.prime(prepared[seeds[0]])  # first call after installing: untimed
        for _ in range(rounds):
            for seed in seeds:
                progress.update(f"{spec.label}: seed {seed}, {tag}")
                for attempt in range(3):
                    applied.before_generation()
                    _sync(device)
                    with _BackgroundProbe() as probe:
                        t0 = time.perf_counter()
                        out = runner.generate(prepared[seed])
                        _sync(device)
                        elapsed = time.perf_counter() - t0
                    share = probe.share
                    noisy = config.max_background is not None and share is not None and share > config.max_background
                    if not noisy or attempt == 2:
                        break  # else another process took the CPU: run again (at most 3 tries)
                local["samples"].append(elapsed)
                local["background"].append(share)
                method.outputs[seed] = out
                progress.update(advance=1)


def _fidelity(method: _Method, references: dict[int, torch.Tensor]) -> None:
    psnr, ssim, max_abs = [], [], 0.0
    for seed, out in method.outputs.items():
        fid = fidelity(out, references[seed])
        psnr += fid["psnr"]
        ssim += fid["ssim"]
        max_abs = max(max_abs, fid["max_abs_err"])
    method.local.update(psnr_list=psnr, ssim_list=ssim, max_abs_err=max_abs)


def _measure(specs, runner, seeds, prepared, config, progress, device, unavailable) -> list[dict]:
    methods = [_Method(spec) for spec in specs]
    for m in methods:
        if unavailable[m.spec.label] is not None:
            m.local["status"] = f"n/a: {unavailable[m.spec.label]}"
    for m in methods:  # phase 1: instrumented + warm-up generations
        if m.ok:
            _prepare_phase(m, runner, seeds, prepared, config, progress, device)
    if seeds:  # phase 2: timed generations
        if config.order == "interleaved":
            import random

            for r in range(config.repeats):
                live = [m for m in methods if m.ok]
                if r:  # a new (seeded) order each round: no method always follows the same one
                    random.Random(r).shuffle(live)
                for m in live:
                    _timed_runs(m, runner, seeds, prepared, config, progress, device, 1, f"round {r + 1}/{config.repeats}")
        else:
            for m in methods:
                if m.ok:
                    _timed_runs(m, runner, seeds, prepared, config, progress, device, config.repeats, "timed runs")
    # phase 3: fidelity against the reference outputs of the same seeds: `unpatched` (first),
    # or `none` for a model whose trained long-skip adapters are part of its function
    ref = methods[1] if runner.adapter_fusion else methods[0]
    for m in methods:
        if m.ok and m.outputs:
            if ref.outputs:
                _fidelity(m, ref.outputs)
            m.local.update(runner.quality(m.outputs))
    return [m.local for m in methods]


def run_bench(config: BenchConfig, progress: bool = False, console=None) -> "BenchResult":
    """Run the benchmark; raises BenchInputError on bad input (before any heavy work)."""
    _check_config(config)
    specs = _specs(config)
    device_type = torch.device(config.device).type if config.device else ("cuda" if torch.cuda.is_available() else "cpu")
    dist = _Dist.from_env(device_type)
    try:
        device = _resolve_device(config.device, dist.local_rank)
        threads = config.threads
        if threads is None and dist.world > 1:
            threads = max(1, (os.cpu_count() or 1) // max(1, dist.local_world))
        if threads is not None:
            torch.set_num_threads(threads)
        settings = RunSettings(
            steps=config.steps, scheduler=config.scheduler, resolution=config.resolution, frames=config.frames,
            batch=config.batch, cfg_scale=config.cfg_scale, dtype=resolve_dtype(config.dtype), device=device,
            loop=config.loop,
        )
        runner = load_runner(config.model, settings)
        unavailable = {s.label: validate_method(s, runner) for s in specs}
        seeds = list(config.seeds)[dist.rank :: dist.world]
        prepared = {seed: runner.prepare(seed) for seed in seeds}
        n_ok = sum(v is None for v in unavailable.values())
        per_method = 1 + max(0, config.warmup - 1) + config.repeats * len(seeds)
        bar = _Progress(progress and dist.rank == 0, per_method * n_ok if seeds else 0, console)
        try:
            local = _measure(specs, runner, seeds, prepared, config, bar, device, unavailable)
        finally:
            bar.close()
        gathered = dist.gather({"rank": dist.rank, "seeds": seeds, "methods": local})
        if dist.rank != 0:
            return BenchResult(rows=[], meta={"rank": dist.rank}, rank=dist.rank)
        timesteps = runner.timesteps()
        rows = _merge(specs, gathered, runner, timesteps)
        meta = _meta(config, runner, dist, threads, device, rows, timesteps)
        return BenchResult(rows=rows, meta=meta, rank=0)
    finally:
        dist.close()


def _hidden_state_bytes(runner) -> int:
    """Bytes of one hidden state (B, L, D) of the transformer for this run (all CFG branches
    batched: one batch of 2B)."""
    cfg = runner.transformer.config
    dim = int(cfg.num_attention_heads) * int(cfg.attention_head_dim)
    side = runner.resolution // runner.vae_factor // int(cfg.patch_size)
    tokens = side * side * (runner.frames if runner.family == "latte" else 1)
    batch = runner.s.batch * (2 if runner.cfg else 1)
    return batch * tokens * dim * torch.empty((), dtype=runner.s.dtype).element_size()


def _merge(specs, gathered, runner, timesteps) -> list[dict]:
    by_label: dict[str, list[dict]] = {s.label: [] for s in specs}
    all_seeds: list[int] = []
    for part in gathered:
        all_seeds += part["seeds"]
        for m in part["methods"]:
            by_label[m["label"]].append(m)
    rows = []
    ref_call = None
    for spec in specs:
        parts = [p for p in by_label[spec.label] if p is not None]
        status = next((p["status"] for p in parts if p["status"] != "ok"), "ok")
        measured = [p for p in parts if "flops" in p or p.get("samples")]
        first = measured[0] if measured else {}
        samples = [x for p in parts for x in p.get("samples", [])]
        background = [x for p in parts for x in p.get("background", []) if x is not None]
        psnr = [x for p in parts for x in p.get("psnr_list", [])]
        ssim = [x for p in parts for x in p.get("ssim_list", [])]
        peaks = [p["peak_mem_bytes"] for p in parts if p.get("peak_mem_bytes") is not None]
        row: dict[str, Any] = {
            "model": runner.label,
            "method": spec.label,
            "preset": spec.name,
            "kind": spec.kind,
            "status": status,
            "config": next((p.get("config") for p in parts if p.get("config")), ""),
            **latency_stats(samples if status == "ok" else []),
            "n_timed": len(samples),
            "latency_samples_s": samples,
            "flops": first.get("flops"),
            "transformer_flops": sum(first["call_flops"]) if first.get("call_flops") else None,
            "peak_mem_bytes": max(peaks) if peaks else None,
            "state_bytes": first.get("state_bytes"),
            "activation_peak_bytes": max((p["activation_peak_bytes"] for p in parts if p.get("activation_peak_bytes") is not None), default=None),
            "mem_method": first.get("mem_method"),
            "cached_bytes": first.get("cached_bytes"),
            "psnr": mean_psnr(psnr) if status == "ok" else None,
            "ssim": mean_or_none(ssim) if status == "ok" else None,
            "max_abs_err": max((p["max_abs_err"] for p in parts if "max_abs_err" in p), default=None),
            "n_images": len(psnr),
            # zoo models; with several ranks FID is the mean of the ranks' FIDs (each over its seeds)
            "fid_mnist": mean_or_none([p.get("fid_mnist") for p in parts]) if status == "ok" else None,
            "class_acc": _weighted([(p.get("class_acc"), p.get("n_quality")) for p in parts]) if status == "ok" else None,
            "n_quality": sum(p.get("n_quality") or 0 for p in parts) or None,
            "seeds": sorted(s for p in gathered for s in p["seeds"]) if status == "ok" else [],
            "background_cpu": max(background) if background else None,
        }
        # full/cached steps: dit-cache's own counters; for the others, from per-call FLOPs
        # (a call is full when it costs what an unpatched call costs).
        calls = first.get("call_flops") or []
        if spec.name == UNPATCHED:
            ref_call = max(calls) if calls else None
        if "pattern" in first:
            row.update(full_steps=first["full_steps"], cached_steps=first["cached_steps"], pattern=first["pattern"])
        elif spec.name == UNPATCHED and status == "ok":
            row.update(full_steps=len(timesteps), cached_steps=0, pattern="F" * len(timesteps))
        elif calls and ref_call and len(calls) == len(timesteps):
            pattern = "".join("F" if c >= ref_call * (1 - 1e-9) else "c" for c in calls)
            row.update(full_steps=pattern.count("F"), cached_steps=pattern.count("c"), pattern=pattern)
        else:
            row.update(full_steps=None, cached_steps=None, pattern=None)
        rows.append(row)
    base = {r["preset"]: r for r in rows if r["kind"] != "peer" and r["method"] == r["preset"]}
    none, unpatched = base.get("none"), base.get(UNPATCHED)
    for row in rows:
        lat, ref_lat = row["latency_s"], none and none["latency_s"]
        row["speedup"] = ref_lat / lat if lat and ref_lat else None
        fl, ref_fl = row["flops"], none and none["flops"]
        row["ideal_speedup"] = ref_fl / fl if fl and ref_fl else None
        row["efficiency"] = row["speedup"] / row["ideal_speedup"] if row["speedup"] and row["ideal_speedup"] else None
        up = unpatched and unpatched["peak_mem_bytes"]
        row["mem_overhead_bytes"] = row["peak_mem_bytes"] - up if row["peak_mem_bytes"] is not None and up is not None else None
    return rows


def _weighted(pairs) -> float | None:
    pairs = [(v, n) for v, n in pairs if v is not None and n]
    return sum(v * n for v, n in pairs) / sum(n for _, n in pairs) if pairs else None


def _machine() -> dict:
    info = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpu_model": platform.processor() or None,
    }
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            info["mem_total_bytes"] = int(f.readline().split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _meta(config, runner, dist, threads, device, rows, timesteps) -> dict:
    import diffusers

    from .. import __version__

    by = {r["method"]: r for r in rows}
    none, unp = by.get("none"), by.get(UNPATCHED)
    summary: dict[str, Any] = {}
    if none and unp and none["latency_s"] and unp["latency_s"]:
        summary["none_vs_unpatched_latency"] = none["latency_s"] / unp["latency_s"] - 1.0
    summary["hidden_state_bytes"] = _hidden_state_bytes(runner)
    return {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": config.command if config.command is not None else sys.argv,
        "dit_cache": __version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "machine": _machine(),
        "threads": threads if threads is not None else torch.get_num_threads(),
        "world_size": dist.world,
        "device": device,
        "run": runner.describe(),
        "timesteps": timesteps,
        "seeds": list(config.seeds),
        "repeats": config.repeats,
        "warmup": config.warmup,
        "max_background": config.max_background,
        "order": config.order,
        "memory_method": next((r.get("mem_method") for r in rows if r.get("mem_method")), None),
        "flop_counter": "torch.utils.flop_counter.FlopCounterMode (+ CPU flash-attention formula)",
        "summary": summary,
        "targets": _targets(rows, summary),
    }


def _targets(rows: list[dict], summary: dict) -> list[dict]:
    """The issue's benchmark targets, evaluated on these rows (informative, never enforced)."""
    out = []
    by = {r["method"]: r for r in rows}
    if "none_vs_unpatched_latency" in summary:
        v = summary["none_vs_unpatched_latency"]
        out.append({"target": "none within 3% of unpatched latency", "value": v, "ok": abs(v) <= 0.03})
    unp = by.get(UNPATCHED)
    for r in rows:
        if r["kind"] != "dit-cache" or r["status"] != "ok":
            continue
        if r["preset"].startswith("skip-dit") and r["efficiency"] is not None:
            out.append({"target": f"{r['method']}: efficiency >= 0.90", "value": r["efficiency"], "ok": r["efficiency"] >= 0.90})
        if unp and unp["peak_mem_bytes"] and r["peak_mem_bytes"] is not None:
            bound = unp["peak_mem_bytes"] * 1.05 + summary["hidden_state_bytes"]
            out.append({
                "target": f"{r['method']}: peak memory <= unpatched + one cached hidden state + 5%",
                "value": r["peak_mem_bytes"], "bound": bound, "ok": r["peak_mem_bytes"] <= bound,
            })
    return out


# ------------------------------------------------------------------------------------------
# Results
# ------------------------------------------------------------------------------------------


def _json_safe(value):
    if isinstance(value, float):
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        if math.isnan(value):
            return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


@dataclass
class BenchResult:
    rows: list[dict]
    meta: dict
    rank: int = 0

    def row(self, method: str) -> dict:
        for r in self.rows:
            if r["method"] == method:
                return r
        raise KeyError(method)

    def to_dict(self) -> dict:
        """JSON-ready: infinite PSNR becomes the string "inf"."""
        return _json_safe({**self.meta, "rows": self.rows})

    def write_json(self, path: str) -> None:
        _write_json(self.to_dict(), path)

    def write_csv(self, path: str) -> None:
        _ensure_dir(path)
        keys = [*ROW_KEYS, "seeds", "mem_method"]
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
            writer.writeheader()
            for r in self.rows:
                writer.writerow({k: (" ".join(map(str, r[k])) if isinstance(r.get(k), list) else r.get(k)) for k in keys})

    def plot(self, path: str) -> None:
        plot_results([self], path)


@dataclass
class SuiteResult:
    """Several models benchmarked one after the other (``ditcache bench --model A B``)."""

    results: list[BenchResult]
    rank: int = 0

    def to_dict(self) -> dict:
        return {"suite": [r.to_dict() for r in self.results]}

    def write_json(self, path: str) -> None:
        _write_json(self.to_dict(), path)

    def write_csv(self, path: str) -> None:
        merged = BenchResult(rows=[r for res in self.results for r in res.rows], meta={})
        merged.write_csv(path)

    def plot(self, path: str) -> None:
        plot_results(self.results, path)


def _write_json(obj: dict, path: str) -> None:
    _ensure_dir(path)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, allow_nan=False)
        f.write("\n")


def _ensure_dir(path: str) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)


def plot_available() -> tuple[bool, str]:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False, "--plot needs matplotlib, which is not installed: pip install 'dit-cache[bench]'"
    return True, ""


def plot_result(result: BenchResult, path: str) -> None:
    plot_results([result], path)


def plot_results(results: list[BenchResult], path: str) -> None:
    """Speedup (vs `none`) against PSNR (vs the reference), one labelled point per method (and
    model, when there are several)."""
    ok, reason = plot_available()
    if not ok:
        raise MissingDependency(reason)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    several = len(results) > 1
    pts = [  # `unpatched` is the reference itself (and sits on top of `none`)
        ((f"{r['model']}: " if several else "") + r["method"], r["psnr"], r["speedup"])
        for result in results
        for r in result.rows
        if r["psnr"] is not None and r["speedup"] and r["preset"] != UNPATCHED
    ]
    finite = [p for _, p, _ in pts if math.isfinite(p)]
    top = (max(finite) + 10.0) if finite else 100.0
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, p, s in pts:
        x = p if math.isfinite(p) else top
        ax.scatter([x], [s], marker="o" if math.isfinite(p) else "D")
        ax.annotate(label + ("" if math.isfinite(p) else " (identical)"), (x, s), textcoords="offset points", xytext=(4, 4), fontsize=8)
    run = results[0].meta.get("run", {})
    if several:
        run = {**run, "model": ", ".join(r.meta.get("run", {}).get("model", "") for r in results)}
    ax.set_xlabel("PSNR vs the model's full output (dB, higher = closer)")
    ax.set_ylabel("speedup vs none (x)")
    ax.set_title(
        f"{run.get('model', '')} ({run.get('runner', '')}): {run.get('scheduler', '')} x {run.get('steps', '')} steps, "
        f"{run.get('resolution', '')} px, {run.get('dtype', '')}, {run.get('device', '')}",
        fontsize=9,
    )
    ax.axhline(1.0, color="gray", lw=0.5)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _ensure_dir(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _fmt_bytes(n) -> str:
    if n is None:
        return "-"
    return f"{n / 2**20:,.1f}"


def _fmt(x, spec: str = ".3g") -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    return format(x, spec)


def render_table(result: BenchResult, pattern_width: int = 60):
    """A rich Table of the rows (plus the schedule patterns in the caption)."""
    from rich.table import Table

    run = result.meta.get("run", {})
    title = (
        f"{run.get('model')} ({run.get('transformer_class')}, {run.get('params', 0) / 1e6:.1f}M params) - "
        f"{run.get('runner')}, {run.get('scheduler')} x {run.get('steps')} steps, {run.get('resolution')} px"
        + (f", {run.get('frames')} frames" if run.get("frames") else "")
        + f", batch {run.get('batch')}, CFG {run.get('cfg_scale')}{' (batched)' if run.get('cfg') else ' (off)'}, "
        f"{run.get('dtype')}, {run.get('device')}, {result.meta.get('threads')} threads"
    )
    table = Table(title=title, title_justify="left")
    cols = [
        ("method", "left"), ("latency s", "right"), ("IQR", "right"), ("speedup", "right"), ("GFLOPs", "right"),
        ("ideal", "right"), ("eff.", "right"), ("peak MiB", "right"), ("full/cached", "right"), ("PSNR dB", "right"),
        ("SSIM", "right"), ("max|err|", "right"),
    ]
    quality = any(r.get("fid_mnist") is not None or r.get("class_acc") is not None for r in result.rows)
    if quality:  # zoo models: FID-MNIST and class accuracy of the samples
        cols += [("FID-MNIST", "right"), ("class acc", "right")]
    for name, justify in cols:
        table.add_column(name, justify=justify, no_wrap=name == "method")
    for r in result.rows:
        if r["status"] != "ok":
            table.add_row(r["method"], f"[yellow]{r['status']}[/yellow]", *[""] * (len(cols) - 2))
            continue
        steps = f"{r['full_steps']}/{r['cached_steps']}" if r["full_steps"] is not None else "-"
        table.add_row(
            r["method"], _fmt(r["latency_s"], ".3f"), _fmt(r["latency_iqr_s"], ".3f"), _fmt(r["speedup"], ".2f"),
            _fmt(r["flops"] / 1e9 if r["flops"] is not None else None, ",.1f"), _fmt(r["ideal_speedup"], ".2f"),
            _fmt(r["efficiency"], ".2f"), _fmt_bytes(r["peak_mem_bytes"]), steps, _fmt(r["psnr"], ".1f"),
            _fmt(r["ssim"], ".4f"), _fmt(r["max_abs_err"], ".3g"),
            *([_fmt(r.get("fid_mnist"), ".2f"), _fmt(r.get("class_acc"), ".3f")] if quality else []),
        )
    lines = []
    for r in result.rows:
        p = r.get("pattern")
        if p and r["status"] == "ok":
            shown = p if len(p) <= pattern_width else p[: pattern_width - 1] + "…"
            lines.append(f"{r['method']:>24}  {shown}")
    s = result.meta.get("summary", {})
    notes = []
    if "none_vs_unpatched_latency" in s:
        notes.append(f"none vs unpatched latency: {s['none_vs_unpatched_latency'] * 100:+.1f}%")
    notes.append(f"seeds {result.meta.get('seeds')}, {result.meta.get('repeats')} timed repeats "
                 f"({result.meta.get('order')}) after {result.meta.get('warmup')} warm-up; "
                 f"world size {result.meta.get('world_size')}")
    notes.append(f"memory: {result.meta.get('memory_method')}")
    busy = max((r["background_cpu"] for r in result.rows if r.get("background_cpu") is not None), default=None)
    if busy is not None and busy > 0.25 and result.meta.get("world_size", 1) == 1:
        notes.append(
            f"[yellow]warning: other processes used up to {busy:.0%} of the CPUs during timed runs: latencies are "
            "unreliable; rerun on a quiet machine (or with --max-background 0.1)[/yellow]"
        )
    table.caption = "\n".join(["F = full step, c = cached step", *lines, *notes])
    table.caption_justify = "left"
    return table
