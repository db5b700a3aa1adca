"""Calibration and schedule files: the plan meets its FLOP budget and its reported fidelity is
what the plan really gives; the DP finds the least predicted error (checked by brute force);
schedule files round-trip and are refused for another model, configuration, scheduler or
step count, before any work."""
import itertools
import json

import pytest
import torch

import dit_cache
from dit_cache import StepPlanConfig
from dit_cache.bench.fidelity import fidelity
from dit_cache.calibration.search import plan_cost, predicted_error, search
from dit_cache.testing import build_pipeline, build_transformer, pipeline_inputs, run_pipeline
from loops import Loop

STEPS = 8
NAME = "tiny-dit"


def _model(name=NAME, **over):
    torch.manual_seed(0)
    model = build_transformer(name).eval()
    return type(model).from_config({**model.config, **over}).eval() if over else model


def _generate(model, name=NAME):
    return lambda seed: Loop(model, name, STEPS, seed).run()


@pytest.fixture(scope="module")
def calibrated():
    model = _model()
    loop = Loop(model, NAME, STEPS, 0)
    cal = dit_cache.calibrate(model, speedup=1.6, num_inference_steps=STEPS, scheduler=loop.sched,
                              generate=_generate(model), seeds=(7, 8), progress=False)
    return model, loop.sched, cal


def test_the_plan_meets_its_budget_and_its_reported_fidelity(calibrated):
    model, _, cal = calibrated
    assert cal.ideal_speedup >= 1.6 and len(cal.config.plan) == STEPS and cal.config.plan[0] == "F"
    assert cal.report["cost_full_generations"] <= 10
    # the reported PSNR is the plan's on the calibration seeds
    values = []
    for seed in (7, 8):
        ref = _generate(model)(seed)
        dit_cache.patch(model, cal.config)
        out = _generate(model)(seed)
        stats = dit_cache.stats(model)
        dit_cache.unpatch(model)
        values.append(sum(min(v, 100.0) for v in fidelity(out, ref)["psnr"]) / len(fidelity(out, ref)["psnr"]))
    assert sum(values) / 2 == pytest.approx(cal.psnr, abs=1e-6)
    # it really cached: blocks skipped or attention reused
    assert stats["cached_steps"] > 0 and (stats["blocks_skipped"] > 0 or stats.get("attn_reused", 0) > 0)
    assert max(c["psnr"] for c in cal.report["candidates"]) == cal.psnr


def test_the_flop_ratio_is_what_flop_counter_counts(calibrated):
    from dit_cache.runtime.flops import flop_counter

    model, _, cal = calibrated
    totals = []
    for config in (StepPlanConfig(plan=("F",) * STEPS), cal.config):
        dit_cache.patch(model, config)
        with flop_counter() as counter:
            _generate(model)(0)
        dit_cache.unpatch(model)
        totals.append(counter.get_total_flops())
    assert totals[1] / totals[0] == pytest.approx(cal.flop_ratio, rel=1e-6)


def test_schedule_file_round_trip_and_refusals(calibrated, tmp_path):
    model, sched, cal = calibrated
    path = cal.save(tmp_path / "sched.json")
    record = json.loads(path.read_text())
    for key in ("model_class", "config_hash", "scheduler_class", "scheduler_config", "num_inference_steps",
                "timesteps", "plan", "calibration", "flop_ratio", "dit_cache_version"):
        assert record[key] is not None, key
    expected = Loop(model, NAME, STEPS, 0)
    dit_cache.patch(model, cal.config)
    expected = expected.run()
    dit_cache.unpatch(model)
    dit_cache.patch(model, str(path))
    assert torch.equal(Loop(model, NAME, STEPS, 0).run(), expected)
    with pytest.raises(ValueError, match="made for 8 steps"):
        Loop(model, NAME, 6, 0).run()
    dit_cache.unpatch(model)
    with pytest.raises(ValueError, match="made for a DiTTransformer2DModel, not a HunyuanDiT2DModel"):
        dit_cache.patch(_model("tiny-hunyuan"), str(path))
    other = _model(num_layers=4)
    with pytest.raises(ValueError, match="another DiTTransformer2DModel configuration"):
        dit_cache.patch(other, str(path))
    assert dit_cache.runtime.patch_state.get_state(other) is None


@pytest.mark.parametrize("text, match", [
    ("{not json", "not valid JSON"), ('{"format": "x"}', "not a dit-cache schedule"),
    ('{"format": "dit-cache-schedule", "format_version": 99}', "format version 99"),
    ('{"format": "dit-cache-schedule", "format_version": 1, "plan": ["A"]}', "malformed"),
])
def test_bad_schedule_files_are_refused(tmp_path, text, match):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        dit_cache.patch(_model(), str(path))
    with pytest.raises(FileNotFoundError, match="ditcache calibrate"):
        dit_cache.patch(_model(), str(tmp_path / "missing.json"))


def test_a_pipeline_refuses_another_scheduler_or_step_count_before_any_model_call(tmp_path):
    name = "tiny-latte"
    pipe = build_pipeline(name)
    inputs = pipeline_inputs(name, num_inference_steps=STEPS)
    pipe.scheduler.set_timesteps(STEPS)
    config = StepPlanConfig(plan=("F", "A") * (STEPS // 2), timesteps=tuple(float(t) for t in pipe.scheduler.timesteps),
                            scheduler_class=type(pipe.scheduler).__name__)
    dit_cache.patch(pipe, config)
    calls = []
    handle = pipe.transformer.register_forward_pre_hook(lambda *a: calls.append(1))
    with pytest.raises(ValueError, match="made for 8 steps; this run has 5"):
        run_pipeline(pipe, dict(inputs, num_inference_steps=5))
    assert calls == []
    run_pipeline(pipe, inputs)
    assert dit_cache.stats(pipe)["pattern"] == "FcFcFcFc"
    handle.remove()
    dit_cache.unpatch(pipe)
    other = build_pipeline(name, scheduler="euler")
    with pytest.raises(ValueError, match="made for DDIMScheduler, not EulerDiscreteScheduler"):
        dit_cache.patch(other, config)
    assert dit_cache.runtime.patch_state.get_state(other.transformer) is None


def test_calibrating_a_pipeline():
    name = "tiny-latte"
    pipe = build_pipeline(name)
    inputs = {k: v for k, v in pipeline_inputs(name).items() if k not in ("generator", "num_inference_steps", "output_type")}
    cal = dit_cache.calibrate(pipe, speedup=1.5, num_inference_steps=STEPS, seeds=(5,), progress=False, **inputs)
    assert cal.ideal_speedup >= 1.5 and not any(a.startswith("R") for a in cal.config.plan)  # Latte: no R
    assert dit_cache.runtime.patch_state.get_state(pipe.transformer) is None  # calibration unpatched it


@pytest.mark.parametrize("kwargs, match", [
    (dict(speedup=None), "exactly one of speedup"), (dict(speedup=2.0, max_error=0.1), "exactly one of speedup"),
    (dict(speedup=0.5), "speedup must be a number > 1"), (dict(speedup=None, max_error=2.0), r"max_error must be in \(0, 1\)"),
    (dict(num_inference_steps=1), "num_inference_steps must be an integer >= 2"), (dict(seeds=()), "seeds must be"),
])
def test_bad_calibration_arguments(kwargs, match):
    model = _model()
    with pytest.raises(ValueError, match=match):
        dit_cache.calibrate(model, **{"scheduler": Loop(model, NAME, STEPS, 0).sched, "generate": _generate(model), **kwargs})


def test_a_bare_model_needs_a_scheduler_and_generate():
    model = _model()
    with pytest.raises(ValueError, match="scheduler="):
        dit_cache.calibrate(model)
    with pytest.raises(ValueError, match="generate=callable"):
        dit_cache.calibrate(model, scheduler=Loop(model, NAME, STEPS, 0).sched)


def test_max_error_returns_the_fastest_plan_within_it(calibrated):
    model, sched, _ = calibrated
    cal = dit_cache.calibrate(model, speedup=None, max_error=0.2, num_inference_steps=STEPS, scheduler=sched,
                              generate=_generate(model), seeds=(7,), progress=False)
    ok = [c for c in cal.report["candidates"] if c["psnr"] >= -20 * torch.log10(torch.tensor(0.2)).item()]
    assert ok and cal.flop_ratio == min(c["flop_ratio"] for c in ok)


def test_the_search_finds_the_least_predicted_error():
    import random

    rng = random.Random(0)
    n, age = 7, 3
    costs = {"F": 1.0, "A": 0.05, "S1": 0.3, "R1": 0.15}
    error = {(s, a, g): rng.random() * g for s in range(1, n) for a in costs if a != "F" for g in range(1, age + 1)}
    weights = [rng.random() + 0.5 for _ in range(n)]
    with pytest.raises(ValueError, match="no plan"):  # two full steps are needed with ages <= 3
        search(n, costs, error, weights, age, budget=0.3)
    for budget in (0.45, 0.6, 0.85):
        plan = search(n, costs, error, weights, age, budget=budget)
        brute = min(predicted_error(p, error, weights) for p in itertools.product(costs, repeat=n)
                    if p[0] == "F" and plan_cost(p, costs) <= budget + 1e-9)
        assert plan.cost <= budget + 1e-9 and plan.predicted == pytest.approx(brute)
        assert predicted_error(plan.actions, error, weights) == pytest.approx(plan.predicted)


def test_a_latency_budget_is_met_in_the_measured_time_shares(calibrated):
    model, sched, _ = calibrated
    cal = dit_cache.calibrate(model, speedup=1.5, num_inference_steps=STEPS, scheduler=sched, cost="latency",
                              generate=_generate(model), seeds=(7,), progress=False)
    report = cal.report
    shares = report["action_time_shares"]
    assert report["cost"] == "latency" and shares["F"] == pytest.approx(1.0) and all(v > 0 for v in shares.values())
    best = next(c for c in report["candidates"] if c["plan"] == list(cal.config.plan))
    # the loop's own time per step (a scheduler step here) is paid on every step, cached or not
    overhead = report["step_overhead_share"]
    assert 0 < overhead < 1
    calls = sum(shares[a] for a in cal.config.plan) / STEPS
    assert best["time_ratio"] == pytest.approx((calls + overhead) / (1 + overhead))
    assert best["time_ratio"] <= 1 / 1.5 + 1e-9
    with pytest.raises(ValueError, match="cost must be one of"):
        dit_cache.calibrate(model, speedup=1.5, num_inference_steps=STEPS, scheduler=sched, cost="watts",
                            generate=_generate(model))
