#!/usr/bin/env bash
# The real-size DiT-XL/2 benchmark (random weights, architecture only): 256 px, fp32, CPU,
# DDIM 20 steps, CFG 4.0 batched. ~40 min on 2 CPU cores; run it on a quiet machine.
#
#   benchmarks/run_dit_xl.sh                         # the full run, results in benchmarks/results/
#   STEPS=2 REPEATS=1 WARMUP=0 OUT=/tmp/smoke benchmarks/run_dit_xl.sh    # a smoke test (~3 min)
#
# Extra arguments are passed to `ditcache bench`.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
STEPS=${STEPS:-20}
REPEATS=${REPEATS:-3}
WARMUP=${WARMUP:-1}
THREADS=${THREADS:-2}
OUT=${OUT:-benchmarks/results/dit_xl_2_cpu}
METHODS=${METHODS:-"none skip-dit-2 skip-dit-3 skip-dit-4 fora-2 fora-3 pab-236 pab-347 pab-469 diffusers-pab diffusers-fastercache"}

mkdir -p "$(dirname "$OUT")"
# shellcheck disable=SC2086
"$PY" -m dit_cache.cli bench \
  --model dit-xl-2 --resolution 256 --dtype float32 --device cpu \
  --scheduler ddim --steps "$STEPS" --cfg-scale 4.0 --batch 1 --seeds 0 \
  --methods $METHODS \
  --repeats "$REPEATS" --warmup "$WARMUP" --threads "$THREADS" --max-background 0.1 \
  --json "$OUT.json" --csv "$OUT.csv" --plot "$OUT.png" "$@" | tee "$OUT.txt"
