"""Finding and loading the shipped zoo models (`finetune` result folders beside this module)."""
from __future__ import annotations

import json
from pathlib import Path

ZOO_DIR = Path(__file__).parent

#: name -> what it is (also the CLI's choices for `ditcache bench --model`)
ZOO_MODELS = {
    "mnist-dit": "vanilla DiTTransformer2DModel (8 blocks, 128 wide, patch 4) on 32x32 digits: an 'existing checkpoint'",
    "mnist-dit-retrofit": "mnist-dit + inserted residual long-skip adapters, fine-tuned with 20% of its budget",
    "mnist-skip-dit": "the mnist-dit architecture trained from scratch with Skip-DiT 'replace' long skips",
    "mnist-latte": "LatteTransformer3DModel (3 spatial+temporal pairs) on 8-frame moving digits, class tokens",
}

#: Skip-Cache options the zoo models default to: DiT-XL/2 runs k=4 of its 28 blocks at each end
#: on a cached step; the zoo DiTs have 8 blocks, so k=1 keeps that share (Latte's default is k=1).
SKIP_DIT_DEFAULTS = {"mnist-dit": {"shallow": 1}, "mnist-dit-retrofit": {"shallow": 1}, "mnist-skip-dit": {"shallow": 1}}


def _check_name(name: str) -> None:
    if name not in ZOO_MODELS:
        raise ValueError(f"unknown zoo model {name!r}; the zoo has: {', '.join(ZOO_MODELS)}")


def path(name: str) -> Path:
    """The shipped result folder of a zoo model (a `dit_cache.finetune` output)."""
    _check_name(name)
    folder = ZOO_DIR / name
    if not (folder / "finetune.json").is_file():
        raise FileNotFoundError(
            f"zoo model {name!r} is not in this installation ({folder} has no finetune.json); "
            "train it with benchmarks/zoo/train.sh and export it with benchmarks/zoo/export.py"
        )
    return folder


def meta(name: str) -> dict:
    """finetune.json of a zoo model (class, adapters, training config, figures, command)."""
    return json.loads((path(name) / "finetune.json").read_text(encoding="utf-8"))


def load(name: str, schedule="skip-dit", **options):
    """The zoo model in float32 eval mode; models with long-skip adapters come patched with
    ``schedule`` (+ ``options``) and their trained adapters (``schedule=None``: the bare model,
    which for those models lacks the skips it was trained with)."""
    from ..finetuning.io import load_finetuned  # here: reading ZOO_MODELS stays light

    return load_finetuned(path(name), schedule, **schedule_options(name, schedule, options))


def schedule_options(name: str | None, schedule, options: dict) -> dict:
    """``options`` over the zoo model's Skip-Cache defaults when ``schedule`` is Skip-Cache."""
    from ..methods import SkipCacheConfig
    from ..schedules import resolve_schedule

    if name in SKIP_DIT_DEFAULTS and schedule is not None and isinstance(resolve_schedule(schedule), SkipCacheConfig):
        return {**SKIP_DIT_DEFAULTS[name], **options}
    return dict(options)


def available() -> list[str]:
    """The zoo models shipped in this installation."""
    return [n for n in ZOO_MODELS if (ZOO_DIR / n / "finetune.json").is_file()]

