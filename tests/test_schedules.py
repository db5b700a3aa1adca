"""The static schedule reproduces the Skip-DiT reference: its example pattern and the
block-compute speedups it tabulates for each backbone."""
import pytest

import dit_cache
from dit_cache.testing import build_scheduler, build_transformer
from dit_cache import SkipCacheConfig


def _ideal_speedup(pattern: str, units: int, k: int) -> float:
    return len(pattern) * units / (pattern.count("F") * units + pattern.count("c") * 2 * k)


def test_reference_example_pattern_latte_c2v_ddim50_n3():
    model = build_transformer("latte-1", device="meta")
    pattern = dit_cache.schedule_pattern(
        model, 50, "skip-dit", scheduler=build_scheduler("ddim", "latte"), interval=3, start=900.0, close=50.0
    )
    assert pattern == "FFFFFcFccFccFccFccFccFccFccFccFccFccFccFccFccFccFF"


@pytest.mark.parametrize(
    "name, scheduler, steps, units, k, extra, expected",
    [
        ("dit-xl-2", "ddpm", 250, 28, 4, {}, (1.54, 1.87, 2.10)),
        ("latte-1", "ddim", 50, 28, 1, {}, (1.46, 1.69, 1.87)),  # text-to-video
        ("latte-1", "ddim", 50, 14, 1, {"start": 900.0}, (1.61, 1.99, 2.30)),  # class-to-video, 14 pairs
        ("hunyuan-dit", "ddpm", 100, 40, 1, {}, (1.46, 1.72, 1.90)),
    ],
)
def test_implied_speedups_match_reference_table(name, scheduler, steps, units, k, extra, expected):
    model = build_transformer(name, device="meta")
    family = {"dit-xl-2": "dit", "latte-1": "latte", "hunyuan-dit": "hunyuan"}[name]
    for n, want in zip((2, 3, 4), expected):
        pattern = dit_cache.schedule_pattern(
            model, steps, "skip-dit", scheduler=build_scheduler(scheduler, family), interval=n, **extra
        )
        assert _ideal_speedup(pattern, units, k) == pytest.approx(want, abs=0.005)


def test_defaults_per_backbone():
    for name, (k, start, close) in {
        "dit-xl-2": (4, 1000.0, 20.0),
        "latte-1": (1, 700.0, 50.0),
        "hunyuan-dit": (1, 700.0, 50.0),
    }.items():
        model = build_transformer(name, device="meta")
        dit_cache.patch(model, "skip-dit")
        config = dit_cache.stats(model)["config"]
        assert (config["shallow"], config["start"], config["close"], config["interval"]) == (k, start, close, 2)
        dit_cache.unpatch(model)


def test_decision_depends_only_on_step_and_timestep():
    config = SkipCacheConfig(interval=3, shallow=1, start=800.0, close=50.0)
    assert config.is_full(0, 500.0, None) and config.is_full(3, 500.0, 600.0)
    assert not config.is_full(4, 500.0, 520.0)
    assert config.is_full(4, 850.0, 900.0)  # inside the always-full start window
    assert config.is_full(5, 10.0, 40.0)  # after a step with t <= close
