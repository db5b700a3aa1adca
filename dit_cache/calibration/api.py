"""`dit_cache.calibrate`: a static per-step plan for one model, scheduler and step count.

1. Full generations on calibration seeds (disjoint from any evaluation seed) with a `Prober`
   riding along: per step, every cached action at every cache age, teacher-forced, and the
   scheduler's local gain (probe.py).
2. A dynamic program picks, per step, the action of least predicted latent error within the
   FLOP budget (search.py), for a few candidate error models (gain-weighted, unweighted, one
   action kind only).
3. Each candidate runs for real on the calibration seeds; the one whose final output is
   closest to the full output (mean PSNR) is returned.
Cost: the full generations, the probes and the candidate runs, reported in full generations.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .._common.progress import ProgressBar
from ..adapters.family import set_pipeline_timesteps
from ..api import patch, unpatch
from ..methods.plan import StepPlanConfig, parse_action
from ..runtime.model_id import config_hash
from ..runtime.patch_state import get_state, resolve_model
from ..runtime.registry import get_adapter
from ..schedule_file import save_schedule
from .probe import Prober, StepGain, output_tensor
from .search import plan_cost, predicted_error, search

#: Calibration seeds: far from the seeds benchmarks and examples use (0, 1, 2, ...).
CALIBRATION_SEEDS = (1_000_000, 1_000_001)
#: what a speedup is counted in: transformer FLOPs, or the calls' measured time here
COSTS = ("flops", "latency")


@dataclass
class Calibration:
    """What `calibrate` found: the plan (a config for `patch`) and how it was measured."""

    config: StepPlanConfig
    flop_ratio: float  # the plan's transformer FLOPs / an all-full run's
    psnr: float  # mean PSNR of the final outputs vs full, on the calibration seeds
    report: dict[str, Any] = field(default_factory=dict)
    scheduler: Any = None

    @property
    def ideal_speedup(self) -> float:
        return 1.0 / self.flop_ratio

    @property
    def pattern(self) -> str:
        return " ".join(self.config.plan)

    def save(self, path) -> Any:
        """Write the schedule file (`patch(model, schedule=path)` reads it)."""
        return save_schedule(path, self.config, scheduler=self.scheduler, flop_ratio=self.flop_ratio,
                             calibration=self.report)

    def __repr__(self) -> str:
        return (f"<dit-cache calibration: {len(self.config.plan)} steps, ideal {self.ideal_speedup:.2f}x, "
                f"{self.psnr:.1f} dB on calibration seeds: {self.pattern}>")


def default_actions(model) -> list[str]:
    """Skip-Cache at the depth-scaled k and twice it, residual reuse of the whole stack and after
    k and 2k blocks, and FORA reuse."""
    adapter = get_adapter(model)
    units = adapter.units(model)
    k0 = adapter.defaults.shallow_for(len(units))
    out = [f"S{k}" for k in dict.fromkeys((k0, 2 * k0)) if k <= adapter.max_shallow(model)]
    if all(len(u) == 1 for u in units):
        out += [f"R{k}" for k in dict.fromkeys((0, k0, 2 * k0)) if k < len(units)]
    if adapter.reuse_sites(model):
        out.append("A")
    return out


def _psnr(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Mean PSNR per image (frame), the reference image's value range as data range (as the bench)."""
    from ..bench.fidelity import fidelity

    values = fidelity(out, ref)["psnr"]
    return sum(min(v, 100.0) for v in values) / len(values)


def _pipeline_generate(pipe, steps: int, kwargs: dict) -> Callable[[int], torch.Tensor]:
    from ..adapters.family import spec_for_model

    latent = spec_for_model(pipe.transformer).pipeline_latent_output

    def generate(seed: int) -> torch.Tensor:
        device = getattr(pipe, "_execution_device", None) or "cpu"
        result = pipe(num_inference_steps=steps, generator=torch.Generator(device=device).manual_seed(seed),
                      output_type="latent" if latent else "pt", **kwargs)
        for name in ("images", "frames"):
            if hasattr(result, name):
                return getattr(result, name)
        return result[0]

    return generate


def calibrate(model_or_pipeline, speedup: float | None = 2.0, num_inference_steps: int = 20, scheduler=None, *,
              generate: Callable[[int], torch.Tensor] | None = None, max_error: float | None = None,
              seeds=CALIBRATION_SEEDS, actions=None, max_age: int = 4, cost: str = "flops", install=None,
              uninstall=None, long_skips: bool = False, progress: bool = True, **pipeline_kwargs) -> Calibration:
    """A calibrated per-step plan for `num_inference_steps` steps of `scheduler`.

    Give a pipeline (its scheduler is used; `pipeline_kwargs` are passed to its calls, e.g.
    ``class_labels=[1, 2]`` or ``prompt="..."``), or a bare model with ``scheduler`` and
    ``generate(seed) -> output`` (one whole sampling run with that scheduler). ``speedup``: the
    speedup to reach, in transformer FLOPs (``cost="flops"``) or in the calls' measured time on
    this machine (``cost="latency"``: actions whose time share exceeds their FLOP share, such as
    FORA reuse on small models, are priced as they run); or ``max_error``: the largest final-output error (RMSE as a
    share of the output's value range, so 0.05 is 26 dB PSNR) for the fastest plan. `seeds`
    must be disjoint from any seed you evaluate on. `install(config)` / `uninstall()` patch and
    unpatch the model (default `dit_cache.patch` / `unpatch`; a model trained with long-skip
    adapters needs them loaded: pass ``long_skips=True`` and an `install` that loads them)."""
    model = resolve_model(model_or_pipeline)
    is_pipe = model_or_pipeline is not model
    _check_args(speedup, max_error, num_inference_steps, seeds, max_age)
    if cost not in COSTS:
        raise ValueError(f"cost must be one of {COSTS} (what the speedup is counted in), got {cost!r}")
    scheduler = scheduler if scheduler is not None else getattr(model_or_pipeline, "scheduler", None)
    if scheduler is None:
        raise ValueError("pass scheduler=... (the diffusers scheduler generate() steps) with a bare model")
    if generate is None:
        if not is_pipe:
            raise ValueError("pass generate=callable(seed) -> output (one sampling run of the model) with a bare model, "
                             "or give a pipeline")
        generate = _pipeline_generate(model_or_pipeline, num_inference_steps, pipeline_kwargs)
    if install is None:
        if get_state(model) is not None:
            raise ValueError(f"this {type(model).__name__} is already patched: unpatch it before calibrating")
        install, uninstall = (lambda cfg: patch(model_or_pipeline, cfg)), (lambda: unpatch(model))
    actions = list(actions) if actions is not None else default_actions(model)
    set_pipeline_timesteps(model, scheduler, num_inference_steps)
    timesteps = tuple(float(t) for t in scheduler.timesteps)
    n = len(timesteps)
    base = dict(timesteps=timesteps, model_class=type(model).__name__, config_hash=config_hash(model),
                scheduler_class=type(scheduler).__name__, long_skips=long_skips)
    started = time.perf_counter()
    refs, prober, gain = _probe_run(model, scheduler, generate, seeds, actions, max_age, n, base, install, uninstall, progress)
    full = prober.flops["F"]
    flop_costs = {"F": 1.0, **{a: prober.flops[a] / full for a in actions}}
    time_costs = prober.time_shares()
    overhead = prober.overhead_share()
    costs = flop_costs if cost == "flops" else {"F": 1.0, **{a: time_costs[a] for a in actions}}
    table, weights = prober.table(), [g * g for g in gain.mean_gains(n)]
    spent = n * len(seeds) + prober.probe_flops / full  # in model calls of a full step
    candidates = _candidates(n, costs, table, weights, max_age, speedup, max_error,
                             overhead if cost == "latency" else 0.0)
    tried = []
    with ProgressBar("calibrate: candidate plans", len(candidates), enabled=progress) as bar:
        for label, plan in candidates:
            config = StepPlanConfig(plan=plan.actions, **base)
            psnr = _evaluate(config, generate, seeds, refs, install, uninstall)
            spent += plan_cost(plan.actions, flop_costs) * n * len(seeds)
            tried.append({"candidate": label, "plan": list(plan.actions), "flop_ratio": plan_cost(plan.actions, flop_costs),
                          "time_ratio": (plan_cost(plan.actions, time_costs) + overhead) / (1 + overhead),
                          "predicted": plan.predicted, "psnr": psnr})
            bar.update(advance=1)
    best = _choose(tried, max_error, "flop_ratio" if cost == "flops" else "time_ratio")
    report = {
        "seeds": list(seeds), "cost": cost, "actions": flop_costs, "action_time_shares": time_costs,
        "step_overhead_share": overhead, "max_age": max_age,
        "target": {"speedup": speedup, "max_error": max_error},
        "psnr": best["psnr"], "error": 10 ** (-best["psnr"] / 20), "predicted": best["predicted"],
        "candidates": tried, "step_gain": gain.mean_gains(n),
        "cost_full_generations": spent / (n * len(seeds)), "seconds": time.perf_counter() - started,
    }
    config = StepPlanConfig(plan=tuple(best["plan"]), **base)
    return Calibration(config=config, flop_ratio=best["flop_ratio"], psnr=best["psnr"], report=report, scheduler=scheduler)


def _check_args(speedup, max_error, steps, seeds, max_age) -> None:
    if (speedup is None) == (max_error is None):
        raise ValueError("give exactly one of speedup (e.g. 2.0) or max_error (e.g. 0.05)")
    if speedup is not None and (isinstance(speedup, bool) or not isinstance(speedup, (int, float)) or not speedup > 1.0
                                or not math.isfinite(speedup)):
        raise ValueError(f"speedup must be a number > 1 (a FLOP-ideal speedup such as 2.0), got {speedup!r}")
    if max_error is not None and (isinstance(max_error, bool) or not isinstance(max_error, (int, float))
                                  or not 0 < max_error < 1):
        raise ValueError(f"max_error must be in (0, 1) (RMSE as a share of the value range), got {max_error!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise ValueError(f"num_inference_steps must be an integer >= 2, got {steps!r}")
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds):
        raise ValueError(f"seeds must be a non-empty list of integers, got {seeds!r}")
    if isinstance(max_age, bool) or not isinstance(max_age, int) or max_age < 1:
        raise ValueError(f"max_age must be an integer >= 1, got {max_age!r}")


def _probe_run(model, scheduler, generate, seeds, actions, max_age, n, base, install, uninstall, progress):
    """Full generations of every seed with the prober riding along: (final outputs by seed, prober, gain)."""
    for a in actions:
        parse_action(a)
    install(StepPlanConfig(plan=("F",) * n, keep=tuple(actions), **base))
    try:
        prober = Prober(model, get_state(model), actions, max_age)
        gain = StepGain(scheduler)
        refs = {}
        try:
            with ProgressBar("calibrate: probing full runs", len(seeds), enabled=progress) as bar:
                for seed in seeds:
                    gain.new_generation()
                    with torch.no_grad():
                        refs[seed] = generate(seed).detach().float().cpu()
                    bar.update(advance=1)
        finally:
            prober.remove()
            gain.remove()
    finally:
        uninstall()
    if "F" not in prober.flops:
        raise RuntimeError("calibration saw no call of the model: does generate() run it?")
    return refs, prober, gain


def _candidates(n, costs, table, weights, max_age, speedup, max_error, overhead=0.0):
    """Plans for each error model and budget. `overhead`: the loop's time per step outside the
    model, as a share of a full call: a time budget 1/s of the whole run leaves the model calls
    (1 + overhead) / s - overhead."""
    kinds = {a: parse_action(a)[0] for a in costs if a != "F"}
    variants = [("gain-weighted", weights, costs), ("unweighted", [1.0] * n, costs)]
    for kind in sorted(set(kinds.values())):
        only = {"F": 1.0, **{a: c for a, c in costs.items() if kinds.get(a) == kind}}
        variants.append((f"{kind} only", weights, only))
    out, seen = [], set()
    for label, w, c in variants:
        speedups = (1.25, 1.5, 2.0, 2.5, 3.0, 4.0) if max_error is not None else (speedup,)
        budgets = [b for b in ((1 + overhead) / s - overhead for s in speedups) if b > 0]
        for budget in budgets:
            try:
                plan = search(n, c, table, w, max_age, budget=budget)
            except ValueError:
                continue
            if plan.cost > budget + 1e-9 or plan.actions in seen:
                continue
            seen.add(plan.actions)
            out.append((label, type(plan)(plan.actions, predicted_error(plan.actions, table, weights), plan.cost)))
    if not out:
        raise ValueError(f"no plan reaches a speedup of {speedup}x with these actions within {max_age} steps of a "
                         "full step: lower the speedup, or raise max_age")
    return out


def _evaluate(config, generate, seeds, refs, install, uninstall) -> float:
    install(config)
    try:
        with torch.no_grad():
            values = [_psnr(generate(seed).detach().float().cpu(), refs[seed]) for seed in seeds]
    finally:
        uninstall()
    return sum(values) / len(values)


def _choose(tried: list[dict], max_error: float | None, ratio: str) -> dict:
    if max_error is None:
        return max(tried, key=lambda c: (c["psnr"], -c[ratio]))
    floor = -20 * math.log10(max_error)
    ok = [c for c in tried if c["psnr"] >= floor]
    if not ok:
        return max(tried, key=lambda c: c["psnr"])
    return min(ok, key=lambda c: (c[ratio], -c["psnr"]))
