"""Speedup against PSNR, one labelled point per method (matplotlib, an optional dependency)."""
from __future__ import annotations

import math
import os

from .specs import UNPATCHED


class MissingDependency(RuntimeError):
    """An optional dependency a requested output needs is not installed."""


def plot_available() -> tuple[bool, str]:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False, "--plot needs matplotlib, which is not installed: pip install 'dit-cache[bench]'"
    return True, ""


def plot_results(results: list, path: str) -> None:
    """Speedup (vs `none`) against PSNR (vs the reference), one labelled point per method (and
    model, when there are several) of the `BenchResult`s."""
    ok, reason = plot_available()
    if not ok:
        raise MissingDependency(reason)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    several = len(results) > 1
    pts = [  # `unpatched` is the reference itself (and sits on top of `none`)
        ((f"{r['model']}: " if several else "") + r["method"], r["psnr"], r["speedup"])
        for result in results
        for r in result.rows
        if r["psnr"] is not None and r["speedup"] and r["preset"] != UNPATCHED
    ]
    finite = [p for _, p, _ in pts if math.isfinite(p)]
    top = (max(finite) + 10.0) if finite else 100.0
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, p, s in pts:
        x = p if math.isfinite(p) else top
        ax.scatter([x], [s], marker="o" if math.isfinite(p) else "D")
        ax.annotate(label + ("" if math.isfinite(p) else " (identical)"), (x, s), textcoords="offset points", xytext=(4, 4), fontsize=8)
    run = results[0].meta.get("run", {})
    if several:
        run = {**run, "model": ", ".join(r.meta.get("run", {}).get("model", "") for r in results)}
    ax.set_xlabel("PSNR vs the model's full output (dB, higher = closer)")
    ax.set_ylabel("speedup vs none (x)")
    ax.set_title(
        f"{run.get('model', '')} ({run.get('runner', '')}): {run.get('scheduler', '')} x {run.get('steps', '')} steps, "
        f"{run.get('resolution', '')} px, {run.get('dtype', '')}, {run.get('device', '')}",
        fontsize=9,
    )
    ax.axhline(1.0, color="gray", lw=0.5)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
