"""diffusers-style model checks on patched models, run on a sampling loop that really caches
(diffusers' own ModelTesterMixin feeds a random timestep per sample, which dit-cache always
computes in full, so most of its tests never reach a cached step). Issue 13, item 8."""
from __future__ import annotations

import copy

import pytest
import torch

import dit_cache
from dit_cache.testing import build_transformer
from dit_cache.runtime import tracker as tracker_module
from dit_cache.runtime.patch_state import get_state
from loops import CACHING_METHODS, Loop, patch_caching

METHODS = CACHING_METHODS
STEPS = 6
_patch = patch_caching


def _cached(model) -> int:
    s = dit_cache.stats(model)
    return s["cached_steps"] if s["method"] != "pab" else s.get("attn_reused", 0)


@pytest.fixture(params=METHODS)
def method(request):
    return request.param


def test_determinism(name, model, method):
    _patch(model, method)
    first = Loop(model, name, STEPS, seed=1).run()
    assert _cached(model) > 0
    assert torch.equal(Loop(model, name, STEPS, seed=1).run(), first)


def test_save_load_round_trip_mid_schedule(tmp_path, name, model, method):
    fresh = copy.deepcopy(model)
    _patch(fresh, method)
    uninterrupted = Loop(fresh, name, STEPS, seed=1).run()
    _patch(model, method)
    loop = Loop(model, name, STEPS, seed=1)
    for i in range(3):  # mid-schedule: the cache holds this generation's state
        loop.step(i)
    model.save_pretrained(tmp_path / "model")
    if dit_cache.runtime.patch_state.get_state(model).lscs is not None:
        dit_cache.save_adapters(model, tmp_path / "adapters.safetensors")
    for i in range(3, STEPS):  # saving disturbed nothing
        loop.step(i)
    assert torch.equal(loop.x, uninterrupted) and _cached(model) > 0
    loaded = type(model).from_pretrained(tmp_path / "model").eval()
    _patch(loaded, method)
    if (tmp_path / "adapters.safetensors").exists():
        dit_cache.load_adapters(loaded, tmp_path / "adapters.safetensors")
    assert torch.equal(Loop(loaded, name, STEPS, seed=1).run(), uninterrupted) and _cached(loaded) > 0


def test_dtype_cast_after_patch_equals_patch_after_cast(name, model, method):
    cast_first = copy.deepcopy(model).to(torch.bfloat16)
    _patch(cast_first, method)
    _patch(model, method)
    Loop(model, name, STEPS, seed=1).run()  # an fp32 generation leaves its cache behind
    model.to(torch.bfloat16)
    out = Loop(model, name, STEPS, seed=1, dtype=torch.bfloat16).run()
    assert out.dtype == torch.bfloat16 and _cached(model) > 0
    assert torch.equal(out, Loop(cast_first, name, STEPS, seed=1, dtype=torch.bfloat16).run())


def _checkpointed_and_plain(model, method):
    """`model` patched and checkpointing its blocks, and a patched twin that does not."""
    if not model._supports_gradient_checkpointing:
        pytest.skip(f"diffusers' {type(model).__name__} has no gradient checkpointing")
    model.requires_grad_(True)
    plain = copy.deepcopy(model)
    _patch(plain, method)
    _patch(model, method)
    model.enable_gradient_checkpointing()
    return plain


def test_gradient_checkpointing_on_cached_steps(name, model, method):
    """Grad-enabled sampling (as cache-aware training does): checkpointing recomputes the blocks
    in backward, with the same cache decisions; outputs and gradients are unchanged."""
    plain = _checkpointed_and_plain(model, method)
    results = []
    for m in (plain, model):
        out = Loop(m, name, 4, seed=1, grad=True).run()
        assert _cached(m) > 0
        out.square().mean().backward()
        results.append((out.detach(), {n: p.grad for n, p in m.named_parameters() if p.grad is not None}))
    (out_a, grads_a), (out_b, grads_b) = results
    assert torch.allclose(out_a, out_b, atol=1e-6) and grads_a.keys() == grads_b.keys() and grads_a
    assert all(torch.allclose(grads_a[k], grads_b[k], atol=1e-5, rtol=1e-4) for k in grads_a)


def test_grad_enabled_sampling_remembers_no_block_calls_without_checkpointing(name, model, method):
    """Without checkpointing nothing recomputes a block in backward: grad-enabled cached calls
    (cache-aware training makes hundreds) must not pile up their contexts and caches."""
    model.requires_grad_(True)
    _patch(model, method)
    tracker = get_state(model).tracker
    for seed in range(3):
        Loop(model, name, 4, seed=seed, grad=True).run().square().mean().backward()
    assert _cached(model) > 0 and len(tracker._thread.block_calls) == 0


def test_checkpointed_block_calls_stay_bounded(name, model, method, monkeypatch):
    """With checkpointing, grad-enabled block calls are remembered for their recomputation in
    backward: the table keeps at most BLOCK_CALLS_MAX of them, and the gradients stay right."""
    plain = _checkpointed_and_plain(model, method)
    tracker = get_state(model).tracker
    Loop(model, name, 4, seed=0, grad=True).run().square().mean().backward()
    per_graph = len(tracker._thread.block_calls)
    monkeypatch.setattr(tracker_module, "BLOCK_CALLS_MAX", 4 * per_graph)  # keeps the newest 2 graphs' calls
    for seed in range(1, 7):
        for m in (model, plain):
            m.zero_grad(set_to_none=True)
            Loop(m, name, 4, seed=seed, grad=True).run().square().mean().backward()
        assert len(tracker._thread.block_calls) <= 4 * per_graph + tracker_module.BLOCK_CALLS_SWEEP
    grads = {n: p.grad for n, p in plain.named_parameters() if p.grad is not None}
    assert grads and all(torch.allclose(p.grad, grads[n], atol=1e-5, rtol=1e-4)
                         for n, p in model.named_parameters() if p.grad is not None)


def test_a_block_recomputed_without_the_models_checkpointing_is_refused(name, model, method):
    """torch.utils.checkpoint around the whole model recomputes blocks dit-cache never saw the
    forward of: a clear error, not a recomputation under another step's decisions."""
    from torch.utils.checkpoint import checkpoint

    model.requires_grad_(True)
    _patch(model, method)
    loop = Loop(model, name, 4, seed=1)
    out = checkpoint(lambda x: model(hidden_states=x, **loop.kw)[0], loop.x.requires_grad_(True), use_reentrant=False)
    with pytest.raises(RuntimeError, match="enable_gradient_checkpointing"):
        out.square().mean().backward()


def test_a_training_step_then_cached_sampling(tmp_path, name, model, method):
    model.requires_grad_(True)
    reference = copy.deepcopy(model)
    _patch(model, method)
    for m in (model, reference):
        m.train()
        torch.manual_seed(0)  # train mode drops class labels at random (CFG training)
        opt = torch.optim.SGD(m.parameters(), lr=1e-2)
        loss = Loop(m, name, 2, seed=3, grad=True).step(0).square().mean()
        loss.backward()
        opt.step()
        m.eval()
    trained = {k: v for k, v in model.state_dict().items() if not k.startswith("dit_cache_lsc")}
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in trained.items())  # train calls are full
    expected = copy.deepcopy(reference)
    _patch(expected, method)
    if dit_cache.runtime.patch_state.get_state(model).lscs is not None:  # the adapters trained too
        dit_cache.save_adapters(model, tmp_path / "trained.safetensors")
        dit_cache.load_adapters(expected, tmp_path / "trained.safetensors")
    assert torch.equal(Loop(model, name, STEPS, seed=1).run(), Loop(expected, name, STEPS, seed=1).run())
    assert _cached(model) > 0


def test_torch_compile(name, method):
    eager = build_transformer(name, seed=0).eval()
    compiled_model = copy.deepcopy(eager)
    _patch(eager, method)
    _patch(compiled_model, method)
    compiled_model.compile(backend="aot_eager")
    reference = Loop(eager, name, STEPS, seed=1).run()
    out = Loop(compiled_model, name, STEPS, seed=1).run()
    assert torch.allclose(out, reference, atol=1e-4, rtol=1e-4)
    assert dit_cache.stats(compiled_model)["pattern"] == dit_cache.stats(eager)["pattern"]
    assert _cached(compiled_model) == _cached(eager) > 0
