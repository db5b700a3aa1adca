"""The LSC module against the reference op, and the spectral constraint."""
import pytest
import torch
import torch.nn.functional as F

import dit_cache
from dit_cache.runtime.fusion import LongSkipFusion
from dit_cache.testing import build_transformer


def reference(x, s, lsc):
    cat = torch.cat([x, s], dim=-1)
    y = F.layer_norm(cat.float(), (cat.shape[-1],), lsc.norm.weight.float(), lsc.norm.bias.float(), 1e-6)
    return F.linear(y.to(x.dtype), lsc.linear.weight, lsc.linear.bias)


@pytest.mark.parametrize("mode", ["replace", "residual"])
def test_lsc_matches_reference(mode):
    torch.manual_seed(0)
    lsc = LongSkipFusion(24, mode=mode)
    with torch.no_grad():
        for p in lsc.parameters():
            p.normal_(0, 0.1)
    x, s = torch.randn(2, 5, 24), torch.randn(2, 5, 24)
    expected = reference(x, s, lsc) + (x if mode == "residual" else 0)
    torch.testing.assert_close(lsc(x, s), expected, rtol=1e-5, atol=1e-5)


def test_residual_mode_starts_as_identity():
    lsc = LongSkipFusion(16, mode="residual")
    x, s = torch.randn(3, 7, 16), torch.randn(3, 7, 16) * 100
    assert torch.equal(lsc(x, s), x)


def test_bad_fusion_mode():
    with pytest.raises(ValueError, match="fusion mode must be one of"):
        LongSkipFusion(8, mode="add")


def test_spectral_norms_and_cap(name):
    model = build_transformer(name)
    dit_cache.patch(model, "skip-dit", fusion=None if name == "tiny-hunyuan" else "replace")
    norms = dit_cache.spectral_norms(model)
    projections = dit_cache.runtime.spectral.skip_projections(model)
    assert set(norms) == set(projections) and norms
    for key, linear in projections.items():
        assert norms[key] == pytest.approx(float(torch.linalg.svdvals(linear.weight.detach())[0]), rel=1e-5)
    values = sorted(norms.values())
    bound = (values[0] + values[-1]) / 2 if values[0] < values[-1] else values[0] * 0.5
    untouched = {k: p.weight.clone() for k, p in projections.items() if norms[k] <= bound}
    before = dit_cache.cap_spectral_norm_(model, bound)
    assert before == pytest.approx(norms)
    after = dit_cache.spectral_norms(model)
    assert all(v <= bound * (1 + 1e-5) for v in after.values())
    assert any(norms[k] > bound and after[k] == pytest.approx(bound, rel=1e-4) for k in norms)
    assert all(torch.equal(projections[k].weight, w) for k, w in untouched.items())


def test_spectral_needs_projections():
    model = build_transformer("tiny-dit")
    with pytest.raises(ValueError, match="no long-skip projections"):
        dit_cache.spectral_norms(model)
    with pytest.raises(ValueError, match="bound must be > 0"):
        dit_cache.patch(model, "skip-dit")
        dit_cache.cap_spectral_norm_(model, 0.0)
