"""The committed figures of tests/test_zoo.py::test_quality_regression_skip_dit_2: skip-dit N=2
PSNR vs the full output of every zoo model, with the test's own settings (the same run_bench call).

    python benchmarks/zoo/regression.py              # writes benchmarks/results/zoo_regression.json
    python benchmarks/zoo/regression.py mnist-latte  # re-measures one model, keeps the others
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from dit_cache import zoo
from dit_cache._common.files import atomic_write
from dit_cache.bench import BenchConfig, run_bench

OUT = Path(__file__).resolve().parents[1] / "results" / "zoo_regression.json"
SETTINGS = {"steps": 20, "batch": 4, "seeds": [0]}


def main(names: list[str]) -> int:
    psnr = json.loads(OUT.read_text())["psnr"] if names and OUT.is_file() else {}
    for name in names or zoo.ZOO_MODELS:
        cfg = BenchConfig(model=name, methods=["skip-dit-2"], steps=SETTINGS["steps"], batch=SETTINGS["batch"],
                          seeds=SETTINGS["seeds"], repeats=1, warmup=0, threads=1, flops=False, memory=False)
        row = {r["method"]: r for r in run_bench(cfg).rows}["skip-dit-2"]
        psnr[name] = round(row["psnr"], 3)
        print(name, psnr[name], flush=True)
    text = json.dumps({"command": "python " + " ".join(sys.argv), "settings": SETTINGS, "psnr": psnr}, indent=1) + "\n"
    atomic_write(OUT, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
