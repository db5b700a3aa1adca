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


def _check_required_int(name: str, value) -> None:
    if value is None:
        raise ValueError(f"{name} must be an integer >= 1, got None")
    _check_int(name, value)


def _check_window(name: str, window) -> tuple[float, float] | None:
    """A (low, high) timestep window, open at both ends; returns it as floats."""
    if window is None:
        return None
    try:
        low, high = window
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in (low, high)):
            raise TypeError
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a (low, high) pair of timesteps, got {window!r}") from None
    if low == high:
        raise ValueError(
            f"empty {name} ({low}, {high}): reuse happens only strictly inside low < t < high, "
            "so low must be below high"
        )
    if low > high:
        raise ValueError(f"reversed {name} ({low}, {high}): give it as (low, high), e.g. (100, 800)")
    return float(low), float(high)


@dataclass(frozen=True)
class FORAConfig:
    """FORA (Fast-Forward caching): on refresh steps (``step % interval == 0``, so the first
    step too) every block computes and stores the outputs of its attention and MLP submodules
    (before the adaLN gate); on the ``interval - 1`` following steps each block reuses them
    while its modulation (shift/scale/gate) is recomputed from the new timestep."""

    interval: int = 3

    name = "fora"
    inserts_adapters = False

    def __post_init__(self):
        _check_required_int("interval", self.interval)

    def is_full(self, step: int, t: float, t_prev: float | None) -> bool:
        return step % self.interval == 0

    def pattern(self, timesteps) -> str:
        """`F` (refresh) / `c` (reuse) string for a sequence of timesteps."""
        return "".join("F" if i % self.interval == 0 else "c" for i, _ in enumerate(timesteps))


#: VideoSys' Latte MLP broadcast: at these timesteps blocks 0-4 store their MLP output and the
#: next `mlp_skip` steps reuse it.
PAB_MLP_TIMESTEPS = (720.0, 640.0, 560.0, 480.0, 400.0)
PAB_MLP_BLOCKS = (0, 1, 2, 3, 4)
PAB_MLP_SKIP = 2
PAB_KINDS = ("spatial", "temporal", "cross")


@dataclass(frozen=True)
class PABPlan:
    """What PAB does on one step: the attention kinds it broadcasts and its MLP action."""

    broadcast: frozenset = frozenset()
    mlp: str | None = None  # "store" (anchor step), "reuse", or None

    @property
    def full(self) -> bool:
        return not self.broadcast and self.mlp != "reuse"


@dataclass(frozen=True)
class PABConfig:
    """Pyramid Attention Broadcast (VideoSys; diffusers' `apply_pyramid_attention_broadcast`).

    An attention output of kind k (spatial self-attention, Latte's temporal self-attention,
    cross-attention) is *broadcast* (the stored output is reused) on step i with timestep t iff
    ``i % k_range != 0`` and ``low < t < high`` (the kind's window, default `window`); otherwise
    it is computed and stored. `None` turns a kind off; a range of 1 computes every step. Kinds
    a model lacks are set to `None` when patching (DiT-XL: spatial only; Hunyuan-DiT: no
    temporal).

    ``mlp=True`` adds VideoSys' MLP broadcast: the first step at or below each timestep of
    `mlp_timesteps` (an *anchor*) computes and stores the MLP output of the blocks listed in
    `mlp_blocks` (index within each block stack); the next `mlp_skip` steps reuse it (a later
    anchor wins). `None` = VideoSys' values (720, 640, 560, 480, 400; blocks 0-4; skip 2). When the
    anchor timesteps occur in the schedule exactly this is VideoSys' rule; VideoSys itself
    never broadcasts on schedules that miss them.
    """

    spatial_range: int | None = 2
    temporal_range: int | None = 3
    cross_range: int | None = 6
    window: tuple[float, float] = (100.0, 800.0)
    spatial_window: tuple[float, float] | None = None
    temporal_window: tuple[float, float] | None = None
    cross_window: tuple[float, float] | None = None
    mlp: bool = False
    mlp_timesteps: tuple[float, ...] | None = None
    mlp_blocks: tuple[int, ...] | None = None
    mlp_skip: int | None = None

    name = "pab"
    inserts_adapters = False

    def __post_init__(self):
        for kind in PAB_KINDS:
            _check_int(f"{kind}_range", getattr(self, f"{kind}_range"))
        for field in ("window", "spatial_window", "temporal_window", "cross_window"):
            if field == "window" and self.window is None:
                raise ValueError("window must be a (low, high) pair of timesteps, got None")
            object.__setattr__(self, field, _check_window(field, getattr(self, field)))
        if not isinstance(self.mlp, bool):
            raise ValueError(f"mlp must be True or False, got {self.mlp!r}")
        _check_int("mlp_skip", self.mlp_skip)
        if self.mlp_timesteps is not None:
            ts = tuple(self.mlp_timesteps)
            if not ts or any(isinstance(t, bool) or not isinstance(t, (int, float)) for t in ts):
                raise ValueError(f"mlp_timesteps must be a non-empty sequence of timesteps, got {self.mlp_timesteps!r}")
            object.__setattr__(self, "mlp_timesteps", tuple(float(t) for t in ts))
        if self.mlp_blocks is not None:
            blocks = tuple(self.mlp_blocks)
            if not blocks:
                raise ValueError("mlp_blocks must list at least one block index")
            for b in blocks:
                _check_int("every mlp_blocks entry", b, minimum=0)
            object.__setattr__(self, "mlp_blocks", blocks)

    # -- the decision: a function of the step index and the timesteps so far only ----------
    def kind_window(self, kind: str) -> tuple[float, float]:
        return getattr(self, f"{kind}_window") or self.window

    def broadcasts(self, kind: str, step: int, t: float) -> bool:
        """Whether attention of `kind` reuses its stored output on step `step` at timestep `t`."""
        rng = getattr(self, f"{kind}_range")
        low, high = self.kind_window(kind)
        return rng is not None and step % rng != 0 and low < t < high

    @property
    def mlp_skip_used(self) -> int:
        return self.mlp_skip if self.mlp_skip is not None else PAB_MLP_SKIP

    @property
    def mlp_blocks_used(self) -> tuple[int, ...]:
        return self.mlp_blocks if self.mlp_blocks is not None else PAB_MLP_BLOCKS

    def _mlp_anchor(self, timesteps: list[float], i: int) -> bool:
        t = timesteps[i]
        for key in self.mlp_timesteps if self.mlp_timesteps is not None else PAB_MLP_TIMESTEPS:
            if t <= key and (timesteps[i - 1] > key if i > 0 else t == key):
                return True
        return False

    def plan_step(self, timesteps) -> PABPlan:
        """The plan of the LAST step of `timesteps` (this generation's timesteps so far)."""
        timesteps = [float(t) for t in timesteps]
        i, t = len(timesteps) - 1, timesteps[-1]
        broadcast = frozenset(k for k in PAB_KINDS if self.broadcasts(k, i, t))
        mlp = None
        if self.mlp:
            if self._mlp_anchor(timesteps, i):
                mlp = "store"
            elif any(self._mlp_anchor(timesteps, a) for a in range(max(0, i - self.mlp_skip_used), i)):
                mlp = "reuse"
        return PABPlan(broadcast, mlp)

    def plan(self, timesteps) -> list[PABPlan]:
        timesteps = [float(t) for t in timesteps]
        return [self.plan_step(timesteps[: i + 1]) for i in range(len(timesteps))]

    def pattern(self, timesteps) -> str:
        """`F` (nothing reused) / `c` (something broadcast) string for a sequence of timesteps."""
        return "".join("F" if p.full else "c" for p in self.plan(timesteps))


def _skip(n: int | None = None) -> SkipCacheConfig:
    return SkipCacheConfig(interval=n)


#: Preset name -> config. Also feeds the CLI choices.
PRESETS: dict[str, object] = {
    "none": NoCacheConfig(),
    "skip-dit": SkipCacheConfig(),
    **{f"skip-dit-{n}": _skip(n) for n in range(2, 7)},
    # FORA: refresh every N steps (the reference uses N=3)
    "fora": FORAConfig(),
    **{f"fora-{n}": FORAConfig(interval=n) for n in range(2, 8)},
    # PAB: (spatial, temporal, cross) broadcast ranges, VideoSys' Latte presets; `pab` = pab-236
    "pab": PABConfig(),
    **{
        f"pab-{s}{t}{c}": PABConfig(spatial_range=s, temporal_range=t, cross_range=c)
        for s, t, c in ((2, 3, 6), (3, 4, 7), (4, 6, 9))
    },
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
