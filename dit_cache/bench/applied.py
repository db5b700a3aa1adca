"""A method installed on a runner's model for one run: the common interface, and dit-cache's."""
from __future__ import annotations

import dataclasses

from ..api import reset, stats, unpatch
from ..runtime.patch_state import get_state
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

    def remove(self) -> None:
        pass


class AppliedDitCache(Applied):
    def __init__(self, spec: MethodSpec, runner):
        super().__init__(spec)
        self.runner = runner
        try:
            runner.install_dit_cache(spec.name, spec.options)
        except (TypeError, ValueError) as err:
            raise BenchInputError(f"method {spec.label!r}: {err}") from None

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
        return ", ".join(
            f"{f.name}={format_value(getattr(config, f.name))}"
            for f in dataclasses.fields(config)
            if getattr(config, f.name) is not None
        )

    def remove(self) -> None:
        unpatch(self.runner.patch_target)
