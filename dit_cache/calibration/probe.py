"""Measuring what each cached action costs at each step, during full generations.

A `Prober` rides along a full generation of a model patched with a `StepPlanConfig` (every
step full, every action's cache kept). After each model call it re-runs the same call once per
(action, age): the action applied at this step with the cache stored `age` steps earlier
(teacher-forced: the input is the full trajectory's), and records the squared error of that
output against the full one. A `StepGain` wraps the scheduler's `step` and measures how much
an output error at each step moves the next latent (the scheduler's local gain), so that
errors of different steps are compared in latent space.
"""
from __future__ import annotations

import copy
import statistics
import time
from collections import defaultdict

import torch
from ..runtime.flops import flop_counter

from ..runtime.tracker import CallContext, Generation


def output_tensor(output) -> torch.Tensor:
    """The sample tensor of a diffusers model output (a tensor, a tuple, or `.sample`)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return output[0]
    return output.sample


class Prober:
    """Per (step, action, age): the mean squared output error of probing that action."""

    def __init__(self, model, state, actions: list[str], max_age: int):
        self.model, self.state, self.actions, self.max_age = model, state, actions, max_age
        self.sq_err: dict[tuple[int, str, int], float] = defaultdict(float)
        self.counts: dict[tuple[int, str, int], int] = defaultdict(int)
        self.flops: dict[str, int] = {}  # per model call
        self.probe_flops = 0  # spent on probes (FLOPs of their actions)
        self.seconds: dict[str, list[float]] = defaultdict(list)  # per model call, by action
        self.calls = 0
        self.gaps: list[float] = []  # seconds between a call's end and the next call (the loop's own work)
        self._ended: float | None = None
        self._history: dict[tuple[int, int], dict] = {}  # (step, branch) -> that step's stored caches
        self._generation = None
        self._started = 0.0
        self._handles = [model.register_forward_pre_hook(self._before_call),
                         model.register_forward_hook(self._after_call, with_kwargs=True)]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._history.clear()

    def time_shares(self) -> dict[str, float]:
        """Median seconds of a call per action, as a share of a full call's."""
        full = statistics.median(self.seconds["F"])
        return {a: statistics.median(v) / full for a, v in self.seconds.items() if v}

    def overhead_share(self) -> float:
        """Median seconds the sampling loop spends between two calls (scheduler step, CFG
        arithmetic), as a share of a full call's: paid on every step, cached or not. The median
        ignores the few gaps between generations."""
        if not self.gaps:
            return 0.0
        return statistics.median(self.gaps) / statistics.median(self.seconds["F"])

    def _sync(self, x: torch.Tensor) -> None:
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)

    def _before_call(self, module, args):
        self._started = time.perf_counter()
        if self._ended is not None:
            self.gaps.append(self._started - self._ended)
            self._ended = None

    def _probe(self, store: dict, step: int, branch: int, action: str, args, kwargs) -> torch.Tensor:
        gen = Generation(number=-1, caches={branch: dict(store)})
        ctx = CallContext(gen, step=step, branch=branch, full=action == "F", tracked=True, scratch={"action": action})
        with self.state.tracker.pinned(ctx), torch.no_grad():
            if action not in self.flops:
                with flop_counter() as counter:
                    out = output_tensor(self.model.forward(*args, **kwargs))
                self.flops[action] = counter.get_total_flops()
                return out
            started = time.perf_counter()
            out = output_tensor(self.model.forward(*args, **kwargs))
            self._sync(out)
            self.seconds[action].append(time.perf_counter() - started)
            return out

    def _after_call(self, module, args, kwargs, output):
        ctx = self.state.tracker.ctx
        if ctx is None or not ctx.tracked or ctx.replay:
            return None
        if ctx.gen.number != self._generation:  # a new generation: nothing stored before it
            self._generation = ctx.gen.number
            self._history.clear()
        self.calls += 1
        step, branch = ctx.step, ctx.branch
        self._sync(output_tensor(output))
        self.seconds["F"].append(time.perf_counter() - self._started)
        full = output_tensor(output).detach().float()
        store = ctx.caches.get(branch, {})
        if "F" not in self.flops:
            self._probe(store, step, branch, "F", args, kwargs)
        for age in range(1, self.max_age + 1):
            old = self._history.get((step - age, branch))
            if old is None:
                continue
            for action in self.actions:
                probe = self._probe(old, step, branch, action, args, kwargs).float()
                key = (step, action, age)
                self.sq_err[key] += float((probe - full).pow(2).mean())
                self.counts[key] += 1
                self.probe_flops += self.flops[action]
        self._history[(step, branch)] = dict(store)
        for key in [k for k in self._history if k[0] <= step - self.max_age]:
            del self._history[key]
        self._ended = time.perf_counter()
        return None

    def table(self) -> dict[tuple[int, str, int], float]:
        """Mean squared output error per (step, action, age)."""
        return {k: v / self.counts[k] for k, v in self.sq_err.items()}


class StepGain:
    """Wraps `scheduler.step` (on the instance) and records, per step of a generation, how much
    a small change of the model output changes the next latent: ||d x_next|| / ||d output||."""

    def __init__(self, scheduler, seed: int = 0):
        self.scheduler, self.seed = scheduler, seed
        self.inner = scheduler.step
        self.had_attr = "step" in scheduler.__dict__
        self.gains: dict[int, list[float]] = defaultdict(list)
        self.step_index = 0
        scheduler.step = self

    def new_generation(self) -> None:
        self.step_index = 0

    def remove(self) -> None:
        if self.had_attr:
            self.scheduler.step = self.inner
        else:
            del self.scheduler.__dict__["step"]

    def _copy(self):
        saved = self.scheduler.__dict__.pop("step")
        try:
            return copy.deepcopy(self.scheduler)
        finally:
            self.scheduler.step = saved

    def __call__(self, model_output, timestep, sample, *args, **kwargs):
        with torch.no_grad():
            g = torch.Generator(device=model_output.device).manual_seed(self.seed + self.step_index)
            delta = torch.randn(model_output.shape, generator=g, device=model_output.device, dtype=torch.float32)
            delta = (delta * (1e-3 * float(model_output.float().std()) + 1e-12)).to(model_output.dtype)
            nexts = []
            for out in (model_output, model_output + delta):
                kw = dict(kwargs, return_dict=False)
                if "generator" in kw:  # both trials draw the same noise
                    kw["generator"] = torch.Generator(device=model_output.device).manual_seed(self.seed)
                nexts.append(type(self.scheduler).step(self._copy(), out, timestep, sample, *args, **kw)[0].float())
            gain = float((nexts[1] - nexts[0]).norm() / (model_output + delta - model_output).float().norm().clamp_min(1e-30))
        self.gains[self.step_index].append(gain)
        self.step_index += 1
        return self.inner(model_output, timestep, sample, *args, **kwargs)

    def mean_gains(self, n_steps: int) -> list[float]:
        return [sum(self.gains[i]) / len(self.gains[i]) if self.gains.get(i) else 1.0 for i in range(n_steps)]
