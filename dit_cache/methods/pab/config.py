"""Pyramid Attention Broadcast (PAB): the `pab` / `pab-236` / `pab-347` / `pab-469` presets.

Decision (per step, from the step index and the timestep only; see `PABConfig`): attention of
kind k is broadcast on step i at timestep t iff ``i % k_range != 0`` and ``low < t < high``;
otherwise it is computed and stored. This is the rule of diffusers'
`apply_pyramid_attention_broadcast` (and of VideoSys) for a pipeline that calls the model once
per step (batched CFG, as the DiT, Latte and Hunyuan-DiT pipelines do), so on those pipelines
the outputs and the numbers of skipped attention calls are identical. The kinds are told apart
by structure (temporal = attention in Latte's temporal blocks; cross = ``is_cross_attention``),
not by name patterns, so Latte's temporal layers get the temporal range.

Where diffusers' PAB differs (documented in the README, tested in tests/test_pab.py):

- diffusers counts *calls* per attention layer, dit-cache counts *denoising steps*. With
  sequential CFG (two model calls per step) diffusers' range is in calls, and its single stored
  output per layer is shared by both branches, so the unconditional branch reuses the
  conditional branch's attention. dit-cache keeps one store per CFG branch and decides per step.
- diffusers' counter only restarts when the hooks are reset (`reset_stateful_hooks`). The Latte
  pipeline does that at the end of every call (CacheMixin); the DiT and Hunyuan-DiT pipelines do
  not, so on them the second generation continues the first one's count and broadcasts on
  different steps. dit-cache starts every generation at step 0.
- diffusers also broadcasts in train mode; dit-cache always computes in train mode.
- MLP broadcast (VideoSys; ``mlp=True``) has no diffusers counterpart.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..validation import check_int, check_window, is_timestep


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
            check_int(f"{kind}_range", getattr(self, f"{kind}_range"))
        for field in ("window", "spatial_window", "temporal_window", "cross_window"):
            if field == "window" and self.window is None:
                raise ValueError("window must be a (low, high) pair of timesteps, got None")
            object.__setattr__(self, field, check_window(field, getattr(self, field)))
        if not isinstance(self.mlp, bool):
            raise ValueError(f"mlp must be True or False, got {self.mlp!r}")
        check_int("mlp_skip", self.mlp_skip)
        if self.mlp_timesteps is not None:
            ts = tuple(self.mlp_timesteps)
            if not ts or not all(is_timestep(t) for t in ts):
                raise ValueError(f"mlp_timesteps must be a non-empty sequence of timesteps, got {self.mlp_timesteps!r}")
            object.__setattr__(self, "mlp_timesteps", tuple(float(t) for t in ts))
        if self.mlp_blocks is not None:
            blocks = tuple(self.mlp_blocks)
            if not blocks:
                raise ValueError("mlp_blocks must list at least one block index")
            for b in blocks:
                check_int("every mlp_blocks entry", b, minimum=0)
            object.__setattr__(self, "mlp_blocks", blocks)

    def for_kinds(self, kinds) -> "PABConfig":
        """This config with the attention kinds a model lacks (not in `kinds`) turned off, so
        patterns and stats describe what runs."""
        off = {f"{k}_range": None for k in PAB_KINDS if k not in kinds and getattr(self, f"{k}_range") is not None}
        return dataclasses.replace(self, **off) if off else self

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


# (spatial, temporal, cross) broadcast ranges: VideoSys' Latte presets; `pab` = pab-236
PRESETS = {
    "pab": PABConfig(),
    **{
        f"pab-{s}{t}{c}": PABConfig(spatial_range=s, temporal_range=t, cross_range=c)
        for s, t, c in ((2, 3, 6), (3, 4, 7), (4, 6, 9))
    },
}
