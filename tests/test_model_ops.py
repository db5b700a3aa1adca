"""Patched models under ordinary model operations: independence, dtype moves, compile."""
import copy

import torch

from helpers import model_t, set_family_timesteps
import dit_cache
from dit_cache.testing import build_scheduler, family_of, transformer_inputs


def _generation(model, name, steps=6, dtype=torch.float32, seed=1):
    sched = build_scheduler(None, family_of(name))
    set_family_timesteps(sched, name, steps)
    kw = transformer_inputs(name, batch=2, seed=seed, transformer=model, dtype=dtype)
    with torch.no_grad():
        return [model(**dict(kw, timestep=torch.full_like(kw["timestep"], model_t(name, float(t)))))[0] for t in sched.timesteps]


def test_two_patched_models_are_independent(name, model):
    other = copy.deepcopy(model)
    alone_a, alone_b = copy.deepcopy(model), copy.deepcopy(model)
    replace = None if name == "tiny-hunyuan" else "replace"  # freshly drawn, non-trivial adapters
    for a, b in ((model, other), (alone_a, alone_b)):
        torch.manual_seed(0)
        dit_cache.patch(a, "skip-dit", start=1000.0, interval=2)
        dit_cache.patch(b, "skip-dit", start=1000.0, interval=3, fusion=replace)
    ref_a, ref_b = _generation(alone_a, name), _generation(alone_b, name)
    # interleave the two models call by call
    sched = build_scheduler(None, family_of(name))
    set_family_timesteps(sched, name, 6)
    kw = transformer_inputs(name, batch=2, seed=1, transformer=model)
    outs_a, outs_b = [], []
    with torch.no_grad():
        for t in sched.timesteps:
            call = dict(kw, timestep=torch.full_like(kw["timestep"], model_t(name, float(t))))
            outs_a.append(model(**call)[0])
            outs_b.append(other(**call)[0])
    assert all(torch.equal(a, b) for a, b in zip(outs_a, ref_a))
    assert all(torch.equal(a, b) for a, b in zip(outs_b, ref_b))
    assert dit_cache.stats(model)["pattern"] != dit_cache.stats(other)["pattern"]
    dit_cache.unpatch(other)  # unpatching one leaves the other patched and working
    assert dit_cache.stats(model)["calls"] == 6
    assert all(torch.equal(a, b) for a, b in zip(_generation(model, name), ref_a))


def test_dtype_move_after_patching(name, model):
    reference = copy.deepcopy(model).to(torch.bfloat16)
    dit_cache.patch(model, "skip-dit", interval=1)
    model.to(torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    outs = _generation(model, name, dtype=torch.bfloat16)
    refs = _generation(reference, name, dtype=torch.bfloat16)
    assert all(torch.equal(a, b) for a, b in zip(outs, refs))
    dit_cache.unpatch(model)
    dit_cache.patch(model, "skip-dit", start=1000.0)
    outs = _generation(model, name, dtype=torch.bfloat16)
    assert all(torch.isfinite(o).all() for o in outs) and dit_cache.stats(model)["cached_steps"] > 0


def test_torch_compile_of_a_patched_model(name, model):
    """Graph breaks are expected (the step decision is Python control flow); no crash, same
    numbers, same schedule."""
    eager = copy.deepcopy(model)
    dit_cache.patch(model, "skip-dit", start=1000.0)
    dit_cache.patch(eager, "skip-dit", start=1000.0)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager")
    outs = _generation(compiled, name, steps=4)
    refs = _generation(eager, name, steps=4)
    for a, b in zip(outs, refs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert dit_cache.stats(model)["pattern"] == dit_cache.stats(eager)["pattern"]
    assert dit_cache.stats(model)["block_calls"] == dit_cache.stats(eager)["block_calls"]
