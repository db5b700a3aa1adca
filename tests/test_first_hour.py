"""What a new user meets in the first hour (issue 14): a light start-up, honest timings, clear
messages and readable output."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import dit_cache
from dit_cache.bench import render_table
from dit_cache.bench.fidelity import fidelity
from dit_cache.bench.machine import choose_threads, physical_cores
from dit_cache.bench.results import BenchResult
from dit_cache.bench.runners.load import cached_hub_model, check_model_name
from dit_cache.bench.errors import BenchInputError
from dit_cache._common.timesteps import builtin_timesteps
from dit_cache.cli.main import build_parser, main
from dit_cache.cli.tiny_facts import REAL_SIZE_MODELS, TINY_FACTS, tiny_pattern
from dit_cache.runtime.registry import get_adapter
from dit_cache.adapters import family_spec
from dit_cache.testing import MODEL_CONFIGS, SCHEDULER_NAMES, TINY_MODELS, build_scheduler, build_transformer, family_of, model_config


def _run_python(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_import_and_help_do_not_load_torch_or_diffusers():
    loaded = _run_python(
        "import sys, contextlib, io\n"
        "import dit_cache\n"
        "from dit_cache.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try: main(['--help'])\n"
        "    except SystemExit: pass\n"
        "    main(['bench', '--steps', '0'])\n"
        "    main(['presets'])\n"
        "    main(['schedule', 'pab-236', '--model', 'tiny-latte', '--scheduler', 'dpm++', '--steps', '30'])\n"
        "print(sorted(m for m in ('torch', 'diffusers') if m in sys.modules))"
    )
    assert loaded == "[]"


@pytest.mark.parametrize("model", TINY_MODELS)
def test_torch_free_timesteps_are_diffusers_for_every_step_count(model):
    facts = TINY_FACTS[model]
    spec = family_spec(family_of(model))
    assert facts.schedulers == (spec.default_scheduler, *[s for s in spec.schedulers if s != spec.default_scheduler])
    for scheduler in SCHEDULER_NAMES:
        if scheduler not in spec.schedulers:  # refused with a clear error, by both
            with pytest.raises(ValueError, match="samples with"):
                build_scheduler(scheduler, model)
            with pytest.raises(ValueError, match="samples with"):
                tiny_pattern(dit_cache.presets()["fora"], model, scheduler, 4)
            continue
        reference = build_scheduler(scheduler, family_of(model))
        assert (reference.config.num_train_timesteps, reference.config.get("steps_offset", 0)) == (
            facts.num_train_timesteps, facts.steps_offset)
        for steps in range(1, facts.num_train_timesteps + 1):
            spec.set_timesteps(reference, steps, resolution=model_config(model)["resolution"])
            got = builtin_timesteps(scheduler, steps, facts.num_train_timesteps, facts.steps_offset, facts.shift, facts.mu)
            assert got == [float(t) for t in reference.timesteps], (scheduler, steps)


@pytest.mark.parametrize("model", TINY_MODELS)
def test_tiny_facts_are_the_built_models_and_give_their_patterns(model):
    """`ditcache schedule` answers from TINY_FACTS: they are the built model's, and every preset's
    pattern is the one dit_cache.schedule_pattern computes on the model itself."""
    assert set(TINY_FACTS) == set(TINY_MODELS)
    assert {*TINY_FACTS, *REAL_SIZE_MODELS} == set(MODEL_CONFIGS), "the CLI's model list (cli/tiny_facts.py) is stale"
    built = build_transformer(model)
    adapter = get_adapter(built)
    facts = TINY_FACTS[model]
    assert (facts.family, facts.units, facts.max_shallow, facts.defaults) == (
        family_of(model), len(adapter.units(built)), adapter.max_shallow(built), adapter.defaults)
    assert facts.kinds == {site.kind for site, _ in adapter.reuse_sites(built)}
    for preset in dit_cache.presets():
        for scheduler in facts.schedulers:
            for steps in (1, 2, 7, 20, 50):
                expected = dit_cache.schedule_pattern(built, steps, schedule=preset,
                                                      scheduler=build_scheduler(scheduler, family_of(model)))
                assert tiny_pattern(dit_cache.presets()[preset], model, scheduler, steps) == expected, (preset, scheduler, steps)


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"ditcache {dit_cache.__version__}"


def test_repeated_list_flags_append():
    args = build_parser("bench").parse_args(["bench", "--methods", "skip-dit", "--methods", "fora", "--model", "tiny-dit", "--model", "mnist-dit"])
    assert args.methods == ["skip-dit", "fora"] and args.model == ["tiny-dit", "mnist-dit"]


def test_thread_choice_leaves_room_for_busy_cores(monkeypatch):
    import dit_cache.bench.machine as machine

    class Busy:
        share = 0.5  # one of two CPUs busy with someone else

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

    monkeypatch.setattr(machine, "BackgroundProbe", Busy)
    monkeypatch.setattr(machine.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(machine, "physical_cores", lambda: 2)
    threads, why = choose_threads(probe_seconds=0)
    assert threads == 1 and "2 physical cores, 1.0 busy" in why
    assert choose_threads(ranks_per_machine=4, probe_seconds=0)[0] == 1
    assert 1 <= physical_cores() <= (os.cpu_count() or 1)


def _result(rows, steps=10):
    from dit_cache.bench.columns import COLUMNS

    base = {c.key: None for c in COLUMNS}
    base.update(status="ok", kind="dit-cache", latency_s=1.0, latency_iqr_s=0.01, speedup=1.0, ideal_speedup=1.0,
                efficiency=1.0, full_steps=steps, cached_steps=0, pattern="F" * steps)
    full = [{**base, "preset": r["method"], **r} for r in rows]
    return BenchResult(rows=full, meta={"run": {"steps": steps}, "summary": {}}, rank=0)


def _text(result) -> str:
    from rich.console import Console

    console = Console(record=True, width=200)
    console.print(render_table(result))
    return console.export_text()


def test_noisy_timings_withhold_the_speedups():
    quiet = _result([{"method": "none"}, {"method": "fora-2", "speedup": 1.9, "ideal_speedup": 2.0, "efficiency": 0.95}])
    assert "speedup" in _text(quiet) and "withheld" not in _text(quiet)
    noisy = _result([{"method": "none"}, {"method": "fora-2", "latency_iqr_s": 0.4, "speedup": 17.8}])
    text = _text(noisy)
    assert "speedups withheld" in text and "17.8" not in text and "--threads 1" in text


def test_a_model_too_small_for_caching_is_said_so():
    rows = [{"method": "none", "latency_s": 0.05}, {"method": "skip-dit-2", "ideal_speedup": 1.5, "efficiency": 0.65}]
    assert "too small for caching to pay" in _text(_result(rows, steps=10))  # 5 ms per call
    rows[0]["latency_s"] = 5.0  # 500 ms per call: a real model, no excuse
    assert "too small" not in _text(_result(rows, steps=10))


def test_na_reasons_are_numbered_notes_not_cells():
    reason = "diffusers' FasterCache needs a CacheMixin model, which this DiTTransformer2DModel is not " * 2
    text = _text(_result([{"method": "none"}, {"method": "diffusers-fastercache", "status": f"n/a: {reason}"}]))
    assert "n/a [1]" in text and f"[1] {reason.strip()}"[:80] in " ".join(text.split())


def test_max_error_relative_to_the_value_range():
    ref = torch.linspace(-2, 2, 2 * 3 * 8 * 8).reshape(2, 3, 8, 8)
    out = ref.clone()
    out[0, 0, 0, 0] += 0.4
    f = fidelity(out, ref)
    assert f["max_abs_err"] == pytest.approx(0.4) and f["max_rel_err"] == pytest.approx(0.1)


def test_near_model_names_and_hub_ids(tmp_path, monkeypatch):
    with pytest.raises(BenchInputError, match="Did you mean 'dit-xl-2'"):
        check_model_name("DiT-XL-2")
    with pytest.raises(BenchInputError, match="local Hugging Face cache"):
        check_model_name("facebook/DiT-XL-2-256")
    # a hub id that is in the local cache is found there, as from_pretrained would
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    snapshot = tmp_path / "models--org--tiny-dit" / "snapshots" / "0123456789abcdef"
    snapshot.mkdir(parents=True)
    (snapshot / "model_index.json").write_text("{}")
    (tmp_path / "models--org--tiny-dit" / "refs").mkdir()
    (tmp_path / "models--org--tiny-dit" / "refs" / "main").write_text("0123456789abcdef")
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path))
    assert cached_hub_model("org/tiny-dit") == str(snapshot)
    check_model_name("org/tiny-dit")


def test_fora_on_a_model_with_trained_skips_says_why():
    with pytest.raises(ValueError, match="trained with long-skip adapters.*fora does not insert them"):
        dit_cache.zoo.load("mnist-dit-retrofit", schedule="fora")
    model = dit_cache.zoo.load("mnist-dit-retrofit", schedule="none")  # every step full, adapters kept
    assert dit_cache.stats(model)["config"]["interval"] == 1


def test_stats_repr_is_one_line(name, model):
    from dit_cache.testing import transformer_inputs

    dit_cache.patch(model, "skip-dit")
    with torch.no_grad():
        model(**transformer_inputs(name, transformer=model))
    s = dit_cache.stats(model)
    assert isinstance(s, dict) and "timesteps" in s
    assert "\n" not in repr(s) and repr(s).startswith("<dit-cache stats: skip-dit, generation")
