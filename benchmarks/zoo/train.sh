#!/usr/bin/env bash
# Trains the MNIST model zoo shipped in dit_cache/zoo/ (CPU, 1 thread per run, fixed seeds:
# re-running a command reproduces its checkpoint bit for bit on the same torch build).
#   bash benchmarks/zoo/train.sh mnist-dit mnist-skip-dit   # the pair can run side by side
#   bash benchmarks/zoo/train.sh mnist-dit-retrofit mnist-latte-base
#   bash benchmarks/zoo/train.sh mnist-latte                          # after mnist-latte-base
#   bash benchmarks/zoo/train.sh mnist-latte-more                     # after mnist-latte
# Results go to $ZOO_RUNS/<name> (default /tmp/zoo-runs); `python benchmarks/zoo/export.py`
# copies the shipped files (fp16 weights, config, command, log) into dit_cache/zoo/.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${ZOO_RUNS:-/tmp/zoo-runs}
mkdir -p "$RUNS"
COMMON=(--data mnist --batch-size 32 --warmup-steps 100 --lr-schedule cosine --ema-decay 0.999 --prediction-type sample
        --cond-dropout 0.1 --seed 0 --threads 1 --fp16 --checkpoint-every 500 --keep-checkpoints 100 --no-progress)
run() {  # name, args...
  local name=$1; shift
  echo "ditcache finetune $* --output $RUNS/$name" > "$RUNS/$name.command"
  ( time ditcache finetune "$@" --output "$RUNS/$name" ) > "$RUNS/$name.log" 2>&1
}
for name in "$@"; do
  case $name in
    mnist-dit)       run "$name" --model-config benchmarks/zoo/mnist-dit.json --adapters none --full-steps 4000 --lr 1e-3 "${COMMON[@]}" & ;;
    mnist-skip-dit)  run "$name" --model-config benchmarks/zoo/mnist-dit.json --adapters replace --full-steps 4000 --lr 1e-3 "${COMMON[@]}" & ;;
    mnist-dit-retrofit)  # 20% of mnist-dit's 4000 steps: 300 adapter-only + 500 full
      # (stage 1 at 1e-3 for the fresh adapters, stage 2 at 3e-4 for the pretrained model)
      run "$name" --model "$RUNS/mnist-dit/transformer" --scheduler-config "$RUNS/mnist-dit/scheduler" --adapters residual \
          --adapter-steps 300 --full-steps 500 --adapter-lr 1e-3 --lr 3e-4 "${COMMON[@]}" & ;;
    mnist-latte-base)
      # 8 clips (64 frames) per step: a Latte step costs ~4 DiT steps here
      run "$name" --model-config benchmarks/zoo/mnist-latte.json --adapters none --full-steps 1200 --lr 1e-3 \
          "${COMMON[@]/mnist/moving-mnist}" --batch-size 8 --checkpoint-every 400 & ;;
    mnist-latte)  # needs mnist-latte-base: 2800 more steps on it (4000 in all, as mnist-dit), a new data
      # order (seed 1); the base alone ignores the class (per-frame class accuracy 0.12, chance 0.10)
      run "$name" --model "$RUNS/mnist-latte-base/transformer" --scheduler-config "$RUNS/mnist-latte-base/scheduler" \
          --adapters none --full-steps 2800 --lr 1e-3 "${COMMON[@]/mnist/moving-mnist}" --batch-size 8 --seed 1 \
          --checkpoint-every 400 & ;;
    mnist-latte-more)  # needs mnist-latte: 2400 more steps at half the rate (per-frame class accuracy 0.44
      # after mnist-latte; the issue asks for 0.5), a third data order (seed 2)
      run "$name" --model "$RUNS/mnist-latte/transformer" --scheduler-config "$RUNS/mnist-latte/scheduler" \
          --adapters none --full-steps 2400 --lr 5e-4 "${COMMON[@]/mnist/moving-mnist}" --batch-size 8 --seed 2 \
          --warmup-steps 50 --checkpoint-every 400 & ;;
    *) echo "unknown zoo model $name" >&2; exit 2 ;;
  esac
done
wait
