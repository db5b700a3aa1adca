"""`ditcache bench`: argument parsing only; the work is done by `dit_cache.bench`."""
from __future__ import annotations

import argparse
import sys

from ..bench.config import ORDERS
from .common import COMMANDS, count, device, number

_EPILOG = """\
methods: preset names (ditcache presets), `diffusers-pab[-SST]`, `diffusers-fastercache`,
  `diffusers-fbc`, `diffusers-taylorseer`, `diffusers-magcache`, and with `pip install
  'dit-cache[peers]'` `cache-dit-dbcache`, `cache-dit-dbcache-taylorseer` (options: see
  dit_cache.bench.specs), each optionally with overrides NAME:KEY=VALUE,KEY=VALUE (tuples as
  LOW/HIGH); repeat a method for a sweep, e.g.
  --methods none skip-dit:interval=3,shallow=2 fora-2 pab-469 diffusers-pab-469
  --methods diffusers-fbc:threshold=0.05 diffusers-fbc:threshold=0.2 cache-dit-dbcache:threshold=0.1
  `unpatched` (the model before any patch) and `none` are always included.

examples:
  ditcache bench                                   # embedded default: the trained MNIST zoo (mnist-dit vs
                                                   #   mnist-dit-retrofit), FID-MNIST and class accuracy too
  ditcache bench --model mnist-skip-dit --methods skip-dit-2 skip-dit-3 skip-dit-4 skip-dit-5 --batch 100
  ditcache bench --model tiny-latte --steps 10 --methods skip-dit fora pab-236 diffusers-pab
  ditcache bench --model dit-xl-2 --steps 20 --json out.json --csv out.csv --plot out.png
  torchrun --nproc-per-node 2 -m dit_cache.cli bench --model tiny-dit --seeds 0 1 2 3
"""


def _int_list(text: str) -> list[int]:
    from ..bench.config import SEED_LIMIT

    seed = count(0, SEED_LIMIT)
    return [seed(x) for x in text.replace(",", " ").split()]


def add_parser(subparsers) -> argparse.ArgumentParser:
    from ..bench.config import DEFAULT_STEPS, DEFAULT_SUITE, ZOO_DEFAULT_BATCH
    from .._common.options import SCHEDULER_NAMES
    from ..zoo import ZOO_MODELS
    from .tiny_facts import REAL_SIZE_MODELS, TINY_FACTS

    p = subparsers.add_parser(
        "bench",
        help=COMMANDS["bench"],
        description="Benchmark cache methods on one model (or several, one after the other): latency "
        "(median, IQR), speedup vs `none`, FLOPs and the speedup they promise, peak memory, full/cached "
        "steps, PSNR/SSIM/max error against the unpatched output of the same seed (for a zoo model with "
        "trained long skips: against `none`, the model with its skips and nothing cached), and on zoo "
        "models FID-MNIST and class accuracy of the samples.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", nargs="+", action="extend", default=None, metavar="MODEL",
                   help=f"one or more (benchmarked one after the other): a zoo model ({', '.join(ZOO_MODELS)}), "
                        f"a built-in architecture with random weights ({', '.join([*TINY_FACTS, *REAL_SIZE_MODELS])}; the "
                        f"real-size ones with --device meta for FLOPs only), a local diffusers directory or a `ditcache finetune` "
                        f"result folder (default: {' '.join(DEFAULT_SUITE)})")
    p.add_argument("--methods", nargs="+", action="extend", metavar="SPEC", help="methods to compare (default: none, skip-dit, "
                   "fora, a PAB preset, and diffusers' PAB/FasterCache)")
    p.add_argument("--steps", type=count(1), default=DEFAULT_STEPS, help=f"denoising steps (default {DEFAULT_STEPS})")
    p.add_argument("--scheduler", choices=SCHEDULER_NAMES, default=None,
                   help="default: ddim (a pipeline directory keeps its own)")
    p.add_argument("--resolution", type=count(1), help="pixels (default: the model's native resolution)")
    p.add_argument("--frames", type=count(1), help="video frames (Latte; default: its video_length)")
    p.add_argument("--batch", type=count(1), default=None, help="samples per generation (CFG doubles the model batch); "
                   f"default {ZOO_DEFAULT_BATCH} for zoo models (class-balanced), else 1")
    p.add_argument("--cfg-scale", type=number(0), help="guidance scale; <= 1 turns CFG off (default: family default)")
    p.add_argument("--seeds", type=_int_list, default=[0], nargs="+", metavar="SEED",
                   help="seeds (sharded across ranks under torchrun); default 0")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16", "fp32", "fp16", "bf16"))
    p.add_argument("--repeats", type=count(1), default=3, help="timed generations per seed (default 3)")
    p.add_argument("--warmup", type=count(0), default=1,
                   help="untimed generations first; the first is the instrumented one (FLOPs, memory) (default 1)")
    p.add_argument("--threads", type=count(1), help="torch intra-op threads (default: torch's; per rank under torchrun)")
    p.add_argument("--device", type=device, help="cpu, cuda or cuda:N (default: cuda if available); meta: FLOPs and "
                                                 "step patterns only, for real-size models (nothing is computed)")
    p.add_argument("--order", choices=ORDERS, default="interleaved",
                   help="timed runs in rounds over all methods (default); each method's repeats in a row "
                        "(sequential); or each method right after `none`, speedup = median of those pairs (paired)")
    p.add_argument("--loop", action="store_true", help="drive the bare transformer even when a pipeline exists")
    p.add_argument("--no-flops", dest="flops", action="store_false", help="skip FLOP counting")
    p.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory probe")
    p.add_argument("--max-background", type=number(0, 1), metavar="SHARE",
                   help="re-run a timed generation when other processes used more than this share of the "
                        "CPUs during it (e.g. 0.1; Linux)")
    p.add_argument("--json", metavar="PATH", help="write machine, versions, command line and rows as JSON")
    p.add_argument("--csv", metavar="PATH", help="write the rows as CSV")
    p.add_argument("--plot", metavar="PATH", help="speedup vs PSNR per method (needs matplotlib)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=cmd_bench)
    return p


def cmd_bench(args) -> int:
    from rich.console import Console

    from ..bench import BenchConfig, BenchInputError, SuiteResult, render_table, run_bench
    from ..bench import plot as bench_plot
    from .._common.files import check_writable
    from ..bench.config import DEFAULT_SUITE, ZOO_DEFAULT_BATCH, check_config
    from ..bench.runners import check_model_name
    from ..zoo import ZOO_MODELS
    from .common import UsageError

    if args.plot:
        ok, reason = bench_plot.plot_available()
        if not ok:
            raise UsageError(reason)
    for option in ("json", "csv", "plot"):  # an unwritable path fails now, not after the whole benchmark
        path = getattr(args, option)
        if path:
            try:
                check_writable(path)
            except OSError as err:
                raise UsageError(f"--{option} {path}: cannot write there ({err}); choose another path") from None
    seeds = [s for group in args.seeds for s in (group if isinstance(group, list) else [group])]
    models = args.model or list(DEFAULT_SUITE)
    try:
        for model in models:  # every name before the first (long) run
            check_model_name(model)
    except BenchInputError as err:
        raise UsageError(str(err)) from None
    configs = [
        BenchConfig(
            model=model, methods=args.methods, steps=args.steps, scheduler=args.scheduler,
            resolution=args.resolution, frames=args.frames, cfg_scale=args.cfg_scale,
            batch=args.batch if args.batch is not None else (ZOO_DEFAULT_BATCH if model in ZOO_MODELS else 1),
            seeds=seeds, dtype=args.dtype, repeats=args.repeats, warmup=args.warmup, threads=args.threads,
            device=args.device, loop=args.loop, flops=args.flops, memory=args.memory,
            max_background=args.max_background, order=args.order,
            command=["ditcache", *sys.argv[1:]] if sys.argv else None,
        )
        for model in models
    ]
    try:
        for config in configs:  # every setting before the first (long) run
            check_config(config)
    except BenchInputError as err:
        raise UsageError(str(err)) from None
    console = Console(stderr=True)
    out = Console()
    if not out.is_terminal:
        out = Console(width=200)  # a file or pipe: do not squeeze the table into 80 columns
    results = []
    for config in configs:
        try:
            result = run_bench(config, progress=args.progress, console=console)
        except BenchInputError as err:
            raise UsageError(str(err)) from None
        if result.rank != 0:
            continue
        out.print(render_table(result))
        results.append(result)
    if not results:
        return 0
    result = results[0] if len(results) == 1 else SuiteResult(results)
    try:
        if args.json:
            result.write_json(args.json)
        if args.csv:
            result.write_csv(args.csv)
        if args.plot:
            result.plot(args.plot)
    except (OSError, bench_plot.MissingDependency) as err:
        raise UsageError(f"cannot write results: {err}") from None
    return 0
