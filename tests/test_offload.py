"""dit-cache under the offloading users set up (accelerate, diffusers' model / sequential /
group offloading), in either order: the patched, offloaded pipeline computes what the patched
pipeline computes, keeps caching on every later call, and `unpatch` leaves the offloading in
place (issue 13, item 7). On CPU, with onload and offload devices both "cpu"."""
from __future__ import annotations

import pytest
import torch

import dit_cache
from helpers import calls_per_step
from dit_cache.testing import build_pipeline, pipeline_inputs, run_pipeline

accelerate = pytest.importorskip("accelerate")

OFFLOADS = ("model", "sequential", "accelerate", "group")


def _offload(pipe, kind):
    if kind == "model":
        pipe.enable_model_cpu_offload(device="cpu")
    elif kind == "sequential":
        pipe.enable_sequential_cpu_offload(device="cpu")
    elif kind == "accelerate":
        accelerate.cpu_offload(pipe.transformer, execution_device="cpu")
    else:
        from diffusers.hooks import apply_group_offloading

        cpu = torch.device("cpu")
        apply_group_offloading(pipe.transformer, onload_device=cpu, offload_device=cpu, offload_type="block_level", num_blocks_per_group=1)


def _offload_hooks(model) -> int:
    """accelerate hooks and diffusers hooks that are not dit-cache's, outside dit-cache's adapters."""
    modules = [m for n, m in model.named_modules() if not n.startswith("dit_cache_lsc")]
    registries = [m.__dict__["_diffusers_hook"] for m in modules if "_diffusers_hook" in m.__dict__]
    theirs = sum(1 for r in registries for name in r.hooks if not name.startswith("dit_cache."))
    return theirs + sum("_hf_hook" in m.__dict__ for m in modules)


def _run(pipe, name):
    return run_pipeline(pipe, pipeline_inputs(name, num_inference_steps=4))


@pytest.mark.parametrize("order", ("patch-first", "offload-first"))
@pytest.mark.parametrize("kind", OFFLOADS)
@pytest.mark.parametrize("method", ("skip-dit", "fora-2"))
def test_offloading_in_either_order(name, kind, order, method):
    options = {"start": 1000.0} if method == "skip-dit" else {}
    reference_pipe = build_pipeline(name, seed=0)
    dit_cache.patch(reference_pipe, method, **options)
    reference = _run(reference_pipe, name)

    plain = build_pipeline(name, seed=0)
    _offload(plain, kind)
    try:
        offloaded_unpatched = _run(plain, name)
    except (TypeError, RuntimeError) as err:
        # sequential: accelerate 1.15 + torch 2.13 on CPU; accelerate.cpu_offload on Hunyuan-DiT:
        # its AttentionPooling reads its submodules' weights directly. Both without dit-cache.
        pytest.skip(f"{kind} offloading fails here even without dit-cache: {str(err).splitlines()[0]}")

    pipe = build_pipeline(name, seed=0)
    if order == "patch-first":
        dit_cache.patch(pipe, method, **options)
        _offload(pipe, kind)
    else:
        _offload(pipe, kind)
        dit_cache.patch(pipe, method, **options)
    hooks = _offload_hooks(pipe.transformer)
    for _ in range(2):  # diffusers re-installs model-offload hooks after every call
        assert torch.allclose(_run(pipe, name), reference, atol=1e-5)
        s = dit_cache.stats(pipe)
        assert s["calls"] == 4 * calls_per_step(name) and s["cached_steps"] == 2
    dit_cache.unpatch(pipe)
    assert _offload_hooks(pipe.transformer) == hooks > 0  # dit-cache took away only its own
    assert torch.allclose(_run(pipe, name), offloaded_unpatched, atol=1e-5)
