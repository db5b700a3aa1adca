"""`ditcache demo`: patch a tiny DiT pipeline, generate with and without Skip-Cache, show what was
skipped."""
from __future__ import annotations

from rich.table import Table

from .common import COMMANDS, console, count


def cmd_demo(args) -> int:
    import torch

    from ..api import patch, stats, unpatch
    from ..testing import build_pipeline, pipeline_inputs, run_pipeline

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


def add_parser(subparsers) -> None:
    from .._common.options import SCHEDULER_NAMES
    from ..testing import TINY_MODELS

    p = subparsers.add_parser("demo", help=COMMANDS["demo"])
    p.add_argument("--model", default="tiny-dit", choices=TINY_MODELS)
    p.add_argument("--scheduler", default="ddim", choices=SCHEDULER_NAMES)
    p.add_argument("--steps", type=count(1), default=20, help="denoising steps, >= 1 (default 20)")
    p.add_argument("--threads", type=count(1), default=2, help="torch threads, >= 1 (default 2)")
    p.set_defaults(func=cmd_demo)
