"""Per-step plans: a static schedule that picks one action for every step (preset ``plan``,
made by `dit_cache.calibrate` and stored in schedule files).

Actions, on a model of U units (blocks, or Latte block pairs):
- ``F``: full; stores what the other actions reuse.
- ``S<k>``: Skip-Cache of depth k: units 0..k-1 and U-k..U-1 run, the input of unit U-k is
  the one stored on the last full step (fused with the fresh output of unit k-1 through the
  model's long skip where it has one).
- ``R<k>``: residual reuse, as diffusers' FirstBlockCache does: units 0..k-1 run, the rest is
  replaced by the residual (output of the last unit minus input of unit k) stored on the last
  full step, added to the fresh input of unit k. ``R0`` runs no block at all (the residual of
  the whole stack, as MagCache / TeaCache reuse it); only the embeddings and the output layer
  run, with the new timestep. Needs one-block units (not Latte's pairs).
- ``A``: FORA reuse: every block runs with its attention and MLP outputs from the last full
  step, its adaLN modulation recomputed.

Every cached action reuses what the last full step stored; the decision is a function of the
step index alone, checked against the timesteps the plan was made for.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

ACTION = re.compile(r"^(F|A|S[1-9][0-9]*|R(0|[1-9][0-9]*))$")
#: how far two timesteps may differ and still be "the same step" (schedulers compute them in fp32)
TIMESTEP_TOLERANCE = 1e-3


def parse_action(action: str) -> tuple[str, int]:
    """``"S2"`` -> ``("S", 2)``; ``"F"`` -> ``("F", 0)``."""
    return action[0], int(action[1:] or 0)


@dataclass(frozen=True)
class StepPlanConfig:
    """One action per step (see the module doc). `timesteps`: the steps the plan was made for;
    a run whose step i has another timestep (another step count or scheduler) is refused.
    `model_class` / `config_hash`: the model it was calibrated on (checked at `patch`).
    `long_skips`: run with long-skip adapters (needed by models trained with them)."""

    plan: tuple[str, ...]
    timesteps: tuple[float, ...] | None = None
    model_class: str | None = None
    config_hash: str | None = None
    scheduler_class: str | None = None
    long_skips: bool = False
    source: str | None = None  # the schedule file it was read from, for messages
    #: actions whose caches full steps keep although the plan does not use them (calibration)
    keep: tuple[str, ...] = ()

    name = "plan"

    @property
    def inserts_adapters(self) -> bool:
        return self.long_skips

    @property
    def num_inference_steps(self) -> int:
        """The step count the plan runs (and only that one)."""
        return len(self.plan)

    def __post_init__(self):
        if isinstance(self.plan, str) or not isinstance(self.plan, (tuple, list)) or not self.plan:
            raise ValueError(f"plan must be a non-empty list of actions (F, A, S<k>, R<k>), got {self.plan!r}")
        bad = [a for a in self.plan if not isinstance(a, str) or not ACTION.match(a)]
        if bad:
            raise ValueError(f"unknown plan action(s) {bad[:3]}: each step is F, A, S<k> (k >= 1) or R<k> (k >= 0)")
        if self.plan[0] != "F":
            raise ValueError(f"a plan's first step must be F (nothing is stored before it), got {self.plan[0]!r}")
        object.__setattr__(self, "plan", tuple(self.plan))
        object.__setattr__(self, "keep", tuple(self.keep))
        if any(not isinstance(a, str) or not ACTION.match(a) for a in self.keep):
            raise ValueError(f"keep must list plan actions (F, A, S<k>, R<k>), got {self.keep!r}")
        if self.timesteps is not None:
            ts = tuple(self.timesteps)
            if len(ts) != len(self.plan) or any(isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) for t in ts):
                raise ValueError(f"timesteps must be {len(self.plan)} finite numbers, one per plan step")
            object.__setattr__(self, "timesteps", tuple(float(t) for t in ts))
        if not isinstance(self.long_skips, bool):
            raise ValueError(f"long_skips must be True or False, got {self.long_skips!r}")

    def where(self) -> str:
        return f"the schedule {self.source}" if self.source else "this plan"

    def check_step(self, step: int, t: float) -> None:
        """Raise when step `step` at timestep `t` is not a step this plan was made for."""
        n = len(self.plan)
        made_for = f"{n} steps" + (f" (timesteps {_short(self.timesteps)})" if self.timesteps else "")
        if step >= n:
            raise ValueError(f"{self.where()} was made for {made_for}; this run has more. "
                             f"Recalibrate for this step count (ditcache calibrate --steps ...).")
        if self.timesteps is not None and abs(self.timesteps[step] - t) > TIMESTEP_TOLERANCE * max(1.0, abs(t)):
            raise ValueError(
                f"{self.where()} was made for {made_for}; this run's step {step} has t={t:g}, not "
                f"{self.timesteps[step]:g} (another step count or scheduler). Recalibrate for this run "
                "(ditcache calibrate --steps ... --scheduler ...)."
            )

    def check_timesteps(self, timesteps) -> None:
        """Raise unless `timesteps` (a scheduler's, for a whole run) are the plan's."""
        timesteps = [float(t) for t in timesteps]
        if len(timesteps) != len(self.plan):
            raise ValueError(f"{self.where()} was made for {len(self.plan)} steps; this run has {len(timesteps)}. "
                             "Recalibrate for this step count (ditcache calibrate --steps ...).")
        for i, t in enumerate(timesteps):
            self.check_step(i, t)

    def pattern(self, timesteps) -> str:
        """`F` (full) / `c` (cached) per step, for `timesteps` of the run it was made for."""
        timesteps = [float(t) for t in timesteps]
        self.check_timesteps(timesteps)
        return "".join("F" if a == "F" else "c" for a in self.plan)

    def actions(self) -> set[str]:
        """Every action whose cache this plan keeps."""
        return {*self.plan, *self.keep}


def _short(ts) -> str:
    shown = ", ".join(f"{t:g}" for t in ts[:3])
    return f"{shown}, ..., {ts[-1]:g}" if len(ts) > 3 else shown


PRESETS: dict[str, object] = {}  # plans come from calibration, not from names
