"""Which methods a benchmark compares: the spec syntax, the names it knows, the defaults.

A method spec is ``NAME`` or ``NAME:KEY=VALUE,KEY=VALUE``:

- ``unpatched``: the model as loaded, nothing installed (the fidelity reference).
- any dit-cache preset name (``dit_cache.presets()``: ``none``, ``skip-dit``, ``skip-dit-3``,
  ``fora``, ``pab-236``, ...); the options are passed to ``dit_cache.patch`` (config fields such
  as ``interval``/``shallow``, or ``fusion``/``kernel``/``attention``).
- ``diffusers-pab`` / ``diffusers-pab-SST`` (e.g. ``diffusers-pab-469``): diffusers'
  ``apply_pyramid_attention_broadcast``; options ``spatial_range``, ``temporal_range``,
  ``cross_range``, ``window`` (and ``spatial_window``... per kind), same meaning as
  ``dit_cache.PABConfig``.
- ``diffusers-fastercache``: diffusers' ``apply_faster_cache``; options ``spatial_range``,
  ``temporal_range``, ``uncond_range``, ``window``, ``uncond_window``, ``attention_weight``.
- ``diffusers-fbc``: diffusers' ``apply_first_block_cache``; option ``threshold`` (0.05).
- ``diffusers-taylorseer``: diffusers' ``apply_taylorseer_cache`` on every block's attention
  and feed-forward (``modules=attn+ff``, or ``attn`` / ``ff``); options ``cache_interval`` (5),
  ``disable_cache_before_step`` (3), ``disable_cache_after_step``, ``max_order`` (1),
  ``factors_dtype`` (the model's dtype).
- ``diffusers-magcache``: diffusers' ``apply_mag_cache``, calibrated first with its own
  ``calibrate=True`` pass on seeds disjoint from ``--seeds`` (``calibration_seeds``, default
  1000000/1000001); options ``threshold`` (0.06), ``retention_ratio`` (0.2), ``max_skip_steps`` (3).
- ``cache-dit-dbcache`` / ``cache-dit-dbcache-taylorseer`` (the ``dit-cache[peers]`` extra):
  ``cache_dit.enable_cache`` with DBCache (+ its TaylorSeer calibrator); options ``threshold``
  (residual_diff_threshold, 0.08), ``Fn`` (1), ``Bn`` (0), ``warmup`` (max_warmup_steps, 2),
  ``max_cached_steps``, ``max_continuous_cached_steps``, and ``order`` (TaylorSeer, 1).

A method may appear several times with different options (a threshold sweep:
``diffusers-fbc:threshold=0.05 diffusers-fbc:threshold=0.2``).

Values: integers, floats, ``true``/``false``, ``none``, a ``/``-separated tuple
(``window=100/800``), anything else a string. Several specs can share one argument,
separated by commas: a comma-separated piece without ``=`` starts a new method, so
``none,skip-dit:interval=3,shallow=2,fora`` is three methods.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field

from ..methods import FORAConfig, NoCacheConfig, PABConfig, SkipCacheConfig
from ..schedules import presets
from .._common.options import format_value, parse_value
from .errors import BenchInputError

UNPATCHED = "unpatched"
PEER_PAB = "diffusers-pab"
PEER_FASTERCACHE = "diffusers-fastercache"
CACHE_DIT = "cache_dit"
#: every peer and what it needs: the diffusers function, or the cache-dit package
PEER_NEEDS = {
    PEER_PAB: "apply_pyramid_attention_broadcast",
    PEER_FASTERCACHE: "apply_faster_cache",
    "diffusers-fbc": "apply_first_block_cache",
    "diffusers-taylorseer": "apply_taylorseer_cache",
    "diffusers-magcache": "apply_mag_cache",
    "cache-dit-dbcache": CACHE_DIT,
    "cache-dit-dbcache-taylorseer": CACHE_DIT,
}
PEERS = tuple(PEER_NEEDS)
DEFAULT_PEERS = (PEER_PAB, PEER_FASTERCACHE)  # in the default comparison (the others: by name)
PAB_TRIPLE = re.compile(r"^diffusers-pab-(\d)(\d)(\d)$")

#: Per config type: the presets the default comparison prefers, first match wins (and any
#: preset of that type when none of them exists).
DEFAULT_PREFERENCES = (
    (NoCacheConfig, ("none",)),
    (SkipCacheConfig, ("skip-dit",)),
    (FORAConfig, ("fora", "fora-3")),
    (PABConfig, ("pab-236", "pab")),
)

#: Methods benchmarked on a zoo model when none are given.
ZOO_DEFAULT_METHODS = {
    "mnist-dit": ["calibrated", "skip-dit-2", "fora-2", "fora-3", "pab-236", "pab-469"],
    "mnist-dit-retrofit": ["calibrated", "skip-dit-2", "skip-dit-3", "skip-dit-4"],
    "mnist-skip-dit": ["calibrated", "skip-dit-2", "skip-dit-3", "skip-dit-4"],
    "mnist-latte": ["calibrated", "skip-dit-2", "skip-dit-3", "fora-2", "pab-236", "pab-469"],
}


@dataclass(frozen=True)
class MethodSpec:
    name: str
    options: dict = field(default_factory=dict)
    label: str = ""

    @property
    def kind(self) -> str:
        if self.name == UNPATCHED:
            return "baseline"
        if self.name in PEERS or PAB_TRIPLE.match(self.name):
            return "peer"
        return "dit-cache"

    def __str__(self) -> str:
        return self.label or self.name


def _spec(name: str, options: dict) -> MethodSpec:
    shown = name.rsplit("/", 1)[-1] if name.endswith(".json") else name  # a schedule file: its file name
    label = shown + (":" + ",".join(f"{k}={format_value(v)}" for k, v in options.items()) if options else "")
    return MethodSpec(name=name, options=dict(options), label=label)


def parse_methods(items) -> list[MethodSpec]:
    """Method specs from command-line items (see the module docstring for the syntax)."""
    specs: list[MethodSpec] = []
    current: tuple[str, dict] | None = None
    for item in items:
        for piece in (p.strip() for p in str(item).split(",")):
            if not piece:
                continue
            if "=" in piece and ":" not in piece.split("=", 1)[0] and not piece.endswith(".json"):
                if current is None:
                    raise BenchInputError(f"method option {piece!r} comes before any method name")
                key, value = piece.split("=", 1)
                _add_option(current, key, value)
                continue
            if current is not None:
                specs.append(_spec(*current))
            name, _, first = piece.partition(":")
            name = name.strip()
            if not name:
                raise BenchInputError(f"empty method name in {piece!r}")
            current = (name, {})
            if first:
                if "=" not in first:
                    raise BenchInputError(f"method option {first!r} of {name!r} must be KEY=VALUE")
                key, value = first.split("=", 1)
                _add_option(current, key, value)
    if current is not None:
        specs.append(_spec(*current))
    labels = [s.label for s in specs]
    dupes = sorted({label for label in labels if labels.count(label) > 1})
    if dupes:
        raise BenchInputError(f"method(s) listed twice: {', '.join(dupes)}")
    return specs


def _add_option(current: tuple[str, dict], key: str, value: str) -> None:
    key = key.strip()
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
        raise BenchInputError(f"bad option name {key!r} for method {current[0]!r}")
    if key in current[1]:
        raise BenchInputError(f"option {key!r} given twice for method {current[0]!r}")
    current[1][key] = parse_value(value.strip())


def known_method_names() -> list[str]:
    return [UNPATCHED, *presets(), "calibrate", "calibrated", *PEERS]


def check_method_names(specs: list[MethodSpec]) -> None:
    from .calibrated import check_schedule_method, is_schedule_method

    names = set(presets())
    for spec in specs:
        if is_schedule_method(spec.name):
            check_schedule_method(spec)
            continue
        if spec.name == UNPATCHED or spec.kind == "peer" or spec.name in names:
            continue
        known = known_method_names()
        close = difflib.get_close_matches(spec.name, known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise BenchInputError(f"unknown method {spec.name!r}.{hint} Known: {', '.join(known)}")


def default_methods(include_peers: bool = True) -> list[str]:
    """`none`, `skip-dit`, a FORA and a PAB preset (whichever of the preferred names exist in
    ``dit_cache.presets()``), then diffusers' PAB and FasterCache where diffusers has them."""
    available = presets()
    chosen: list[str] = []
    for config_type, names in DEFAULT_PREFERENCES:
        hit = next((n for n in names if n in available), None)
        if hit is None:  # fall back to any preset of that type
            hit = next((n for n, cfg in available.items() if isinstance(cfg, config_type)), None)
        if hit is not None and hit not in chosen:
            chosen.append(hit)
    if include_peers:
        chosen += [p for p in DEFAULT_PEERS if peer_available(p)[0]]
    return chosen


def peer_available(name: str) -> tuple[bool, str]:
    """Whether the peer `name` can be imported here (and why not)."""
    attr = PEER_NEEDS[PEER_PAB if PAB_TRIPLE.match(name) else name]
    if attr == CACHE_DIT:
        import importlib.util

        if importlib.util.find_spec(CACHE_DIT) is None:
            return False, "cache-dit is not installed (pip install 'dit-cache[peers]')"
        return True, ""
    try:
        import diffusers
    except ImportError:  # pragma: no cover - diffusers is a core dependency
        return False, "diffusers is not installed"
    if not hasattr(diffusers, attr):
        return False, f"diffusers {diffusers.__version__} has no {attr}"
    return True, ""


def embedded_default_methods() -> list[str]:
    """`ditcache bench` with no arguments: the default methods plus Skip-Cache with 2 shallow
    blocks at each end (DiT-XL/2's k=4 of 28 blocks, scaled to DiT-S/2's 12)."""
    methods = default_methods()
    at = methods.index("skip-dit") + 1 if "skip-dit" in methods else len(methods)
    return [*methods[:at], "skip-dit:shallow=2", *methods[at:]]


def methods_for(model: str, methods: list[str] | None) -> list[MethodSpec]:
    """The specs one run measures: `unpatched` and `none` first, then the methods given (or the
    model's defaults)."""
    if methods:
        items = methods
    elif model in ZOO_DEFAULT_METHODS:
        items = ZOO_DEFAULT_METHODS[model]
    elif model == "dit-s-2":
        items = embedded_default_methods()
    else:
        items = default_methods()
    specs = parse_methods(items)
    if not specs:
        raise BenchInputError("no methods given")
    check_method_names(specs)
    specs = [s for s in specs if s.name != UNPATCHED or s.options]
    if any(s.name == UNPATCHED for s in specs):
        raise BenchInputError("`unpatched` takes no options")
    out = [MethodSpec(UNPATCHED, {}, UNPATCHED)]
    if not any(s.label == "none" for s in specs):
        out.append(MethodSpec("none", {}, "none"))
    return out + specs
