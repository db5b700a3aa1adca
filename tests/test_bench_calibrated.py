"""Calibrated schedules in the bench: `calibrate` rows meet their speedup on the bench's own
FLOP count and report the calibration (seeds disjoint from --seeds); schedule files and a zoo
model's shipped schedule run as methods; bad specs fail before any work."""
import pytest
import torch

from dit_cache.bench import BenchConfig, BenchInputError, run_bench
from dit_cache.calibration import CALIBRATION_SEEDS

STEPS = 6


def _run(model, methods, **kw):
    torch.set_num_threads(1)
    return run_bench(BenchConfig(model=model, methods=methods, steps=STEPS, repeats=1, warmup=0, threads=1, **kw))


@pytest.fixture(scope="module")
def calibrated_rows(tmp_path_factory):
    result = _run("tiny-hunyuan", ["calibrate:speedup=1.5", "calibrate:speedup=1.5,max_age=2"], memory=False)
    return {r["method"]: r for r in result.rows}


def test_calibrate_rows_meet_their_speedup(calibrated_rows):
    for label in ("calibrate:speedup=1.5", "calibrate:speedup=1.5,max_age=2"):
        row = calibrated_rows[label]
        # the target is on transformer FLOPs (the pipeline's text encoders and VAE are not cached)
        assert row["status"] == "ok", row
        assert calibrated_rows["none"]["transformer_flops"] / row["transformer_flops"] >= 1.5 - 1e-6
        assert row["cached_steps"] > 0 and row["config"].startswith("plan=F ")
        setup = row["setup"]
        assert setup["calibration"]["seeds"] == list(CALIBRATION_SEEDS) and setup["calibration"]["cost_full_generations"] <= 10
        assert len(setup["plan"]) == STEPS


def test_a_schedule_file_is_a_method(tmp_path):
    import dit_cache
    from dit_cache.bench.runners import RunSettings, load_runner
    from dit_cache.calibration.runner import calibrate_runner

    runner = load_runner("tiny-dit", RunSettings(steps=STEPS, loop=True))
    cal = calibrate_runner(runner, speedup=1.5, progress=False)
    path = cal.save(tmp_path / "tiny-speedup=1.5.json")  # a "=" in a file name is no option
    rows = {r["method"]: r for r in _run("tiny-dit", [str(path)], loop=True, memory=False).rows}
    row = rows["tiny-speedup=1.5.json"]
    assert row["status"] == "ok" and row["config"] == "plan=" + " ".join(cal.config.plan)
    assert row["ideal_speedup"] == pytest.approx(cal.ideal_speedup, rel=1e-6)
    assert dit_cache.runtime.patch_state.get_state(runner.transformer) is None


@pytest.mark.parametrize("methods, kw, match", [
    (["calibrate:speedup=2,max_error=0.1"], {}, "speedup or max_error, not both"),
    (["calibrate:shallow=2"], {}, r"unknown option\(s\) \['shallow'\]"),
    (["calibrate:calibration_seeds=3/4"], {"seeds": [3]}, r"seed\(s\) \[3\] are both calibration and evaluation"),
    (["/nonexistent/plan.json"], {}, "does not exist"),
    (["calibrated"], {}, "calibrated"),
])
def test_bad_schedule_methods_fail_before_any_work(methods, kw, match):
    with pytest.raises(BenchInputError, match=match):
        _run("tiny-dit", methods, **kw)
