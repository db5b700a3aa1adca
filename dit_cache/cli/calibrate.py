"""`ditcache calibrate`: a calibrated per-step schedule for one model, scheduler and step count."""
from __future__ import annotations

import argparse

from .common import COMMANDS, UsageError, console, count, device, number

_EPILOG = """\
examples:
  ditcache calibrate --model mnist-dit --speedup 2.0 --steps 20 --out mnist-dit-2x.json
  ditcache calibrate --model mnist-dit --max-error 0.05 --out mnist-dit-26db.json
  ditcache bench --model mnist-dit --methods mnist-dit-2x.json fora-2   # evaluate it on other seeds
then in Python: dit_cache.patch(model, schedule="mnist-dit-2x.json")
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    from .._common.options import SCHEDULER_NAMES
    from ..zoo import ZOO_MODELS

    p = subparsers.add_parser(
        "calibrate", help=COMMANDS["calibrate"], epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run a few full generations on calibration seeds, measure what caching each step costs in "
        "output error (Skip-Cache at two depths, residual reuse, FORA reuse), and pick the per-step plan of least "
        "error at a FLOP-ideal speedup (or the fastest within --max-error). Writes a schedule file that "
        "dit_cache.patch(model, schedule=PATH) and `ditcache bench --methods PATH` read.",
    )
    p.add_argument("--model", required=True, help=f"as for ditcache bench: a zoo model ({', '.join(ZOO_MODELS)}), a "
                   "built-in architecture, a local diffusers directory or a `ditcache finetune` result folder")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--speedup", type=number(1, low_open=True), help="FLOP-ideal speedup to reach (default 2.0)")
    target.add_argument("--max-error", type=number(0, 1, low_open=True, high_open=True), metavar="ERROR",
                        help="largest final-output RMSE as a share of its value range (0.05 = 26 dB PSNR): "
                             "the fastest plan within it")
    p.add_argument("--steps", type=count(2), default=20, help="denoising steps the schedule is for (default 20)")
    p.add_argument("--scheduler", choices=SCHEDULER_NAMES, default=None, help="default: ddim (a pipeline keeps its own)")
    p.add_argument("--batch", type=count(1), default=None, help="samples per calibration generation "
                   "(default 20 for zoo models, class-balanced; else 1)")
    p.add_argument("--seeds", type=count(0), nargs="+", default=None, metavar="SEED",
                   help="calibration seeds: keep them disjoint from the seeds you evaluate on (default 1000000 1000001)")
    p.add_argument("--cost", choices=("flops", "latency"), default="flops",
                   help="what --speedup counts: transformer FLOPs (default), or the calls' time measured here "
                        "(prices FORA-style reuse, cheap in FLOPs but not in time on small models, as it runs)")
    p.add_argument("--max-age", type=count(1), default=4, help="most steps a cache may be reused after its full step (default 4)")
    p.add_argument("--device", type=device, help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--threads", type=count(1), help="torch intra-op threads (default: torch's)")
    p.add_argument("--out", required=True, metavar="PATH", help="schedule file to write (JSON)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=cmd_calibrate)
    return p


def cmd_calibrate(args) -> int:
    import torch

    from .._common.files import check_writable
    from ..bench import BenchInputError
    from ..bench.config import ZOO_DEFAULT_BATCH
    from ..bench.runners import check_model_name, load_runner
    from ..bench.runners.base import RunSettings
    from ..calibration import CALIBRATION_SEEDS
    from ..calibration.runner import calibrate_runner
    from ..zoo import ZOO_MODELS

    try:
        check_writable(args.out)
    except OSError as err:
        raise UsageError(f"--out {args.out}: cannot write there ({err}); choose another path") from None
    try:
        check_model_name(args.model)
    except BenchInputError as err:
        raise UsageError(str(err)) from None
    if args.threads:
        torch.set_num_threads(args.threads)
    batch = args.batch if args.batch is not None else (ZOO_DEFAULT_BATCH if args.model in ZOO_MODELS else 1)
    dev = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dev == "meta":
        raise UsageError("calibration measures output errors, which the meta device cannot compute: use cpu or cuda")
    settings = RunSettings(steps=args.steps, scheduler=args.scheduler, batch=batch, device=dev)
    try:
        runner = load_runner(args.model, settings)
    except BenchInputError as err:
        raise UsageError(str(err)) from None
    speedup = None if args.max_error is not None else (args.speedup or 2.0)
    cal = calibrate_runner(runner, speedup=speedup, max_error=args.max_error, seeds=tuple(args.seeds or CALIBRATION_SEEDS),
                           max_age=args.max_age, cost=args.cost, progress=args.progress)
    path = cal.save(args.out)
    report = cal.report
    console.print(f"{args.model}, {type(runner.scheduler).__name__} x {args.steps}: ideal {cal.ideal_speedup:.2f}x, "
                  f"{cal.psnr:.1f} dB on the calibration seeds")
    console.print(f"plan: {cal.pattern}", soft_wrap=True)
    console.print(f"calibration: {report['cost_full_generations']:.1f} full generations' compute, "
                  f"{report['seconds']:.0f} s; wrote {path}")
    return 0
