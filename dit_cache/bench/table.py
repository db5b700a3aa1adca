"""The result as a rich table: the `COLUMNS` that have a heading, the patterns and notes below."""
from __future__ import annotations

from .columns import COLUMNS

BUSY_WARNING = 0.25  # share of the CPUs other processes used that makes latencies unreliable
NOISE_BOUND = 0.10  # latency IQR / median above which speedups are noise: they are withheld
SPEEDUP_COLUMNS = ("speedup", "efficiency")


def latency_noise(result) -> tuple[float, str] | None:
    """(the largest latency IQR / median of the timed rows, its method) when it exceeds
    NOISE_BOUND, else None."""
    spreads = [
        (r["latency_iqr_s"] / r["latency_s"], r["method"])
        for r in result.rows
        if r["status"] == "ok" and r.get("latency_iqr_s") is not None and r.get("latency_s")
    ]
    worst = max(spreads, default=None)
    return worst if worst is not None and worst[0] > NOISE_BOUND else None


def _title(result) -> str:
    run = result.meta.get("run", {})
    return (
        f"{run.get('model')} ({run.get('transformer_class')}, {run.get('params', 0) / 1e6:.1f}M params) - "
        f"{run.get('runner')}, {run.get('scheduler')} x {run.get('steps')} steps, {run.get('resolution')} px"
        + (f", {run.get('frames')} frames" if run.get("frames") else "")
        + f", batch {run.get('batch')}, CFG {run.get('cfg_scale')}{' (batched)' if run.get('cfg') else ' (off)'}, "
        f"{run.get('dtype')}, {run.get('device')}, {result.meta.get('threads')} threads"
        + (f" ({result.meta['threads_why']})" if result.meta.get("threads_why") else "")
    )


def _caption(result, pattern_width: int) -> str:
    lines = []
    for r in result.rows:
        p = r.get("pattern")
        if p and r["status"] == "ok":
            shown = p if len(p) <= pattern_width else p[: pattern_width - 1] + "…"
            lines.append(f"{r['method']:>24}  {shown}")
    meta = result.meta
    s = meta.get("summary", {})
    notes = []
    noise = latency_noise(result)
    if noise is not None:
        notes.append(
            f"[red]speedups withheld: latency spread (IQR / median) up to {noise[0]:.0%} ({noise[1]}), over "
            f"{NOISE_BOUND:.0%}: the timings are noise. Rerun on a quiet machine with --threads 1 and more "
            "--repeats; FLOPs, ideal speedups and fidelity above are exact[/red]"
        )
    elif "none_vs_unpatched_latency" in s:
        notes.append(f"none vs unpatched latency: {s['none_vs_unpatched_latency'] * 100:+.1f}%")
    notes.append(f"seeds {meta.get('seeds')}, {meta.get('repeats')} timed repeats "
                 f"({meta.get('order')}) after {meta.get('warmup')} warm-up; "
                 f"world size {meta.get('world_size')}")
    notes.append(f"memory: {meta.get('memory_method')}")
    busy = max((r["background_cpu"] for r in result.rows if r.get("background_cpu") is not None), default=None)
    if busy is not None and busy > BUSY_WARNING and meta.get("world_size", 1) == 1:
        notes.append(
            f"[yellow]warning: other processes used up to {busy:.0%} of the CPUs during timed runs: latencies are "
            "unreliable; rerun on a quiet machine (or with --max-background 0.1)[/yellow]"
        )
    return "\n".join(["F = full step, c = cached step", *lines, *notes])


def render_table(result, pattern_width: int = 60):
    """A rich Table of a `BenchResult`'s rows (plus the schedule patterns in the caption)."""
    from rich.table import Table

    table = Table(title=_title(result), title_justify="left")
    cols = [c for c in COLUMNS if c.header is not None and (c.shown is None or c.shown(result.rows))]
    if latency_noise(result) is not None:
        cols = [c for c in cols if c.key not in SPEEDUP_COLUMNS]
    for i, c in enumerate(cols):  # the first column names the method
        table.add_column(c.header, justify="left" if i == 0 else "right", no_wrap=i == 0)
    for r in result.rows:
        if r["status"] != "ok":
            table.add_row(cols[0].text(r), f"[yellow]{r['status']}[/yellow]", *[""] * (len(cols) - 2))
        else:
            table.add_row(*(c.text(r) for c in cols))
    table.caption = _caption(result, pattern_width)
    table.caption_justify = "left"
    return table
