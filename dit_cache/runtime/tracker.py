"""Step tracking without pipeline cooperation, per patched model instance.

Each call of the model is placed in a *generation* (one sampling run) before its blocks run,
from its timestep, its input signature (shape, dtype, device) and a fingerprint of its input
(runtime/fingerprint.py). Among this thread's live generations with the same signature:
- the same timestep as the last call's step and an identical input -> another CFG branch of
  that step (sequential CFG feeds every branch the same latents);
- a lower timestep and an input correlated with that step's input -> its next step; when two
  live generations could continue (an interrupted run's leftover, or two runs stepped
  alternately), the one whose last input this input is most correlated with;
- anything else (a first call, a higher timestep, the same timestep with other latents, as
  after an interrupted run, a changed signature) -> a new generation with fresh state.
So an interrupted run never lends its cache to the next one, and two generations stepped
alternately on one model (one thread) each keep their own state. A pipeline's
`scheduler.set_timesteps` (hooked by `patch(pipe)`) starts a new generation outright and ends
the thread's earlier ones.

Each thread has its own generations and call context, so concurrent generations on one
model from several threads are independent. Calls in train mode or with per-sample
timesteps are training calls: always full, untracked, and they drop the thread's generations.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import itertools
import math
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .fingerprint import SAME_GENERATION, compare, fingerprint

#: Live generations kept per thread (the oldest is dropped past it: a third interleaved
#: generation costs its predecessor a fresh, full step, never a wrong one).
MAX_LIVE = 2


@dataclass
class GenerationStats:
    full_steps: int = 0
    cached_steps: int = 0
    calls: int = 0
    block_calls: int = 0  # transformer blocks actually executed
    blocks_skipped: int = 0
    pattern: list[str] = field(default_factory=list)
    timesteps: list[float] = field(default_factory=list)
    extra: dict[str, int] = field(default_factory=dict)  # method-specific counters

    def count(self, key: str, n: int = 1) -> None:
        self.extra[key] = self.extra.get(key, 0) + n


@dataclass
class Generation:
    """The state of one sampling run: its steps so far and the caches of its CFG branches."""

    number: int
    signature: tuple | None = None
    branch: int = 0
    step_full: bool = True
    probe: Any = None  # fingerprint (numpy, on the host) of this step's first-branch input
    caches: dict[int, Any] = field(default_factory=dict)  # branch -> method state of that branch
    stats: GenerationStats = field(default_factory=GenerationStats)

    @property
    def timesteps(self) -> list[float]:
        return self.stats.timesteps

    @property
    def step(self) -> int:
        return len(self.stats.timesteps) - 1

    @property
    def t_step(self) -> float | None:
        """The timestep of the current step (None before the first call)."""
        return self.stats.timesteps[-1] if self.stats.timesteps else None


@dataclass
class CallContext:
    """What the hooks need during one forward of the model."""

    gen: Generation
    step: int
    branch: int
    full: bool
    tracked: bool
    skips: dict[int, torch.Tensor] = field(default_factory=dict)  # unit -> its output
    # the method's per-call data; a recomputation gets a copy, without the "count:..." keys
    scratch: dict[str, Any] = field(default_factory=dict)
    replay: bool = False  # a block recomputed in backward (activation checkpointing)

    @property
    def caches(self) -> dict[int, Any]:
        return self.gen.caches

    @property
    def stats(self) -> GenerationStats:
        # a recomputation in backward repeats work that is already counted
        return GenerationStats() if self.replay else self.gen.stats


def tensor_bytes(value) -> int:
    """Bytes held by the tensors in a (nested) tuple / list / dict: a cache's memory cost."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(tensor_bytes(v) for v in value)
    if isinstance(value, dict):
        return sum(tensor_bytes(v) for v in value.values())
    return 0


#: the timestep of the current call of a meta-device generation, whose tensors hold no values
_META_TIMESTEP: contextvars.ContextVar[float | None] = contextvars.ContextVar("dit_cache_meta_timestep", default=None)


def meta_timesteps(timesteps):
    """Iterate a sampler's `timesteps` (on the CPU) telling the tracker each one: what lets a
    model on the meta device (FLOP counting of a real-size model) follow its schedule."""
    try:
        for t in timesteps:
            _META_TIMESTEP.set(float(t))
            yield t
    finally:
        _META_TIMESTEP.set(None)


def _first_timestep(t: Any) -> tuple[float | None, bool]:
    """(t as float, uniform across the batch)."""
    if t is None:
        return None, False
    if isinstance(t, torch.Tensor) and t.is_meta:
        value = _META_TIMESTEP.get()
        if value is None:
            raise RuntimeError("this model runs on the meta device, where its timestep has no value: iterate the "
                               "timesteps through dit_cache.runtime.tracker.meta_timesteps(scheduler.timesteps)")
        return value, True
    if isinstance(t, torch.Tensor):
        flat = t.detach().reshape(-1)
        if flat.numel() == 0:
            return None, False
        first = flat[0]
        return float(first), bool((flat == first).all()) if flat.numel() > 1 else True
    return float(t), True


def _in_backward() -> bool:
    """Whether this code runs inside an autograd backward pass (torch's checkpoint uses it too)."""
    task_id = getattr(torch._C, "_current_graph_task_id", None)
    return task_id is not None and task_id() != -1


#: smallest size of the block-call table at which dead entries are swept
BLOCK_CALLS_SWEEP = 64
#: most block calls of checkpointed models remembered for recomputation in backward (a
#: training step of a 28-block DiT with CFG makes 56)
BLOCK_CALLS_MAX = 1024


class _ThreadState(threading.local):
    def __init__(self):
        self.live: list[Generation] = []  # most recent first
        self.ctx: CallContext | None = None
        self.fresh_next = False  # the next call starts a new generation (set_timesteps)
        self.replaying: CallContext | None = None  # set while a checkpointed block is recomputed
        # block input (data_ptr, shape, stride) -> (weakref to it, the context of its call):
        # activation checkpointing re-runs a block in backward with the same input tensor
        self.block_calls: dict[tuple, tuple[weakref.ref, CallContext]] = {}
        self.block_calls_sweep = BLOCK_CALLS_SWEEP  # table size at which dead entries are dropped
        self.pinned: CallContext | None = None  # calibration: every call uses this context


class StepTracker:
    def __init__(self):
        self._numbers = itertools.count(1)
        self._thread = _ThreadState()
        self.last: Generation | None = None  # the generation any thread touched last

    # -- what the hooks and the API read ---------------------------------------------------
    @property
    def ctx(self) -> CallContext | None:
        thread = self._thread
        return thread.replaying if thread.replaying is not None else thread.ctx

    # -- activation checkpointing: a block recomputed in backward gets its call's context -----
    def context_of_block_call(self, x: torch.Tensor, ctx: CallContext, remember: bool) -> CallContext:
        """The context for a grad-enabled block call with input `x`. Activation checkpointing
        recomputes a block inside backward with the very input of its forward call: that call
        gets the forward's context (marked `replay`); any other call gets `ctx`, remembered
        when `remember` (the model checkpoints its blocks: nothing else recomputes them)."""
        thread = self._thread
        calls = thread.block_calls
        key = (x.data_ptr(), tuple(x.shape), x.stride(), x.dtype, x.device)
        if _in_backward():
            known = calls.get(key)
            if known is None or known[0]() is not x:
                raise RuntimeError(
                    "a patched transformer block is recomputed in backward (activation checkpointing) but its "
                    "forward call was not recorded: enable checkpointing with the model's "
                    "enable_gradient_checkpointing() (diffusers), which dit-cache follows, rather than wrapping "
                    "blocks in torch.utils.checkpoint yourself"
                )
            # per-call counters (scratch keys "count:...") restart for the recomputed block
            scratch = {k: v for k, v in known[1].scratch.items() if not k.startswith("count:")}
            return dataclasses.replace(known[1], replay=True, scratch=scratch)
        if not remember:
            return ctx
        if len(calls) >= thread.block_calls_sweep:
            # Drop the entries whose input is gone (its graph was freed), then the oldest beyond
            # BLOCK_CALLS_MAX: an entry holds its call's context, whose skips are the inputs of
            # other blocks, so entries of one call keep each other alive. A backward reaching
            # further back than the kept ones raises above instead of recomputing wrongly.
            for k in [k for k, (ref, _) in calls.items() if ref() is None]:
                del calls[k]
            if len(calls) > BLOCK_CALLS_MAX:  # the oldest first (dicts keep insertion order)
                for k in list(calls)[: len(calls) - BLOCK_CALLS_MAX // 2]:
                    del calls[k]
            thread.block_calls_sweep = max(BLOCK_CALLS_SWEEP, 2 * len(calls))
        calls[key] = (weakref.ref(x), ctx)
        return ctx

    @contextlib.contextmanager
    def replaying(self, ctx: CallContext):
        """Nested hooks (attention / MLP sites inside a recomputed block) see its context."""
        thread = self._thread
        previous, thread.replaying = thread.replaying, ctx
        try:
            yield
        finally:
            thread.replaying = previous

    @property
    def stats(self) -> GenerationStats:
        ctx = self._thread.ctx
        if ctx is not None:
            return ctx.gen.stats
        return self.last.stats if self.last is not None else GenerationStats()

    @property
    def generation(self) -> int:
        return self.last.number if self.last is not None else 0

    def live_caches(self) -> dict[int, Any]:
        """Caches of the generation the calling thread used last (empty if none)."""
        ctx, live = self._thread.ctx, self._thread.live
        gen = ctx.gen if ctx is not None else (live[0] if live else self.last)
        return gen.caches if gen is not None else {}

    # -- placing a call ----------------------------------------------------------------------
    def begin(self, t: Any, x: torch.Tensor | None, training: bool, decide: Callable[[list[float]], bool]) -> CallContext:
        """Place a call; `decide(timesteps)` says whether a new step (the last of this
        generation's `timesteps`) is full."""
        thread = self._thread
        if thread.pinned is not None:  # a calibration probe: the context it was given
            pinned = thread.pinned
            thread.ctx = dataclasses.replace(pinned, scratch=dict(pinned.scratch), skips={})
            return thread.ctx
        t_value, uniform = _first_timestep(t)
        if training or t_value is None or not uniform:
            # A training step (or a call we cannot place): compute everything, and forget this
            # thread's generations so that no cache built before it is reused after it.
            thread.live = []
            gen = self._new(None)
            thread.ctx = CallContext(gen, step=0, branch=0, full=True, tracked=False)
            return thread.ctx
        signature = (tuple(x.shape), x.dtype, x.device) if x is not None else None
        probe = fingerprint(x) if x is not None and x.numel() else None
        gen, same_step = self._place(t_value, signature, probe)
        # decided before anything changes: a decision that raises (a schedule made for other
        # timesteps) leaves the tracker as it was
        full = None if same_step else decide([*(gen.timesteps if gen is not None else ()), t_value])
        if gen is None:
            gen = self._new(signature)
            thread.live = [gen, *thread.live][:MAX_LIVE]
        elif thread.live[0] is not gen:
            thread.live.remove(gen)
            thread.live.insert(0, gen)
        if same_step:
            gen.branch += 1
        else:
            gen.probe, gen.branch = probe, 0
            gen.stats.timesteps.append(t_value)
            gen.step_full = full
            gen.stats.pattern.append("F" if gen.step_full else "c")
            gen.stats.full_steps += gen.step_full
            gen.stats.cached_steps += not gen.step_full
        gen.stats.calls += 1
        self.last = gen
        thread.ctx = CallContext(gen, step=gen.step, branch=gen.branch, full=gen.step_full, tracked=True)
        return thread.ctx

    def _place(self, t: float, signature, probe) -> tuple[Generation | None, bool]:
        """(the live generation this call continues, whether it is another branch of its
        current step); (None, False) for a new generation."""
        thread = self._thread
        if thread.fresh_next:
            # A pipeline set its scheduler's timesteps: the run this thread had going is over
            # (finished or interrupted). Forget it, or a late step of the new run, whose latents
            # approach the same image, could be taken for that run's continuation.
            thread.fresh_next = False
            thread.live = []
            return None, False
        # Another branch of a step only follows that step's first call directly (the most
        # recent generation): a stale generation that stopped at this timestep is no candidate.
        candidates = [
            g for g in thread.live
            if g.signature == signature and g.t_step is not None
            and (t < g.t_step or (t == g.t_step and g is thread.live[0]))
        ]
        if not candidates:
            return None, False
        if probe is None or any(g.probe is None for g in candidates):  # nothing to compare
            g = candidates[0]
            return g, t == g.t_step
        # Rank the candidates by how well this input continues each: an
        # identical input at the same timestep is a CFG branch; a lower timestep continues the
        # generation whose last input it is most correlated with, if correlated at all.
        scored = []
        for g, (identical, corr) in zip(candidates, compare(probe, [g.probe for g in candidates])):
            if t == g.t_step:
                scored.append((2.0 if identical else -math.inf, g))
            else:
                scored.append((corr, g))
        score, best = max(scored, key=lambda pair: pair[0])
        return (best, t == best.t_step) if score >= SAME_GENERATION else (None, False)

    def _new(self, signature) -> Generation:
        gen = Generation(number=next(self._numbers), signature=signature)
        self.last = gen
        return gen

    def end(self) -> None:
        ctx = self._thread.ctx
        if ctx is not None and not torch.is_grad_enabled():
            # Skip tensors are only kept past the forward for activation-checkpoint recompute.
            ctx.skips.clear()

    def abort(self) -> None:
        """The forward raised: this thread's generation of that call is dropped."""
        thread = self._thread
        if thread.ctx is not None and thread.ctx.gen in thread.live:
            thread.live.remove(thread.ctx.gen)
        thread.ctx = None

    @contextlib.contextmanager
    def pinned(self, ctx: CallContext):
        """Calls of the model on this thread inside the block use (a fresh copy of) `ctx`
        instead of being placed: calibration probes a cached action at a chosen step with a
        chosen cache, outside any generation. The caller's context is restored after."""
        thread = self._thread
        saved = thread.pinned, thread.ctx
        thread.pinned = ctx
        try:
            yield
        finally:
            thread.pinned, thread.ctx = saved

    def start_new_generation(self) -> None:
        """The calling thread's next call starts a new generation (a pipeline set its
        scheduler's timesteps: a new sampling run begins)."""
        self._thread.fresh_next = True

    def reset(self) -> None:
        """Forget every generation of every thread."""
        self._thread = _ThreadState()
        self.last = None
