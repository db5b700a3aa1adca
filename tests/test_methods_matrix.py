"""Every preset on every backbone, through the real (unmodified) diffusers pipelines:
computed/reused attention, MLP and block calls match what the schedule predicts, the F/c
pattern matches `schedule_pattern`, unpatch is bit-exact and switching presets leaves no
residue."""
import functools

import pytest
import torch

import dit_cache
from dit_cache.testing import TINY_MODELS, build_pipeline, pipeline_inputs, run_pipeline
from dit_cache import FORAConfig, NoCacheConfig, PABConfig
import dit_cache.runtime.patch_state
from helpers import ExecutionCounter, calls_per_step, expected_block_calls
from reuse_helpers import SubmoduleCounter, module_snapshot, predicted_counts, timesteps_of

STEPS = 8  # DDIM: 875 ... 0, steps 1-6 inside PAB's (100, 800) window
LAYER_PRESETS = [n for n, c in dit_cache.presets().items() if isinstance(c, (NoCacheConfig, FORAConfig, PABConfig))]
ALL_PRESETS = list(dit_cache.presets())


@functools.lru_cache(maxsize=None)
def _setup(name):
    """One pipeline per backbone for the whole module (every test unpatches what it patches),
    its uncached output and a snapshot of the model's modules."""
    pipe = build_pipeline(name)
    inputs = pipeline_inputs(name, num_inference_steps=STEPS)
    reference = run_pipeline(pipe, inputs)
    return pipe, inputs, reference, module_snapshot(pipe.transformer)


@pytest.fixture(params=TINY_MODELS)
def backbone(request):
    pipe, inputs, reference, snapshot = _setup(request.param)
    assert dit_cache.runtime.patch_state.get_state(pipe.transformer) is None
    yield request.param, pipe, inputs, reference, snapshot
    if dit_cache.runtime.patch_state.get_state(pipe.transformer) is not None:  # a failed test
        dit_cache.unpatch(pipe)


@pytest.mark.parametrize("preset", LAYER_PRESETS)
def test_counts_match_the_schedule(backbone, preset):
    name, pipe, inputs, reference, snapshot = backbone
    model = pipe.transformer
    dit_cache.patch(pipe, preset)
    counter = SubmoduleCounter(model)
    out = run_pipeline(pipe, inputs)
    counter.remove()
    s = dit_cache.stats(pipe)
    config = type(dit_cache.presets()[preset])(**s["config"])  # resolved for this backbone
    ts = timesteps_of(pipe, STEPS)

    per_step = calls_per_step(name)
    assert s["calls"] == STEPS * per_step and s["pattern"] == dit_cache.schedule_pattern(pipe, STEPS)
    n_blocks = sum(len(unit) for unit in dit_cache.runtime.registry.get_adapter(model).units(model))
    assert s["block_calls"] == n_blocks * STEPS * per_step and s["blocks_skipped"] == 0
    predicted = predicted_counts(model, config, ts, per_step)
    for kind, (computed, reused) in predicted.items():
        assert (counter.executed[kind], counter.reused(kind)) == (computed, reused), kind
        if kind != "mlp" and not isinstance(config, NoCacheConfig):
            assert (s.get(f"{kind}_attn_computed", 0), s.get(f"{kind}_attn_reused", 0)) == (computed, reused), kind
    if isinstance(config, NoCacheConfig):
        assert torch.equal(out, reference)
        return
    attn = [predicted[k] for k in ("spatial", "temporal", "cross")]
    assert (s["attn_computed"], s["attn_reused"]) == (sum(c for c, _ in attn), sum(r for _, r in attn))
    assert (s["mlp_computed"], s.get("mlp_reused", 0)) == predicted["mlp"]
    assert s.get("reuse_missed", 0) == 0
    assert s["attn_reused"] > 0 and s["full_steps"] + s["cached_steps"] == STEPS
    # every reused call is a real saving: the model output changed, but stays finite and close
    assert torch.isfinite(out).all() and not torch.equal(out, reference)
    assert float((out - reference).abs().max() / reference.abs().max()) < 0.5
    dit_cache.unpatch(pipe)


@pytest.mark.parametrize("preset", ALL_PRESETS)
def test_unpatch_round_trip_is_bit_exact(backbone, preset):
    name, pipe, inputs, reference, snapshot = backbone
    keys = list(pipe.transformer.state_dict())
    dit_cache.patch(pipe, preset)
    run_pipeline(pipe, inputs)
    dit_cache.unpatch(pipe)
    assert module_snapshot(pipe.transformer) == snapshot
    assert list(pipe.transformer.state_dict()) == keys
    assert torch.equal(run_pipeline(pipe, inputs), reference)


def test_switching_presets_leaves_no_residue(backbone):
    """fora -> pab-469 -> skip-dit -> pab-236 -> fora-2 -> none on one pipeline: each run equals
    the same preset on a freshly built pipeline; at the end the model is the original again."""
    name, pipe, inputs, reference, snapshot = backbone
    chain = ["fora", "pab-469", "skip-dit", "pab-236", "fora-2", "none"]
    fresh = build_pipeline(name)
    for preset in chain:
        options = {"start": 1000.0} if preset == "skip-dit" else {}
        dit_cache.patch(pipe, preset, **options)
        got = run_pipeline(pipe, inputs)
        stats = dit_cache.stats(pipe)
        dit_cache.unpatch(pipe)
        dit_cache.patch(fresh, preset, **options)
        want = run_pipeline(fresh, inputs)
        assert torch.equal(got, want), preset
        assert {k: v for k, v in stats.items() if k != "generation"} == {
            k: v for k, v in dit_cache.stats(fresh).items() if k != "generation"
        }, preset
        dit_cache.unpatch(fresh)
    assert module_snapshot(pipe.transformer) == snapshot
    assert torch.equal(run_pipeline(pipe, inputs), reference)


@pytest.mark.parametrize("preset", ["fora", "pab-469"])
def test_patch_on_the_bare_model_inside_an_unmodified_pipeline(backbone, preset):
    """`patch(pipe.transformer, ...)` (not the pipeline) works the same."""
    name, pipe, inputs, reference, snapshot = backbone
    dit_cache.patch(pipe.transformer, preset)
    counter = ExecutionCounter(pipe.transformer)
    out = run_pipeline(pipe, inputs)
    counter.remove()
    s = dit_cache.stats(pipe.transformer)
    assert s["attn_reused"] > 0 and torch.isfinite(out).all()
    # the blocks themselves always run (only their attention/MLP submodules reuse)
    assert counter.count == expected_block_calls(pipe.transformer, "F" * STEPS, calls_per_step(name), 0)
    dit_cache.unpatch(pipe.transformer)
