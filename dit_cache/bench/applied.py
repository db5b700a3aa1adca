"""A method installed on a runner's model for one run: the common interface, and dit-cache's."""
from __future__ import annotations

import dataclasses

from ..api import reset, stats, unpatch
from ..runtime.patch_state import get_state
from ..methods.plan import StepPlanConfig
from .calibrated import CALIBRATE, CALIBRATED, calibrated_plan
from .errors import BenchInputError
from .._common.options import format_value
from .specs import MethodSpec


class Applied:
    """A method installed on a runner's model. `remove()` restores the model exactly."""

    def __init__(self, spec: MethodSpec):
        self.spec = spec

    def before_generation(self) -> None:
        pass

    def stats(self) -> dict | None:
        return None

    def config_text(self) -> str:
        return ""

    def setup(self) -> dict | None:
        """What the method was given to run (a peer's cache context, calibration seeds...)."""
        return None

    def remove(self) -> None:
        pass


class AppliedDitCache(Applied):
    def __init__(self, spec: MethodSpec, runner):
        super().__init__(spec)
        self.runner = runner
        self.calibration = None
        schedule, options = spec.name, spec.options
        if spec.name == CALIBRATED and getattr(runner, "zoo_name", None) is None:
            raise BenchInputError(f"method {spec.label!r} is a zoo model's shipped schedule; for {runner.label} use "
                                  "calibrate:speedup=2.0 or a schedule file from ditcache calibrate")
        if spec.name == CALIBRATE:
            self.calibration = calibrated_plan(spec, runner)
            schedule, options = self.calibration.config, {}
        try:
            runner.install_dit_cache(schedule, options)
        except (TypeError, ValueError, FileNotFoundError) as err:
            raise BenchInputError(f"method {spec.label!r}: {err}") from None

    def setup(self) -> dict | None:
        if self.calibration is None:
            return None
        report = self.calibration.report
        return {"calibration": {k: report[k] for k in ("seeds", "psnr", "cost_full_generations", "seconds")},
                "plan": list(self.calibration.config.plan)}

    def before_generation(self) -> None:
        # New generations are detected from the timesteps anyway; resetting makes a generation
        # that follows a priming run at the same first timestep start fresh too.
        reset(self.runner.patch_target)

    def stats(self) -> dict | None:
        return stats(self.runner.patch_target)

    def config_text(self) -> str:
        state = get_state(self.runner.transformer)
        config = state.config if state is not None else None
        if config is None or not dataclasses.is_dataclass(config):
            return ""
        if isinstance(config, StepPlanConfig):  # its plan, not its timesteps and provenance
            return "plan=" + " ".join(config.plan)
        return ", ".join(
            f"{f.name}={format_value(getattr(config, f.name))}"
            for f in dataclasses.fields(config)
            if getattr(config, f.name) is not None
        )

    def remove(self) -> None:
        unpatch(self.runner.patch_target)
