"""`ditcache` command line. It only parses arguments; the work is done by the library."""
from __future__ import annotations

import argparse
import dataclasses
import sys

from rich.table import Table

from . import bench as bench_cmd
from . import convert as convert_cmd
from . import finetune as finetune_cmd
from .common import UsageError, console

def _config_str(config) -> str:
    if not dataclasses.is_dataclass(config):
        return ""
    fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    shown = {k: v for k, v in fields.items() if v is not None}
    return ", ".join(f"{k}={v}" for k, v in shown.items()) or "backbone defaults"


def cmd_presets(args) -> int:
    from ..schedules import presets

    table = Table(title="dit-cache presets")
    table.add_column("preset")
    table.add_column("config")
    table.add_column("settings")
    for name, config in presets().items():
        table.add_row(name, type(config).__name__, _config_str(config))
    console.print(table)
    return 0


def cmd_schedule(args) -> int:
    from .. import schedule_pattern
    from ..testing.models import TINY_MODELS, build_scheduler, build_transformer, family_of

    if args.model not in TINY_MODELS:
        raise UsageError(f"--model must be one of {', '.join(TINY_MODELS)}")
    model = build_transformer(args.model)
    scheduler = build_scheduler(args.scheduler, family_of(args.model))
    pattern = schedule_pattern(model, args.steps, schedule=args.preset, scheduler=scheduler)
    console.print(f"{args.preset} on {args.model}, {args.scheduler} x {args.steps}: [bold]{pattern}[/bold]")
    console.print(f"full {pattern.count('F')}, cached {pattern.count('c')}")
    return 0


def cmd_demo(args) -> int:
    """Patch a tiny DiT pipeline, generate with and without Skip-Cache, show what was skipped."""
    import torch

    from .. import patch, stats, unpatch
    from ..testing.models import build_pipeline, pipeline_inputs, run_pipeline

    torch.set_num_threads(args.threads)
    pipe = build_pipeline(args.model, seed=0, scheduler=args.scheduler)
    inputs = pipeline_inputs(args.model, num_inference_steps=args.steps)
    reference = run_pipeline(pipe, inputs)
    table = Table(title=f"{args.model} ({args.scheduler}, {args.steps} steps, CFG on)")
    for col in ("schedule", "pattern", "full", "cached", "block calls", "blocks skipped", "max |diff|"):
        table.add_column(col)
    for preset in ("none", "skip-dit-2", "skip-dit-3"):
        patch(pipe, preset)
        out = run_pipeline(pipe, inputs)
        s = stats(pipe)
        unpatch(pipe)
        table.add_row(
            preset, s["pattern"], str(s["full_steps"]), str(s["cached_steps"]), str(s["block_calls"]),
            str(s["blocks_skipped"]), f"{(out - reference).abs().max().item():.3g}",
        )
    console.print(table)
    restored = run_pipeline(pipe, inputs)
    console.print(f"after unpatch, output identical to the original: {torch.equal(restored, reference)}")
    return 0


# Sub-commands that live in their own module of this package, each exposing
# `add_parser(subparsers)`; the parser they add sets `func`.
SUBCOMMAND_MODULES = (convert_cmd, bench_cmd, finetune_cmd)


def build_parser() -> argparse.ArgumentParser:
    from ..testing.models import SCHEDULER_NAMES, TINY_MODELS
    from ..schedules import PRESETS

    parser = argparse.ArgumentParser(prog="ditcache", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("presets", help="list cache presets").set_defaults(func=cmd_presets)

    p = sub.add_parser("schedule", help="print the F/c pattern of a preset")
    p.add_argument("preset", choices=sorted(PRESETS))
    p.add_argument("--model", default="tiny-dit", choices=TINY_MODELS)
    p.add_argument("--scheduler", default="ddim", choices=SCHEDULER_NAMES)
    p.add_argument("--steps", type=int, default=50)
    p.set_defaults(func=cmd_schedule)

    p = sub.add_parser("demo", help="patch a tiny pipeline and show what Skip-Cache skips")
    p.add_argument("--model", default="tiny-dit", choices=TINY_MODELS)
    p.add_argument("--scheduler", default="ddim", choices=SCHEDULER_NAMES)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.set_defaults(func=cmd_demo)
    for module in SUBCOMMAND_MODULES:
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (UsageError, ValueError) as err:
        console.print(f"[red]error:[/red] {err}", highlight=False, soft_wrap=True)  # one line, never wrapped
        return 2
