"""One method's measurements from every rank and seed, combined (what the columns read)."""
from __future__ import annotations

import math
import statistics
from typing import Any

from .specs import UNPATCHED, MethodSpec


def latency_stats(samples: list[float]) -> dict[str, Any]:
    """Median, quartiles (inclusive), IQR and minimum of the timed generations."""
    if not samples:
        return {"latency_s": None, "latency_q1_s": None, "latency_q3_s": None, "latency_iqr_s": None, "latency_min_s": None}
    xs = sorted(samples)
    med = statistics.median(xs)
    if len(xs) >= 2:
        q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    else:
        q1 = q3 = xs[0]
    return {"latency_s": med, "latency_q1_s": q1, "latency_q3_s": q3, "latency_iqr_s": q3 - q1, "latency_min_s": xs[0]}


def mean_psnr(values: list[float]) -> float | None:
    """Mean over images; bit-identical images (infinite PSNR) are left out of the mean, and the
    result is inf only when every image is bit-identical."""
    if not values:
        return None
    finite = [v for v in values if math.isfinite(v)]
    return statistics.fmean(finite) if finite else math.inf


def mean_or_none(values: list) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.fmean(vals) if vals else None


def weighted_mean(pairs) -> float | None:
    """Mean of the values of (value, count) pairs, weighted by count (None values left out)."""
    pairs = [(v, n) for v, n in pairs if v is not None and n]
    return sum(v * n for v, n in pairs) / sum(n for _, n in pairs) if pairs else None


class Gathered:
    """A method's per-rank measurement dicts (`parts`, from `measure.measure`), combined.

    `reference_call`: the FLOPs of one full transformer call (the largest call of `unpatched`,
    which sets it), from which the steps of methods without dit-cache's counters are told apart."""

    def __init__(self, spec: MethodSpec, parts: list[dict], model: str, timesteps: list[float],
                 all_seeds: list[int], reference_call: int | None):
        self.spec, self.parts, self.model, self.timesteps = spec, parts, model, timesteps
        self.status = next((p["status"] for p in parts if p["status"] != "ok"), "ok")
        self.ok = self.status == "ok"
        measured = [p for p in parts if "flops" in p or p.get("samples")]
        self.first = measured[0] if measured else {}
        self.samples = [x for p in parts for x in p.get("samples", [])]
        self.background = [x for p in parts for x in p.get("background", []) if x is not None]
        self.psnr = [x for p in parts for x in p.get("psnr_list", [])]
        self.ssim = [x for p in parts for x in p.get("ssim_list", [])]
        self.seeds = sorted(all_seeds) if self.ok else []
        self.latency = latency_stats(self.samples if self.ok else [])
        pairs = [x for p in parts for x in p.get("pair_ratios", [])]  # order="paired"
        self.paired_speedup = statistics.median(pairs) if self.ok and pairs else None
        spread = latency_stats(pairs)["latency_iqr_s"] if self.ok and pairs else None
        self.paired_spread = spread / self.paired_speedup if spread is not None else None  # IQR / median
        self.calls = self.first.get("call_flops") or []
        if spec.name == UNPATCHED:
            reference_call = max(self.calls) if self.calls else None
        self.reference_call = reference_call
        self.steps = self._steps()

    def values(self, key: str) -> list:
        """Every rank's value of `key`, where it has one."""
        return [p[key] for p in self.parts if p.get(key) is not None]

    def _steps(self) -> tuple[int | None, int | None, str | None]:
        """(full, cached, pattern): dit-cache's own counters; for the others, from per-call
        FLOPs (a call is full when it costs what an unpatched call costs)."""
        first, calls, n = self.first, self.calls, len(self.timesteps)
        if "pattern" in first:
            return first["full_steps"], first["cached_steps"], first["pattern"]
        if self.spec.name == UNPATCHED and self.ok:
            return n, 0, "F" * n
        ref = self.reference_call
        if calls and ref and len(calls) == n:
            pattern = "".join("F" if c >= ref * (1 - 1e-9) else "c" for c in calls)
            return pattern.count("F"), pattern.count("c"), pattern
        return None, None, None
