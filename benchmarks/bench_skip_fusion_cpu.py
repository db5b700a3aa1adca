"""CPU benchmark of the long-skip fusion: unfused reference vs the folded torch path.

    .venv/bin/python benchmarks/bench_skip_fusion_cpu.py [--rounds 7] [--threads 2] [--quick]

Shapes are one fusion point of each backbone at its usual size, with CFG (batch x2):
  DiT-XL/2 256px  (B=2, L=256, D=1152)
  Latte 16 frames (B=2*16, L=256, D=1152)   spatial block layout ((b f), t, d)
  Hunyuan-DiT     (B=2, L=1024, D=1408)     512px; 1024px would be L=4096 (4x the work)
fp32. "gemm only" is x @ W1^T + s @ W2^T with nothing else: the floor any fusion can reach
on CPU, where the GEMM dominates. Reference and folded are timed in alternating rounds
(torch.utils.benchmark, median per round); the speedup is the median of per-round ratios.
The dev machines are shared: a round is kept only if other processes used < 10% of the CPUs
while it ran (measured from /proc/stat minus this process's CPU time).
Writes benchmarks/results/skip_fusion_cpu.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from torch.utils import benchmark

from dit_cache.kernels import fold_skip_weights, skip_fusion, skip_fusion_reference

SHAPES = {
    "DiT-XL/2": (2, 256, 1152),
    "Latte (16 frames)": (32, 256, 1152),
    "Hunyuan-DiT (512px)": (2, 1024, 1408),
}
RESULTS = Path(__file__).resolve().parent / "results"


def make_case(B, L, D, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, L, D, generator=g)
    s = 2.0 * torch.randn(B, L, D, generator=g) + 0.5
    norm = torch.nn.LayerNorm(2 * D, eps=1e-6)
    lin = torch.nn.Linear(2 * D, D)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5, generator=g)
        norm.bias.normal_(0.0, 0.3, generator=g)
    params = [p.detach() for p in (norm.weight, norm.bias, lin.weight, lin.bias)]
    return x, s, params


def time_round(fn, min_run_time):
    """(median, min) seconds per call over one blocked_autorange round."""
    t = benchmark.Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    m = t.blocked_autorange(min_run_time=min_run_time)
    return m.median, min(m.times)


def _cpu_jiffies():
    """(busy, total) jiffies of the whole machine from /proc/stat, or None off Linux."""
    try:
        vals = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except OSError:
        return None
    return sum(vals) - vals[3] - vals[4], sum(vals)  # minus idle and iowait


class OtherLoad:
    """Share of the machine's CPU time used by *other* processes while the block runs:
    machine busy time minus this process's own CPU time (all its threads)."""

    def __enter__(self):
        self.j0, self.me0 = _cpu_jiffies(), os.times()
        return self

    def __exit__(self, *exc):
        j1, me1 = _cpu_jiffies(), os.times()
        if self.j0 is None or j1 is None:
            self.share = None
            return
        hz = os.sysconf("SC_CLK_TCK")
        busy = (j1[0] - self.j0[0]) / hz
        capacity = (j1[1] - self.j0[1]) / hz
        mine = (me1.user + me1.system) - (self.me0.user + self.me0.system)
        self.share = max(0.0, busy - mine) / max(capacity, 1e-9)


def wait_quiet(max_wait, threshold=0.1):
    """Wait (up to max_wait s) until other processes use < threshold of the CPUs."""
    deadline = time.time() + max_wait
    while True:
        with OtherLoad() as load:
            time.sleep(2.0)
        if load.share is None or load.share < threshold or time.time() > deadline:
            return load.share


def bench_shape(name, shape, rounds, min_run_time, max_wait, max_other=0.1, log=None):
    x, s, p = make_case(*shape)
    D = shape[-1]
    cache: dict = {}
    w1, w2 = p[2][:, :D].contiguous(), p[2][:, D:].contiguous()
    x2, s2 = x.reshape(-1, D), s.reshape(-1, D)

    def ref():
        return skip_fusion_reference(x, s, *p)

    def folded():
        return skip_fusion(x, s, *p, backend="torch", cache=cache)

    def gemm_only():
        return torch.mm(x2, w1.t()).addmm_(s2, w2.t())

    variants = [("reference", ref), ("folded", folded), ("gemm only", gemm_only)]
    with torch.no_grad():
        out = folded()  # fills the fold cache (inference: folded once per weight version)
        err_ref = (out - ref()).abs().max().item()
        truth = skip_fusion_reference(x.double(), s.double(), *[t.double() for t in p])
        err_truth = (out.double() - truth).abs().max().item()
        err_ref_truth = (ref().double() - truth).abs().max().item()
        # Rounds in alternating order; a round counts only if other processes used less than
        # max_other of the machine meanwhile. Up to 4x the wanted rounds are tried.
        kept, dropped = [], []
        for i in range(4 * rounds):
            if len(kept) == rounds:
                break
            if i % rounds == 0:
                share = wait_quiet(max_wait, max_other)
                if log is not None and share is not None:
                    log(f"  other processes' CPU share before timing: {share:.0%}")
            if i == 0:  # one-off cost per weight version (inference folds once, then hits the cache)
                with OtherLoad() as fold_load:
                    fold_s = time_round(lambda: fold_skip_weights(*p, dtype=torch.float32), min_run_time)[0]
            order = variants if i % 2 == 0 else variants[::-1]
            with OtherLoad() as load:
                rnd = {label: time_round(fn, min_run_time) for label, fn in order}
            rnd["other_load"] = load.share
            ok = load.share is None or load.share < max_other
            (kept if ok else dropped).append(rnd)
            if log is not None:
                times = ", ".join(f"{k} {1e3 * rnd[k][0]:.2f}" for k, _ in variants)
                log(f"  round {i}: {times} ms; other load {load.share:.0%} -> {'kept' if ok else 'dropped'}")
    use = kept if kept else dropped  # report contaminated rounds rather than nothing, flagged below
    med = {k: statistics.median(r[k][0] for r in use) for k, _ in variants}
    best = {k: min(r[k][1] for r in use) for k, _ in variants}
    ratios = [r["reference"][0] / r["folded"][0] for r in use]
    ceiling = [r["reference"][0] / r["gemm only"][0] for r in use]
    return {
        "name": name,
        "shape": list(shape),
        "M": shape[0] * shape[1],
        "ms": {k: 1e3 * v for k, v in med.items()},
        "ms_min": {k: 1e3 * v for k, v in best.items()},
        "ms_rounds": {k: [round(1e3 * r[k][0], 3) for r in use] for k, _ in variants},
        "speedup_folded_vs_reference": statistics.median(ratios),
        "speedup_rounds": [round(r, 3) for r in ratios],
        "speedup_from_min_times": best["reference"] / best["folded"],
        "speedup_ceiling_gemm_only": statistics.median(ceiling),
        "rounds_kept": len(kept),
        "rounds_dropped_for_other_load": len(dropped),
        "other_load_kept_rounds": [None if r["other_load"] is None else round(r["other_load"], 3) for r in use],
        "contaminated": not kept,
        "fold_weights_ms": 1e3 * fold_s,
        "fold_weights_other_load": fold_load.share,
        "max_abs_err_folded_vs_reference_fp32": err_ref,
        "max_abs_err_folded_vs_fp64": err_truth,
        "max_abs_err_reference_fp32_vs_fp64": err_ref_truth,
        "max_abs_output": truth.abs().max().item(),
    }


def machine_info():
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "loadavg_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


COLUMNS = [
    ("fusion point", lambda r: r["name"]),
    ("(B, L, D)", lambda r: str(tuple(r["shape"]))),
    ("reference ms", lambda r: f"{r['ms']['reference']:.2f}"),
    ("folded ms", lambda r: f"{r['ms']['folded']:.2f}"),
    ("gemm only ms", lambda r: f"{r['ms']['gemm only']:.2f}"),
    ("speedup (median)", lambda r: f"{r['speedup_folded_vs_reference']:.3f}x"),
    ("speedup (min times)", lambda r: f"{r['speedup_from_min_times']:.3f}x"),
    ("ceiling ref/gemm", lambda r: f"{r['speedup_ceiling_gemm_only']:.3f}x"),
    ("max err vs ref", lambda r: f"{r['max_abs_err_folded_vs_reference_fp32']:.2e}"),
    ("max err vs fp64 (ref's own)", lambda r: f"{r['max_abs_err_folded_vs_fp64']:.2e} ({r['max_abs_err_reference_fp32_vs_fp64']:.2e})"),
    ("fold (once per weight version) ms", lambda r: f"{r['fold_weights_ms']:.2f}"),
    ("rounds kept/dropped", lambda r: f"{r['rounds_kept']}/{r['rounds_dropped_for_other_load']}" + (" CONTAMINATED" if r["contaminated"] else "")),
]


def write_markdown(path, report):
    m = report["machine"]
    lines = [
        "# Long-skip fusion on CPU: reference vs folded (fp32)",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, torch {m['torch']} with "
        f"{m['torch_threads']} threads, Python {m['python']}. Load average at start "
        f"{m['loadavg_start']}, at end {m['loadavg_end']}. The machine is shared with other jobs: "
        "a timing round is kept only if other processes used < 10% of the CPUs meanwhile "
        "(kept/dropped column); per-round numbers are in the JSON.",
        "",
        "| " + " | ".join(c for c, _ in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for r in report["results"]:
        lines.append("| " + " | ".join(f(r) for _, f in COLUMNS) + " |")
    lines += ["", report["verdict"], ""]
    path.write_text("\n".join(lines))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7, help="clean rounds wanted per shape")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-run-time", type=float, default=0.5, help="seconds per timing round and variant")
    ap.add_argument("--quick", action="store_true", help="DiT shape only, 3 rounds (smoke run)")
    ap.add_argument("--max-wait", type=float, default=300, help="seconds to wait for other processes to go quiet per shape")
    ap.add_argument("--max-other-load", type=float, default=0.1, help="drop rounds where other processes used more CPU share")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    shapes = {"DiT-XL/2": SHAPES["DiT-XL/2"]} if args.quick else SHAPES
    rounds = 3 if args.quick else args.rounds

    console = Console(width=None if sys.stdout.isatty() else 200)  # full table in logs too
    info = machine_info()
    results = []
    for name, shape in shapes.items():
        console.print(f"[bold]{name}[/] {shape} ...")
        results.append(bench_shape(name, shape, rounds, args.min_run_time, args.max_wait, args.max_other_load, console.print))
    info["loadavg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None

    table = Table(title=f"Long-skip fusion, CPU fp32, {args.threads} threads (median of {rounds} alternating rounds)")
    for col, _ in COLUMNS:
        table.add_column(col, justify="left" if col == "fusion point" else "right")
    for r in results:
        table.add_row(*(f(r) for _, f in COLUMNS))
    console.print(table)

    target_speed = all(r["speedup_folded_vs_reference"] >= 1.1 for r in results)
    target_err = all(r["max_abs_err_folded_vs_reference_fp32"] <= 1e-5 for r in results)
    measured = ", ".join(
        f"{r['name']} {r['speedup_folded_vs_reference']:.3f}x (min times {r['speedup_from_min_times']:.3f}x)" for r in results
    )
    verdict = (
        f"Target speedup >= 1.1x (median of per-round ratios): {'met' if target_speed else 'NOT met'} for every shape "
        f"- measured {measured}. The ceiling column is what removing everything but the GEMM would give. "
        f"Target max error <= 1e-5 vs the fp32 reference: {'met' if target_err else 'NOT met'}."
    )
    console.print(verdict)
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": info,
        "rounds": rounds,
        "min_run_time_s": args.min_run_time,
        "results": results,
        "verdict": verdict,
    }
    if not args.quick:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "skip_fusion_cpu.json").write_text(json.dumps(report, indent=2))
        write_markdown(RESULTS / "skip_fusion_cpu.md", report)
        console.print(f"wrote {RESULTS / 'skip_fusion_cpu.json'} and .md")
    return report


if __name__ == "__main__":
    main()
