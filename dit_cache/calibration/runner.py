"""Calibrating a bench runner's model (a zoo model, a built-in, a local folder): what
`ditcache calibrate` and the bench's ``calibrated`` rows use. The runner's own sampling loop
(or pipeline) makes the generations; models trained with long-skip adapters are calibrated
with them loaded."""
from __future__ import annotations

from ..api import unpatch
from .api import CALIBRATION_SEEDS, Calibration, calibrate


def calibrate_runner(runner, *, speedup: float | None = 2.0, max_error: float | None = None,
                     seeds=CALIBRATION_SEEDS, progress: bool = True, **options) -> Calibration:
    """`dit_cache.calibrate` on `runner`'s model with its scheduler, step count and inputs."""

    def generate(seed: int):
        return runner.generate(runner.prepare(seed))

    return calibrate(
        runner.transformer, speedup=speedup, max_error=max_error, num_inference_steps=runner.s.steps,
        scheduler=runner.scheduler, generate=generate, seeds=seeds, progress=progress,
        install=lambda config: runner.install_dit_cache(config, {}), uninstall=lambda: unpatch(runner.patch_target),
        long_skips=bool(runner.adapter_fusion), **options,
    )
