#!/usr/bin/env bash
# Small benchmark results committed in benchmarks/results/ (a few minutes on 2 CPU cores):
# the tiny models of each family (overhead-dominated: read them as smoke tests, not speed
# claims), the embedded default (`ditcache bench` with no arguments, DiT-S/2 architecture) and
# the hook-overhead micro-benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
R=benchmarks/results
mkdir -p "$R"
for m in tiny-dit tiny-latte tiny-hunyuan; do
  "$PY" -m dit_cache.cli bench --model "$m" --steps 10 --repeats 5 --threads 1 --seeds 0 1 --no-progress \
    --json "$R/bench_$m.json" --csv "$R/bench_$m.csv" | tee "$R/bench_$m.txt"
done
"$PY" -m dit_cache.cli bench --no-progress --json "$R/bench_default_dit_s_2.json" --csv "$R/bench_default_dit_s_2.csv" \
  --plot "$R/bench_default_dit_s_2.png" | tee "$R/bench_default_dit_s_2.txt"
"$PY" benchmarks/hook_overhead.py --models tiny-dit tiny-latte tiny-hunyuan dit-s-2 --rounds 9 \
  --json "$R/hook_overhead.json" | tee "$R/hook_overhead.txt"
