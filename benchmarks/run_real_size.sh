#!/usr/bin/env bash
# FLOP-ideal speedups of every dit-cache method on the real-size configs (random weights), on
# the meta device: nothing is allocated or computed, FlopCounterMode counts by shape, and each
# method's step pattern is its schedule's. 20 steps of the family's default sampler, CFG on.
#   bash benchmarks/run_real_size.sh            # all of them -> benchmarks/results/real_size/
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=benchmarks/results/real_size
mkdir -p "$OUT"
METHODS=(skip-dit skip-dit-2 fora fora-3 pab-236 pab-469)
for model in ${MODELS:-dit-xl-2 latte-1 hunyuan-dit pixart-sigma sd3.5-medium flux.1-dev wan2.1-1.3b}; do
  extra=()
  [ "$model" = wan2.1-1.3b ] && extra=(--frames 21)   # 81 video frames at 480 x 480: 18,900 tokens
  OMP_NUM_THREADS=1 .venv/bin/ditcache bench --model "$model" --device meta --steps 20 --methods "${METHODS[@]}" \
    "${extra[@]}" --no-progress --json "$OUT/$model.json" | tee "$OUT/$model.txt"
done
