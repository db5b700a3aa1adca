"""The result as a rich table: the `COLUMNS` that have a heading, the patterns and notes below."""
from __future__ import annotations

from .columns import COLUMNS

BUSY_WARNING = 0.25  # share of the CPUs other processes used that makes latencies unreliable


def _title(result) -> str:
    run = result.meta.get("run", {})
    return (
        f"{run.get('model')} ({run.get('transformer_class')}, {run.get('params', 0) / 1e6:.1f}M params) - "
        f"{run.get('runner')}, {run.get('scheduler')} x {run.get('steps')} steps, {run.get('resolution')} px"
        + (f", {run.get('frames')} frames" if run.get("frames") else "")
        + f", batch {run.get('batch')}, CFG {run.get('cfg_scale')}{' (batched)' if run.get('cfg') else ' (off)'}, "
        f"{run.get('dtype')}, {run.get('device')}, {result.meta.get('threads')} threads"
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
    if "none_vs_unpatched_latency" in s:
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
