"""The result as a rich table: the `COLUMNS` that have a heading, the patterns and notes below."""
from __future__ import annotations

from .columns import COLUMNS

BUSY_WARNING = 0.25  # share of the CPUs other processes used that makes latencies unreliable
NOISE_BOUND = 0.10  # latency IQR / median above which speedups are noise: they are withheld
SPEEDUP_COLUMNS = ("speedup", "efficiency")


def latency_noise(result) -> tuple[float, str] | None:
    """(the largest latency IQR / median of the timed rows, its method) when it exceeds
    NOISE_BOUND, else None. A paired run's speedups are medians of adjacent ratios: there the
    spread that matters is that of the ratios (drift between pairs cancels)."""
    if result.meta.get("order") == "paired":
        spreads = [(r["paired_spread"], r["method"]) for r in result.rows
                   if r["status"] == "ok" and r.get("paired_spread") is not None]
    else:
        spreads = [
            (r["latency_iqr_s"] / r["latency_s"], r["method"])
            for r in result.rows
            if r["status"] == "ok" and r.get("latency_iqr_s") is not None and r.get("latency_s")
        ]
    worst = max(spreads, default=None)
    return worst if worst is not None and worst[0] > NOISE_BOUND else None


def too_small_to_pay(result) -> float | None:
    """The seconds per model call when caching promised a speedup (ideal >= 1.3x) that the
    clock did not show (efficiency < 0.7) on a model whose forward takes under 20 ms."""
    steps = max(1, result.meta.get("run", {}).get("steps") or 1)
    rows = {r["method"]: r for r in result.rows if r["status"] == "ok"}
    per_call = rows.get("none", {}).get("latency_s")
    if per_call is None:
        return None
    per_call /= steps
    missed = [r for r in rows.values() if (r.get("ideal_speedup") or 0) >= 1.3 and (r.get("efficiency") or 1) < 0.7]
    return per_call if missed and per_call < 0.02 else None


def _title(result) -> str:
    run = result.meta.get("run", {})
    return (
        # one line per topic, so that an 80-column terminal breaks between them, not mid-phrase
        f"{run.get('model')} ({run.get('transformer_class')}, {run.get('params', 0) / 1e6:.1f}M params)\n"
        f"{run.get('runner')}, {run.get('scheduler')} x {run.get('steps')} steps, {run.get('resolution')} px"
        + (f", {run.get('frames')} frames" if run.get("frames") else "")
        + f", batch {run.get('batch')}, CFG {run.get('cfg_scale')}{' (batched)' if run.get('cfg') else ' (off)'}, "
        f"{run.get('dtype')}, {run.get('device')}\n{result.meta.get('threads')} threads"
        + (f" ({result.meta['threads_why']})" if result.meta.get("threads_why") else "")
    )


def _caption(result, pattern_width: int, noise) -> str:
    lines = []
    for r in result.rows:
        p = r.get("pattern")
        if p and r["status"] == "ok":
            shown = p if len(p) <= pattern_width else p[: pattern_width - 1] + "…"
            lines.append(f"{r['method']:>24}  {shown}")
    meta = result.meta
    s = meta.get("summary", {})
    notes = []
    if noise is not None:
        notes.append(
            f"[red]speedups withheld: latency spread (IQR / median) up to {noise[0]:.0%} ({noise[1]}), over "
            f"{NOISE_BOUND:.0%}: the timings are noise. Rerun on a quiet machine with --threads 1 and more "
            "--repeats; FLOPs, ideal speedups and fidelity above are exact[/red]"
        )
    elif "none_vs_unpatched_latency" in s:
        notes.append(f"none vs unpatched latency: {s['none_vs_unpatched_latency'] * 100:+.1f}%")
    if str(meta.get("device")) == "meta":
        notes.append("meta device: FLOPs and step patterns only (nothing was computed, timed or measured in memory)")
    else:
        notes.append(f"seeds {meta.get('seeds')}, {meta.get('repeats')} timed repeats "
                     f"({meta.get('order')}) after {meta.get('warmup')} warm-up; "
                     f"world size {meta.get('world_size')}")
        notes.append(f"memory: {meta.get('memory_method')}")
    floor = next((r["fid_floor"] for r in result.rows if r.get("fid_floor") is not None), None)
    if floor is not None:
        n = next(r["n_quality"] for r in result.rows if r.get("fid_floor") is not None)
        notes.append(f"FID-MNIST of {n} real digits: {floor:.1f} (the floor at this sample count; lower is better)")
    small = too_small_to_pay(result)
    if small is not None:
        notes.append(
            f"[yellow]this model is too small for caching to pay: a forward takes {small * 1e3:.1f} ms, where "
            "Python-side hook and tracking costs weigh as much as the blocks skipped; speedups grow with "
            "the model (see benchmarks/results/dit_xl_2_cpu.txt)[/yellow]"
        )
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
    noise = latency_noise(result)
    if noise is not None:
        cols = [c for c in cols if c.key not in SPEEDUP_COLUMNS]
    for i, c in enumerate(cols):  # the first column names the method
        table.add_column(c.header, justify="left" if i == 0 else "right", no_wrap=i == 0)
    reasons: list[str] = []  # n/a reasons, as numbered notes under the table
    for r in result.rows:
        if r["status"] != "ok":
            reason = r["status"].removeprefix("n/a: ")
            if reason not in reasons:
                reasons.append(reason)
            table.add_row(cols[0].text(r), f"[yellow]n/a [{reasons.index(reason) + 1}][/yellow]", *[""] * (len(cols) - 2))
        else:
            table.add_row(*(c.text(r) for c in cols))
    notes = [f"[{i}] {reason}" for i, reason in enumerate(reasons, 1)]
    table.caption = "\n".join([_caption(result, pattern_width, noise), *notes])
    table.caption_justify = "left"
    return table
