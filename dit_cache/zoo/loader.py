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

#: `load(name)`'s default schedule: the per-step plan calibrated for the model (DDIM, 20 steps,
#: 2x FLOP-ideal; `ditcache calibrate`), shipped as <model>/schedule.json
CALIBRATED = "calibrated"
SCHEDULE_FILE = "schedule.json"


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


def load(name: str, schedule=CALIBRATED, **options):
    """The zoo model in float32 eval mode, patched with ``schedule`` (+ ``options``): by default
    its calibrated schedule (DDIM, 20 steps, 2x FLOP-ideal; `schedule_path`); models with
    long-skip adapters get their trained adapters too. ``schedule=None``: the bare model (for
    models trained with long skips, the model without them)."""
    from ..finetuning.io import load_finetuned  # here: reading ZOO_MODELS stays light

    schedule = zoo_schedule(name, schedule)
    model = load_finetuned(path(name), schedule, **options)
    if schedule is not None and meta(name).get("adapters") is None:  # a vanilla model: patched as given
        from ..api import patch

        patch(model, schedule, **options)
    return model


def schedule_path(name: str) -> Path:
    """The calibrated schedule file shipped with a zoo model."""
    file = path(name) / SCHEDULE_FILE
    if not file.is_file():
        raise FileNotFoundError(f"zoo model {name!r} has no calibrated schedule ({file}); pass a preset such as "
                                f"schedule='skip-dit', or calibrate one: ditcache calibrate --model {name} --out FILE")
    return file


def zoo_schedule(name: str | None, schedule):
    """``"calibrated"`` -> the zoo model's schedule file; anything else unchanged."""
    if isinstance(schedule, str) and schedule == CALIBRATED:
        if name is None:
            raise ValueError("schedule='calibrated' names a zoo model's shipped schedule; give a preset or a file")
        return str(schedule_path(name))
    return schedule


def available() -> list[str]:
    """The zoo models shipped in this installation."""
    return [n for n in ZOO_MODELS if (ZOO_DIR / n / "finetune.json").is_file()]

