"""Wall time of one step of each plan action on a zoo model: a 20-step plan of F then 19 steps of
the action, minus the all-F run, per step, as a share of a full step (one thread, rounds
interleaved over the actions, median).

    python benchmarks/action_cost.py mnist-dit --json benchmarks/results/action_cost.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from dit_cache._common.files import atomic_write

ACTIONS = ("F", "A", "R0", "S1")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", nargs="?", default="mnist-dit")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batch", type=int, default=20)
    p.add_argument("--json")
    a = p.parse_args(argv)
    import torch

    import dit_cache
    from dit_cache import StepPlanConfig
    from dit_cache.bench.runners import RunSettings, load_zoo_runner

    torch.set_num_threads(1)
    runners = {}
    for action in ACTIONS:
        runner = load_zoo_runner(a.model, RunSettings(steps=20, batch=a.batch))
        dit_cache.patch(runner.transformer, StepPlanConfig(plan=("F",) + (action,) * 19))
        runners[action] = (runner, runner.prepare(0))
        runner.generate(runners[action][1])  # warm-up
    seconds = {action: [] for action in ACTIONS}
    for _ in range(a.rounds):
        for action, (runner, prepared) in runners.items():
            t0 = time.perf_counter()
            runner.generate(prepared)
            seconds[action].append(time.perf_counter() - t0)
    whole = {action: statistics.median(s) for action, s in seconds.items()}
    full_step = whole["F"] / 20
    rows = {action: {"generation_s": whole[action], "step_ms": 1e3 * (whole[action] - full_step) / 19,
                     "share_of_full_step": (whole[action] - full_step) / 19 / full_step} for action in ACTIONS}
    for action, r in rows.items():
        print(f"{action:3s} generation {r['generation_s']:6.3f} s   step {r['step_ms']:7.2f} ms   "
              f"{100 * r['share_of_full_step']:5.1f}% of a full step")
    if a.json:
        text = json.dumps({"model": a.model, "batch": a.batch, "rounds": a.rounds, "threads": 1,
                           "command": "python benchmarks/action_cost.py " + " ".join(argv or os.sys.argv[1:]),
                           "actions": rows, "samples_s": seconds}, indent=1)
        atomic_write(a.json, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
