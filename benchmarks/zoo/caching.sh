#!/usr/bin/env bash
# Caching fidelity vs measured speedup on the trained zoo (REPRODUCTION.md, part 2).
# Same scheduler (DDIM), steps (20), CFG (the zoo's 2.0), seeds and class-balanced labels for
# every method; one thread per bench, interleaved timed rounds.
#   bash benchmarks/zoo/caching.sh [dit] [latte]     # ~30 min (dit) + ~15 min (latte) on one core each
set -euo pipefail
cd "$(dirname "$0")/../.."
R=benchmarks/results
COMMON=(--steps 20 --repeats 1 --threads "${THREADS:-1}" --no-progress)
SKIP=(skip-dit-2 skip-dit-3 skip-dit-4 skip-dit-5)
bench() {  # name, args...
  local name=$1; shift
  ditcache bench --model "$name" "${COMMON[@]}" "$@" --json "$R/zoo_bench_$name.json" --csv "$R/zoo_bench_$name.csv" \
    > "$R/zoo_bench_$name.txt"
}
parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(dit latte)
for part in "${parts[@]}"; do
  case $part in
    dit)  # 200 digits per method (4 seeds x 50, 5 per class per seed); FORA / PAB on the model without trained skips
      bench mnist-dit --batch 50 --seeds 0 1 2 3 --methods skip-dit-2 skip-dit-3 fora-2 fora-3 fora-4 fora-5 pab-236 pab-347 pab-469
      bench mnist-dit-retrofit --batch 50 --seeds 0 1 2 3 --methods "${SKIP[@]}"
      bench mnist-skip-dit --batch 50 --seeds 0 1 2 3 --methods "${SKIP[@]}" ;;
    latte)  # 20 clips (160 frames) per method
      bench mnist-latte --batch 10 --seeds 0 1 --methods skip-dit-2 skip-dit-3 fora-2 fora-3 pab-236 pab-347 pab-469 ;;
    *) echo "unknown part $part (dit | latte)" >&2; exit 2 ;;
  esac
done
