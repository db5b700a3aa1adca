"""Step tracking without pipeline help: bare-model loops, CFG both ways, interruptions."""
import copy

import pytest
import torch

import dit_cache
from dit_cache.testing import build_scheduler, family_of, transformer_inputs
from helpers import model_t, set_family_timesteps, ExecutionCounter, expected_block_calls


def _sample(model, name, timesteps, seeds=(1,), batch=1, latents_seed=None):
    """A user's own loop over the bare model: one call per branch (seed) per timestep. With
    `latents_seed`, every branch gets that seed's latents and its own conditioning, as
    sequential CFG does."""
    inputs = [transformer_inputs(name, batch=batch, seed=s, transformer=model) for s in seeds]
    if latents_seed is not None:
        latents = transformer_inputs(name, batch=batch, seed=latents_seed, transformer=model)["hidden_states"]
        inputs = [dict(kw, hidden_states=latents) for kw in inputs]
    outs = []
    with torch.no_grad():
        for t in timesteps:
            for kw in inputs:
                kw = dict(kw, timestep=torch.full_like(kw["timestep"], model_t(name, float(t))))
                outs.append(model(**kw)[0])
    return outs


def _timesteps(name, steps=8):
    sched = build_scheduler(None, family_of(name))
    set_family_timesteps(sched, name, steps)
    return sched, [float(t) for t in sched.timesteps]


def test_bare_model_loop_follows_the_schedule(name, model):
    sched, ts = _timesteps(name)
    dit_cache.patch(model, "skip-dit", start=1000.0)
    counter = ExecutionCounter(model)
    _sample(model, name, ts)
    s = dit_cache.stats(model)
    assert s["pattern"] == dit_cache.schedule_pattern(model, len(ts), scheduler=sched)
    assert s["block_calls"] == counter.count == expected_block_calls(model, s["pattern"], 1, s["config"]["shallow"])


def test_sequential_cfg_keeps_one_cache_per_branch(name, model):
    """Two calls per timestep (cond, uncond) behave exactly like two separate models that
    each see one branch only."""
    _, ts = _timesteps(name)
    cond_only, uncond_only = copy.deepcopy(model), copy.deepcopy(model)
    for m in (model, cond_only, uncond_only):
        dit_cache.patch(m, "skip-dit", start=1000.0)
    both = _sample(model, name, ts, seeds=(1, 2), latents_seed=1)
    ref_c = _sample(cond_only, name, ts, seeds=(1,), latents_seed=1)
    ref_u = _sample(uncond_only, name, ts, seeds=(2,), latents_seed=1)
    assert all(torch.equal(a, b) for a, b in zip(both[0::2], ref_c))
    assert all(torch.equal(a, b) for a, b in zip(both[1::2], ref_u))
    s = dit_cache.stats(model)
    assert s["calls"] == 2 * len(ts) and s["full_steps"] + s["cached_steps"] == len(ts)
    assert s["cached"]["branches"] == 2
    assert s["block_calls"] == expected_block_calls(model, s["pattern"], 2, s["config"]["shallow"])


def test_batched_cfg_uses_one_cache_for_the_whole_batch(name, model):
    _, ts = _timesteps(name)
    dit_cache.patch(model, "skip-dit", start=1000.0)
    _sample(model, name, ts, batch=4)
    s = dit_cache.stats(model)
    assert s["cached"]["branches"] == 1 and s["calls"] == len(ts)


def test_interrupted_generation_does_not_poison_the_next(name, model):
    _, ts = _timesteps(name)
    fresh = copy.deepcopy(model)
    dit_cache.patch(model, "skip-dit", start=1000.0)
    dit_cache.patch(fresh, "skip-dit", start=1000.0)
    reference = _sample(fresh, name, ts)

    # 1) the user stops after 3 steps (no exception), then starts again
    _sample(model, name, ts[:3], seeds=(5,))
    assert all(torch.equal(a, b) for a, b in zip(_sample(model, name, ts), reference))

    # 2) an exception inside the forward in the middle of a cached step
    deep_block = dit_cache.runtime.registry.get_adapter(model).units(model)[-1][0]
    handle = (getattr(deep_block, "attn1", None) or deep_block.attn).register_forward_pre_hook(lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        _sample(model, name, ts[:4], seeds=(5,))
    handle.remove()
    # a lower timestep than the failed call's would look like "the next step" without the reset
    assert all(torch.equal(a, b) for a, b in zip(_sample(model, name, ts), reference))
    assert dit_cache.stats(model)["pattern"] == dit_cache.stats(fresh)["pattern"]


def test_training_mode_is_always_full_and_untracked(name, model):
    reference = copy.deepcopy(model).train()
    dit_cache.patch(model, "skip-dit", start=1000.0)
    model.train()
    _, ts = _timesteps(name)
    torch.manual_seed(0)  # train mode drops class labels at random (CFG training)
    outs = _sample(model, name, ts)
    torch.manual_seed(0)
    refs = _sample(reference, name, ts)
    assert all(torch.equal(a, b) for a, b in zip(outs, refs))
    assert dit_cache.stats(model)["cached_steps"] == 0


def test_reset_starts_a_new_generation(name, model):
    _, ts = _timesteps(name)
    dit_cache.patch(model, "skip-dit", start=1000.0)
    _sample(model, name, ts[:2])
    generation = dit_cache.stats(model)["generation"]
    dit_cache.reset(model)
    _sample(model, name, ts[2:4])  # lower timesteps, but a fresh generation: starts full
    s = dit_cache.stats(model)
    assert s["generation"] == generation + 1 and s["pattern"][0] == "F"
