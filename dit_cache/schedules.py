"""Method configs: frozen dataclasses validated on construction, and the preset table.

A step's decision depends only on its index and timestep (never on the data), so every rank of
a multi-GPU run takes the same decision without communicating."""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass

from .adapters import SkipCacheDefaults


def _check_int(name: str, value, minimum: int = 1) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < minimum):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class NoCacheConfig:
    """Patched, step tracking on, never caching: the reference point for overhead."""

    name = "none"
    inserts_adapters = False


@dataclass(frozen=True)
class SkipCacheConfig:
    """Skip-Cache (Skip-DiT): on cached steps only the first and last `shallow` units run and
    the input of unit U-shallow comes from the last full step. `None` = backbone default.

    A step i with timestep t is FULL when ``i % interval == 0``, or ``t >= start``, or the
    previous step had ``t <= close`` (so the closing steps are all full); otherwise cached.
    """

    interval: int | None = None
    shallow: int | None = None
    start: float | None = None
    close: float | None = None

    name = "skip-dit"
    inserts_adapters = True

    def __post_init__(self):
        _check_int("interval", self.interval)
        _check_int("shallow", self.shallow)
        for field in ("start", "close"):
            value = getattr(self, field)
            if value is not None and not isinstance(value, (int, float)):
                raise ValueError(f"{field} must be a number (a timestep), got {value!r}")
        if self.start is not None and self.close is not None and self.start <= self.close:
            raise ValueError(
                f"empty caching window: start={self.start} must be greater than close={self.close} "
                "(steps with t >= start and steps after t <= close are always full)"
            )

    def resolve(self, defaults: SkipCacheDefaults, max_shallow: int) -> "SkipCacheConfig":
        """Fill `None` fields from the backbone defaults and check `shallow` fits the model."""
        if max_shallow < 1:
            raise ValueError(
                "Skip-Cache needs at least 3 units (blocks, or Latte block pairs) so that a cached "
                "step skips something; this model has too few"
            )
        shallow = self.shallow
        if shallow is None:  # reference k, clamped for shallow test-size models
            shallow = min(defaults.shallow, max_shallow)
        elif shallow > max_shallow:
            raise ValueError(
                f"shallow={shallow} is too deep for this model: with k shallow units computed at each "
                f"end, k must be <= {max_shallow} so a cached step still skips at least one unit"
            )
        resolved = dataclasses.replace(
            self,
            interval=self.interval if self.interval is not None else defaults.interval,
            shallow=shallow,
            start=float(self.start if self.start is not None else defaults.start),
            close=float(self.close if self.close is not None else defaults.close),
        )
        return resolved

    def is_full(self, step: int, t: float, t_prev: float | None) -> bool:
        return step % self.interval == 0 or t >= self.start or (t_prev is not None and t_prev <= self.close)

    def pattern(self, timesteps) -> str:
        """`F`/`c` string for a sequence of timesteps (e.g. `scheduler.timesteps`)."""
        out, t_prev = [], None
        for i, t in enumerate(float(t) for t in timesteps):
            out.append("F" if self.is_full(i, t, t_prev) else "c")
            t_prev = t
        return "".join(out)


def _skip(n: int | None = None) -> SkipCacheConfig:
    return SkipCacheConfig(interval=n)


#: Preset name -> config. Also feeds the CLI choices.
PRESETS: dict[str, object] = {
    "none": NoCacheConfig(),
    "skip-dit": SkipCacheConfig(),
    **{f"skip-dit-{n}": _skip(n) for n in range(2, 7)},
}


def register_preset(name: str, config: object) -> None:
    PRESETS[name] = config


def presets() -> dict[str, object]:
    """Every preset name with its config."""
    return dict(PRESETS)


def resolve_schedule(schedule) -> object:
    """A preset name or a config object -> config object, with a clear error for bad names."""
    if isinstance(schedule, str):
        if schedule in PRESETS:
            return PRESETS[schedule]
        close = difflib.get_close_matches(schedule, PRESETS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown schedule preset {schedule!r}.{hint} Valid presets: {', '.join(PRESETS)}")
    if schedule is None:
        return PRESETS["none"]
    return schedule
