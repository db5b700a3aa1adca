"""Bad command-line input, for every numeric option of every sub-command: one line naming the
option and what it takes, exit code 2, before any work starts, never a traceback."""
from __future__ import annotations

import pytest

from dit_cache.cli import main

BENCH = ["bench", "--model", "tiny-dit", "--methods", "none", "--steps", "2", "--repeats", "1", "--warmup", "0",
         "--no-progress", "--no-flops", "--no-memory"]
FINETUNE = ["finetune", "--model", "tiny-dit", "--data", "mnist", "--adapter-steps", "1"]

BAD = [
    # (argv, text the one line must contain)
    (["schedule", "skip-dit", "--steps", "0"], "--steps"),
    (["schedule", "skip-dit", "--steps", "-3"], "--steps"),
    (["schedule", "skip-dit", "--steps", "two"], "--steps"),
    (["demo", "--steps", "0"], "--steps"),
    (["demo", "--steps", "-1"], "--steps"),
    (["demo", "--threads", "0"], "--threads"),
    (["demo", "--threads", "-2"], "--threads"),
    (["demo", "--model", "tiny-unet"], "--model"),
    (BENCH + ["--device", "tpu"], "--device"),
    (BENCH + ["--device", "cuda:x"], "--device"),
    (BENCH + ["--cfg-scale", "nan"], "--cfg-scale"),
    (BENCH + ["--cfg-scale", "inf"], "--cfg-scale"),
    (BENCH + ["--cfg-scale", "-1"], "--cfg-scale"),
    (BENCH + ["--steps", "0"], "--steps"),
    (BENCH + ["--steps", "-4"], "--steps"),
    (BENCH + ["--batch", "0"], "--batch"),
    (BENCH + ["--resolution", "0"], "--resolution"),
    (BENCH + ["--resolution", "-64"], "--resolution"),
    (BENCH + ["--frames", "0"], "--frames"),
    (BENCH + ["--repeats", "0"], "--repeats"),
    (BENCH + ["--warmup", "-1"], "--warmup"),
    (BENCH + ["--threads", "0"], "--threads"),
    (BENCH + ["--max-background", "nan"], "--max-background"),
    (BENCH + ["--max-background", "-0.1"], "--max-background"),
    (BENCH + ["--max-background", "2"], "--max-background"),
    (BENCH + ["--seeds", "-1"], "--seeds"),
    (BENCH + ["--seeds", str(2**64)], "--seeds"),
    (BENCH + ["--seeds", "1", "1"], "--seeds"),
    (BENCH + ["--json", "{file}/out.json"], "--json"),
    (BENCH + ["--csv", "{file}/out.csv"], "--csv"),
    (BENCH + ["--json", "{tmp}"], "--json"),
    (FINETUNE + ["--output", "{tmp}/o", "--adapter-steps", "-1"], "--adapter-steps"),
    (FINETUNE + ["--output", "{tmp}/o", "--full-steps", "-1"], "--full-steps"),
    (FINETUNE + ["--output", "{tmp}/o", "--adapter-steps", "0"], "nothing to train"),
    (FINETUNE + ["--output", "{tmp}/o", "--batch-size", "0"], "--batch-size"),
    (FINETUNE + ["--output", "{tmp}/o", "--lr", "0"], "--lr"),
    (FINETUNE + ["--output", "{tmp}/o", "--lr", "nan"], "--lr"),
    (FINETUNE + ["--output", "{tmp}/o", "--adapter-lr", "-1e-4"], "--adapter-lr"),
    (FINETUNE + ["--output", "{tmp}/o", "--weight-decay", "inf"], "--weight-decay"),
    (FINETUNE + ["--output", "{tmp}/o", "--warmup-steps", "-1"], "--warmup-steps"),
    (FINETUNE + ["--output", "{tmp}/o", "--ema-decay", "1"], "--ema-decay"),
    (FINETUNE + ["--output", "{tmp}/o", "--ema-decay", "nan"], "--ema-decay"),
    (FINETUNE + ["--output", "{tmp}/o", "--max-grad-norm", "0"], "--max-grad-norm"),
    (FINETUNE + ["--output", "{tmp}/o", "--max-grad-norm", "nan"], "--max-grad-norm"),
    (FINETUNE + ["--output", "{tmp}/o", "--skip-grad-norm-above", "-1"], "--skip-grad-norm-above"),
    (FINETUNE + ["--output", "{tmp}/o", "--spectral-bound", "inf"], "--spectral-bound"),
    (FINETUNE + ["--output", "{tmp}/o", "--spectral-bound", "0"], "--spectral-bound"),
    (FINETUNE + ["--output", "{tmp}/o", "--cond-dropout", "1.5"], "--cond-dropout"),
    (FINETUNE + ["--output", "{tmp}/o", "--cond-dropout", "nan"], "--cond-dropout"),
    (FINETUNE + ["--output", "{tmp}/o", "--seed", "-1"], "--seed"),
    (FINETUNE + ["--output", "{tmp}/o", "--checkpoint-every", "-1"], "--checkpoint-every"),
    (FINETUNE + ["--output", "{tmp}/o", "--keep-checkpoints", "-1"], "--keep-checkpoints"),
    (FINETUNE + ["--output", "{tmp}/o", "--resolution", "0"], "--resolution"),
    (FINETUNE + ["--output", "{tmp}/o", "--num-frames", "0"], "--num-frames"),
    (FINETUNE + ["--output", "{tmp}/o", "--frame-stride", "0"], "--frame-stride"),
    (FINETUNE + ["--output", "{tmp}/o", "--threads", "0"], "--threads"),
    (FINETUNE + ["--output", "{tmp}/o", "--device", "tpu"], "--device"),
    (["convert", "{file}", "{tmp}/out", "--from", "pixart"], "--from"),
    (["nonsense"], "nonsense"),
]


@pytest.mark.parametrize("argv, hint", BAD, ids=[" ".join(a[:1] + a[-2:]) for a, _ in BAD])
def test_bad_input_is_one_line_exit_2_before_any_work(tmp_path, capsys, monkeypatch, argv, hint):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    argv = [a.format(tmp=tmp_path, file=blocker) for a in argv]

    def no_work(*args, **kwargs):
        raise AssertionError("work started before the input was checked")

    import dit_cache.bench
    import dit_cache.cli.demo
    import dit_cache.cli.finetune
    import dit_cache.testing

    for module, name in ((dit_cache.bench, "run_bench"), (dit_cache.testing, "build_pipeline"),
                         (dit_cache.testing, "build_transformer"), (dit_cache.cli.finetune, "_load_model")):
        monkeypatch.setattr(module, name, no_work)
    rc = main(argv)
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert rc == 2, text
    assert "Traceback" not in text
    assert text.count("\n") == 1, text  # one line
    assert hint in text, text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # nothing written


def test_bench_cfg_nan_api_is_refused():
    from dit_cache.bench import BenchConfig, BenchInputError, run_bench

    for bad in (dict(cfg_scale=float("nan")), dict(steps=0), dict(device="tpu"), dict(seeds=[-1]),
                dict(max_background=float("nan")), dict(batch=0), dict(resolution=-8)):
        with pytest.raises(BenchInputError):
            run_bench(BenchConfig(model="tiny-dit", **bad))


def test_finetune_config_numbers_are_checked():
    from dit_cache.finetuning.config import FinetuneConfig

    for bad in (dict(lr=float("nan")), dict(lr=0.0), dict(weight_decay=-1.0), dict(adapter_lr=float("inf")),
                dict(max_grad_norm=float("nan")), dict(spectral_bound=float("inf")), dict(betas=(0.9, 1.0)),
                dict(adam_eps=0.0), dict(frame_stride=0), dict(threads=0), dict(keep_checkpoints=-1),
                dict(seed=-1), dict(resolution=0), dict(encode_batch_size=0)):
        with pytest.raises(ValueError):
            FinetuneConfig(adapter_steps=1, **bad).validate()
    FinetuneConfig(adapter_steps=1).validate()


def test_good_input_still_runs(capsys):
    assert main(["schedule", "skip-dit", "--steps", "4"]) == 0
    assert "full" in capsys.readouterr().out
