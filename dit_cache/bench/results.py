"""A benchmark's result (`BenchResult`, or `SuiteResult` for several models) and its JSON/CSV files."""
from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass

from .._common import files
from .columns import CSV_KEYS
from .plot import plot_results


def json_safe(value):
    """JSON has no infinity: inf becomes the string "inf" (NaN becomes null)."""
    if isinstance(value, float):
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        if math.isnan(value):
            return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def ensure_dir(path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)


def write_json(obj: dict, path: str) -> None:
    ensure_dir(path)
    files.write_json(path, obj, indent=1, allow_nan=False)


def write_csv(rows: list[dict], path: str) -> None:
    ensure_dir(path)

    def write(tmp):
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_KEYS, extrasaction="ignore")
            writer.writeheader()
            for r in rows:
                writer.writerow({k: (" ".join(map(str, r[k])) if isinstance(r.get(k), list) else r.get(k)) for k in CSV_KEYS})

    files.atomic_write(path, write)


@dataclass
class BenchResult:
    rows: list[dict]
    meta: dict
    rank: int = 0

    def row(self, method: str) -> dict:
        for r in self.rows:
            if r["method"] == method:
                return r
        raise KeyError(method)

    def to_dict(self) -> dict:
        """JSON-ready: infinite PSNR becomes the string "inf"."""
        return json_safe({**self.meta, "rows": self.rows})

    def write_json(self, path: str) -> None:
        write_json(self.to_dict(), path)

    def write_csv(self, path: str) -> None:
        write_csv(self.rows, path)

    def plot(self, path: str) -> None:
        plot_results([self], path)


@dataclass
class SuiteResult:
    """Several models benchmarked one after the other (``ditcache bench --model A B``)."""

    results: list[BenchResult]
    rank: int = 0

    def to_dict(self) -> dict:
        return {"suite": [r.to_dict() for r in self.results]}

    def write_json(self, path: str) -> None:
        write_json(self.to_dict(), path)

    def write_csv(self, path: str) -> None:
        write_csv([r for res in self.results for r in res.rows], path)

    def plot(self, path: str) -> None:
        plot_results(self.results, path)
