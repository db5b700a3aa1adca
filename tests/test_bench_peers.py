"""The diffusers peers in the bench (FirstBlockCache, TaylorSeer, MagCache): a setting that
caches nothing is the unpeered model bit for bit, a caching setting really skips work and
computes what the library computes when applied by hand on a copy, removal restores the
model exactly, unsupported backbones give `n/a: reason` rows, sweeps give one row per spec."""
from __future__ import annotations

import contextlib
import importlib.util
import io
import math
import re

import pytest
import torch
from diffusers import (
    FirstBlockCacheConfig, MagCacheConfig, TaylorSeerCacheConfig, apply_first_block_cache, apply_mag_cache,
    apply_taylorseer_cache,
)
from diffusers.hooks import HookRegistry
from diffusers.models.cache_utils import CacheMixin

from dit_cache.bench import BenchConfig, BenchInputError, run_bench
from dit_cache.bench.errors import PeerUnavailable
from dit_cache.bench.install import apply_method
from dit_cache.bench.peers import taylorseer_identifiers
from dit_cache.calibration import CALIBRATION_SEEDS
from dit_cache.bench.peers.magcache import parse_ratios
from dit_cache.bench.specs import parse_methods
from dit_cache.cli import main
from peer_helpers import STEPS, LinearCalls, assert_same_state, model_state, run_peer, spec, tiny_runner

NO_CACHING = [("tiny-dit", "diffusers-fbc:threshold=0"), ("tiny-dit", "diffusers-magcache:threshold=0"),
              *[(m, "diffusers-taylorseer:cache_interval=1") for m in ("tiny-dit", "tiny-latte", "tiny-hunyuan")]]


def by_hand(apply, seed: int = 0, steps: int = STEPS, calibrate_seeds=()):
    """What the library computes applied by hand on a fresh copy of tiny-dit: `apply(model)`,
    then one cache context around the whole generation (the batched CFG call)."""
    runner = tiny_runner(steps=steps)
    model = runner.transformer
    apply(model)
    HookRegistry.check_if_exists_or_initialize(model).invalidate_child_registries_cache()
    with CacheMixin.cache_context(model, "cond_uncond"):
        return runner.generate(runner.prepare(seed))


def test_diffusers_defaults_match_nothing_in_dit_ours_match_every_attention_and_mlp():
    model = tiny_runner().transformer
    names = [n for n, _ in model.named_modules()]
    defaults = ("^transformer_blocks.*attn", "^blocks.*attn")  # diffusers' TaylorSeer defaults (fullmatch)
    assert not [n for n in names if any(re.fullmatch(p, n) for p in defaults)]
    ours = [n for n in names if any(re.fullmatch(p, n) for p in taylorseer_identifiers(model))]
    layers = model.config.num_layers
    assert sorted(ours) == sorted([f"transformer_blocks.{i}.attn1" for i in range(layers)] +
                                  [f"transformer_blocks.{i}.ff" for i in range(layers)])


@pytest.mark.parametrize("model, text", NO_CACHING)
def test_setting_that_caches_nothing_is_the_model_and_removal_restores_it(model, text):
    runner = tiny_runner(model)
    prepared = runner.prepare(0)
    ref = runner.generate(prepared)
    before = model_state(runner.transformer)
    out, applied = run_peer(runner, text, prepared)
    assert torch.equal(out, ref)
    if "taylorseer" in text:  # every block's attention and feed-forward is hooked, nothing else
        hooked = [n for n, m in runner.transformer.named_modules() if re.fullmatch(r".*blocks\.\d+\.(attn\d*|ff)", n)]
        assert applied.matched == hooked and hooked
    assert_same_state(before, model_state(runner.transformer))
    assert torch.equal(runner.generate(prepared), ref)


def test_fbc_caches_and_matches_diffusers_by_hand():
    runner = tiny_runner()
    counter = LinearCalls(runner.transformer)
    out, _ = run_peer(runner, "diffusers-fbc:threshold=0.3")
    counter.remove()
    full = counter.per_call[0]
    cached = [c for c in counter.per_call if c != full]
    assert cached and all(c[0] == full[0] and not any(c[1:]) for c in cached)  # only the first block ran
    hand = by_hand(lambda m: apply_first_block_cache(m, FirstBlockCacheConfig(threshold=0.3)))
    assert torch.equal(out, hand)


def test_taylorseer_predicts_attention_and_mlp_and_matches_diffusers_by_hand():
    runner = tiny_runner(steps=8)
    model = runner.transformer
    counter = LinearCalls(model)
    out, applied = run_peer(runner, "diffusers-taylorseer:cache_interval=2,disable_cache_before_step=2")
    counter.remove()
    predicted = sum(1 for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and re.search(r"\.(attn\d*|ff)\.", n))
    full = counter.per_call_total[0]
    assert counter.per_call_total == [full] * 2 + [full - predicted, full] * 3  # FFcFcFcF: adaLN still runs
    cfg = TaylorSeerCacheConfig(cache_interval=2, disable_cache_before_step=2, taylor_factors_dtype=torch.float32,
                                cache_identifiers=applied.identifiers)
    assert torch.equal(out, by_hand(lambda m: apply_taylorseer_cache(m, cfg), steps=8))


def test_magcache_calibrates_on_its_own_seeds_and_matches_diffusers_by_hand():
    runner = tiny_runner()
    evaluated = []
    generate = runner.generate
    runner.generate = lambda prepared, steps=None: (evaluated.append(prepared), generate(prepared, steps))[1]
    text = "diffusers-magcache:threshold=0.5,retention_ratio=0.1"
    out, applied = run_peer(runner, text, runner.prepare(0))
    calibration_runs = [p for p in evaluated if isinstance(p, dict) and p["seed"] in CALIBRATION_SEEDS]
    assert sorted(p["seed"] for p in calibration_runs) == sorted(CALIBRATION_SEEDS)
    assert applied.setup()["calibration_seeds"] == list(CALIBRATION_SEEDS)
    assert "calibrated on seeds 1000000/1000001" in applied.config_text()
    n_before = len(evaluated)
    run_peer(runner, text, runner.prepare(0))  # installed again: the ratios are kept, no calibration
    assert len(evaluated) == n_before + 1

    # diffusers' own calibration by hand, on the same seeds, then MagCache with its ratios
    hand = tiny_runner()
    model = hand.transformer
    apply_mag_cache(model, MagCacheConfig(calibrate=True, num_inference_steps=STEPS))
    runs = []
    for seed in CALIBRATION_SEEDS:
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed), CacheMixin.cache_context(model, "cond_uncond"):
            hand.generate(hand.prepare(seed))
        runs.append(parse_ratios(printed.getvalue()))
    ratios = [sum(r) / len(r) for r in zip(*runs)]
    assert applied.ratios == ratios and len(ratios) == STEPS
    mag = MagCacheConfig(threshold=0.5, retention_ratio=0.1, num_inference_steps=STEPS, mag_ratios=ratios)
    assert torch.equal(out, by_hand(lambda m: apply_mag_cache(m, mag)))
    assert not torch.equal(out, runner.generate(runner.prepare(0)))  # it did cache


def test_magcache_refuses_evaluation_seeds_that_are_calibration_seeds():
    with pytest.raises(BenchInputError, match="calibration"):
        run_bench(BenchConfig(model="tiny-dit", methods=["diffusers-magcache"], seeds=[0, CALIBRATION_SEEDS[0]], steps=2))
    with pytest.raises(BenchInputError, match="calibration"):
        run_bench(BenchConfig(model="tiny-dit", methods=["diffusers-magcache:calibration_seeds=7/8"], seeds=[7], steps=2))


@pytest.mark.parametrize("model, reason", [
    ("tiny-latte", "interleaves them"), ("tiny-hunyuan", "HunyuanDiTBlock is not in diffusers' TransformerBlockRegistry"),
])
def test_block_chain_peers_are_na_on_latte_and_hunyuan(model, reason):
    result = run_bench(BenchConfig(model=model, methods=["diffusers-fbc", "diffusers-magcache", "diffusers-taylorseer"],
                                   steps=4, repeats=1, warmup=0, threads=1, flops=False, memory=False))
    for name in ("diffusers-fbc", "diffusers-magcache"):
        status = result.row(name)["status"]
        assert status.startswith("n/a: ") and reason in status, status
    assert result.row("diffusers-taylorseer")["status"] == "ok"


def test_threshold_sweep_gives_one_row_per_spec():
    methods = ["diffusers-fbc:threshold=0", "diffusers-fbc:threshold=0.3", "diffusers-magcache:threshold=0.5"]
    result = run_bench(BenchConfig(model="tiny-dit", methods=methods, steps=STEPS, repeats=1, warmup=0, threads=1))
    rows = {r["method"]: r for r in result.rows}
    assert list(rows) == ["unpatched", "none", *methods]
    assert all(rows[m]["status"] == "ok" and rows[m]["kind"] == "peer" for m in methods)
    assert rows[methods[0]]["pattern"] == "F" * STEPS and rows[methods[0]]["psnr"] == math.inf
    assert rows[methods[1]]["cached_steps"] >= 1 and rows[methods[1]]["ideal_speedup"] > 1
    assert rows[methods[2]]["setup"]["calibration_seeds"] == list(CALIBRATION_SEEDS)
    assert "calibrated on seeds" in rows[methods[2]]["config"]


@pytest.mark.parametrize("text, message", [
    ("diffusers-fbc:threshold=-1", "threshold must be a number >= 0"),
    ("diffusers-fbc:bogus=1", "unknown option"),
    ("diffusers-taylorseer:modules=mlp", "modules must be attn+ff"),
    ("diffusers-taylorseer:cache_interval=0", "cache_interval must be an integer >= 1"),
    ("diffusers-magcache:retention_ratio=2", "retention_ratio"),
    ("diffusers-magcache:calibration_seeds=x", "calibration_seeds"),
])
def test_bad_options_are_one_clear_error(text, message):
    with pytest.raises(BenchInputError, match=re.escape(message)):
        apply_method(spec(text), tiny_runner())


def test_cli_bad_peer_option_exits_2(capsys):
    argv = ["bench", "--model", "tiny-dit", "--steps", "2", "--no-progress", "--methods", "diffusers-taylorseer:max_order=x"]
    assert main(argv) == 2
    out = capsys.readouterr()
    lines = [line for line in (out.out + out.err).splitlines() if line.strip()]
    assert len(lines) == 1 and "max_order must be an integer" in lines[0]


def test_cache_dit_missing_is_an_na_row(monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "cache_dit" else find_spec(name, *a))
    with pytest.raises(PeerUnavailable, match=re.escape("pip install 'dit-cache[peers]'")):
        apply_method(spec("cache-dit-dbcache"), tiny_runner())
    assert [s.label for s in parse_methods(["cache-dit-dbcache:threshold=0.1,Fn=2"])] == ["cache-dit-dbcache:threshold=0.1,Fn=2"]
