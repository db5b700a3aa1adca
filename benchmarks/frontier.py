"""The speed/fidelity frontier of the zoo: every method swept, side by side in one bench run per
model, on held-out seeds; PSNR vs FLOP-ideal and vs measured speedup with each family's Pareto
envelope, and the issue-12 targets checked.

    python benchmarks/frontier.py mnist-dit mnist-dit-retrofit mnist-skip-dit mnist-latte
    python benchmarks/frontier.py --latency mnist-dit   # re-time its rows on a quiet machine (5 rounds)
    python benchmarks/frontier.py --report     # re-draw plots and the summary from the JSON
    python benchmarks/frontier.py --plans mnist-dit   # write its calibrated plans as schedule files
    python benchmarks/frontier.py mnist-dit --add calibrate:speedup=3.0,max_age=6   # more rows

Evaluation: seeds 0-4 x 20 class-balanced samples = 100 per method (Latte: 0-1 x 10 clips, per
frame), DDIM 20, CFG 2, one thread, timed rounds interleaved over the methods. Calibrated plans
(`calibrate:speedup=S`) and diffusers' MagCache calibrate on seeds 1000000/1000001, which the
evaluation never sees. Results: benchmarks/results/frontier/.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "results" / "frontier"
#: a timing run whose worst latency IQR / median is above this is reported as noise
NOISY = 0.25
TARGETS = (1.5, 2.0, 2.5, 3.0)

CALIBRATED = [f"calibrate:speedup={s}" for s in TARGETS]
CALIBRATED_LATENCY = [f"calibrate:speedup={s},cost=latency" for s in TARGETS]
# cached steps up to 6 steps after their full one (default 4), and a latency plan aimed past 3x
CALIBRATED_MORE = ["calibrate:speedup=3.0,max_age=6", "calibrate:speedup=3.5,cost=latency",
                   *(f"calibrate:speedup={s},cost=latency,max_age=6" for s in (*TARGETS[1:], 3.25, 3.5))]
SKIP = ["skip-dit-2", "skip-dit-3", "skip-dit-4", "skip-dit-5"]
FORA = ["fora-2", "fora-3", "fora-4"]
PEERS = [
    *[f"diffusers-fbc:threshold={t}" for t in (0.05, 0.08, 0.12, 0.2, 0.3)],
    *[f"cache-dit-dbcache:threshold={t}" for t in (0.05, 0.1, 0.15, 0.2, 0.3)],
    *[f"cache-dit-dbcache-taylorseer:threshold={t}" for t in (0.1, 0.2, 0.3)],
    "diffusers-magcache:threshold=0.05", "diffusers-magcache:threshold=0.1,retention_ratio=0.1",
    "diffusers-magcache:threshold=0.2,retention_ratio=0.05", "diffusers-magcache:threshold=0.4,retention_ratio=0.05",
    "diffusers-magcache:threshold=0.8,retention_ratio=0.05",
    *[f"diffusers-taylorseer:cache_interval={n},disable_cache_before_step=1,max_order=0" for n in (2, 3, 4)],
    "diffusers-taylorseer:cache_interval=2,disable_cache_before_step=1,max_order=1",
    "diffusers-fastercache", "diffusers-pab-236", "diffusers-pab-469",
]
METHODS = {
    "mnist-dit": [*CALIBRATED, *CALIBRATED_LATENCY, *CALIBRATED_MORE, *FORA, *SKIP, "pab-236", "pab-347", "pab-469", *PEERS],
    "mnist-dit-retrofit": [*CALIBRATED, *SKIP],
    "mnist-skip-dit": [*CALIBRATED, *SKIP],
    # Latte calibrates at ~7 min each here: the speeds of its baselines (PAB-469 ~1.2x, FORA-2/3)
    "mnist-latte": [*(f"calibrate:speedup={s}" for s in (1.25, 2.0, 2.8)), "fora-2", "fora-3", "skip-dit-2", "skip-dit-3", "pab-236", "pab-347", "pab-469",
                    "diffusers-pab-236", "diffusers-pab-469"],
}
SEEDS = {"mnist-latte": ([0, 1], 10)}  # model -> (seeds, batch): 20 clips = 160 frames; default 5 x 20


def family(method: str) -> str:
    """The envelope a row belongs to (a sweep of one method is one family)."""
    name = method.split(":")[0]
    if name == "calibrate":
        return "dit-cache calibrated (latency)" if "cost=latency" in method else "dit-cache calibrated"
    for prefix, label in (("skip-dit", "dit-cache Skip-Cache"), ("fora", "dit-cache FORA"), ("pab-", "dit-cache PAB"),
                          ("diffusers-pab", "diffusers PAB")):
        if name.startswith(prefix):
            return label
    return {"diffusers-fbc": "diffusers FirstBlockCache", "cache-dit-dbcache": "cache-dit DBCache",
            "cache-dit-dbcache-taylorseer": "cache-dit DBCache+TaylorSeer", "diffusers-magcache": "diffusers MagCache",
            "diffusers-taylorseer": "diffusers TaylorSeer", "diffusers-fastercache": "diffusers FasterCache"}.get(name, name)


def run(model: str) -> None:
    import torch

    from dit_cache.bench import BenchConfig, render_table, run_bench

    torch.set_num_threads(1)
    seeds, batch = SEEDS.get(model, (list(range(5)), 20))
    command = ["python", "benchmarks/frontier.py", model]
    config = BenchConfig(model=model, methods=METHODS[model], steps=20, batch=batch, seeds=seeds, repeats=1, warmup=1,
                         threads=1, order="interleaved", command=command, memory=False)
    result = run_bench(config, progress=True)
    OUT.mkdir(parents=True, exist_ok=True)
    result.write_json(str(OUT / f"{model}.json"))
    result.write_csv(str(OUT / f"{model}.csv"))
    from rich.console import Console

    console = Console(width=200, record=True, file=open("/dev/null", "w"))
    console.print(render_table(result))
    (OUT / f"{model}.txt").write_text(console.export_text(), encoding="utf-8")


def add(model: str, methods: list[str]) -> None:
    """Run `methods` on the fidelity run's seeds and put their rows into <model>.json (replacing
    rows of the same method): PSNR and FLOP-ideal speedups do not depend on the machine's load;
    measured speedups come from the quiet re-timing (`--latency`) of every row side by side."""
    import torch

    from dit_cache.bench import BenchConfig, run_bench
    from dit_cache.bench.results import write_csv, write_json

    torch.set_num_threads(1)
    seeds, batch = SEEDS.get(model, (list(range(5)), 20))
    config = BenchConfig(model=model, methods=methods, steps=20, batch=batch, seeds=seeds, repeats=1, warmup=1,
                         threads=1, order="interleaved", memory=False,
                         command=["python", "benchmarks/frontier.py", model, "--add", *methods])
    extra = run_bench(config, progress=True)
    path = OUT / f"{model}.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    new = {r["method"]: dict(r, added_by=config.command) for r in extra.to_dict()["rows"]
           if r["method"] not in ("unpatched", "none")}
    data["rows"] = [r for r in data["rows"] if r["method"] not in new] + list(new.values())
    write_json(data, str(path))
    write_csv(data["rows"], str(OUT / f"{model}.csv"))


def plan_file(model: str, method: str) -> str:
    """Where `--latency` writes the plan a ``calibrate:...`` row of `model` found (one folder per
    model: the same row label on two models is two plans)."""
    return str(OUT / "plans" / model / (method.replace(":", "_").replace(",", "_").replace("=", "-") + ".json"))


def write_plans(model: str) -> list[str]:
    """Every row of a finished run as a bench method: its calibrated plans written as schedule
    files (each once, atomically; same model, scheduler and timesteps as the zoo's schedule)."""
    from dit_cache import StepPlanConfig, zoo
    from dit_cache._common.files import atomic_write
    from dit_cache.schedule_file import load_schedule, read_schedule_record, schedule_record

    data = json.loads((OUT / f"{model}.json").read_text(encoding="utf-8"))
    template = load_schedule(zoo.schedule_path(model))
    scheduler_config = read_schedule_record(zoo.schedule_path(model))["scheduler_config"]
    methods = []
    for row in data["rows"]:
        if row["method"] in ("unpatched", "none") or row.get("status") != "ok":
            continue
        if not row["method"].startswith("calibrate:"):
            methods.append(row["method"])
            continue
        path = plan_file(model, row["method"])
        config = StepPlanConfig(plan=tuple(row["setup"]["plan"]), timesteps=template.timesteps,
                                model_class=template.model_class, config_hash=template.config_hash,
                                scheduler_class=template.scheduler_class, long_skips=template.long_skips)
        record = schedule_record(config, calibration={"from": row["method"], **row["setup"]["calibration"]})
        record["scheduler_config"] = scheduler_config  # the template's: no scheduler object here
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8"))
        methods.append(path)
    return methods


def latency(model: str, repeats: int = 5) -> None:
    """Re-time every row of a finished run on a quiet machine: its calibrated plans as schedule
    files (the fidelity run's seeds are not needed for latency), seed 0, `repeats` rounds after a
    warm-up, each method timed right after a `none` generation (order="paired": its speedup is
    the median of those adjacent ratios, so the machine's slow drift cancels).
    Written to <model>_latency.json; the report takes measured speedups from it."""
    import torch

    from dit_cache.bench import BenchConfig, run_bench

    torch.set_num_threads(1)
    methods = write_plans(model)
    seeds, batch = SEEDS.get(model, (list(range(5)), 20))
    config = BenchConfig(model=model, methods=methods, steps=20, batch=batch, seeds=[seeds[0]], repeats=repeats,
                         warmup=1, threads=1, order="paired", memory=False,
                         command=["python", "benchmarks/frontier.py", "--latency", model])
    run_bench(config, progress=True).write_json(str(OUT / f"{model}_latency.json"))


def _rows(model: str) -> list[dict]:
    data = json.loads((OUT / f"{model}.json").read_text(encoding="utf-8"))
    rows = [r for r in data["rows"] if r.get("status") == "ok" and r["method"] not in ("unpatched", "none")]
    timed = OUT / f"{model}_latency.json"
    if timed.is_file():  # measured speedups from the quiet re-timing
        by_label = {r["method"]: r for r in json.loads(timed.read_text(encoding="utf-8"))["rows"]}
        for r in rows:
            label = Path(plan_file(model, r["method"])).name if r["method"].startswith("calibrate:") else r["method"]
            t = by_label.get(label)
            if t is not None and t.get("speedup") is not None:
                r["speedup"] = t["speedup"]
                r["efficiency"] = t["speedup"] / r["ideal_speedup"]
                r["latency_from"] = "quiet re-timing"
            else:  # added after it: the fidelity run's timing is not comparable, so none
                r["speedup"] = r["efficiency"] = None
                r["latency_from"] = "not re-timed"
    return rows


def _timing_noise(model: str) -> float | None:
    """The worst latency IQR / median of the run the measured speedups come from."""
    timed = OUT / f"{model}_latency.json"
    path = timed if timed.is_file() else OUT / f"{model}.json"
    noise = json.loads(path.read_text(encoding="utf-8")).get("latency_noise")
    return None if noise is None else noise["iqr_over_median"]


def envelope(rows: list[dict], speed_key: str, at: float) -> tuple[float, str] | None:
    """Best PSNR among rows at least `at` fast (the Pareto envelope at that speed)."""
    fast = [r for r in rows if (r.get(speed_key) or 0) >= at - 1e-9 and r.get("psnr") is not None]
    if not fast:
        return None
    best = max(fast, key=lambda r: r["psnr"])
    return best["psnr"], best["method"]


def report(models: list[str]) -> None:
    lines = ["# Frontier: best PSNR at each speed (envelope: any row at least that fast)", "",
             "Made by `python benchmarks/frontier.py " + " ".join(models) + "` (see the module doc).", ""]
    for model in models:
        if not (OUT / f"{model}.json").is_file():
            continue
        rows = _rows(model)
        plot(model, rows)
        families = sorted({family(r["method"]) for r in rows})
        for key, what in (("ideal_speedup", "FLOP-ideal"), ("speedup", "measured")):
            lines += [f"## {model}: {what} speedup", "", "| family | " + " | ".join(f"{s}x" for s in TARGETS) + " |",
                      "|---|" + "---|" * len(TARGETS)]
            for fam in families:
                cells = []
                for s in TARGETS:
                    hit = envelope([r for r in rows if family(r["method"]) == fam], key, s)
                    cells.append(f"{hit[0]:.1f}" if hit else "-")
                lines.append(f"| {fam} | " + " | ".join(cells) + " |")
            lines.append("")
            noise = _timing_noise(model) if key == "speedup" else None
            if noise is not None and noise > NOISY:
                lines += [f"**Noise:** the timing run's latency IQR / median reached {noise:.2f} (over {NOISY}): "
                          "these measured speedups are not evidence; re-time on a quiet machine (`--latency`).", ""]
            lines += _targets(rows, key)
        cal = [r for r in rows if family(r["method"]).startswith("dit-cache calibrated")]
        if cal:
            effs = sorted(r["efficiency"] for r in cal if r.get("efficiency") is not None)
            if effs:  # none when no calibrated row was re-timed
                lines += [f"- efficiency (measured / FLOP-ideal) of the calibrated rows: {effs[0]:.2f}-{effs[-1]:.2f}, "
                          f"median {effs[len(effs) // 2]:.2f}; {sum(e >= 0.9 for e in effs)} of {len(effs)} at 0.9 or "
                          f"more ({'met' if effs[0] >= 0.9 else 'missed'})", ""]
            lines += ["calibrated rows: " + "; ".join(
                f"{r['method']} ideal {r['ideal_speedup']:.2f}x measured {_x(r['speedup'])} eff {_x(r['efficiency'], '')} "
                f"{r['psnr']:.1f} dB FID {r.get('fid_mnist') or float('nan'):.1f} acc {r.get('class_acc') or float('nan'):.2f}"
                for r in cal), ""]
    (OUT / "summary.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


def _x(value, unit: str = "x") -> str:
    return "not re-timed" if value is None else f"{value:.2f}{unit}"


def _targets(rows: list[dict], key: str) -> list[str]:
    ours = [r for r in rows if family(r["method"]).startswith("dit-cache calibrated")]
    peers = [r for r in rows if not family(r["method"]).startswith("dit-cache")]
    fora = [r for r in rows if family(r["method"]) == "dit-cache FORA"]
    out = []
    for s in TARGETS:
        mine, best_peer, best_fora = envelope(ours, key, s), envelope(peers, key, s), envelope(fora, key, s)
        if mine is None:
            out.append(f"- {s}x: no calibrated row reaches it")
            continue
        peer_txt = f"best peer {best_peer[0]:.1f} dB ({best_peer[1]}): margin {mine[0] - best_peer[0]:+.1f} dB " \
                   f"({'met' if mine[0] - best_peer[0] >= 1.0 else 'missed'})" if best_peer else "no peer reaches it"
        fora_txt = f"FORA {best_fora[0]:.1f} dB ({'met' if mine[0] >= best_fora[0] else 'missed'})" if best_fora else "no FORA"
        out.append(f"- {s}x: calibrated {mine[0]:.1f} dB ({mine[1]}); {peer_txt}; {fora_txt}")
    return out + [""]


def plot(model: str, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, (key, label) in zip(axes, (("ideal_speedup", "FLOP-ideal speedup"), ("speedup", "measured speedup (1 thread)"))):
        for fam in sorted({family(r["method"]) for r in rows}):
            pts = sorted((r[key], r["psnr"]) for r in rows if family(r["method"]) == fam and r.get(key) and math.isfinite(r["psnr"]))
            if not pts:
                continue
            hull, best = [], -math.inf  # Pareto envelope: from the fastest down, keep rising PSNR
            for x, y in sorted(pts, reverse=True):
                if y > best:
                    hull.append((x, y))
                    best = y
            line = "-" if fam.startswith("dit-cache") else "--"
            (h,) = ax.plot(*zip(*sorted(hull)), line, label=fam, lw=2 if fam == "dit-cache calibrated" else 1)
            ax.scatter(*zip(*pts), s=12, color=h.get_color())
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("PSNR dB vs uncached (held-out seeds)")
    axes[1].legend(fontsize=7, loc="upper right")
    fig.suptitle(f"{model}: DDIM 20, CFG 2")
    fig.tight_layout()
    fig.savefig(OUT / f"{model}.png", dpi=110)
    plt.close(fig)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="*", metavar="MODEL", help=f"default: all of {', '.join(METHODS)}")
    p.add_argument("--report", action="store_true", help="only redraw plots and the summary")
    p.add_argument("--latency", action="store_true", help="re-time finished runs (quiet machine), then report")
    p.add_argument("--plans", action="store_true", help="only write the calibrated rows' plan files (plans/MODEL/)")
    p.add_argument("--add", nargs="+", metavar="METHOD", help="run these methods on MODEL's seeds and add their rows")
    args = p.parse_args(argv)
    unknown = sorted(set(args.models) - set(METHODS))
    if unknown:
        p.error(f"unknown model(s) {unknown}; choose from {', '.join(METHODS)}")
    if args.add:
        if len(args.models) != 1:
            p.error("--add needs exactly one MODEL")
        add(args.models[0], args.add)
    elif args.plans:
        for model in args.models:
            write_plans(model)
        return 0
    elif args.latency:
        for model in args.models:
            latency(model)
    elif not args.report:
        for model in args.models or list(METHODS):
            run(model)
    report(list(METHODS))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
