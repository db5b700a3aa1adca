"""Experiment (issue 12, item 7; measured, not kept in the library): cache-aware adapter training,
long-skip adapters trained so that a cached step reproduces the full step's output, from the
model's own full trajectories (no data set).

    python benchmarks/cache_aware.py mnist-dit --steps 300 --lr 3e-3

Result (benchmarks/results/cache_aware.md): the cached-call error does not go down, so the
frontier cannot move; see there for why.

1. Full generations on training seeds record every model call: its inputs and its output.
2. Each training step takes a recorded call at step j and an age a: a full call at step j-a
   (grad on) refills the caches with the adapters as they are now, then a Skip-Cache call
   ``S<k>`` at step j (grad on) reuses them. The loss is the mean squared error of both
   outputs against the recorded ones: the cached call learns to reproduce the full output, the
   full call keeps the adapters from changing what a full step computes.
3. Only the adapters train (Adam); the model's weights are frozen. Each call is
   teacher-forced on the recorded trajectory, as calibration probes are.

Why the output level: a closed-form per-token fit of the cache point's features was tried and
made final PSNR worse (22.0 -> 21.0 dB at N=2); the output is what the sampler consumes.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from dit_cache._common.progress import ProgressBar
from dit_cache.calibration.api import _pipeline_generate, default_actions
from dit_cache.calibration.probe import output_tensor
from dit_cache.methods.plan import StepPlanConfig, parse_action
from dit_cache.runtime.adapter_io import save_adapters
from dit_cache.runtime.patch_state import get_state, resolve_model
from dit_cache.runtime.tracker import CallContext, Generation

#: Training seeds: disjoint from calibration (1000000, ...) and evaluation seeds (0, 1, ...).
TRAINING_SEEDS = (2_000_000, 2_000_001, 2_000_002, 2_000_003)
#: (full, cached) pairs the before / after error is measured on
EVAL_PAIRS = 48


@dataclass
class CacheAwareResult:
    """What `train_cache_aware` did. The trained adapters stay in the patched model."""

    actions: tuple[str, ...]
    losses: list[float] = field(default_factory=list)  # per training step
    report: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        r = self.report
        return (f"<dit-cache cache-aware adapters: {r.get('steps')} steps on {len(r.get('seeds', []))} trajectories, "
                f"cached-call error {r.get('cached_mse_before', float('nan')):.3g} -> "
                f"{r.get('cached_mse_after', float('nan')):.3g}>")


@dataclass
class _Call:
    step: int
    branch: int
    args: tuple
    kwargs: dict
    output: torch.Tensor


def _detached(value):
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, (tuple, list)):
        return type(value)(_detached(v) for v in value)
    if isinstance(value, dict):
        return {k: _detached(v) for k, v in value.items()}
    return value


class _Recorder:
    """Records every tracked call of a patched model: inputs, step, branch and output."""

    def __init__(self, model, state):
        self.state, self.calls = state, []
        self._handle = model.register_forward_hook(self._after, with_kwargs=True)

    def _after(self, module, args, kwargs, output):
        ctx = self.state.tracker.ctx
        if ctx is not None and ctx.tracked and not ctx.replay:
            self.calls[-1].append(_Call(ctx.step, ctx.branch, _detached(args), _detached(kwargs),
                                        output_tensor(output).detach()))

    def new_generation(self) -> None:
        self.calls.append([])

    def remove(self) -> None:
        self._handle.remove()


def train_cache_aware(model_or_pipeline, num_inference_steps: int = 20, scheduler=None, *,
                      generate: Callable[[int], torch.Tensor] | None = None, actions=None, seeds=TRAINING_SEEDS,
                      max_age: int = 2, steps: int = 400, lr: float = 1e-3, full_weight: float = 1.0, seed: int = 0,
                      install=None, uninstall=None, save: str | None = None, progress: bool = True,
                      **pipeline_kwargs) -> CacheAwareResult:
    """Train the long-skip adapters of `model_or_pipeline` so that Skip-Cache steps (``actions``,
    default: the depths `calibrate` uses) reproduce full steps; see the module doc.

    The model is patched for the run (`install(config)` / `uninstall()`, default
    `dit_cache.patch` with fresh, function-preserving adapters / `unpatch`; a model trained with
    long-skip adapters needs an `install` that loads them). ``save``: write the trained adapters
    there (`dit_cache.save_adapters` format: load them with ``patch(model, ..., adapters=path)``).
    `seeds` must be disjoint from the seeds you evaluate on. ``generate`` / ``scheduler`` /
    ``pipeline_kwargs``: as for `dit_cache.calibrate`."""
    model = resolve_model(model_or_pipeline)
    _check(num_inference_steps, max_age, steps, lr, full_weight, seeds)
    scheduler = scheduler if scheduler is not None else getattr(model_or_pipeline, "scheduler", None)
    if scheduler is None:
        raise ValueError("pass scheduler=... (the diffusers scheduler generate() steps) with a bare model")
    if generate is None:
        if model_or_pipeline is model:
            raise ValueError("pass generate=callable(seed) -> output (one sampling run) with a bare model, or a pipeline")
        generate = _pipeline_generate(model_or_pipeline, num_inference_steps, pipeline_kwargs)
    if install is None:
        if get_state(model) is not None:
            raise ValueError(f"this {type(model).__name__} is already patched: unpatch it before training its adapters")
        from dit_cache.api import patch, unpatch

        install, uninstall = (lambda cfg: patch(model_or_pipeline, cfg)), (lambda: unpatch(model))
    actions = tuple(actions) if actions is not None else tuple(a for a in default_actions(model) if a[0] == "S")
    if not actions or any(parse_action(a)[0] != "S" for a in actions):
        raise ValueError(f"actions must be Skip-Cache actions S<k> (the ones the adapters serve), got {actions!r}")
    scheduler.set_timesteps(num_inference_steps)
    timesteps = tuple(float(t) for t in scheduler.timesteps)
    config = StepPlanConfig(plan=("F",) * len(timesteps), timesteps=timesteps, keep=actions, long_skips=True)
    started = time.perf_counter()
    install(config)
    try:
        state = get_state(model)
        if not state.lscs:
            raise ValueError(f"{type(model).__name__} has no inserted long-skip adapters to train (native skips are "
                             "part of the model: fine-tune it with dit_cache.finetune)")
        calls = _record(model, state, generate, seeds, progress)
        result = _train(model, state, calls, actions, max_age, steps, lr, full_weight, seed, progress)
        if save is not None:
            save_adapters(model, save)
    finally:
        uninstall()
    result.report.update(seeds=list(seeds), actions=list(actions), max_age=max_age, lr=lr, full_weight=full_weight,
                         seconds=time.perf_counter() - started)
    return result


def _check(n, max_age, steps, lr, full_weight, seeds) -> None:
    for name, value, low in (("num_inference_steps", n, 2), ("max_age", max_age, 1), ("steps", steps, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if isinstance(full_weight, bool) or not isinstance(full_weight, (int, float)) or full_weight < 0:
        raise ValueError(f"full_weight must be a number >= 0, got {full_weight!r}")
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds):
        raise ValueError(f"seeds must be a non-empty list of integers, got {seeds!r}")


def _record(model, state, generate, seeds, progress) -> list[list[_Call]]:
    recorder = _Recorder(model, state)
    try:
        with ProgressBar("cache-aware: full trajectories", len(seeds), enabled=progress) as bar:
            for s in seeds:
                recorder.new_generation()
                with torch.no_grad():
                    generate(s)
                bar.update(advance=1)
    finally:
        recorder.remove()
    if not any(recorder.calls):
        raise RuntimeError("no call of the model was recorded: does generate() run it?")
    return recorder.calls


def _call(model, state, record: _Call, action: str, gen: Generation) -> torch.Tensor:
    ctx = CallContext(gen, step=record.step, branch=record.branch, full=action == "F", tracked=True,
                      scratch={"action": action})
    with state.tracker.pinned(ctx):
        return output_tensor(model(*record.args, **record.kwargs))


def _pairs(calls: list[list[_Call]], max_age: int) -> list[tuple[_Call, _Call]]:
    """(earlier full call, cached call) on the same trajectory and branch, 1..max_age steps apart."""
    out = []
    for generation in calls:
        by_key = {(c.step, c.branch): c for c in generation}
        for c in generation:
            for age in range(1, max_age + 1):
                old = by_key.get((c.step - age, c.branch))
                if old is not None:
                    out.append((old, c))
    return out


def _mse(out: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.mse_loss(out.float(), ref.float())


def _evaluate(model, state, pairs, actions) -> float:
    """Mean cached-call error over `pairs` and every action (the adapters as they are now)."""
    total = 0.0
    with torch.no_grad():
        for old, new in pairs:
            for action in actions:
                gen = Generation(number=-1, caches={old.branch: {}})
                _call(model, state, old, "F", gen)
                total += float(_mse(_call(model, state, new, action, gen), new.output))
    return total / (len(pairs) * len(actions))


def _train(model, state, calls, actions, max_age, steps, lr, full_weight, seed, progress) -> CacheAwareResult:
    pairs = _pairs(calls, max_age)
    if not pairs:
        raise ValueError("the trajectories have too few steps to pair a full step with a later cached one")
    params = list(state.lscs.parameters())
    flags = {p: p.requires_grad for p in model.parameters()}
    rng = random.Random(seed)
    result = CacheAwareResult(actions=tuple(actions))
    probe = random.Random(seed + 1).sample(pairs, min(len(pairs), EVAL_PAIRS))
    before = _evaluate(model, state, probe, actions)
    try:
        model.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        optimizer = torch.optim.Adam(params, lr=lr)
        with ProgressBar("cache-aware: training adapters", steps, enabled=progress) as bar:
            for _ in range(steps):
                old, new = rng.choice(pairs)
                action = rng.choice(actions)
                gen = Generation(number=-1, caches={old.branch: {}})
                with torch.enable_grad():
                    full = _mse(_call(model, state, old, "F", gen), old.output)
                    cached = _mse(_call(model, state, new, action, gen), new.output)
                    loss = cached + full_weight * full
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                result.losses.append(float(loss.detach()))
                bar.update(advance=1)
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
        for p in params:
            p.grad = None
    result.report.update(steps=steps, pairs=len(pairs), cached_mse_before=before,
                         cached_mse_after=_evaluate(model, state, probe, actions))
    return result


def main() -> None:
    import argparse
    import json
    from pathlib import Path

    from dit_cache.api import unpatch
    from dit_cache.bench.runners import load_runner
    from dit_cache.bench.runners.base import RunSettings

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--full-weight", type=float, default=1.0)
    args = p.parse_args()
    torch.set_num_threads(1)
    runner = load_runner(args.model, RunSettings(steps=20, batch=20, device="cpu"))

    def generate(s: int):
        return runner.generate(runner.prepare(s))

    result = train_cache_aware(runner.transformer, 20, runner.scheduler, generate=generate, steps=args.steps,
                               lr=args.lr, full_weight=args.full_weight, progress=False,
                               install=lambda config: runner.install_dit_cache(config, {}),
                               uninstall=lambda: unpatch(runner.patch_target))
    curve = [sum(result.losses[i:i + 50]) / len(result.losses[i:i + 50]) for i in range(0, len(result.losses), 50)]
    record = {"model": args.model, "command": ["python", "benchmarks/cache_aware.py", args.model, "--steps", str(args.steps),
                                               "--lr", str(args.lr)], **result.report, "loss_per_50_steps": curve}
    out = Path(__file__).resolve().parent / "results" / "cache_aware"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.model}_steps-{args.steps}_lr-{args.lr}.json").write_text(json.dumps(record, indent=1) + "\n")
    print(result)


if __name__ == "__main__":
    main()
