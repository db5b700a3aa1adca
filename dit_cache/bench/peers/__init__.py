"""The peers: other libraries' caches, installed on the runner's transformer for one run and
removed again (diffusers' hooks: hooks.py, attention.py, blocks.py, magcache.py; cache-dit:
cachedit.py). `peer_class(name)` gives the class that installs the peer `name`."""
from __future__ import annotations

from ..specs import PAB_TRIPLE, PEER_FASTERCACHE, PEER_PAB
from .attention import AppliedDiffusersFasterCache, AppliedDiffusersPAB, pab_peer_config
from .blocks import AppliedDiffusersFBC, AppliedDiffusersTaylorSeer, taylorseer_identifiers
from .cachedit import AppliedCacheDiT, AppliedCacheDiTTaylorSeer, ModuleSnapshot
from .hooks import PeerHooks
from .magcache import PEER_MAGCACHE, AppliedDiffusersMagCache

PEER_CLASSES: dict[str, type[PeerHooks]] = {
    PEER_PAB: AppliedDiffusersPAB,
    PEER_FASTERCACHE: AppliedDiffusersFasterCache,
    "diffusers-fbc": AppliedDiffusersFBC,
    "diffusers-taylorseer": AppliedDiffusersTaylorSeer,
    PEER_MAGCACHE: AppliedDiffusersMagCache,
    "cache-dit-dbcache": AppliedCacheDiT,
    "cache-dit-dbcache-taylorseer": AppliedCacheDiTTaylorSeer,
}


def peer_class(name: str) -> type[PeerHooks]:
    return PEER_CLASSES[PEER_PAB if PAB_TRIPLE.match(name) else name]


__all__ = [
    "PEER_CLASSES", "AppliedCacheDiT", "AppliedCacheDiTTaylorSeer", "AppliedDiffusersFBC",
    "AppliedDiffusersFasterCache", "AppliedDiffusersMagCache", "AppliedDiffusersPAB", "AppliedDiffusersTaylorSeer",
    "ModuleSnapshot", "PeerHooks", "pab_peer_config", "peer_class", "taylorseer_identifiers",
]
