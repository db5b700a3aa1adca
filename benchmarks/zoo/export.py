"""Copy the shipped files of trained zoo runs into dit_cache/zoo/<name>/.

    python benchmarks/zoo/export.py [NAME ...]      # default: every run found in $ZOO_RUNS

A zoo model trained in several runs ships its last one (SHIPPED_RUN) with every run's command.

Shipped: transformer/ (fp16 safetensors + config), adapters.safetensors (if any), scheduler/,
finetune.json, command.txt (the exact training command), train_log.jsonl thinned to every 10th
step (plus the last; the full log is reproduced by re-running the command) and time.txt (the
`time` of the run). Checkpoints stay in the run folder.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUNS = Path(os.environ.get("ZOO_RUNS", "/tmp/zoo-runs"))
ZOO = ROOT / "dit_cache" / "zoo"
NAMES = ("mnist-dit", "mnist-dit-retrofit", "mnist-skip-dit", "mnist-latte")
LOG_EVERY = 10
# zoo name -> the runs that made it, in training order; the last one's weights ship
LINEAGE = {"mnist-latte": ("mnist-latte-base", "mnist-latte", "mnist-latte-more")}


def _time_lines(run_name: str) -> list[str]:
    lines = []
    for log in (RUNS / f"{run_name}.log", RUNS / f"{run_name}.resume.log"):  # a resumed run has both
        if log.is_file():
            lines += [ln for ln in log.read_text(encoding="utf-8").splitlines()
                      if ln.startswith(("trained", "real", "user", "sys"))]
    return lines


def export(name: str) -> None:
    runs = LINEAGE.get(name, (name,))
    run = RUNS / runs[-1]
    if not (run / "finetune.json").is_file():
        raise SystemExit(f"{run} holds no finished run (no finetune.json)")
    dest = ZOO / name
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for sub in ("transformer", "scheduler"):
        shutil.copytree(run / sub, dest / sub)
    for f in ("adapters.safetensors", "finetune.json"):
        if (run / f).is_file():
            shutil.copy2(run / f, dest / f)
    lines = (run / "train_log.jsonl").read_text(encoding="utf-8").splitlines()
    kept = [ln for ln in lines if json.loads(ln)["step"] % LOG_EVERY == 0] + ([lines[-1]] if lines else [])
    (dest / "train_log.jsonl").write_text("\n".join(dict.fromkeys(kept)) + "\n", encoding="utf-8")
    commands = [(RUNS / f"{r}.command").read_text(encoding="utf-8").strip() for r in runs]
    (dest / "command.txt").write_text("\n".join(commands) + "\n", encoding="utf-8")
    times = ([f"# {r}\n" + ("\n".join(_time_lines(r)) or "(log not kept)") for r in runs] if len(runs) > 1
             else _time_lines(name))
    (dest / "time.txt").write_text("\n".join(times) + "\n", encoding="utf-8")
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    print(f"{name}: {size / 2**20:.1f} MiB -> {dest.relative_to(ROOT)}")


def main(argv: list[str]) -> int:
    names = argv or [n for n in NAMES if (RUNS / LINEAGE.get(n, (n,))[-1] / "finetune.json").is_file()]
    for name in names:
        export(name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
