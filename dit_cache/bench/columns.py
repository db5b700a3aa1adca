"""Every column of a bench row, declared once: its key (JSON and CSV), how it is computed, and
how the table shows it. `ROW_KEYS`, the CSV header and the table are all made from `COLUMNS`.

A column's value comes either from the method's combined measurements (`value`, given an
`aggregate.Gathered`) or, for the figures relative to the baselines, from its finished row and
the `none` / `unpatched` rows (`relative`, given the row and a dict of those two rows).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from .aggregate import mean_or_none, mean_psnr, weighted_mean
from .specs import UNPATCHED


@dataclass(frozen=True)
class Column:
    key: str
    value: Callable[[Any], Any] | None = None  # from an aggregate.Gathered
    relative: Callable[[dict, dict], Any] | None = None  # from (row, {"none": row, "unpatched": row})
    unit: str = ""  # of the JSON/CSV value
    header: str | None = None  # the table's heading; None: not in the table
    fmt: str = ".3g"  # the table's number format, of value / scale
    scale: float = 1.0
    cell: Callable[[dict], str] | None = None  # the table's text when a number format will not do
    shown: Callable[[list[dict]], bool] | None = None  # in the table only when true of the rows
    export: str = "row"  # "row": in ROW_KEYS (JSON, CSV); "csv": JSON and CSV; "json": JSON only

    def text(self, row: dict) -> str:
        if self.cell is not None:
            return self.cell(row)
        return format_number(row.get(self.key), self.fmt, self.scale)


def format_number(x, fmt: str = ".3g", scale: float = 1.0) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    return format(x / scale if scale != 1.0 else x, fmt)


def _ok(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """The value only for a method that ran (None on an n/a row)."""
    return lambda g: fn(g) if g.ok else None


def _latency(key: str) -> Callable[[Any], Any]:
    return lambda g: g.latency[key]


def _ratio(num, den):
    return num / den if num and den else None


def _speedup(row, base):
    if row.get("paired_speedup") is not None:  # order="paired": the median adjacent ratio
        return row["paired_speedup"]
    none = base.get("none")
    return _ratio(none and none["latency_s"], row["latency_s"])


def _ideal(row, base):
    none = base.get("none")
    return _ratio(none and none["flops"], row["flops"])


def _mem_overhead(row, base):
    unpatched = base.get(UNPATCHED)
    ref = unpatched and unpatched["peak_mem_bytes"]
    return row["peak_mem_bytes"] - ref if row["peak_mem_bytes"] is not None and ref is not None else None


def _steps_cell(row: dict) -> str:
    return f"{row['full_steps']}/{row['cached_steps']}" if row["full_steps"] is not None else "-"


def _has_quality(rows: list[dict]) -> bool:
    """Zoo models: FID-MNIST and class accuracy of the samples."""
    return any(r.get("fid_mnist") is not None or r.get("class_acc") is not None for r in rows)


MIB = float(2**20)

def _share(value) -> str:
    return "-" if value is None else "0" if value == 0 else f"{value:.2%}" if value >= 1e-4 else f"{value:.1e}"


COLUMNS: tuple[Column, ...] = (
    Column("model", lambda g: g.model),
    Column("method", lambda g: g.spec.label, header="method", cell=lambda r: r["method"]),
    Column("preset", lambda g: g.spec.name),
    Column("kind", lambda g: g.spec.kind),
    Column("status", lambda g: g.status),
    Column("config", lambda g: next((p.get("config") for p in g.parts if p.get("config")), "")),
    Column("setup", lambda g: next((p["setup"] for p in g.parts if p.get("setup")), None), export="json"),
    Column("latency_s", _latency("latency_s"), unit="s", header="latency s", fmt=".3f"),
    Column("latency_iqr_s", _latency("latency_iqr_s"), unit="s", header="IQR", fmt=".3f"),
    Column("latency_q1_s", _latency("latency_q1_s"), unit="s"),
    Column("latency_q3_s", _latency("latency_q3_s"), unit="s"),
    Column("latency_min_s", _latency("latency_min_s"), unit="s"),
    Column("n_timed", lambda g: len(g.samples)),
    Column("paired_speedup", lambda g: g.paired_speedup, unit="x vs none"),
    Column("paired_spread", lambda g: g.paired_spread, unit="IQR / median of the paired ratios"),
    Column("speedup", relative=_speedup, unit="x vs none", header="speedup", fmt=".2f"),
    Column("flops", lambda g: g.first.get("flops"), unit="FLOPs", header="GFLOPs", fmt=",.1f", scale=1e9),
    Column("transformer_flops", lambda g: sum(g.calls) if g.calls else None, unit="FLOPs"),
    Column("ideal_speedup", relative=_ideal, unit="x vs none", header="ideal", fmt=".2f"),
    Column("efficiency", relative=lambda row, base: _ratio(row["speedup"], row["ideal_speedup"]),
           header="eff.", fmt=".2f"),
    Column("peak_mem_bytes", lambda g: max(g.values("peak_mem_bytes"), default=None), unit="bytes",
           header="peak MiB", fmt=",.1f", scale=MIB),
    Column("state_bytes", lambda g: g.first.get("state_bytes"), unit="bytes"),
    Column("activation_peak_bytes", lambda g: max(g.values("activation_peak_bytes"), default=None), unit="bytes"),
    Column("mem_overhead_bytes", relative=_mem_overhead, unit="bytes vs unpatched"),
    Column("full_steps", lambda g: g.steps[0], header="full/cached", cell=_steps_cell),
    Column("cached_steps", lambda g: g.steps[1]),
    Column("pattern", lambda g: g.steps[2]),
    Column("psnr", _ok(lambda g: mean_psnr(g.psnr)), unit="dB", header="PSNR dB", fmt=".1f"),
    Column("ssim", _ok(lambda g: mean_or_none(g.ssim)), header="SSIM", fmt=".4f"),
    Column("max_abs_err", lambda g: max((p["max_abs_err"] for p in g.parts if "max_abs_err" in p), default=None)),
    Column("max_rel_err", lambda g: max((p["max_rel_err"] for p in g.parts if "max_rel_err" in p), default=None),
           unit="of the reference's value range", header="max err", cell=lambda r: _share(r.get("max_rel_err")),
           export="csv"),
    Column("n_images", lambda g: len(g.psnr)),
    # with several ranks FID is the mean of the ranks' FIDs (each over its seeds)
    Column("fid_mnist", _ok(lambda g: mean_or_none([p.get("fid_mnist") for p in g.parts])),
           header="FID-MNIST", fmt=".2f", shown=_has_quality),
    Column("class_acc", _ok(lambda g: weighted_mean((p.get("class_acc"), p.get("n_quality")) for p in g.parts)),
           header="class acc", fmt=".3f", shown=_has_quality),
    Column("fid_floor", _ok(lambda g: next((p["fid_floor"] for p in g.parts if p.get("fid_floor") is not None), None)),
           unit="FID-MNIST of as many real digits", export="json"),
    Column("n_quality", lambda g: sum(p.get("n_quality") or 0 for p in g.parts) or None),
    Column("background_cpu", lambda g: max(g.background) if g.background else None, unit="share of the CPUs"),
    Column("seeds", lambda g: g.seeds, export="csv"),
    Column("mem_method", lambda g: g.first.get("mem_method"), export="csv"),
    Column("latency_samples_s", lambda g: g.samples, unit="s", export="json"),
    Column("cached_bytes", lambda g: g.first.get("cached_bytes"), unit="bytes", export="json"),
)

#: Keys every row carries (JSON and CSV).
ROW_KEYS = tuple(c.key for c in COLUMNS if c.export == "row")
CSV_KEYS = tuple(c.key for c in COLUMNS if c.export in ("row", "csv"))
