"""The three measuring phases of a run, on this rank's seeds:

1. per method: install it, one instrumented generation on the first seed, untimed (FLOPs,
   memory, the step pattern; it doubles as the first warm-up), ``warmup - 1`` more untimed
   generations, remove it;
2. timed generations, ``repeats`` per seed and method: ``order="interleaved"`` runs them in
   rounds, each round installing every method in turn (in a new seeded order after the first
   round) for one generation per seed, so drift of a shared machine hits every method alike;
   ``"sequential"`` runs all of a method's repeats in one installation; ``"paired"`` runs rounds
   in which every method is timed right after a generation of ``none``, and the method's speedup
   is the median of those adjacent ratios (drift slower than one pair cancels out);
3. fidelity of each seed's final latents against the reference latents of the same seed.

On the meta device (a real-size model that does not fit or would take hours) only phase 1
runs: nothing is computed, FlopCounterMode counts by shape, and the step patterns are the
schedule's (runtime/fingerprint.py makes every meta call look like the same latents).
"""
from __future__ import annotations

import random
import time
from typing import Any

import torch

from .errors import PeerUnavailable
from .fidelity import fidelity
from .install import installed
from .instrument import instrumented_run
from .machine import BackgroundProbe
from .specs import MethodSpec

MAX_ATTEMPTS = 3  # timed tries of one generation when other processes took the CPU


class MethodRun:
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


def sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def prepare_phase(method: MethodRun, runner, seeds, prepared, config, progress, device) -> None:
    """Instrumented generation (FLOPs, memory, pattern) + extra warm-up generations."""
    spec, local = method.spec, method.local
    with installed(method, runner) as applied:
        if applied is None:
            return
        local["config"] = applied.config_text()
        local["setup"] = applied.setup()
        if not seeds:
            return
        first = prepared[seeds[0]]
        applied.before_generation()
        progress.update(description=f"{spec.label}: instrumented run")
        inst = instrumented_run(
            lambda: runner.generate(first), runner.transformer, runner.modules(), device,
            count_flops=config.flops, measure_memory=config.memory and torch.device(device).type != "meta",
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
            progress.update(description=f"{spec.label}: warm-up")
            applied.before_generation()
            runner.generate(first)
            progress.update(advance=1)


def timed_runs(method: MethodRun, runner, seeds, prepared, config, progress, device, rounds: int, tag: str) -> None:
    """`rounds` timed generations per seed with the method installed once."""
    spec, local = method.spec, method.local
    with installed(method, runner) as applied:
        if applied is None:
            return
        applied.before_generation()
        runner.prime(prepared[seeds[0]])  # first call after installing: untimed
        for _ in range(rounds):
            for seed in seeds:
                progress.update(description=f"{spec.label}: seed {seed}, {tag}")
                for attempt in range(MAX_ATTEMPTS):
                    applied.before_generation()
                    sync(device)
                    with BackgroundProbe() as probe:
                        t0 = time.perf_counter()
                        out = runner.generate(prepared[seed])
                        sync(device)
                        elapsed = time.perf_counter() - t0
                    share = probe.share
                    noisy = config.max_background is not None and share is not None and share > config.max_background
                    if not noisy or attempt == MAX_ATTEMPTS - 1:
                        break  # else another process took the CPU: run again
                local["samples"].append(elapsed)
                local["background"].append(share)
                method.outputs[seed] = out
                progress.update(advance=1)


def paired_rounds(methods: list[MethodRun], runner, seeds, prepared, config, progress, device) -> None:
    """Each round, in a new seeded order: for every method, one timed generation of `none`, then
    one of the method. ``pair_ratios``: the `none` time of each pair over the method's time."""
    base = next((m for m in methods if m.spec.label == "none"), None)
    if base is None or not base.ok:
        raise RuntimeError("order='paired' needs a 'none' row that runs")
    for r in range(config.repeats):
        live = [m for m in methods if m.ok and m is not base]
        random.Random(r).shuffle(live)
        for m in live:
            tag = f"round {r + 1}/{config.repeats}"
            start = len(base.local["samples"])
            timed_runs(base, runner, seeds, prepared, config, progress, device, 1, tag)
            mine = len(m.local["samples"])
            timed_runs(m, runner, seeds, prepared, config, progress, device, 1, tag)
            if m.ok and base.ok:
                m.local.setdefault("pair_ratios", []).append(
                    sum(base.local["samples"][start:]) / sum(m.local["samples"][mine:]))


def fidelity_phase(method: MethodRun, references: dict[int, torch.Tensor]) -> None:
    psnr, ssim, max_abs, max_rel = [], [], 0.0, 0.0
    for seed, out in method.outputs.items():
        fid = fidelity(out, references[seed])
        psnr += fid["psnr"]
        ssim += fid["ssim"]
        max_abs, max_rel = max(max_abs, fid["max_abs_err"]), max(max_rel, fid["max_rel_err"])
    method.local.update(psnr_list=psnr, ssim_list=ssim, max_abs_err=max_abs, max_rel_err=max_rel)


def measure(specs, runner, seeds, prepared, config, progress, device, unavailable) -> list[dict]:
    """All three phases; one gatherable dict per spec."""
    methods = [MethodRun(spec) for spec in specs]
    for m in methods:
        if unavailable[m.spec.label] is not None:
            m.local["status"] = f"n/a: {unavailable[m.spec.label]}"
    for m in methods:
        if m.ok:
            prepare_phase(m, runner, seeds, prepared, config, progress, device)
    counting_only = torch.device(device).type == "meta"  # no data: FLOPs and step patterns only
    if seeds and not counting_only:
        if config.order == "interleaved":
            for r in range(config.repeats):
                live = [m for m in methods if m.ok]
                if r:  # a new (seeded) order each round: no method always follows the same one
                    random.Random(r).shuffle(live)
                for m in live:
                    timed_runs(m, runner, seeds, prepared, config, progress, device, 1, f"round {r + 1}/{config.repeats}")
        elif config.order == "paired":
            paired_rounds(methods, runner, seeds, prepared, config, progress, device)
        else:
            for m in methods:
                if m.ok:
                    timed_runs(m, runner, seeds, prepared, config, progress, device, config.repeats, "timed runs")
    # the reference outputs of the same seeds: `unpatched` (first), or `none` for a model whose
    # trained long-skip adapters are part of its function
    ref = methods[1] if runner.adapter_fusion else methods[0]
    for m in methods:
        if m.ok and m.outputs and not counting_only:
            if ref.outputs:
                fidelity_phase(m, ref.outputs)
            m.local.update(runner.quality(m.outputs))
    return [m.local for m in methods]
