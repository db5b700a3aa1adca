"""`ditcache sample`: draw digits from a zoo model (its `dit_cache.zoo.pipeline`) into a PNG grid,
or for mnist-latte a GIF whose frames are grids of the clips' frames."""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from .common import COMMANDS, UsageError, console, count, number

_EPILOG = """\
examples:
  ditcache sample mnist-dit-retrofit --labels 3 5 8 --out grid.png
  ditcache sample mnist-dit --labels 0 1 2 3 4 5 6 7 8 9 --steps 50 --seed 1 --scale 4 --out digits.png
  ditcache sample mnist-dit-retrofit --schedule skip-dit-3 --labels 7 7 7 --out sevens.png
  ditcache sample mnist-latte --labels 4 2 --out clips.gif
"""


def _class_labels(name: str, labels: list[str]) -> list:
    """The labels as the pipeline takes them (class names, else ids), checked against the model."""
    from ..zoo import meta

    names = [str(n) for n in meta(name).get("data", {}).get("class_names") or []]
    out = []
    for label in labels:
        if label in names:
            out.append(label)
        elif label.isdigit() and int(label) < len(names):
            out.append(int(label))
        else:
            raise UsageError(f"--labels: {name} has no class {label!r}; its classes are {' '.join(names)}")
    return out


def _check_out(name: str, out: Path, video: bool) -> None:
    want = ".gif" if video else ".png"
    if out.suffix.lower() != want:
        kind = "a video model: its clips go into a GIF" if video else "an image model: the grid is a PNG"
        raise UsageError(f"--out {out}: {name} is {kind}; give a file name ending in {want}")
    if not out.parent.is_dir():
        raise UsageError(f"--out {out}: the folder {out.parent} does not exist; create it first")


def grid(images: list, columns: int, scale: int = 1):
    """The PIL `images` (all one size) tiled row by row, `columns` wide, each enlarged `scale` times."""
    from PIL import Image

    w, h = images[0].size
    cols = min(columns, len(images))
    rows = math.ceil(len(images) / cols)
    canvas = Image.new(images[0].mode, (cols * w * scale, rows * h * scale))
    for i, image in enumerate(images):
        tile = image.resize((w * scale, h * scale), Image.NEAREST) if scale > 1 else image
        canvas.paste(tile, ((i % cols) * w * scale, (i // cols) * h * scale))
    return canvas


def _auto_schedule(model: str, steps: int) -> str:
    """The zoo model's calibrated schedule when it was made for this step count, else skip-dit."""
    import json

    from .. import zoo

    try:
        made_for = json.loads(zoo.schedule_path(model).read_text(encoding="utf-8")).get("num_inference_steps")
    except FileNotFoundError:
        return "skip-dit"
    return "calibrated" if made_for == steps else "auto"


def cmd_sample(args) -> int:
    import torch

    from .. import zoo

    if args.model not in zoo.available():
        raise UsageError(f"{args.model}: not a zoo model of this installation; choose one of {', '.join(zoo.available())}")
    video = zoo.meta(args.model).get("family") == "latte"
    labels = _class_labels(args.model, args.labels)
    out = Path(args.out)
    _check_out(args.model, out, video)
    if args.schedule == "auto":
        args.schedule = _auto_schedule(args.model, args.steps)
    if args.schedule not in ("calibrated", "auto", None):
        from ..schedules import resolve_schedule

        resolve_schedule(args.schedule)  # an unknown preset: one line (ValueError), before any work
    pipe = zoo.pipeline(args.model, schedule=args.schedule)
    generator = torch.Generator().manual_seed(args.seed)
    result = pipe(class_labels=labels, num_inference_steps=args.steps, guidance_scale=args.guidance,
                  generator=generator)
    columns = args.columns or min(len(labels), 10)
    if video:
        from diffusers.utils import export_to_gif

        clips = result.frames
        frames = [grid([clip[f] for clip in clips], columns, args.scale) for f in range(len(clips[0]))]
        export_to_gif(frames, str(out), fps=args.fps)
        size = frames[0].size
        what = f"{len(clips)} clips of {len(frames)} frames"
    else:
        picture = grid(result.images, columns, args.scale)
        picture.save(out)
        size = picture.size
        what = f"{len(labels)} digits"
    console.print(f"wrote {out}: {what} ({', '.join(map(str, args.labels))}), {size[0]}x{size[1]} px, "
                  f"{args.steps} steps, guidance {args.guidance:g}, seed {args.seed}, schedule {args.schedule}",
                  highlight=False, soft_wrap=True)
    return 0


def add_parser(subparsers) -> None:
    from ..zoo import ZOO_MODELS

    p = subparsers.add_parser(
        "sample", help=COMMANDS["sample"],
        description="Sample a zoo model through its diffusers pipeline (dit_cache.zoo.pipeline): one image "
        "(or clip) per label, laid out in a grid, written as PNG (image models) or GIF (mnist-latte).",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL", help=f"a zoo model: {', '.join(ZOO_MODELS)}")
    p.add_argument("--labels", nargs="+", required=True, metavar="LABEL", help="classes to draw, one sample each (0-9)")
    p.add_argument("--out", required=True, help="the output file: .png (.gif for mnist-latte)")
    p.add_argument("--steps", type=count(1), default=20, help="denoising steps, >= 1 (default 20)")
    p.add_argument("--seed", type=count(0), default=0, help="random seed, >= 0 (default 0)")
    p.add_argument("--guidance", type=number(0), default=2.0, help="classifier-free guidance scale, >= 0; "
                   "<= 1 turns it off (default 2.0, what the zoo was tuned for)")
    p.add_argument("--schedule", default="auto", metavar="SCHEDULE", help="a cache preset (ditcache presets), "
                   "a schedule file, or `calibrated` (the model's shipped schedule, DDIM 20 steps); default auto: "
                   "calibrated at its step count, else skip-dit with the trained adapters on models that have them, "
                   "else none")
    p.add_argument("--columns", type=count(1), default=None, help="grid width (default: all in one row, up to 10)")
    p.add_argument("--scale", type=count(1), default=1, help="enlarge each 32 px sample this many times (default 1)")
    p.add_argument("--fps", type=count(1), default=4, help="GIF frames per second (mnist-latte; default 4)")
    p.set_defaults(func=cmd_sample)
