"""`ditcache schedule PRESET`: the F/c (full / cached step) pattern of a preset on a tiny model."""
from __future__ import annotations

from .common import COMMANDS, UsageError, console, count


def cmd_schedule(args) -> int:
    from ..api import schedule_pattern
    from ..testing import TINY_MODELS, build_scheduler, build_transformer, family_of

    if args.model not in TINY_MODELS:
        raise UsageError(f"--model must be one of {', '.join(TINY_MODELS)}")
    model = build_transformer(args.model)
    scheduler = build_scheduler(args.scheduler, family_of(args.model))
    pattern = schedule_pattern(model, args.steps, schedule=args.preset, scheduler=scheduler)
    console.print(f"{args.preset} on {args.model}, {args.scheduler} x {args.steps}: [bold]{pattern}[/bold]")
    console.print(f"full {pattern.count('F')}, cached {pattern.count('c')}")
    return 0


def add_parser(subparsers) -> None:
    from ..schedules import PRESETS
    from .._common.options import SCHEDULER_NAMES
    from ..testing import TINY_MODELS

    p = subparsers.add_parser("schedule", help=COMMANDS["schedule"])
    p.add_argument("preset", choices=sorted(PRESETS))
    p.add_argument("--model", default="tiny-dit", choices=TINY_MODELS)
    p.add_argument("--scheduler", default="ddim", choices=SCHEDULER_NAMES)
    p.add_argument("--steps", type=count(1), default=50, help="denoising steps, >= 1 (default 50)")
    p.set_defaults(func=cmd_schedule)
