"""What differs between the backbone families beyond the preset x backbone matrix (which runs
every family through its pipeline): the real-size configs, depth-scaled Skip-Cache defaults,
flow-matching schedulers, Wan's sequential CFG and free video length, and diffusers' own
caches (FirstBlockCache, MagCache) on the same tiny models as peers."""
from __future__ import annotations

import pytest
import torch

import dit_cache
from dit_cache.runtime.registry import get_adapter
from dit_cache.testing import (
    TINY_MODELS,
    build_pipeline,
    build_scheduler,
    build_transformer,
    pipeline_inputs,
    run_pipeline,
)
from helpers import ExecutionCounter, max_rel_err

# real-size name -> (units, hidden dim, Skip-Cache k); k is about 4 of every 28 units
REAL_SIZE = {
    "dit-xl-2": (28, 1152, 4),
    "latte-1": (28, 1152, 1),  # Latte's reference runs 1 of 28 pairs at each end
    "hunyuan-dit": (40, 1408, 1),
    "pixart-sigma": (28, 1152, 4),
    "wan2.1-1.3b": (30, 1536, 4),
}


@pytest.mark.parametrize("name", sorted(REAL_SIZE))
def test_real_size_configs_build_on_meta_with_their_depth_and_defaults(name):
    model = build_transformer(name, device="meta")
    adapter = get_adapter(model)
    units, dim, k = REAL_SIZE[name]
    assert (len(adapter.units(model)), adapter.hidden_dim(model)) == (units, dim)
    resolved = dit_cache.presets()["skip-dit"].resolve(adapter.defaults, adapter.max_shallow(model), units)
    assert resolved.shallow == k


def test_wan_2_1_1_3b_has_its_parameter_count():
    # Wan2.1-T2V-1.3B: 1.42 B parameters in the transformer (no image branch)
    n = sum(p.numel() for p in build_transformer("wan2.1-1.3b", device="meta").parameters())
    assert 1.40e9 < n < 1.44e9, n


def test_pixart_sigma_has_its_parameter_count():
    n = sum(p.numel() for p in build_transformer("pixart-sigma", device="meta").parameters())
    assert 0.60e9 < n < 0.62e9, n  # PixArt-Sigma-XL-2: 0.61 B


@pytest.mark.parametrize("name", ["tiny-wan"])
def test_flow_matching_families_refuse_ddpm_schedulers(name):
    with pytest.raises(ValueError, match="flow-matching"):
        build_scheduler("ddim", name)
    assert type(build_scheduler(None, name)).__name__ == "FlowMatchEulerDiscreteScheduler"
    assert build_scheduler(None, "tiny-pixart").__class__.__name__ == "DDIMScheduler"
    with pytest.raises(ValueError, match="not a flow-matching"):
        build_scheduler("flow-euler", "tiny-pixart")


def test_wan_sequential_cfg_caches_each_branch_and_skips_what_it_says():
    """WanPipeline calls the model twice per step (cond, then uncond) on the same latents: two
    branches of one step, each with its own cache; a cached step skips the middle units of
    both calls, counted by a hook inside every block."""
    pipe = build_pipeline("tiny-wan")
    inputs = pipeline_inputs("tiny-wan", num_inference_steps=6)
    reference = run_pipeline(pipe, inputs)
    model = pipe.transformer
    dit_cache.patch(pipe, dit_cache.SkipCacheConfig(interval=2, shallow=1, start=1000.0, close=0.0))
    counter = ExecutionCounter(model)
    out = run_pipeline(pipe, inputs)
    counter.remove()
    s = dit_cache.stats(pipe)
    dit_cache.unpatch(pipe)
    assert s["calls"] == 12 and s["pattern"] == "FcFcFc"
    units = len(get_adapter(model).units(model))
    assert counter.count == 2 * (3 * units + 3 * 2)  # 2 branches x (3 full + 3 cached steps of 2 units)
    assert s["blocks_skipped"] == 2 * 3 * (units - 2)
    assert 0 < max_rel_err(out, reference) < 0.2


@pytest.mark.parametrize("frames", [1, 2, 5])
def test_wan_takes_any_number_of_latent_frames(frames):
    from dit_cache.bench.runners import RunSettings, load_runner

    runner = load_runner("tiny-wan", RunSettings(steps=2, loop=True, frames=frames))
    out = runner.generate(runner.prepare(0))
    assert out.shape[2] == frames
    runner.install_dit_cache("skip-dit", {})
    cached = runner.generate(runner.prepare(0))
    assert cached.shape == out.shape and torch.isfinite(cached).all()


@pytest.mark.parametrize("name", ["tiny-pixart", "tiny-wan"])
def test_diffusers_caches_are_peer_rows_on_the_new_families(name):
    """diffusers' FirstBlockCache and MagCache (calibrated by its own routine) as bench rows on
    the same tiny model: they run and save FLOPs; dit-cache's rows beside them."""
    from dit_cache.bench import BenchConfig, run_bench

    methods = ["diffusers-fbc:threshold=0.5", "diffusers-magcache:threshold=0.5", "skip-dit", "fora"]
    result = run_bench(BenchConfig(model=name, methods=methods, steps=8, repeats=1, warmup=0, threads=1,
                                   memory=False))
    rows = {r["method"]: r for r in result.rows}
    for method in methods:
        assert rows[method]["status"] == "ok", rows[method]["status"]
        assert rows[method]["ideal_speedup"] > 1.0 and rows[method]["psnr"] < float("inf"), method


@pytest.mark.parametrize("name", TINY_MODELS)
def test_meta_device_counts_what_a_cpu_run_counts(name):
    """`--device meta` (how the real-size configs get their FLOP-ideal speedups) counts exactly
    the FLOPs and step patterns of the same generation run for real on the CPU."""
    from dit_cache.bench import BenchConfig, run_bench

    methods = ["skip-dit", "fora", "pab-236"]

    def rows(device):
        config = BenchConfig(model=name, methods=methods, steps=6, repeats=1, warmup=0, threads=1, memory=False,
                             loop=True, device=device)
        return {r["method"]: r for r in run_bench(config).rows}

    cpu, meta = rows("cpu"), rows("meta")
    for method in ["none", *methods]:
        assert meta[method]["status"] == "ok", meta[method]["status"]
        assert (meta[method]["flops"], meta[method]["pattern"]) == (cpu[method]["flops"], cpu[method]["pattern"])
        assert meta[method]["latency_s"] is None and meta[method]["psnr"] is None
    assert meta["skip-dit"]["ideal_speedup"] == cpu["skip-dit"]["ideal_speedup"] > 1.0


def test_cpu_flop_counts_include_the_fused_cpu_attention():
    """The CPU's fused attention kernel is counted with torch's SDPA formula: the same count as
    the meta device's decomposed attention (two batched matmuls)."""
    import torch.nn.functional as F

    from dit_cache.runtime.flops import flop_counter

    counts = []
    for device in ("cpu", "meta"):
        q = torch.randn(2, 3, 50, 16, device=device)
        with flop_counter() as counter:
            F.scaled_dot_product_attention(q, q, q)
        counts.append(counter.get_total_flops())
    assert counts[0] == counts[1] == 4 * 2 * 3 * 50 * 50 * 16


def test_the_folded_skip_kernel_counts_both_of_its_gemms():
    """The folded kernel accumulates its second GEMM in place (`addmm_`): counted like the
    unfused op's single GEMM over the concatenated input."""
    from dit_cache.runtime.flops import flop_counter
    from dit_cache.kernels import skip_fusion

    g = torch.Generator().manual_seed(0)
    x, s = torch.randn(2, 10, 8, generator=g), torch.randn(2, 10, 8, generator=g)
    w, b = torch.randn(8, 16, generator=g), torch.randn(8, generator=g)
    counts = {}
    for backend in ("torch", "reference"):
        with flop_counter() as counter:
            skip_fusion(x, s, torch.ones(16), torch.zeros(16), w, b, backend=backend)
        counts[backend] = counter.get_total_flops()
    assert counts["torch"] == counts["reference"] == 2 * 20 * 16 * 8


def test_fastercache_is_na_under_sequential_cfg():
    """WanPipeline runs its CFG branches as two calls: FasterCache, which splits one batched call,
    gets an n/a row that says so (it raised an IndexError inside diffusers before)."""
    from dit_cache.bench import BenchConfig, run_bench

    result = run_bench(BenchConfig(model="tiny-wan", methods=["diffusers-fastercache"], steps=2, repeats=1, warmup=0,
                                   threads=1, memory=False, flops=False))
    status = result.row("diffusers-fastercache")["status"]
    assert status.startswith("n/a: ") and "separate calls" in status, status
