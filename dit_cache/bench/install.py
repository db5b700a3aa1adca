"""Installing the method a spec names on a runner's model, and removing it again."""
from __future__ import annotations

import warnings

from .applied import Applied, AppliedDitCache
from .errors import PeerUnavailable
from .peers import peer_class
from .runners.zoo import NO_ADAPTER_METHODS
from .specs import MethodSpec, peer_available


def apply_method(spec: MethodSpec, runner) -> Applied:
    """Install `spec` on the runner's model; raises PeerUnavailable / BenchInputError."""
    if spec.kind == "dit-cache":
        return AppliedDitCache(spec, runner)
    if runner.adapter_fusion:
        raise PeerUnavailable(f"{spec.name} {NO_ADAPTER_METHODS}")
    if spec.kind == "baseline":
        return Applied(spec)
    ok, reason = peer_available(spec.name)
    if not ok:
        raise PeerUnavailable(reason)
    return peer_class(spec.name)(spec, runner)


def validate_method(spec: MethodSpec, runner) -> str | None:
    """Install and remove `spec` once (bad options fail here, before any timing).

    Returns None when it can run, or the reason it cannot (peers only)."""
    try:
        applied = apply_method(spec, runner)
    except PeerUnavailable as err:
        return str(err)
    applied.remove()
    return None


class installed:
    """`with installed(method, runner) as applied:` - install, yield, always remove; peer
    failures (at install or while running) mark the method n/a (``method.fail``) instead of
    raising, and `applied` is None when installing failed."""

    def __init__(self, method, runner):
        self.method, self.runner, self.applied = method, runner, None

    def __enter__(self) -> Applied | None:
        self.warnings = warnings.catch_warnings()
        self.warnings.__enter__()
        if self.method.spec.kind == "peer":  # e.g. FasterCache's torch.meshgrid indexing warning
            warnings.simplefilter("ignore", UserWarning)
        try:
            self.applied = apply_method(self.method.spec, self.runner)
        except PeerUnavailable as err:
            self.method.fail(err)
        return self.applied

    def __exit__(self, exc_type, exc, tb):
        try:
            if self.applied is not None:
                self.applied.remove()
        finally:
            self.warnings.__exit__(None, None, None)
        if exc is not None and isinstance(exc, Exception) and (
            isinstance(exc, PeerUnavailable) or self.method.spec.kind == "peer"
        ):
            self.method.fail(exc)
            return True  # swallowed: reported as an n/a row
        return False
