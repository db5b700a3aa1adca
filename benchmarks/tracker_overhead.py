"""What placing a call in its generation costs (issue 13): the input fingerprint and the
comparison with the live generations (one device-to-host copy), per model call, for latent
sizes from the tiny test models to DiT-XL/2, Latte-1 and Hunyuan-DiT at 1024 px.

    .venv/bin/python benchmarks/tracker_overhead.py --json benchmarks/results/tracker_overhead.json

Compare with the forward times in benchmarks/results/hook_overhead.txt (the `none` row's
overhead already includes this placement)."""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from dit_cache.runtime.fingerprint import compare, fingerprint
from dit_cache.runtime.tracker import StepTracker

SHAPES = {
    "tiny-dit (2, 4, 16, 16)": (2, 4, 16, 16),
    "DiT-XL/2 256px (2, 4, 32, 32)": (2, 4, 32, 32),
    "Latte-1 16 frames (2, 4, 16, 32, 32)": (2, 4, 16, 32, 32),
    "Hunyuan-DiT 1024px (2, 4, 128, 128)": (2, 4, 128, 128),
}


def _median_us(fn, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return 1e6 * statistics.median(samples)


def measure(shape, repeats: int) -> dict:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g)
    probe = fingerprint(x)
    other = fingerprint(torch.randn(shape, generator=g))
    tracker = StepTracker()

    def generation():  # 20 steps of one generation: placement only, no model
        tracker.reset()
        for t in range(999, 0, -50):
            tracker.begin(torch.tensor([float(t)]), x, False, lambda ts: True)
            tracker.end()

    per_generation = _median_us(generation, max(5, repeats // 20))
    return {
        "fingerprint_us": _median_us(lambda: fingerprint(x), repeats),
        "compare_1_us": _median_us(lambda: compare(probe, [other]), repeats),
        "compare_2_us": _median_us(lambda: compare(probe, [other, probe]), repeats),
        "begin_per_call_us": per_generation / 20,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=2000)
    p.add_argument("--json")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    results = {name: measure(shape, args.repeats) for name, shape in SHAPES.items()}
    for name, r in results.items():
        print(f"{name:40s} fingerprint {r['fingerprint_us']:6.1f} us   compare(1) {r['compare_1_us']:6.1f} us   "
              f"compare(2) {r['compare_2_us']:6.1f} us   placement per call {r['begin_per_call_us']:6.1f} us")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": "cpu", "threads": 1, "repeats": args.repeats, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
