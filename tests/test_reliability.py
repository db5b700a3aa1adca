"""No silent wrong result when generations are interrupted, interleaved or run from threads:
every run must equal the same run on a freshly patched model (issue 13, items 1, 3, 4)."""
from __future__ import annotations

import copy
import re
import threading

import pytest
import torch

import dit_cache
from helpers import calls_per_step
from dit_cache.testing import build_pipeline, pipeline_inputs, run_pipeline, transformer_inputs
from loops import CACHING_METHODS, Loop, patch_caching

METHODS = CACHING_METHODS
_patch = patch_caching


def _fresh(model, method):
    clone = copy.deepcopy(model)
    _patch(clone, method)
    return clone


@pytest.mark.parametrize("method", METHODS)
def test_pipeline_interrupted_outside_the_model_does_not_poison_the_next_run(name, method):
    pipe = build_pipeline(name, seed=0)
    _patch(pipe, method)
    clean = run_pipeline(pipe, pipeline_inputs(name, num_inference_steps=6, seed=2))
    step = pipe.scheduler.step

    def boom(*args, **kwargs):
        raise RuntimeError("interrupted")

    pipe.scheduler.step = boom  # the first denoising step fails after the model call
    with pytest.raises(RuntimeError, match="interrupted"):
        run_pipeline(pipe, pipeline_inputs(name, num_inference_steps=6, seed=1))
    pipe.scheduler.step = step
    again = run_pipeline(pipe, pipeline_inputs(name, num_inference_steps=6, seed=2))
    assert torch.equal(again, clean)
    assert dit_cache.stats(pipe)["calls"] == 6 * calls_per_step(name)


@pytest.mark.parametrize("method", METHODS)
def test_bare_loop_interrupted_after_its_first_step(name, model, method):
    reference = Loop(_fresh(model, method), name, steps=6, seed=2).run()
    _patch(model, method)
    Loop(model, name, steps=6, seed=1).step(0)  # the user stops after one step
    out = Loop(model, name, steps=6, seed=2).run()  # same first timestep, other latents
    assert torch.equal(out, reference)
    s = dit_cache.stats(model)
    assert s["calls"] == 6 and s["cached_steps"] > 0


@pytest.mark.parametrize("method", METHODS)
def test_two_generations_interleaved_in_one_thread(name, model, method):
    ref_a = Loop(_fresh(model, method), name, steps=8, seed=1).run()
    ref_b = Loop(_fresh(model, method), name, steps=6, seed=2).run()
    _patch(model, method)
    a, b = Loop(model, name, steps=8, seed=1), Loop(model, name, steps=6, seed=2)
    for i in range(8):
        a.step(i)
        if i < 6:
            b.step(i)
    assert torch.equal(a.x, ref_a) and torch.equal(b.x, ref_b)


@pytest.mark.parametrize("method", METHODS)
def test_one_patched_model_from_two_threads(name, model, method):
    refs = [Loop(_fresh(model, method), name, steps=s, seed=seed).run() for s, seed in ((8, 1), (6, 2))]
    _patch(model, method)
    loops = [Loop(model, name, steps=8, seed=1), Loop(model, name, steps=6, seed=2)]
    barrier, errors = threading.Barrier(2), []

    def work(loop):
        try:
            for i in range(8):
                barrier.wait(timeout=60)  # both threads inside the model at once, step by step
                if i < len(loop.timesteps):
                    loop.step(i)
        except BaseException as err:  # reported below, in the main thread
            errors.append(err)
            barrier.abort()

    threads = [threading.Thread(target=work, args=(loop,)) for loop in loops]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    assert all(torch.equal(loop.x, ref) for loop, ref in zip(loops, refs))


def test_two_models_in_two_threads_stay_independent(name, model):
    other = copy.deepcopy(model)
    refs = [Loop(_fresh(m, "skip-dit"), name, steps=6, seed=s).run() for m, s in ((model, 1), (other, 2))]
    _patch(model, "skip-dit")
    _patch(other, "skip-dit")
    outs = [None, None]

    def work(i, m, seed):
        outs[i] = Loop(m, name, steps=6, seed=seed).run()

    threads = [threading.Thread(target=work, args=(i, m, s)) for i, (m, s) in enumerate(((model, 1), (other, 2)))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert torch.equal(outs[0], refs[0]) and torch.equal(outs[1], refs[1])


@pytest.mark.parametrize("method", ("none", *METHODS))
def test_a_deep_copy_is_an_independent_patched_model(name, model, method):
    kw = transformer_inputs(name, transformer=model)
    with torch.no_grad():
        original_out = model(**kw)[0]
    _patch(model, method)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p in dit_cache.runtime.registry.get_adapter(twin).units(twin)[0][0].parameters():
            p.mul_(1.5)  # the copy's own weights must be the ones it runs
        assert torch.equal(model(**kw)[0], original_out)
        twin_out = twin(**kw)[0]
        assert not torch.equal(twin_out, original_out)
        dit_cache.unpatch(model)  # the copy keeps its own hooks
        assert torch.equal(twin(**kw)[0], twin_out)
    assert dit_cache.stats(twin)["calls"] == 2 and dit_cache.stats(twin)["method"] == dit_cache.presets()[method].name
    dit_cache.unpatch(twin)
    assert "dit_cache_lsc" not in twin._modules and not hasattr(twin, "_diffusers_hook")


def test_a_deep_copy_keeps_trained_adapters_and_caches_on_its_own(name, model):
    reference = Loop(_fresh(model, "skip-dit"), name, steps=6, seed=1).run()
    _patch(model, "skip-dit")
    twin = copy.deepcopy(model)
    assert torch.equal(Loop(twin, name, steps=6, seed=1).run(), reference)
    assert dit_cache.stats(twin)["cached_steps"] > 0 and dit_cache.stats(model)["calls"] == 0


@pytest.mark.parametrize(
    "options, match",
    [
        ({"start": float("nan")}, "start must be a number"),
        ({"close": float("nan")}, "close must be a number"),
        ({"start": True}, "start must be a number"),
        ({"close": False}, "close must be a number"),
    ],
)
def test_nan_and_bool_timesteps_are_refused(name, model, options, match):
    with pytest.raises(ValueError, match=match):
        dit_cache.patch(model, "skip-dit", **options)
    assert dit_cache.runtime.patch_state.get_state(model) is None


@pytest.mark.parametrize(
    "config",
    [
        lambda: dit_cache.SkipCacheConfig(close=float("nan")),
        lambda: dit_cache.SkipCacheConfig(start=True),
        lambda: dit_cache.PABConfig(window=(float("nan"), 800)),
        lambda: dit_cache.PABConfig(spatial_window=(True, 900)),
        lambda: dit_cache.PABConfig(mlp=True, mlp_timesteps=(700.0, float("nan"))),
        lambda: dit_cache.FORAConfig(interval=True),
    ],
)
def test_every_numeric_config_field_refuses_nan_and_bool(config):
    with pytest.raises(ValueError):
        config()


def test_adapters_holding_nan_are_refused_by_name(tmp_path, model, name):
    from safetensors import safe_open
    from safetensors.torch import save_file

    dit_cache.patch(model, "skip-dit", fusion=None if name == "tiny-hunyuan" else "replace")
    dit_cache.save_adapters(model, tmp_path / "good.safetensors")
    with safe_open(tmp_path / "good.safetensors", framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    key = sorted(k for k in tensors if k.endswith("linear.weight"))[0]
    tensors[key][0, 0] = float("nan")
    save_file(tensors, tmp_path / "bad.safetensors", metadata=meta)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=rf"NaN or infinite values in {re.escape(key)}"):
        dit_cache.load_adapters(model, tmp_path / "bad.safetensors")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    dit_cache.load_adapters(model, tmp_path / "bad.safetensors", allow_nonfinite=True)  # the opt-out
    assert any(torch.isnan(v).any() for v in model.state_dict().values())


@pytest.mark.parametrize("steps", [0, -3, 2.5, True])
def test_schedule_pattern_refuses_bad_step_counts(pipe, steps):
    with pytest.raises(ValueError, match="num_inference_steps must be an integer >= 1"):
        dit_cache.schedule_pattern(pipe, steps)
