"""Skip-Cache through the real, unmodified diffusers pipelines of all three backbones."""
import pytest
import torch

import dit_cache
from dit_cache.adapters import family_spec
from dit_cache.testing import TINY_MODELS, build_pipeline, family_of, pipeline_inputs, run_pipeline
from helpers import ExecutionCounter, calls_per_step, expected_block_calls, max_rel_err

STEPS = 8


@pytest.mark.parametrize("name", TINY_MODELS)  # every family: the issue-15 checks
def test_unpatch_restores_bit_exact_output(name, pipe):
    inputs = pipeline_inputs(name, num_inference_steps=STEPS)
    reference = run_pipeline(pipe, inputs)
    model = pipe.transformer
    # (LattePipeline itself leaves an empty diffusers HookRegistry on its CacheMixin model)
    before = {n: (set(m.__dict__), dict(m._modules)) for n, m in model.named_modules()}
    keys = list(model.state_dict())
    dit_cache.patch(pipe, "skip-dit", start=1000.0)
    cached = run_pipeline(pipe, inputs)
    dit_cache.unpatch(pipe)
    after = {n: (set(m.__dict__), dict(m._modules)) for n, m in model.named_modules()}
    assert after == before, "unpatch left attributes or modules behind"
    assert list(model.state_dict()) == keys
    assert not torch.equal(cached, reference), "caching changed nothing: the schedule never cached"
    assert torch.equal(run_pipeline(pipe, inputs), reference)


@pytest.mark.parametrize("name", TINY_MODELS)  # every family: the issue-15 checks
def test_caching_off_equals_original(name, pipe):
    """Residual adapters inserted (zero-initialised) and every step full: same function."""
    inputs = pipeline_inputs(name, num_inference_steps=STEPS)
    reference = run_pipeline(pipe, inputs)
    dit_cache.patch(pipe, "skip-dit", interval=1)
    out = run_pipeline(pipe, inputs)
    s = dit_cache.stats(pipe)
    assert s["cached_steps"] == 0 and s["full_steps"] == STEPS
    assert torch.allclose(out, reference, rtol=0, atol=1e-6), float((out - reference).abs().max())


@pytest.mark.parametrize("name", TINY_MODELS)  # every family: the issue-15 checks
def test_skip_cache_executes_predicted_blocks_and_stays_close(name, pipe):
    inputs = pipeline_inputs(name, num_inference_steps=STEPS)
    reference = run_pipeline(pipe, inputs)
    dit_cache.patch(pipe, "skip-dit", start=1000.0)  # tiny runs: let caching start at once
    counter = ExecutionCounter(pipe.transformer)
    out = run_pipeline(pipe, inputs)
    counter.remove()
    s = dit_cache.stats(pipe)
    assert s["pattern"] == dit_cache.schedule_pattern(pipe, STEPS)
    assert s["cached_steps"] >= 3
    k = s["config"]["shallow"]
    predicted = expected_block_calls(pipe.transformer, s["pattern"], calls_per_step=calls_per_step(name), shallow=k)
    assert s["block_calls"] == predicted == counter.count
    assert torch.isfinite(out).all()
    assert max_rel_err(out, reference) < 0.5


@pytest.mark.parametrize("scheduler", ["ddim", "ddpm", "dpm++", "euler", "flow-euler"])
@pytest.mark.parametrize("steps", [5, 12])
def test_scheduler_and_step_count_matrix(name, scheduler, steps):
    if scheduler not in family_spec(family_of(name)).schedulers:
        pytest.skip(f"{name} does not sample with {scheduler} (refused: tests/test_families.py)")
    pipe = build_pipeline(name, scheduler=scheduler)
    dit_cache.patch(pipe, "skip-dit", start=1000.0, interval=3)
    counter = ExecutionCounter(pipe.transformer)
    out = run_pipeline(pipe, pipeline_inputs(name, num_inference_steps=steps))
    s = dit_cache.stats(pipe)
    assert torch.isfinite(out).all()
    assert s["calls"] == steps * calls_per_step(name) and s["full_steps"] + s["cached_steps"] == steps
    assert s["pattern"] == dit_cache.schedule_pattern(pipe, steps)
    assert s["block_calls"] == counter.count
    assert s["cached_steps"] >= 1


# every family: FluxPipeline once tracked a later run's last step as the earlier run's next one
@pytest.mark.parametrize("name", TINY_MODELS)
def test_changing_steps_batch_and_resolution_between_generations(name, pipe):
    dit_cache.patch(pipe, "skip-dit", start=1000.0)
    first = None
    for steps, batch in ((6, 1), (9, 2), (4, 1)):
        run_pipeline(pipe, pipeline_inputs(name, num_inference_steps=steps, batch=batch))
        s = dit_cache.stats(pipe)
        assert s["calls"] == steps * calls_per_step(name) and s["pattern"] == dit_cache.schedule_pattern(pipe, steps)
        first = first or s["generation"]
    assert dit_cache.stats(pipe)["generation"] == first + 2
    # the same request again gives the same output: no state leaks across generations
    inputs = pipeline_inputs(name, num_inference_steps=6)
    assert torch.equal(run_pipeline(pipe, inputs), run_pipeline(pipe, inputs))
