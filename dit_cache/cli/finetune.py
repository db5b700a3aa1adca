"""`ditcache finetune`: train long-skip adapters (and optionally the whole model) on a dataset.

Examples::

    # retrofit a real pipeline on a folder of images (class sub-folders = labels / captions)
    ditcache finetune --pipeline ./DiT-XL-2-256 --data ./images --output ./out \\
        --adapter-steps 2000 --full-steps 4000 --latent-cache ./latents
    # a pixel-space model from scratch on the built-in MNIST digits, 2 processes
    torchrun --standalone --nproc_per_node 2 -m dit_cache.cli finetune \\
        --model-config benchmarks/zoo/mnist-dit.json --adapters none --full-steps 4000 --data mnist --output ./mnist-dit
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

from .common import COMMANDS, UsageError, console, count, device, number


_NONE = {"none": None, "off": None, "no": None}
SEED_LIMIT = 2**32  # numpy's seed range (the trainer seeds torch, numpy and python)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "finetune",
        help=COMMANDS["finetune"],
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_argument_group("model (one of)")
    src.add_argument("--pipeline", help="diffusers pipeline folder (or a tiny test name: tiny-dit, tiny-latte, tiny-hunyuan); "
                     "its VAE and text encoders encode the data")
    src.add_argument("--model", help="transformer folder (save_pretrained) or tiny name; trains in pixel space")
    src.add_argument("--model-config", help="transformer config (JSON file or inline JSON with _class_name) to build "
                     "a new model from scratch (seeded); trains in pixel space")
    p.add_argument("--data", required=True, help="mnist | moving-mnist | a folder of images or clips")
    p.add_argument("--output", required=True, help="result folder (transformer/, adapters, log, checkpoints)")
    p.add_argument("--scheduler-config", help="training noise schedule (scheduler folder or json); default: the "
                   "pipeline's, or the scheduler/ beside a --model folder, else DiT's linear schedule")
    p.add_argument("--adapters", default="residual", choices=("residual", "replace", "none"))
    p.add_argument("--adapter-steps", type=count(0), default=0, help="stage 1: adapters only")
    p.add_argument("--full-steps", type=count(0), default=0, help="stage 2: every parameter")
    p.add_argument("--batch-size", type=count(1), default=32, help="global batch (split across processes)")
    p.add_argument("--lr", type=number(0, low_open=True), default=1e-4)
    p.add_argument("--adapter-lr", type=number(0, low_open=True), default=None)
    p.add_argument("--weight-decay", type=number(0), default=0.0)
    p.add_argument("--warmup-steps", type=count(0), default=100)
    p.add_argument("--lr-schedule", default="constant", choices=("constant", "cosine", "linear"))
    p.add_argument("--ema-decay", type=number(0, 1, high_open=True, words=_NONE), default=0.9999, help="float or none")
    p.add_argument("--max-grad-norm", type=number(0, low_open=True, words=_NONE), default=1.0, help="float or none")
    p.add_argument("--skip-grad-norm-above", type=number(0, low_open=True, words=_NONE), default=None)
    p.add_argument("--spectral-bound", type=number(0, low_open=True, words={**_NONE, "auto": "auto"}), default="auto", help="auto | none | float")
    p.add_argument("--cond-dropout", type=number(0, 1), default=0.1)
    p.add_argument("--seed", type=count(0, SEED_LIMIT), default=0)
    p.add_argument("--mixed-precision", default="no", choices=("no", "bf16"))
    p.add_argument("--checkpoint-every", type=count(0), default=500, help="0: no checkpoints")
    p.add_argument("--keep-checkpoints", type=count(0), default=2, help="newest checkpoints kept; 0: all")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --output")
    p.add_argument("--fp16", action="store_true", help="save the result weights in float16")
    p.add_argument("--save-raw", action="store_true", help="save the raw weights instead of the EMA weights")
    p.add_argument("--latent-cache", help="folder to cache VAE latents in")
    p.add_argument("--no-vae-sample", action="store_true", help="train on the VAE posterior mean")
    p.add_argument("--resolution", type=count(1), help="image size for folders (default: the model's)")
    p.add_argument("--num-frames", type=count(1), help="frames per clip (default: the model's video_length)")
    p.add_argument("--frame-stride", type=count(1), default=1)
    p.add_argument("--prediction-type", choices=("epsilon", "v_prediction", "sample"))
    p.add_argument("--beta-schedule", help="override the schedule's beta_schedule (e.g. squaredcos_cap_v2)")
    p.add_argument("--threads", type=count(1), help="torch threads per process")
    p.add_argument("--device", type=device, help="cpu / cuda / cuda:1 (default: cuda:LOCAL_RANK when available, else cpu)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_finetune)


def _check_data(spec: str):
    from ..finetuning.data import BUILTIN_DATASETS

    if spec in BUILTIN_DATASETS:
        return
    path = Path(spec)
    if not path.exists():
        raise UsageError(f"--data {spec!r}: no such folder (or built-in set: {', '.join(BUILTIN_DATASETS)})")
    if not path.is_dir():
        raise UsageError(f"--data {spec!r} is not a folder of images or clips")


def _read_config(text: str) -> dict:
    if text.lstrip().startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            raise UsageError(f"--model-config: invalid JSON ({err})") from None
    path = Path(text)
    if not path.is_file():
        raise UsageError(f"--model-config {text!r}: no such file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UsageError(f"--model-config {text!r}: invalid JSON ({err})") from None


def _transformer_class(name: str | None):
    import diffusers

    from ..runtime.registry import supported_models

    if not name:
        raise UsageError("the model config has no _class_name (e.g. DiTTransformer2DModel)")
    supported = supported_models()
    cls = getattr(diffusers, name, None)
    if cls is None or name not in supported:
        raise UsageError(f"model class {name!r} is not supported; use one of {', '.join(supported)}")
    return cls


def _load_model(args, seed: int):
    """(model_or_pipeline, default scheduler source)."""
    import torch

    from ..testing import TINY_MODELS, build_pipeline, build_transformer

    given = [a for a in ("pipeline", "model", "model_config") if getattr(args, a)]
    if len(given) != 1:
        raise UsageError("give exactly one of --pipeline, --model, --model-config")
    if args.pipeline:
        if args.pipeline in TINY_MODELS:
            return build_pipeline(args.pipeline, seed=seed, scheduler="ddpm"), None
        if not Path(args.pipeline).is_dir():
            raise UsageError(f"--pipeline {args.pipeline!r}: no such folder")
        from diffusers import DiffusionPipeline

        return DiffusionPipeline.from_pretrained(args.pipeline, torch_dtype=torch.float32), None
    if args.model:
        if args.model in TINY_MODELS:
            return build_transformer(args.model, seed=seed), None
        folder = Path(args.model)
        if not (folder / "config.json").is_file():
            raise UsageError(f"--model {args.model!r}: not a transformer folder (no config.json)")
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        model = _transformer_class(config.get("_class_name")).from_pretrained(folder, torch_dtype=torch.float32)
        beside = folder.parent / "scheduler"
        return model, (beside if (beside / "scheduler_config.json").is_file() else None)
    config = _read_config(args.model_config)
    cls = _transformer_class(config.get("_class_name"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls.from_config({k: v for k, v in config.items() if not k.startswith("_")})
    return model, None


def _device(args):
    import torch

    if args.device:
        return args.device
    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return "cpu"


def cmd_finetune(args) -> int:
    """Errors in the input (paths, configs, data) print one line on stderr and return 2."""
    try:
        return _run(args)
    except (UsageError, ValueError, OSError) as err:
        from rich.console import Console

        text = " ".join(str(err).split()) or type(err).__name__
        Console(stderr=True).print(f"[red]error:[/red] {text}", highlight=False, soft_wrap=True)
        return 2


def _run(args) -> int:
    from ..finetuning.api import finetune
    from ..finetuning.config import resolve_config

    options = dict(
        adapters=None if args.adapters == "none" else args.adapters,
        adapter_steps=args.adapter_steps,
        full_steps=args.full_steps,
        batch_size=args.batch_size,
        lr=args.lr,
        adapter_lr=args.adapter_lr,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps,
        lr_schedule=args.lr_schedule,
        ema_decay=args.ema_decay,
        max_grad_norm=args.max_grad_norm,
        skip_grad_norm_above=args.skip_grad_norm_above,
        spectral_bound=args.spectral_bound,
        cond_dropout=args.cond_dropout,
        seed=args.seed,
        mixed_precision=args.mixed_precision,
        checkpoint_every=args.checkpoint_every,
        keep_checkpoints=args.keep_checkpoints,
        progress=not args.no_progress,
        save_fp16=args.fp16,
        save_ema=not args.save_raw,
        latent_cache=args.latent_cache,
        vae_sample=not args.no_vae_sample,
        resolution=args.resolution,
        num_frames=args.num_frames,
        frame_stride=args.frame_stride,
        prediction_type=args.prediction_type,
        beta_schedule=args.beta_schedule,
        threads=args.threads,
    )
    resolve_config(None, options)  # every option checked before the model is loaded
    _check_data(args.data)
    if args.scheduler_config and not Path(args.scheduler_config).exists():
        raise UsageError(f"--scheduler-config {args.scheduler_config!r}: no such file or folder")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    model, scheduler_source = _load_model(args, args.seed)
    if args.scheduler_config:
        scheduler_source = args.scheduler_config
    argv = sys.argv[1:] if sys.argv and sys.argv[0].endswith(("ditcache", "cli.py")) else None
    metadata = {"cli": {k: v for k, v in vars(args).items() if k != "func"}}
    if argv is not None:
        metadata["command"] = "ditcache " + shlex.join(argv)
    result = finetune(
        model, args.data, args.output, noise_scheduler=scheduler_source, resume=args.resume,
        device=_device(args), metadata=metadata, **options,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        loss = f"{result.final_loss:.4f}" if result.final_loss is not None else "n/a"
        console.print(
            f"trained {result.steps_run} step(s) (total {result.steps}, skipped {result.skipped_steps}) in "
            f"{result.seconds:.1f} s, {result.steps_per_second:.2f} step/s; final loss {loss}; saved to {args.output}",
            highlight=False, soft_wrap=True,
        )
        for note in result.notes:
            console.print(f"note: {note}", highlight=False, soft_wrap=True)
    return 0
