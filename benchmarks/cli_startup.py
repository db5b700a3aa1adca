"""Wall time of `ditcache` commands that should answer at once (issue 14: under 1.5 s), each
run in a fresh process, median of `--repeats` runs, alternating commands round by round.

    .venv/bin/python benchmarks/cli_startup.py --json benchmarks/results/cli_startup.json \
        > benchmarks/results/cli_startup.txt
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from dit_cache._common.files import atomic_write

COMMANDS = {
    "--help": ["--help"],
    "--version": ["--version"],
    "presets": ["presets"],
    "schedule skip-dit --steps 20": ["schedule", "skip-dit", "--steps", "20"],
    "schedule pab-236 --model tiny-latte --scheduler dpm++": ["schedule", "pab-236", "--model", "tiny-latte",
                                                               "--scheduler", "dpm++"],
    "bench --steps 0 (argument error)": ["bench", "--steps", "0"],
    "import dit_cache": None,
}
BOUND_S = 1.5


def _once(args) -> tuple[float, int]:
    cmd = [sys.executable, "-c", "import dit_cache"] if args is None else [sys.executable, "-m", "dit_cache.cli", *args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return time.perf_counter() - t0, proc.returncode


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json")
    a = p.parse_args(argv)
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    codes = {}
    for _ in range(a.repeats):
        for name, args in COMMANDS.items():
            seconds, codes[name] = _once(args)
            times[name].append(seconds)
    rows = {name: {"median_s": statistics.median(t), "max_s": max(t), "rc": codes[name]} for name, t in times.items()}
    for name, r in rows.items():
        verdict = "ok" if r["median_s"] < BOUND_S else f"over {BOUND_S} s"
        print(f"{name:54s} {r['median_s']:6.2f} s median, {r['max_s']:6.2f} s max, rc {r['rc']}  {verdict}")
    if a.json:
        text = json.dumps({"bound_s": BOUND_S, "repeats": a.repeats, "results": rows}, indent=1)
        atomic_write(a.json, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
