"""The block I/O protocol: a backbone whose blocks take and return two streams (image and
text tokens, as SD3 / Flux joint blocks do) is described by its adapter alone, and every
method works on it without method code knowing the family."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import dit_cache
from dit_cache.adapters import BackboneAdapter, BlockIO, SkipCacheDefaults
from dit_cache.runtime.registry import register_adapter


class JointBlock(nn.Module):
    """(hidden_states, encoder_hidden_states, temb) -> (encoder_hidden_states, hidden_states)."""

    def __init__(self, dim: int):
        super().__init__()
        self.attn1 = nn.Linear(dim, dim)
        self.ff = nn.Sequential(nn.Linear(dim, dim), nn.GELU())
        self.mod = nn.Linear(dim, 2 * dim)

    def forward(self, hidden_states, encoder_hidden_states, temb):
        scale, shift = self.mod(temb)[:, None].chunk(2, dim=-1)
        joint = torch.cat([hidden_states, encoder_hidden_states], dim=1)  # (B, L + M, D)
        mixed = self.attn1(joint)
        mixed = mixed + mixed.mean(dim=1, keepdim=True)  # every token sees every other
        h, e = mixed.split([hidden_states.shape[1], encoder_hidden_states.shape[1]], dim=1)
        hidden_states = hidden_states + self.ff(h) * (1 + scale) + shift
        return encoder_hidden_states + e, hidden_states


class ToyJointTransformer(nn.Module):
    def __init__(self, dim: int = 16, depth: int = 6):
        super().__init__()
        self.t_embed = nn.Linear(1, dim)
        self.blocks = nn.ModuleList(JointBlock(dim) for _ in range(depth))
        self.inner_dim = dim

    def forward(self, hidden_states, encoder_hidden_states, timestep):
        temb = self.t_embed(timestep.float()[:, None] / 1000)
        for block in self.blocks:
            # positional and keyword streams both occur in diffusers; use both here
            encoder_hidden_states, hidden_states = block(hidden_states, encoder_hidden_states=encoder_hidden_states, temb=temb)
        return (hidden_states,)


class ToyJointAdapter(BackboneAdapter):
    model_class = ToyJointTransformer
    family = "toy-joint"
    block_io = BlockIO(("hidden_states", "encoder_hidden_states"), ("encoder_hidden_states", "hidden_states"))
    defaults = SkipCacheDefaults(interval=2, shallow=1, start=1000.0, close=0.0)

    def units(self, model):
        return [[block] for block in model.blocks]

    def hidden_dim(self, model):
        return model.inner_dim


register_adapter(ToyJointTransformer, ToyJointAdapter())


def _run(model, steps: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x, text = torch.randn(2, 8, 16, generator=g), torch.randn(2, 4, 16, generator=g)
    out = []
    with torch.no_grad():
        for t in torch.linspace(900, 100, steps):
            y = model(x, text, torch.full((2,), float(t)))[0]
            out.append(y)
            x = x - 0.1 * y
    return torch.stack(out)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return ToyJointTransformer().eval()


def test_none_equals_unpatched_and_unpatch_is_exact(model):
    reference = _run(model)
    dit_cache.patch(model, "none")
    assert torch.equal(_run(model), reference)
    dit_cache.unpatch(model)
    dit_cache.patch(model, "skip-dit-2")
    dit_cache.unpatch(model)
    assert torch.equal(_run(model), reference)


def test_skip_cache_passes_both_streams_through_skipped_blocks(model):
    reference = _run(model)
    dit_cache.patch(model, "skip-dit-2")  # residual adapters: zero-init, the function is kept
    out = _run(model)
    s = dit_cache.stats(model)
    assert s["pattern"] == "FcFcFc"
    # cached steps run units 0 and 5 only: 6 + 3 * 2 + ... blocks
    assert s["block_calls"] == 3 * 6 + 3 * 2 and s["blocks_skipped"] == 3 * 4
    full = [i for i, p in enumerate(s["pattern"]) if p == "F"]
    assert torch.equal(out[0], reference[0])  # the first step is full: identical
    assert not torch.equal(out[1], reference[1])  # a cached step really used the cache
    assert torch.isfinite(out).all() and full == [0, 2, 4]
    # the cache holds both streams of the cache point (image and text), per CFG branch
    assert s["cached"]["cached_bytes"] == (2 * 8 * 16 + 2 * 4 * 16) * 4


def test_fora_reaches_the_sites_the_adapter_lists(model):
    reference = _run(model)
    dit_cache.patch(model, "fora-2")
    out = _run(model)
    s = dit_cache.stats(model)
    assert s["attn_reused"] == 3 * 6 and s["mlp_reused"] == 3 * 6  # 3 reuse steps x 6 blocks
    assert torch.equal(out[0], reference[0]) and not torch.equal(out[1], reference[1])
