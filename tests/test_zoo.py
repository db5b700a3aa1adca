"""The shipped MNIST zoo and classifier: they load and sample, the classifier is as accurate as
promised, FID-MNIST separates real digits from noise, `ditcache bench` on zoo models behaves
(trained adapters installed with every dit-cache method, reference = `none`, FID-MNIST and
class accuracy reported), and a quality regression per zoo model against the committed figure."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import dit_cache
from dit_cache import zoo
from dit_cache.bench import BenchConfig, run_bench
from dit_cache.bench.runners import RunSettings, ZooRunner, load_zoo_runner
from dit_cache.cli import main
from dit_cache.zoo.classifier import accuracy, load_classifier, split_index
from dit_cache.zoo.classifier import renderings as digit_renderings
from dit_cache.zoo.quality import MnistQuality
from dit_cache.runtime.patch_state import get_state

ROOT = Path(__file__).resolve().parents[1]
REGRESSION = ROOT / "benchmarks" / "results" / "zoo_regression.json"
# class accuracy of 20 samples (DDIM 20, CFG 2, seed 0), set below the measured values
# (mnist-dit 0.80, mnist-dit-retrofit 0.80, mnist-skip-dit 0.65)
# mnist-latte per frame (chance 0.1): 0.78 on these 5 clips at DDIM 10, 0.58 on 20 clips at DDIM 20
MIN_CLASS_ACC = {"mnist-dit": 0.6, "mnist-dit-retrofit": 0.6, "mnist-skip-dit": 0.5, "mnist-latte": 0.4}


@pytest.fixture(scope="module")
def classifier():
    return load_classifier()


@pytest.fixture(scope="module")
def renderings():
    return digit_renderings()


def test_every_zoo_model_ships():
    assert zoo.available() == list(zoo.ZOO_MODELS)
    for name in zoo.ZOO_MODELS:
        meta = zoo.meta(name)
        assert (zoo.path(name) / "command.txt").read_text().startswith("ditcache finetune")
        assert meta["dtype"] == "float16" and meta["steps"] > 0
        size = sum(p.stat().st_size for p in zoo.path(name).rglob("*.safetensors"))
        assert size < 20 * 2**20, f"{name}: {size / 2**20:.1f} MiB of weights"


def test_unknown_zoo_name_lists_the_zoo():
    with pytest.raises(ValueError, match="mnist-dit-retrofit"):
        zoo.path("mnist-vit")


def test_classifier_held_out_accuracy(classifier, renderings):
    still, moving, labels = renderings
    _, held = split_index(labels)
    assert len(held) == 500
    assert accuracy(classifier, still[held], labels[held]) >= 0.97
    assert accuracy(classifier, moving[held], labels[held]) >= 0.85  # small moving digits, frame 0


def test_fid_mnist_separates_real_digits_from_noise(classifier, renderings):
    still, _, labels = renderings
    _, held = split_index(labels)
    q = MnistQuality(classifier=classifier)
    real = q.fid(still[held])
    g = torch.Generator().manual_seed(0)
    noise = q.fid(torch.rand(500, 1, 32, 32, generator=g) * 2 - 1)
    shuffled = q.fid(still[held].flatten(1)[:, torch.randperm(1024, generator=g)].reshape(-1, 1, 32, 32))
    assert real < 0.1 * shuffled and real < 0.1 * noise, (real, shuffled, noise)
    assert q.class_accuracy(still[held], labels[held]) >= 0.97


@pytest.mark.parametrize("name", list(zoo.ZOO_MODELS))
def test_zoo_model_loads_and_samples_digits(name, classifier):
    """dit_cache.zoo.load (patched with its adapters where it has them, every step full here)
    samples the digit it is asked for, above chance (0.1)."""
    model = zoo.load(name, "skip-dit", interval=1)
    meta = zoo.meta(name)
    assert get_state(model) is not None and get_state(model).lscs is not None
    video = name == "mnist-latte"
    batch, steps = (5, 10) if video else (20, 20)  # a Latte clip costs ~8 DiT images
    runner = ZooRunner(name, model, meta, RunSettings(steps=steps, batch=batch))
    prepared = runner.prepare(0)
    out = runner.generate(prepared)
    assert out.shape == ((batch, 1, 8, 32, 32) if video else (batch, 1, 32, 32))
    assert torch.isfinite(out).all() and out.abs().max() <= 1.0
    q = MnistQuality(video=video, classifier=classifier)
    assert q.class_accuracy(out, prepared["labels"]) >= MIN_CLASS_ACC[name]
    if not video:
        return
    # and its frames are far closer to real ones than an untrained Latte's
    torch.manual_seed(0)
    untrained = type(model).from_config(model.config)
    fresh = ZooRunner("untrained", untrained, meta, RunSettings(steps=steps, batch=batch))
    trained_fid, untrained_fid = q.fid(out), q.fid(fresh.generate(fresh.prepare(0)))
    assert trained_fid < 0.5 * untrained_fid, (trained_fid, untrained_fid)


def test_a_retrofit_runner_refuses_to_sample_without_its_adapters():
    runner = load_zoo_runner("mnist-dit-retrofit", RunSettings(steps=2, batch=2))
    with pytest.raises(RuntimeError, match="long-skip adapters"):
        runner.generate(runner.prepare(0))


def test_bench_on_a_retrofit_installs_its_trained_adapters():
    cfg = BenchConfig(model="mnist-dit-retrofit", methods=["skip-dit-2", "fora-2", "pab-236"], steps=6, batch=4,
                      repeats=1, warmup=0, threads=1, flops=False, memory=False)
    rows = {r["method"]: r for r in run_bench(cfg).rows}
    assert rows["unpatched"]["status"].startswith("n/a") and rows["fora-2"]["status"].startswith("n/a")
    assert "mnist-dit" in rows["pab-236"]["status"]
    assert rows["none"]["psnr"] == math.inf  # the reference
    assert rows["none"]["pattern"] == "F" * 6 and "shallow=1" in rows["skip-dit-2"]["config"]
    assert rows["skip-dit-2"]["pattern"] == "FcFcFc" and 10 < rows["skip-dit-2"]["psnr"] < math.inf
    for r in (rows["none"], rows["skip-dit-2"]):
        assert r["fid_mnist"] > 0 and 0 <= r["class_acc"] <= 1 and r["n_quality"] == 4
    # the base model without its adapters is a different function: `none` must not equal it
    plain = ZooRunner("base", zoo.load("mnist-dit-retrofit", schedule=None), zoo.meta("mnist-dit-retrofit"),
                      RunSettings(steps=6, batch=4))
    base = plain.generate(plain.prepare(0))
    runner = load_zoo_runner("mnist-dit-retrofit", RunSettings(steps=6, batch=4))
    from dit_cache.bench.install import apply_method
    from dit_cache.bench.specs import MethodSpec

    applied = apply_method(MethodSpec("none", {}, "none"), runner)
    with_adapters = runner.generate(runner.prepare(0))
    applied.remove()
    assert not torch.equal(base, with_adapters)
    assert get_state(runner.transformer) is None  # removed exactly


def test_cli_default_suite_and_bad_model(tmp_path, capsys):
    assert main(["bench", "--model", "mnist-dit", "no-such-model", "--steps", "2"]) == 2
    captured = capsys.readouterr()
    assert "no-such-model" in captured.err + captured.out
    out = tmp_path / "suite.json"
    code = main(["bench", "--model", "mnist-dit", "mnist-skip-dit", "--methods", "skip-dit-2", "--steps", "4",
                 "--batch", "2", "--repeats", "1", "--warmup", "0", "--no-flops", "--no-memory", "--no-progress",
                 "--json", str(out), "--csv", str(tmp_path / "suite.csv")])
    assert code == 0
    suite = json.loads(out.read_text())["suite"]
    assert [s["run"]["model"] for s in suite] == ["mnist-dit", "mnist-skip-dit"]
    assert {r["model"] for r in suite[1]["rows"]} == {"mnist-skip-dit"}
    assert (tmp_path / "suite.csv").read_text().count("mnist-skip-dit") >= 3


def _committed() -> dict:
    return json.loads(REGRESSION.read_text())


@pytest.mark.parametrize("name", list(zoo.ZOO_MODELS))
def test_quality_regression_skip_dit_2(name):
    """skip-dit N=2 PSNR vs the model's full output: at most 1 dB below the committed figure
    (benchmarks/results/zoo_regression.json, made by benchmarks/zoo/regression.sh)."""
    committed = _committed()
    settings = committed["settings"]
    cfg = BenchConfig(model=name, methods=["skip-dit-2"], steps=settings["steps"], batch=settings["batch"],
                      seeds=settings["seeds"], repeats=1, warmup=0, threads=1, flops=False, memory=False)
    row = {r["method"]: r for r in run_bench(cfg).rows}["skip-dit-2"]
    assert row["psnr"] >= committed["psnr"][name] - 1.0, (row["psnr"], committed["psnr"][name])


@pytest.mark.parametrize("name", list(zoo.ZOO_MODELS))
def test_zoo_load_patches_with_the_shipped_calibrated_schedule(name):
    """zoo.load's default: the plan calibrated for DDIM 20 at 2x (FLOP-ideal), with the model's
    trained adapters where it has them; other step counts are refused before any work."""
    import json

    from dit_cache import StepPlanConfig

    record = json.loads(zoo.schedule_path(name).read_text())
    assert record["num_inference_steps"] == 20 and record["ideal_speedup"] >= 2.0
    assert set(record["calibration"]["seeds"]).isdisjoint(range(100))  # never an evaluation seed
    model = zoo.load(name)
    config = get_state(model).config
    assert isinstance(config, StepPlanConfig) and list(config.plan) == record["plan"]
    assert config.long_skips == (zoo.meta(name)["adapters"] is not None)
    runner = ZooRunner(name, model, zoo.meta(name), RunSettings(steps=20, batch=2))
    runner.generate(runner.prepare(0))
    assert dit_cache.stats(model)["pattern"] == "".join("F" if a == "F" else "c" for a in record["plan"])
    short = ZooRunner(name, model, zoo.meta(name), RunSettings(steps=10, batch=2))
    with pytest.raises(ValueError, match="made for 20 steps"):
        short.generate(short.prepare(0))
