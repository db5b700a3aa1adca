"""diffusers' MagCache, calibrated with its own ``calibrate=True`` pass before it runs.

The calibration generations use seeds far from any evaluation seed (`CALIBRATION_SEEDS`;
the bench refuses ``--seeds`` that overlap them), and the per-step magnitude ratios diffusers
prints at the end of each are averaged over the seeds. Ratios are kept per runner and step
count, so reinstalling MagCache (each interleaved round) does not calibrate again.
"""
from __future__ import annotations

import ast
import contextlib
import io
import weakref

from ..._common.options import format_value
from ..calibrated import calibration_seeds
from ..errors import BenchInputError, PeerUnavailable
from ..specs import MethodSpec
from .hooks import PeerHooks, check_block_chain, check_options, number

PEER_MAGCACHE = "diffusers-magcache"
MAGCACHE_OPTIONS = ("threshold", "retention_ratio", "max_skip_steps", "calibration_seeds")
_RATIOS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # runner -> {(steps, seeds): ratios}


def parse_ratios(printed: str) -> list[float]:
    """The ratio list diffusers' calibration prints ("Copy these values to MagCacheConfig...")."""
    for line in reversed(printed.splitlines()):
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            return [float(x) for x in ast.literal_eval(line)]
    raise PeerUnavailable("diffusers' MagCache calibration printed no magnitude ratios")


class AppliedDiffusersMagCache(PeerHooks):
    """``apply_mag_cache``: skip every block while the accumulated magnitude-ratio error of the
    calibrated per-step ratios stays under `threshold` (at most `max_skip_steps` in a row,
    never in the first `retention_ratio` of the steps); a skipped step adds the last residual."""

    needs_context = True

    def install(self) -> None:
        from diffusers import MagCacheConfig, apply_mag_cache

        spec = self.spec
        check_options(spec, MAGCACHE_OPTIONS)
        kwargs = dict(
            threshold=number(spec, "threshold", 0.06),
            retention_ratio=number(spec, "retention_ratio", 0.2),
            max_skip_steps=number(spec, "max_skip_steps", 3, integer=True),
        )
        if kwargs["retention_ratio"] > 1:
            raise BenchInputError(f"{spec.name}: retention_ratio is a share of the steps in [0, 1], got {kwargs['retention_ratio']:g}")
        self.seeds = calibration_seeds(spec)
        check_block_chain(self.model, "MagCache")
        self.ratios = self.calibrated_ratios()
        self.settings = MagCacheConfig(num_inference_steps=self.runner.s.steps, mag_ratios=self.ratios, **kwargs)
        apply_mag_cache(self.model, self.settings)  # replaces the calibration hooks, if any

    def calibrated_ratios(self) -> list[float]:
        steps = self.runner.s.steps
        known = _RATIOS.setdefault(self.runner, {})
        if (steps, self.seeds) not in known:
            from diffusers import MagCacheConfig, apply_mag_cache

            apply_mag_cache(self.model, MagCacheConfig(calibrate=True, num_inference_steps=steps))
            self.invalidate_registries()
            runs = []
            with self.context_for_calibration():
                for seed in self.seeds:
                    self.before_generation()
                    printed = io.StringIO()
                    with contextlib.redirect_stdout(printed):
                        self.runner.generate(self.runner.prepare(seed))
                    runs.append(parse_ratios(printed.getvalue()))
            if any(len(r) != steps for r in runs):
                raise PeerUnavailable(f"MagCache calibration gave {[len(r) for r in runs]} ratios for {steps} steps")
            known[(steps, self.seeds)] = [sum(step) / len(runs) for step in zip(*runs)]
        return known[(steps, self.seeds)]

    def context_for_calibration(self):
        """The per-call cache context (installed after `install` for the measured runs)."""
        handles = [self.model.register_forward_pre_hook(self._open_context),
                   self.model.register_forward_hook(self._close_context, always_call=True)]
        return _removing(handles)

    def config_text(self) -> str:
        s = self.settings
        return (f"threshold={s.threshold:g}, retention={s.retention_ratio:g}, max_skip={s.max_skip_steps}, "
                f"calibrated on seeds {format_value(self.seeds)}")

    def setup(self) -> dict:
        return {"cache_context": self.context_name, "calibration_seeds": list(self.seeds),
                "mag_ratios": [round(r, 6) for r in self.ratios]}


@contextlib.contextmanager
def _removing(handles):
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
