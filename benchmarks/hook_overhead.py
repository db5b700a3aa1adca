"""Per-forward cost of dit-cache's hooks: unpatched vs patched `none` (step tracking + one hook
per block, nothing cached) vs `skip-dit` forced full (hooks + the long-skip fusions), in
interleaved rounds so that machine drift hits every variant alike.

    .venv/bin/python benchmarks/hook_overhead.py --models tiny-dit dit-s-2 --rounds 7 \
        --json benchmarks/results/hook_overhead.json

Each round times `--calls` consecutive forwards (descending timesteps: one generation) per
variant; the figure per variant is the median over rounds of the per-round median.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

import dit_cache
from dit_cache.bench.machine import BackgroundProbe, machine_info
from dit_cache.testing import build_transformer, transformer_inputs

VARIANTS = {
    "unpatched": None,
    "none": ("none", {}),
    # every step full (t >= start), so this is the cost of hooks + fusions on a full step
    "skip-dit (full steps)": ("skip-dit", {"start": 1.0, "close": 0.0}),
}


def _round(model, inputs, calls: int) -> float:
    times = []
    with torch.no_grad():
        for i in range(calls):
            inputs["timestep"] = torch.full_like(inputs["timestep"], 999 - i)
            t0 = time.perf_counter()
            model(**inputs)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(name: str, rounds: int, calls: int) -> dict:
    model = build_transformer(name)
    inputs = transformer_inputs(name, batch=2)
    per: dict[str, list[float]] = {v: [] for v in VARIANTS}
    background = []
    _round(model, inputs, 3)
    names = list(VARIANTS)
    for r in range(rounds):
        with BackgroundProbe() as probe:
            for variant in names[r % len(names):] + names[: r % len(names)]:  # rotate the order
                spec = VARIANTS[variant]
                if spec is not None:
                    dit_cache.patch(model, spec[0], **spec[1])
                _round(model, inputs, 2)  # warm: first calls after (un)patching, weight folding
                per[variant].append(_round(model, inputs, calls))
                if spec is not None:
                    dit_cache.unpatch(model)
        background.append(probe.share)
    med = {v: statistics.median(x) for v, x in per.items()}
    base = med["unpatched"]
    blocks = len(dit_cache.runtime.registry.get_adapter(model).units(model))
    return {
        "model": name,
        "blocks": blocks,
        "forward_ms": {v: m * 1e3 for v, m in med.items()},
        "overhead_vs_unpatched": {v: m / base - 1.0 for v, m in med.items()},
        "hook_us_per_forward": (med["none"] - base) * 1e6,
        "background_cpu_max": max((b for b in background if b is not None), default=None),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["tiny-dit", "dit-s-2"])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--calls", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = []
    for name in args.models:
        r = measure(name, args.rounds, args.calls)
        results.append(r)
        print(f"{name} ({r['blocks']} blocks, batch 2):")
        for v, ms in r["forward_ms"].items():
            print(f"  {v:24s} {ms:9.3f} ms/forward  {r['overhead_vs_unpatched'][v] * 100:+6.2f}%")
        print(f"  hooks: {r['hook_us_per_forward']:.0f} us per forward; background CPU <= {r['background_cpu_max']}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"command": sys.argv, "torch": torch.__version__, "threads": args.threads,
                       "machine": machine_info(), "results": results}, f, indent=1)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
