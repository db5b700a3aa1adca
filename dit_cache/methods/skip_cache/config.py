"""Skip-Cache, the method of Skip-DiT (presets `skip-dit`, `skip-dit-N`).

Full step: every unit runs; the input streams of unit U-k (before its long-skip fusion) are
stored per CFG branch. Cached step: units 0..k-1 run (their outputs still feed the long skips),
units k..U-k-1 are skipped (their hooks hand the input straight through, at no compute), the
input of unit U-k is the stored value, fused with the fresh output of unit k-1, and U-k..U-1 run.
Long skips carry the image stream; other streams (a joint block's text tokens) are cached and
passed through with it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from ..._common.skip_defaults import SkipCacheDefaults
from ..validation import check_int, check_timestep


@dataclass(frozen=True)
class SkipCacheConfig:
    """On cached steps only the first and last `shallow` units run and the input of unit
    U-shallow comes from the last full step. `None` = backbone default.

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
        check_int("interval", self.interval)
        check_int("shallow", self.shallow)
        check_timestep("start", self.start)
        check_timestep("close", self.close)
        if self.start is not None and self.close is not None and self.start <= self.close:
            raise ValueError(
                f"empty caching window: start={self.start} must be greater than close={self.close} "
                "(steps with t >= start and steps after t <= close are always full)"
            )

    def resolve(self, defaults: SkipCacheDefaults, max_shallow: int, n_units: int) -> "SkipCacheConfig":
        """Fill `None` fields from the backbone defaults and check `shallow` fits the model."""
        if max_shallow < 1:
            raise ValueError(
                "Skip-Cache needs at least 3 units (blocks, or Latte block pairs) so that a cached "
                "step skips something; this model has too few"
            )
        shallow = self.shallow
        if shallow is None:  # the reference k, scaled to this model's depth
            shallow = min(defaults.shallow_for(n_units), max_shallow)
        elif shallow > max_shallow:
            raise ValueError(
                f"shallow={shallow} is too deep for this model: with k shallow units computed at each "
                f"end, k must be <= {max_shallow} so a cached step still skips at least one unit"
            )
        return dataclasses.replace(
            self,
            interval=self.interval if self.interval is not None else defaults.interval,
            shallow=shallow,
            start=float(self.start if self.start is not None else defaults.start),
            close=float(self.close if self.close is not None else defaults.close),
        )

    def is_full(self, step: int, t: float, t_prev: float | None) -> bool:
        return step % self.interval == 0 or t >= self.start or (t_prev is not None and t_prev <= self.close)

    def pattern(self, timesteps) -> str:
        """`F`/`c` string for a sequence of timesteps (e.g. `scheduler.timesteps`)."""
        out, t_prev = [], None
        for i, t in enumerate(float(t) for t in timesteps):
            out.append("F" if self.is_full(i, t, t_prev) else "c")
            t_prev = t
        return "".join(out)


PRESETS = {"skip-dit": SkipCacheConfig(), **{f"skip-dit-{n}": SkipCacheConfig(interval=n) for n in range(2, 7)}}
