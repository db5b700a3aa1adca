"""The zoo's diffusers pipelines (`dit_cache.zoo.pipeline`, `ZooImagePipeline`, `ZooVideoPipeline`)
and `ditcache sample`: used as a diffusers user would, labels by id and by name, output types,
generator determinism, the same samples as the bench's zoo runner, patched vs `none` vs bare,
save_pretrained / from_pretrained of a patched pipeline, Latte frames through export_to_gif, and
the CLI's grid and its one-line refusals."""
from __future__ import annotations

import json

import pytest
import torch
from diffusers import DDIMScheduler
from diffusers.utils import export_to_gif
from PIL import Image

from dit_cache import stats, zoo
from dit_cache.bench.runners import RunSettings, load_zoo_runner
from dit_cache.cli import main
from dit_cache.runtime.patch_state import get_state
from dit_cache.zoo.pipelines import ZooImagePipeline, ZooVideoPipeline, pixel_scheduler

STEPS = 3


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _latent(pipe, labels=(3, 5), seed=0, steps=STEPS, **kw) -> torch.Tensor:
    return pipe(class_labels=list(labels), num_inference_steps=steps, generator=_gen(seed), output_type="latent", **kw).images


@pytest.fixture(scope="module")
def retrofit():
    return _quiet(zoo.pipeline("mnist-dit-retrofit"))


@pytest.fixture(scope="module")
def vanilla():
    return _quiet(zoo.pipeline("mnist-dit"))


def test_built_like_a_diffusers_pipeline(vanilla):
    """What DiTPipeline(transformer=model, vae=None, ...) cannot do (its null class is 1000)."""
    folder = zoo.path("mnist-dit") / "scheduler"
    scheduler = pixel_scheduler(DDIMScheduler.from_pretrained(folder), "sample")
    pipe = _quiet(ZooImagePipeline(transformer=zoo.load("mnist-dit", schedule=None), scheduler=scheduler))
    assert torch.equal(_latent(pipe), _latent(vanilla))
    assert pipe.class_names == [str(i) for i in range(10)]  # from num_embeds_ada_norm without class_names


def test_labels_by_id_and_by_name(vanilla):
    assert torch.equal(_latent(vanilla, [3, 5]), _latent(vanilla, ["3", "5"]))
    assert torch.equal(_latent(vanilla, [3]), _latent(vanilla, "3"))
    assert len(vanilla(num_inference_steps=1, generator=_gen()).images) == 10  # None: one of each class


def test_output_types(vanilla):
    raw = _latent(vanilla)
    assert raw.shape == (2, 1, 32, 32) and raw.abs().max() <= 1.0
    pt = vanilla(class_labels=[3, 5], num_inference_steps=STEPS, generator=_gen(), output_type="pt").images
    assert torch.allclose(pt, (raw / 2 + 0.5).clamp(0, 1))
    arr = vanilla(class_labels=[3, 5], num_inference_steps=STEPS, generator=_gen(), output_type="np").images
    assert arr.shape == (2, 32, 32, 1) and 0 <= arr.min() and arr.max() <= 1
    images = vanilla(class_labels=[3, 5], num_inference_steps=STEPS, generator=_gen()).images
    assert [(im.mode, im.size) for im in images] == [("L", (32, 32))] * 2
    (as_tuple,) = vanilla(class_labels=[3], num_inference_steps=1, generator=_gen(), return_dict=False)
    assert len(as_tuple) == 1


def test_generator_determinism(vanilla):
    assert torch.equal(_latent(vanilla, seed=1), _latent(vanilla, seed=1))
    assert not torch.equal(_latent(vanilla, seed=1), _latent(vanilla, seed=2))


def test_progress_bar(capsys):
    pipe = zoo.pipeline("mnist-dit")
    pipe(class_labels=[1], num_inference_steps=STEPS, generator=_gen())
    assert f"{STEPS}/{STEPS}" in capsys.readouterr().err


@pytest.mark.parametrize("name, schedule", [("mnist-dit", "auto"), ("mnist-dit-retrofit", "skip-dit-2")])
def test_same_samples_as_the_bench_runner(name, schedule):
    """The bench's zoo runner drives the pipeline's loop: bit-identical samples (seed s: labels s..)."""
    runner = load_zoo_runner(name, RunSettings(steps=4, batch=4))
    if schedule != "auto":
        runner.install_dit_cache(schedule, {})
    pipe = _quiet(zoo.pipeline(name, schedule=schedule))
    assert torch.equal(runner.generate(runner.prepare(0)), _latent(pipe, [0, 1, 2, 3], steps=4))


def test_patched_none_and_bare(retrofit, vanilla):
    cached = _latent(retrofit, steps=4)
    assert "c" in stats(retrofit.transformer)["pattern"]
    none = _quiet(zoo.pipeline("mnist-dit-retrofit", schedule="none"))  # every step full, adapters in place
    full = _latent(none, steps=4)
    assert stats(none.transformer)["pattern"] == "FFFF"
    bare = _quiet(zoo.pipeline("mnist-dit-retrofit", schedule=None))
    assert get_state(bare.transformer) is None
    assert not torch.equal(cached, full) and not torch.equal(full, _latent(bare, steps=4))
    # a vanilla model: `none` is patched and computes exactly what the unpatched model does
    vanilla_none = _quiet(zoo.pipeline("mnist-dit", schedule="none"))
    assert get_state(vanilla_none.transformer) is not None and get_state(vanilla.transformer) is None
    assert torch.equal(_latent(vanilla_none, steps=4), _latent(vanilla, steps=4))
    assert not torch.equal(_latent(_quiet(zoo.pipeline("mnist-dit", schedule="skip-dit-2")), steps=4),
                           _latent(vanilla, steps=4))


def test_bad_inputs(vanilla):
    for labels, match in ((["x"], "unknown class name 'x'"), ([10], "class id 10 does not exist"),
                          ([True], "neither a class id"), ([], "empty")):
        with pytest.raises(ValueError, match=match):
            vanilla(class_labels=labels, num_inference_steps=1)
    for kwargs, match in ((dict(output_type="jpg"), "output_type"), (dict(num_inference_steps=0), "num_inference_steps"),
                          (dict(guidance_scale=float("nan")), "guidance_scale")):
        with pytest.raises(ValueError, match=match):
            vanilla(class_labels=[1], **kwargs)
    with pytest.raises(ValueError, match="without its trained long-skip adapters"):
        zoo.pipeline("mnist-dit-retrofit", schedule="fora")
    with pytest.raises(ValueError, match="need a schedule"):
        zoo.pipeline("mnist-dit", interval=2)
    with pytest.raises(ValueError, match="unknown zoo model"):
        zoo.pipeline("mnist-gan")


def test_save_and_load_a_patched_pipeline(tmp_path):
    pipe = _quiet(zoo.pipeline("mnist-dit-retrofit", schedule="skip-dit-3"))
    before = _latent(pipe, steps=6)
    pipe.save_pretrained(tmp_path)
    record = json.loads((tmp_path / "dit_cache.json").read_text())
    assert record["config"] == "SkipCacheConfig" and record["options"]["interval"] == 3
    assert record["fusion"] == "residual" and (tmp_path / record["adapters"]).is_file()
    loaded = _quiet(ZooImagePipeline.from_pretrained(tmp_path))
    assert get_state(loaded.transformer).config == get_state(pipe.transformer).config
    assert loaded.class_names == pipe.class_names and loaded.scheduler.config.clip_sample
    assert torch.equal(_latent(loaded, steps=6), before)
    # the saved transformer is the plain diffusers model (no inserted adapters): repatch=False gives it
    bare = _quiet(ZooImagePipeline.from_pretrained(tmp_path, repatch=False))
    assert get_state(bare.transformer) is None
    assert torch.equal(_latent(bare, steps=6), _latent(_quiet(zoo.pipeline("mnist-dit-retrofit", schedule=None)), steps=6))
    # saving it unpatched over the folder removes the stale patch
    bare.save_pretrained(tmp_path)
    assert not (tmp_path / "dit_cache.json").exists() and not (tmp_path / "adapters.safetensors").exists()
    assert get_state(ZooImagePipeline.from_pretrained(tmp_path).transformer) is None


def test_latte_frames_and_gif(tmp_path):
    pipe = _quiet(zoo.pipeline("mnist-latte"))
    assert isinstance(pipe, ZooVideoPipeline)
    frames = pipe(class_labels=["7"], num_inference_steps=2, generator=_gen()).frames
    assert len(frames) == 1 and [(f.mode, f.size) for f in frames[0]] == [("L", (32, 32))] * 8
    gif = Image.open(export_to_gif(frames[0], str(tmp_path / "7.gif")))
    assert gif.n_frames == 8
    arr = pipe(class_labels=[7], num_inference_steps=1, generator=_gen(), output_type="np").frames
    assert arr.shape == (1, 8, 32, 32, 1)


def test_cli_sample_writes_a_grid(tmp_path):
    out = tmp_path / "grid.png"
    assert main(["sample", "mnist-dit-retrofit", "--labels", "3", "5", "8", "--steps", "2", "--out", str(out)]) == 0
    assert Image.open(out).size == (96, 32)
    assert main(["sample", "mnist-dit", "--labels", "1", "2", "3", "--steps", "1", "--columns", "2", "--scale", "2",
                 "--out", str(out)]) == 0
    assert Image.open(out).size == (128, 128)
    gif = tmp_path / "clips.gif"
    assert main(["sample", "mnist-latte", "--labels", "4", "2", "--steps", "1", "--out", str(gif)]) == 0
    assert Image.open(gif).size == (64, 32) and Image.open(gif).n_frames == 8


@pytest.mark.parametrize("argv, match", [
    (["no-such", "--labels", "3"], "not a zoo model"),
    (["mnist-dit", "--labels", "12"], "has no class '12'"),
    (["mnist-dit", "--labels", "3", "--steps", "0"], "--steps"),
    (["mnist-dit", "--labels", "3", "--schedule", "skip-dat"], "skip-dat"),
    (["mnist-dit-retrofit", "--labels", "3", "--schedule", "fora"], "trained long-skip adapters"),
    (["mnist-latte", "--labels", "3"], "ending in .gif"),
])
def test_cli_sample_bad_input_is_one_line(tmp_path, capsys, argv, match):
    out = tmp_path / "x.png"
    assert main(["sample", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr()
    text = err.err + err.out
    assert match in text and text.strip().count("\n") == 0 and "Traceback" not in text
    assert not out.exists()


def test_cli_sample_refuses_a_missing_folder(tmp_path, capsys):
    assert main(["sample", "mnist-dit", "--labels", "3", "--out", str(tmp_path / "no" / "grid.png")]) == 2
    assert "does not exist" in capsys.readouterr().out
