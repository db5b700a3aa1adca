#!/usr/bin/env bash
# Small benchmark results committed in benchmarks/results/ (a few minutes on 2 CPU cores):
# the tiny models of each family (overhead-dominated: read them as smoke tests, not speed
# claims), the DiT-S/2 architecture (the embedded default before the zoo) and
# the hook-overhead micro-benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
R=benchmarks/results
mkdir -p "$R"
# every family: the default methods, a plan calibrated for 2x (FLOP-ideal) and diffusers' FirstBlockCache
# and MagCache (calibrated with its own routine) as peers
for m in tiny-dit tiny-latte tiny-hunyuan tiny-pixart tiny-sd3 tiny-flux tiny-wan; do
  "$PY" -m dit_cache.cli bench --model "$m" --steps 10 --repeats 5 --threads 1 --seeds 0 1 --no-progress \
    --methods skip-dit fora pab-236 calibrate:speedup=2.0 diffusers-pab diffusers-fastercache diffusers-fbc \
    diffusers-magcache --json "$R/bench_$m.json" --csv "$R/bench_$m.csv" | tee "$R/bench_$m.txt"
done
"$PY" -m dit_cache.cli bench --model dit-s-2 --no-progress --json "$R/bench_default_dit_s_2.json" --csv "$R/bench_default_dit_s_2.csv" \
  --plot "$R/bench_default_dit_s_2.png" | tee "$R/bench_default_dit_s_2.txt"
"$PY" benchmarks/hook_overhead.py --models tiny-dit tiny-latte tiny-hunyuan dit-s-2 --rounds 9 \
  --json "$R/hook_overhead.json" | tee "$R/hook_overhead.txt"
