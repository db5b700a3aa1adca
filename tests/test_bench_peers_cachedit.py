"""cache-dit's DBCache (and DBCache + TaylorSeer) in the bench, on the bare transformer
(the `dit-cache[peers]` extra; skipped without it): threshold 0 is the model bit for bit, a
caching setting computes what cache-dit computes when enabled by hand on a copy, every
generation starts from a refreshed context, and removal leaves no trace."""
from __future__ import annotations

import pytest
import torch

cache_dit = pytest.importorskip("cache_dit")

from dit_cache.bench import BenchConfig, run_bench  # noqa: E402
from dit_cache.bench.install import apply_method  # noqa: E402
from dit_cache.bench.peers.cachedit import quiet_cache_dit  # noqa: E402
from peer_helpers import STEPS, LinearCalls, assert_same_state, model_state, run_peer, spec, tiny_runner  # noqa: E402


def by_hand(name: str, calibrator=None, **config):
    """cache-dit enabled by hand on a fresh copy, refreshed as its docs say for a bare transformer."""
    runner = tiny_runner(name)
    model = runner.transformer
    with quiet_cache_dit():
        cache_dit.enable_cache(model, cache_config=cache_dit.DBCacheConfig(num_inference_steps=STEPS, **config),
                               calibrator_config=calibrator)
        cache_dit.refresh_context(model, num_inference_steps=STEPS)
    return runner.generate(runner.prepare(0))


@pytest.mark.parametrize("name", ["tiny-dit", "tiny-hunyuan"])
@pytest.mark.parametrize("method", ["cache-dit-dbcache", "cache-dit-dbcache-taylorseer"])
def test_threshold_zero_is_the_model_and_removal_leaves_no_trace(name, method):
    runner = tiny_runner(name)
    prepared = runner.prepare(0)
    ref = runner.generate(prepared)
    before = model_state(runner.transformer)
    out, _ = run_peer(runner, f"{method}:threshold=0", prepared)
    assert torch.equal(out, ref)
    # cache-dit's disable_cache alone leaves its patched forward, `_is_patched` and the
    # `_norm1_emb` submodule (an extra state-dict key) behind; the bench puts everything back
    assert_same_state(before, model_state(runner.transformer))
    assert torch.equal(runner.generate(prepared), ref)


@pytest.mark.parametrize("name", ["tiny-dit", "tiny-hunyuan"])
def test_dbcache_caches_and_matches_cache_dit_by_hand(name):
    runner = tiny_runner(name)
    prepared = runner.prepare(0)
    ref = runner.generate(prepared)
    counter = LinearCalls(runner.transformer)
    out, applied = run_peer(runner, "cache-dit-dbcache:threshold=0.5,warmup=1", prepared)
    counter.remove()
    full = counter.per_call[0]
    cached = [c for c in counter.per_call if c != full]
    assert cached and all(c[0] == full[0] and not any(c[1:]) for c in cached)  # F1B0: only block 0 ran
    assert not torch.equal(out, ref)
    hand = by_hand(name, Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=0.5, max_warmup_steps=1)
    assert torch.equal(out, hand)
    assert applied.config_text() == "F1B0, threshold=0.5, warmup=1"


def test_each_generation_starts_from_a_refreshed_context():
    runner = tiny_runner()
    prepared, other = runner.prepare(0), runner.prepare(1)
    applied = apply_method(spec("cache-dit-dbcache:threshold=0.5,warmup=2"), runner)
    try:
        applied.before_generation()
        first = runner.generate(prepared)
        runner.generate(other)
        stale = runner.generate(prepared)  # no refresh: the cache state of the generation before leaks in
        runner.prime(prepared)
        applied.before_generation()
        again = runner.generate(prepared)
    finally:
        applied.remove()
    assert torch.equal(again, first) and not torch.equal(stale, first)


def test_taylorseer_calibrator_extrapolates_once_it_has_a_derivative():
    # cache-dit's per-tensor Taylor state starts one step late: with 4 full steps first the
    # calibrator has a derivative and differs from plain DBCache reuse, and matches by hand
    runner = tiny_runner()
    prepared = runner.prepare(0)
    plain, _ = run_peer(runner, "cache-dit-dbcache:threshold=0.5,warmup=4", prepared)
    taylor, _ = run_peer(runner, "cache-dit-dbcache-taylorseer:threshold=0.5,warmup=4", prepared)
    assert not torch.equal(plain, taylor)
    hand = by_hand("tiny-dit", cache_dit.TaylorSeerCalibratorConfig(taylorseer_order=1), Fn_compute_blocks=1,
                   Bn_compute_blocks=0, residual_diff_threshold=0.5, max_warmup_steps=4)
    assert torch.equal(taylor, hand)


def test_latte_is_na_and_bench_rows():
    result = run_bench(BenchConfig(model="tiny-latte", methods=["cache-dit-dbcache"], steps=2, repeats=1, warmup=0,
                                   threads=1, flops=False, memory=False))
    assert result.row("cache-dit-dbcache")["status"].startswith("n/a: cache-dit") and "LatteTransformer3DModel" in \
        result.row("cache-dit-dbcache")["status"]
    methods = ["cache-dit-dbcache:threshold=0", "cache-dit-dbcache:threshold=0.5,warmup=1"]
    result = run_bench(BenchConfig(model="tiny-dit", methods=methods, steps=STEPS, repeats=2, warmup=1, threads=1))
    zero, caching = (result.row(m) for m in methods)
    assert zero["pattern"] == "F" * STEPS and zero["max_abs_err"] == 0.0
    assert caching["status"] == "ok" and caching["cached_steps"] >= 1 and caching["ideal_speedup"] > 1
    assert caching["setup"]["refresh_context"] == {"num_inference_steps": STEPS}
