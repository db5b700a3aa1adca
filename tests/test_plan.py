"""Per-step plans (StepPlanConfig) against references: all-full equals the unpatched model,
S<k> equals Skip-Cache (zero-init residual skips are the identity), A equals FORA, R1 equals
diffusers' own FirstBlockCache when it caches every step; what each cached step skips is
counted; runs the plan was not made for are refused before any work."""
import copy

import pytest
import torch

import dit_cache
from dit_cache import StepPlanConfig
from dit_cache.testing import TINY_MODELS, build_transformer
from helpers import ExecutionCounter
from loops import Loop

STEPS = 8


def _model(name):
    torch.manual_seed(0)
    return build_transformer(name).eval()


def _run(model, name, schedule=None, **options):
    if schedule is None:
        return Loop(model, name, STEPS, 0).run(), None
    dit_cache.patch(model, schedule, **options)
    try:
        out = Loop(model, name, STEPS, 0).run()
        return out, dit_cache.stats(model)
    finally:
        dit_cache.unpatch(model)


@pytest.mark.parametrize("name", TINY_MODELS)
def test_all_full_plan_equals_unpatched(name):
    model = _model(name)
    reference, _ = _run(model, name)
    out, stats = _run(model, name, StepPlanConfig(plan=("F",) * STEPS))
    assert torch.equal(out, reference) and stats["blocks_skipped"] == 0 and stats["full_steps"] == STEPS
    assert torch.equal(_run(model, name)[0], reference)  # unpatch restored it


@pytest.mark.parametrize("name", TINY_MODELS)
def test_skip_plan_equals_skip_cache(name):
    model = _model(name)
    expected, s_ref = _run(model, name, "skip-dit", interval=2, shallow=1, start=1000.0, close=-1.0)
    plan = tuple("F" if c == "F" else "S1" for c in s_ref["pattern"])
    out, stats = _run(model, name, StepPlanConfig(plan=plan))
    assert torch.equal(out, expected)
    units = len(dit_cache.runtime.registry.get_adapter(model).units(model))
    blocks_per_unit = 2 if name == "tiny-latte" else 1
    assert stats["blocks_skipped"] == plan.count("S1") * (units - 2) * blocks_per_unit > 0


@pytest.mark.parametrize("name", TINY_MODELS)
def test_fora_plan_equals_fora(name):
    model = _model(name)
    expected, s_ref = _run(model, name, "fora-2")
    out, stats = _run(model, name, StepPlanConfig(plan=("F", "A") * (STEPS // 2)))
    assert torch.equal(out, expected)
    assert stats["attn_reused"] == s_ref["attn_reused"] > 0 and stats["mlp_reused"] == s_ref["mlp_reused"] > 0


def test_residual_plan_equals_diffusers_first_block_cache():
    from diffusers.hooks import FirstBlockCacheConfig, apply_first_block_cache
    from diffusers.models.cache_utils import CacheMixin

    name = "tiny-dit"
    model = _model(name)
    out, stats = _run(model, name, StepPlanConfig(plan=("F",) + ("R1",) * (STEPS - 1)))
    units = model.config.num_layers
    assert stats["blocks_skipped"] == (STEPS - 1) * (units - 1)
    peer = copy.deepcopy(model)
    apply_first_block_cache(peer, FirstBlockCacheConfig(threshold=1e9))  # caches every step after the first
    with CacheMixin.cache_context(peer, "cond"):
        expected = Loop(peer, name, STEPS, 0).run()
    assert torch.equal(out, expected)


def test_mixed_plan_counts_what_each_step_skips():
    name = "tiny-dit"
    model = _model(name)
    plan = ("F", "S2", "F", "R1", "A", "F", "R0", "S1")
    counter = ExecutionCounter(model)
    out, stats = _run(model, name, StepPlanConfig(plan=plan))
    counter.remove()
    u = model.config.num_layers
    skipped = {"F": 0, "A": 0, "S1": u - 2, "S2": u - 4, "R0": u, "R1": u - 1, "R2": u - 2}
    assert stats["blocks_skipped"] == sum(skipped[a] for a in plan)
    assert counter.count == len(plan) * u - stats["blocks_skipped"]
    assert stats["pattern"] == "".join("F" if a == "F" else "c" for a in plan)
    assert torch.isfinite(out).all()


def _timesteps(name, steps):
    return tuple(float(t) for t in Loop(_model(name), name, steps, 0).timesteps)


def test_a_run_with_other_timesteps_is_refused_and_leaves_the_model_usable():
    name = "tiny-dit"
    model = _model(name)
    config = StepPlanConfig(plan=("F", "A") * (STEPS // 2), timesteps=_timesteps(name, STEPS))
    dit_cache.patch(model, config)
    with pytest.raises(ValueError, match="made for 8 steps.*Recalibrate"):
        Loop(model, name, STEPS + 2, 0).run()
    out = Loop(model, name, STEPS, 0).run()  # the right run still works
    assert dit_cache.stats(model)["pattern"] == "FcFcFcFc"
    dit_cache.unpatch(model)
    expected, _ = _run(model, name, "fora-2")
    assert torch.equal(out, expected)


def test_a_run_longer_than_the_plan_is_refused():
    name = "tiny-dit"
    model = _model(name)
    dit_cache.patch(model, StepPlanConfig(plan=("F", "A", "A")))
    with pytest.raises(ValueError, match="made for 3 steps; this run has more"):
        Loop(model, name, 4, 0).run()
    dit_cache.unpatch(model)


@pytest.mark.parametrize("plan, match", [
    ((), "non-empty"), ("FAF", "non-empty"), (("F", "X1"), "unknown plan action"), (("A", "F"), "first step must be F"),
    (("F", "S0"), "unknown plan action"),
])
def test_bad_plans_are_refused(plan, match):
    with pytest.raises(ValueError, match=match):
        StepPlanConfig(plan=plan)


def test_timesteps_must_match_the_plan():
    with pytest.raises(ValueError, match="2 finite numbers"):
        StepPlanConfig(plan=("F", "A"), timesteps=(900.0,))
    with pytest.raises(ValueError, match="2 finite numbers"):
        StepPlanConfig(plan=("F", "A"), timesteps=(900.0, float("nan")))


@pytest.mark.parametrize("name, plan, match", [
    ("tiny-dit", ("F", "S9"), "too deep"),
    ("tiny-latte", ("F", "R1"), "one-block units"),
    ("tiny-dit", ("F", "R6"), "must be < 6"),
])
def test_plans_that_do_not_fit_the_model_are_refused_at_patch(name, plan, match):
    model = _model(name)
    with pytest.raises(ValueError, match=match):
        dit_cache.patch(model, StepPlanConfig(plan=plan))
    assert dit_cache.runtime.patch_state.get_state(model) is None


def test_a_copy_of_a_plan_patched_model_is_independent():
    name = "tiny-dit"
    model = _model(name)
    config = StepPlanConfig(plan=("F", "R1", "A", "S1") * 2)
    expected, _ = _run(model, name, config)
    dit_cache.patch(model, config)
    twin = copy.deepcopy(model)
    a, b = Loop(model, name, STEPS, 0), Loop(twin, name, STEPS, 0)
    for i in range(STEPS):  # interleaved: each keeps its own caches
        a.step(i), b.step(i)
    assert torch.equal(a.x, expected) and torch.equal(b.x, expected)
    dit_cache.unpatch(model), dit_cache.unpatch(twin)


def test_whole_stack_residual_plan_equals_diffusers_mag_cache():
    """R0 reuses the residual of every block: diffusers' MagCache when it skips every step after
    the first with unit magnitude ratios."""
    from diffusers.hooks import MagCacheConfig, apply_mag_cache
    from diffusers.models.cache_utils import CacheMixin

    name = "tiny-dit"
    model = _model(name)
    out, stats = _run(model, name, StepPlanConfig(plan=("F",) + ("R0",) * (STEPS - 1)))
    assert stats["blocks_skipped"] == (STEPS - 1) * model.config.num_layers
    peer = copy.deepcopy(model)
    apply_mag_cache(peer, MagCacheConfig(threshold=1e9, retention_ratio=0.0, max_skip_steps=100,
                                         num_inference_steps=STEPS, mag_ratios=[1.0] * STEPS))
    with CacheMixin.cache_context(peer, "cond"):
        expected = Loop(peer, name, STEPS, 0).run()
    assert torch.equal(out, expected)
