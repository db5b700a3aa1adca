"""Copy the shipped files of trained zoo runs into dit_cache/zoo/<name>/.

    python benchmarks/zoo/export.py [NAME ...]      # default: every run found in $ZOO_RUNS

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


def export(name: str) -> None:
    run = RUNS / name
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
    (dest / "command.txt").write_text((RUNS / f"{name}.command").read_text(encoding="utf-8"), encoding="utf-8")
    log = (RUNS / f"{name}.log").read_text(encoding="utf-8").splitlines()
    (dest / "time.txt").write_text("\n".join(ln for ln in log if ln.startswith(("trained", "real", "user", "sys"))) + "\n",
                                   encoding="utf-8")
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    print(f"{name}: {size / 2**20:.1f} MiB -> {dest.relative_to(ROOT)}")


def main(argv: list[str]) -> int:
    names = argv or [n for n in NAMES if (RUNS / n / "finetune.json").is_file()]
    for name in names:
        export(name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
