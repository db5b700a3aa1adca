"""The rows of a result: every rank's measurements per method, combined into `COLUMNS`."""
from __future__ import annotations

from .aggregate import Gathered
from .columns import COLUMNS
from .specs import UNPATCHED, MethodSpec


def build_rows(specs: list[MethodSpec], gathered: list[dict], model: str, timesteps: list[float]) -> list[dict]:
    """One row per spec (in order) from the ranks' ``{"seeds": [...], "methods": [...]}``."""
    by_label: dict[str, list[dict]] = {s.label: [] for s in specs}
    all_seeds: list[int] = []
    for part in gathered:
        all_seeds += part["seeds"]
        for m in part["methods"]:
            by_label[m["label"]].append(m)
    rows, reference_call = [], None
    for spec in specs:
        parts = [p for p in by_label[spec.label] if p is not None]
        g = Gathered(spec, parts, model, timesteps, all_seeds, reference_call)
        reference_call = g.reference_call
        rows.append({c.key: c.value(g) if c.value is not None else None for c in COLUMNS})
    baselines = {  # dit-cache's `none` and the unpatched model, as given (no options)
        r["preset"]: r for r in rows if r["kind"] != "peer" and r["method"] == r["preset"] and r["preset"] in ("none", UNPATCHED)
    }
    for row in rows:
        for c in COLUMNS:
            if c.relative is not None:
                row[c.key] = c.relative(row, baselines)
    return rows
