"""`ditcache convert SRC OUT --from dit|skip-dit|latte-skip`: checkpoints -> diffusers + adapters."""
from __future__ import annotations

import argparse

from rich.markup import escape

from ..conversion import DTYPES, LAYOUTS, ConvertError, convert
from .common import COMMANDS, console


def cmd_convert(args) -> int:
    try:
        result = convert(
            args.src,
            args.out,
            args.layout,
            config=args.config,
            overwrite=args.overwrite,
            dtype=args.dtype,
            checkpoint_key=args.key,
            allow_nonfinite=args.allow_nonfinite,
        )
    except ConvertError as err:  # long key listings: print on one line, unwrapped
        console.print(f"[red]error:[/red] {escape(str(err))}", soft_wrap=True, highlight=False)
        return 2
    cfg = result.config
    console.print(
        f"[green]converted[/green] {escape(args.src)} ({args.layout}"
        + (f", sub-dict {result.checkpoint_key!r}" if result.checkpoint_key else "")
        + f") -> {result.model_class} in {escape(str(result.out))}",
        soft_wrap=True,
        highlight=False,
    )
    heads, head_dim = cfg["num_attention_heads"], cfg["attention_head_dim"]
    console.print(
        f"  {cfg['num_layers']} {'pairs' if 'video_length' in cfg else 'blocks'}, width {heads * head_dim} "
        f"({heads} heads x {head_dim}), patch {cfg['patch_size']}, latent {cfg['sample_size']}, "
        f"in/out channels {cfg['in_channels']}/{cfg['out_channels']}",
        soft_wrap=True,
        highlight=False,
    )
    if result.adapters is not None:
        console.print(
            f"  adapters: {escape(str(result.adapters))} - load with "
            "dit_cache.patch(model, 'skip-dit', fusion='replace'); dit_cache.load_adapters(model, path)",
            soft_wrap=True,
            highlight=False,
        )
    if result.ignored_keys:
        console.print(f"  ignored (recomputed or unused): {', '.join(result.ignored_keys)}", soft_wrap=True, highlight=False)
    for note in result.notes:
        console.print(f"  note: {escape(note)}", soft_wrap=True, highlight=False)
    return 0


DESCRIPTION = (
    "Convert a research-repo checkpoint (.pt/.pth read with weights_only=True, or .safetensors) into a "
    "diffusers model directory; Skip-DiT layouts also get a dit-cache adapter file (fusion='replace'). "
    "Nothing is written unless the conversion succeeds."
)


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("convert", help=COMMANDS["convert"], description=DESCRIPTION)
    p.add_argument("src", help="checkpoint file (.pt, .pth, .safetensors)")
    p.add_argument("out", help="output directory (must not exist unless --overwrite)")
    p.add_argument("--from", dest="layout", required=True, choices=LAYOUTS, help="checkpoint layout")
    p.add_argument(
        "--config",
        action="append",
        metavar="JSON|FILE|K=V",
        help="architecture overrides the weights cannot tell (num_heads, sample_size, video_length, ...); "
        "a JSON file, a JSON object or key=value[,key=value]; repeatable",
    )
    p.add_argument("--dtype", choices=sorted(DTYPES), help="cast the weights (default: keep the checkpoint's)")
    p.add_argument("--key", help="sub-dict holding the weights (default: first of ema, model, state_dict, module)")
    p.add_argument("--allow-nonfinite", action="store_true",
                   help="convert even if weights hold NaN or infinity (refused by default: the model would output NaN)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it is a previous convert output")
    p.set_defaults(func=cmd_convert)
    return p
