"""Render the tables of benchmarks/REPRODUCTION.md from the committed JSON results (so no figure
is typed by hand): every `<!-- table:NAME -->` ... `<!-- /table -->` region is regenerated.

    python benchmarks/zoo/report.py
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "benchmarks" / "REPRODUCTION.md"


def _load(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def _f(x, spec=".2f") -> str:
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    return format(x, spec)


def training() -> str:
    d = _load("zoo_training_curves.json")
    runs = d["runs"]
    names = list(runs)
    steps = sorted({c["step"] for r in runs.values() for c in r["checkpoints"]})
    head = "| step | " + " | ".join(f"{n} loss | {n} FID-MNIST | {n} class acc" for n in names) + " |"
    lines = [head, "|" + "---|" * (1 + 3 * len(names))]
    for s in steps:
        cells = []
        for n in names:
            loss = dict(runs[n]["loss"]).get(s)
            c = next((c for c in runs[n]["checkpoints"] if c["step"] == s), {})
            cells += [_f(loss, ".4f"), _f(c.get("fid_mnist"), ".1f"), _f(c.get("class_acc"), ".3f")]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def caching(models: list[str]) -> str:
    lines = ["| model | method | full/cached | speedup | ideal (FLOPs) | PSNR dB | SSIM | FID-MNIST | class acc |",
             "|---|---|---|---|---|---|---|---|---|"]
    for m in models:
        path = RESULTS / f"zoo_bench_{m}.json"
        if not path.is_file():
            continue
        for r in _load(path.name)["rows"]:
            if r["status"] != "ok":
                continue
            steps = f"{r['full_steps']}/{r['cached_steps']}" if r.get("full_steps") is not None else "-"
            lines.append(
                f"| {m} | {r['method']} | {steps} | {_f(r['speedup'])} | {_f(r['ideal_speedup'])} | "
                f"{_f(r['psnr'], '.1f')} | {_f(r['ssim'], '.3f')} | {_f(r.get('fid_mnist'), '.1f')} | "
                f"{_f(r.get('class_acc'), '.3f')} |"
            )
    return "\n".join(lines)


def stability() -> str:
    """Cosine *distance* (1 - cos) x 1000: the similarities themselves all round to 0.99x."""
    d = _load("zoo_feature_stability.json")["models"]
    n = len(next(iter(d.values()))["perturbation"])
    lines = ["| model | view | " + " | ".join(f"block {i}" for i in range(n)) + " | mean |",
             "|" + "---|" * (n + 3)]
    for name, r in d.items():
        for key in ("perturbation", "across_steps"):
            vals = [1000 * (1 - v) for v in r[key]]
            lines.append(f"| {name} | {key} | " + " | ".join(f"{v:.2f}" for v in vals) + f" | {sum(vals) / len(vals):.2f} |")
    return "\n".join(lines)


TABLES = {
    "training": training,
    "caching-dit": lambda: caching(["mnist-dit", "mnist-dit-retrofit", "mnist-skip-dit"]),
    "caching-latte": lambda: caching(["mnist-latte"]),
    "stability": stability,
}


def caching_plot(path: Path) -> None:
    """PSNR vs measured speedup, one series per model and method family (from the bench JSONs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, models in zip(axes, (["mnist-dit", "mnist-dit-retrofit", "mnist-skip-dit"], ["mnist-latte"])):
        for m in models:
            f = RESULTS / f"zoo_bench_{m}.json"
            if not f.is_file():
                continue
            rows = [r for r in _load(f.name)["rows"] if r["status"] == "ok" and r["speedup"]
                    and isinstance(r["psnr"], (int, float)) and math.isfinite(r["psnr"])]
            for family, marker in (("skip-dit", "o"), ("fora", "s"), ("pab", "^")):
                pts = sorted((r["speedup"], r["psnr"], r["method"]) for r in rows if r["preset"].startswith(family))
                if pts:
                    label = f"{family} on {m}" + (" (untrained adapters)" if family == "skip-dit" and m in ("mnist-dit", "mnist-latte") else "")
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=label)
                    for x, y, name in pts:
                        ax.annotate(name.split("-")[-1], (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
        ax.set(xlabel="measured speedup vs none (x)", ylabel="PSNR vs the model's full output (dB)",
               title="DiT zoo" if len(models) > 1 else "Latte zoo")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    caching_plot(RESULTS / "zoo_caching.png")
    text = DOC.read_text()
    for name, fn in TABLES.items():
        pattern = re.compile(rf"(<!-- table:{name} -->\n).*?(<!-- /table -->)", re.S)
        if not pattern.search(text):
            continue
        try:
            body = fn()
        except FileNotFoundError as err:
            print(f"{name}: skipped ({err.filename} missing)")
            continue
        text = pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)
    DOC.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
