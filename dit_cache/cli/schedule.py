"""`ditcache schedule PRESET`: the F/c (full / cached step) pattern of a preset on a tiny model.

Answered from the tiny models' facts (tiny_facts.py) without importing torch; step counts
beyond the scheduler's training steps go to diffusers, which says what is wrong."""
from __future__ import annotations

from .common import COMMANDS, console, count
from .tiny_facts import TINY_FACTS, tiny_pattern


def cmd_schedule(args) -> int:
    from ..schedules import PRESETS

    facts = TINY_FACTS[args.model]
    args.scheduler = args.scheduler or facts.default_scheduler
    if args.scheduler not in facts.schedulers:
        console.print(f"[red]error:[/red] {args.model} samples with {', '.join(facts.schedulers)}, not {args.scheduler}")
        return 2
    if args.steps <= facts.num_train_timesteps:
        pattern = tiny_pattern(PRESETS[args.preset], args.model, args.scheduler, args.steps)
    else:
        from ..api import schedule_pattern
        from ..testing import build_scheduler, build_transformer, family_of

        scheduler = build_scheduler(args.scheduler, family_of(args.model))
        pattern = schedule_pattern(build_transformer(args.model), args.steps, schedule=args.preset, scheduler=scheduler)
    console.print(f"{args.preset} on {args.model}, {args.scheduler} x {args.steps}: [bold]{pattern}[/bold]")
    console.print(f"full {pattern.count('F')}, cached {pattern.count('c')}")
    return 0


def add_parser(subparsers) -> None:
    from .._common.options import SCHEDULER_NAMES
    from ..schedules import PRESETS

    p = subparsers.add_parser("schedule", help=COMMANDS["schedule"])
    p.add_argument("preset", choices=sorted(PRESETS), metavar="PRESET", help="a preset (ditcache presets lists them)")
    p.add_argument("--model", default="tiny-dit", choices=list(TINY_FACTS), help="a tiny model (default tiny-dit)")
    p.add_argument("--scheduler", choices=SCHEDULER_NAMES,
                   help="the sampler (default: the model's, ddim or flow-euler for the flow-matching families)")
    p.add_argument("--steps", type=count(1), default=50, help="denoising steps, >= 1 (default 50)")
    p.set_defaults(func=cmd_schedule)
