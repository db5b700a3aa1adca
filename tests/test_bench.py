"""`ditcache bench` / `dit_cache.bench`: structure of the rows, outputs, bad input, torchrun.

No timing assertions: latencies on shared CI machines are noise. Structural facts are checked
instead (FLOP-implied speedups, step counts, bit-exactness of `none`, hook removal)."""
from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from dit_cache import presets
from dit_cache.bench import ROW_KEYS, BenchConfig, BenchInputError, run_bench
from dit_cache.bench.install import apply_method
from dit_cache.bench.runners import RunSettings, load_runner
from dit_cache.bench.specs import MethodSpec, default_methods, parse_methods
from dit_cache.cli import main

REQUIRED = ("method", "latency_s", "speedup", "flops", "ideal_speedup", "efficiency", "peak_mem_bytes",
            "full_steps", "cached_steps", "psnr", "ssim", "max_abs_err")
STEPS = 4
PAB = next((p for p in ("pab-236", "pab") if p in presets()), None)


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _run(model, methods, **kw):
    cfg = BenchConfig(model=model, methods=methods, steps=STEPS, repeats=1, warmup=0, threads=1, **kw)
    return run_bench(cfg)


@pytest.fixture(scope="module")
def dit_result():
    torch.set_num_threads(1)
    methods = ["skip-dit", "fora:interval=2"] + ([PAB, "diffusers-pab"] if PAB else [])
    return _run("tiny-dit", methods)


def _check_rows(result, steps=STEPS):
    rows = {r["method"]: r for r in result.rows}
    assert list(rows)[:2] == ["unpatched", "none"]
    for r in result.rows:
        assert set(REQUIRED) <= set(r) and set(ROW_KEYS) <= set(r), r["method"]
        if r["status"] != "ok":
            continue
        assert r["full_steps"] + r["cached_steps"] == steps, r
        assert len(r["pattern"]) == steps and set(r["pattern"]) <= {"F", "c"}
        assert r["latency_s"] > 0 and r["latency_iqr_s"] >= 0 and r["n_timed"] == 1
        assert r["flops"] > 0 and r["peak_mem_bytes"] > r["state_bytes"] > 0
        assert r["efficiency"] == pytest.approx(r["speedup"] / r["ideal_speedup"])
        assert -1.0 <= r["ssim"] <= 1.0 and r["max_abs_err"] >= 0
    for base in ("unpatched", "none"):  # `none` computes bit for bit what the unpatched model does
        r = rows[base]
        assert r["psnr"] == math.inf and r["max_abs_err"] == 0.0 and r["ssim"] == 1.0
        assert r["pattern"] == "F" * steps and r["ideal_speedup"] == 1.0
    assert rows["none"]["speedup"] == 1.0 and rows["none"]["flops"] == rows["unpatched"]["flops"]
    skip = rows["skip-dit"]
    assert skip["cached_steps"] >= 1 and skip["ideal_speedup"] > 1.0
    assert skip["flops"] < rows["none"]["flops"] and math.isfinite(skip["psnr"]) and skip["max_abs_err"] > 0
    return rows


def test_tiny_dit_rows(dit_result):
    rows = _check_rows(dit_result)
    assert dit_result.meta["run"]["runner"] == "pipeline" and dit_result.meta["run"]["cfg"]
    fora = rows["fora:interval=2"]
    assert fora["pattern"] == "FcFc" and fora["ideal_speedup"] > 1.0 and fora["config"] == "interval=2"
    if PAB:
        # diffusers' PAB with the equivalent config computes exactly what dit-cache's PAB does
        ours, theirs = rows[PAB], rows["diffusers-pab"]
        assert theirs["kind"] == "peer" and theirs["status"] == "ok"
        assert theirs["pattern"] == ours["pattern"] and theirs["flops"] == ours["flops"]
        assert theirs["max_abs_err"] == ours["max_abs_err"]


@pytest.mark.parametrize("model", ["tiny-latte", "tiny-hunyuan"])
def test_video_and_hunyuan_rows(model):
    order = "sequential" if model == "tiny-hunyuan" else "interleaved"
    result = _run(model, ["skip-dit", "fora", "diffusers-fastercache"], order=order)
    assert result.meta["order"] == order
    rows = _check_rows(result)
    fc = rows["diffusers-fastercache"]
    assert fc["status"] == "ok" or fc["status"].startswith("n/a: ")
    if model == "tiny-latte":
        assert result.meta["run"]["frames"] == 4  # SSIM per frame: 1 sample x 4 frames
        assert rows["skip-dit"]["n_images"] == 4


def test_paired_order_times_none_before_every_method():
    """order="paired": each round times `none` right before each other method; the speedup is
    the median of those adjacent ratios, recomputed here from the raw samples."""
    import statistics

    result = run_bench(BenchConfig(model="tiny-dit", methods=["skip-dit", "fora:interval=2"], steps=STEPS, repeats=3,
                                   warmup=0, threads=1, order="paired", seeds=[0, 1]))
    assert result.meta["order"] == "paired"
    rows = {r["method"]: r for r in result.rows}
    others = [m for m in rows if m not in ("none", "unpatched")]
    assert rows["none"]["n_timed"] == 3 * 2 * (len(others) + 1)  # one pair per method per round, 2 seeds
    none = rows["none"]["latency_samples_s"]
    # the pairs run in a seeded order per round; rebuild it as measure.paired_rounds does
    import random
    order = []
    for r in range(3):
        live = [m for m in rows if m != "none"]
        random.Random(r).shuffle(live)
        order += live
    position = {m: [i for i, x in enumerate(order) if x == m] for m in rows if m != "none"}
    for m, where in position.items():
        own = rows[m]["latency_samples_s"]
        ratios = [sum(none[2 * i:2 * i + 2]) / sum(own[2 * k:2 * k + 2]) for k, i in enumerate(where)]
        assert rows[m]["speedup"] == pytest.approx(statistics.median(ratios))
        assert rows[m]["paired_speedup"] == rows[m]["speedup"]
    assert rows["none"]["paired_speedup"] is None and rows["none"]["speedup"] == 1.0


def test_transformer_loop_matches_dit_pipeline():
    """The bare-transformer loop reproduces DiTPipeline (same seed -> same final latents)."""
    pipe_runner = load_runner("tiny-dit", RunSettings(steps=3))
    loop_runner = load_runner("tiny-dit", RunSettings(steps=3, loop=True))
    assert (pipe_runner.kind, loop_runner.kind) == ("pipeline", "transformer-loop")
    a = pipe_runner.generate(pipe_runner.prepare(5))
    b = loop_runner.generate(loop_runner.prepare(5))
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_peers_leave_the_model_exactly_as_it_was():
    runner = load_runner("tiny-latte", RunSettings(steps=2, loop=True))
    model = runner.transformer
    prepared = runner.prepare(0)
    ref = runner.generate(prepared)
    before = {n: ("forward" in m.__dict__, hasattr(m, "_diffusers_hook")) for n, m in model.named_modules()}
    for name in ("diffusers-pab", "diffusers-fastercache", "skip-dit"):
        applied = apply_method(MethodSpec(name, {}, name), runner)
        applied.before_generation()
        runner.generate(prepared)
        applied.remove()
        after = {n: ("forward" in m.__dict__, hasattr(m, "_diffusers_hook")) for n, m in model.named_modules()}
        assert after == before, name
        assert not model._forward_pre_hooks and not model._forward_hooks
        assert torch.equal(runner.generate(prepared), ref), name


def test_fastercache_without_cfg_is_na():
    result = _run("tiny-dit", ["diffusers-fastercache"], cfg_scale=1.0)
    row = result.row("diffusers-fastercache")
    assert row["status"].startswith("n/a: ") and "guidance" in row["status"]
    assert row["latency_s"] is None and not result.meta["run"]["cfg"]


def test_json_csv_plot(dit_result, tmp_path):
    dit_result.write_json(tmp_path / "b.json")
    dit_result.write_csv(tmp_path / "b.csv")
    data = json.loads((tmp_path / "b.json").read_text())
    for key in ("machine", "torch", "diffusers", "threads", "command", "run", "rows"):
        assert key in data
    assert data["torch"] == torch.__version__ and data["threads"] == 1
    assert data["rows"][0]["psnr"] == "inf"  # JSON has no infinity
    assert all(set(REQUIRED) <= set(r) for r in data["rows"])
    with open(tmp_path / "b.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows] == [r["method"] for r in dit_result.rows]
    assert set(REQUIRED) <= set(rows[0])
    pytest.importorskip("matplotlib")
    dit_result.plot(str(tmp_path / "b.png"))
    assert (tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"


def test_method_spec_syntax():
    specs = parse_methods(["none,skip-dit:interval=3,shallow=2,fora", "pab:window=100/800", "diffusers-pab-469"])
    assert [s.name for s in specs] == ["none", "skip-dit", "fora", "pab", "diffusers-pab-469"]
    assert specs[1].options == {"interval": 3, "shallow": 2} and specs[1].label == "skip-dit:interval=3,shallow=2"
    assert specs[3].options == {"window": (100, 800)}
    assert specs[4].kind == "peer" and specs[0].kind == "dit-cache"
    with pytest.raises(BenchInputError, match="twice"):
        parse_methods(["fora", "fora"])
    with pytest.raises(BenchInputError, match="before any method"):
        parse_methods(["interval=3"])
    defaults = default_methods()
    assert defaults[:2] == ["none", "skip-dit"]
    assert all(m in presets() or m.startswith("diffusers-") for m in defaults)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "no-such-model"], "unknown model"),
        (["--methods", "skip-dot"], "unknown method"),
        (["--methods", "skip-dit:intervl=3"], "unknown option"),
        (["--methods", "skip-dit:shallow=9"], "too deep"),
        (["--model", "tiny-hunyuan", "--resolution", "100"], "impossible"),
        (["--frames", "3", "--model", "tiny-latte"], "impossible"),
        (["--frames", "2"], "video models"),
        (["--methods", "diffusers-pab:bogus=1"], "unknown option"),
        (["--repeats", "0"], "--repeats"),
    ],
)
def test_cli_bad_input_exit_2(argv, message, capsys):
    base = ["bench", "--model", "tiny-dit", "--steps", "2", "--repeats", "1", "--no-progress"]
    if "--model" in argv:  # repeated --model flags append (issue 14): name the model once
        base = ["bench", *base[3:]]
    assert main(base + argv) == 2
    out = capsys.readouterr()
    text = out.out + out.err
    assert message in text and "Traceback" not in text
    assert len([line for line in out.out.splitlines() if line.strip()]) == 1  # one line


def test_cli_not_a_model_directory(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    assert main(["bench", "--model", str(tmp_path), "--no-progress"]) == 2
    assert "supported transformers" in capsys.readouterr().out
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["bench", "--model", str(empty), "--no-progress"]) == 2
    assert "not a diffusers model directory" in capsys.readouterr().out


def test_cli_local_transformer_directory(tmp_path, capsys):
    from dit_cache.testing import build_transformer

    build_transformer("tiny-hunyuan").save_pretrained(tmp_path / "hy")
    out = tmp_path / "r.json"
    argv = ["bench", "--model", str(tmp_path / "hy"), "--steps", "2", "--repeats", "1", "--warmup", "0",
            "--threads", "1", "--methods", "skip-dit", "--no-progress", "--json", str(out)]
    assert main(argv) == 0
    data = json.loads(out.read_text())
    assert data["run"]["runner"] == "transformer-loop" and data["run"]["family"] == "hunyuan"
    assert [r["method"] for r in data["rows"]] == ["unpatched", "none", "skip-dit"]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.pop("WORLD_SIZE", None)
    return env


def test_python_dash_m_entry_point_bad_input():
    """`python -m dit_cache.cli` (the torchrun path) reports bad input in one line, exit 2."""
    proc = subprocess.run(
        [sys.executable, "-m", "dit_cache.cli", "bench", "--model", "tiny-dit", "--methods", "nope"],
        capture_output=True, text=True, env=_env(), timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "unknown method" in proc.stdout and "Traceback" not in proc.stdout + proc.stderr


def test_torchrun_two_ranks_shard_seeds(tmp_path):
    out = tmp_path / "dist.json"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "dit_cache.cli", "bench", "--model", "tiny-dit", "--steps", "2", "--seeds", "0", "1",
        "--methods", "skip-dit", "--repeats", "1", "--warmup", "0", "--no-progress", "--json", str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    data = json.loads(out.read_text())
    assert data["world_size"] == 2 and data["threads"] == 1
    for row in data["rows"]:
        assert row["seeds"] == [0, 1] and row["n_timed"] == 2  # one timed run per seed, one seed per rank
        assert row["n_images"] == 2
    assert proc.stdout.count("tiny-dit (DiTTransformer2DModel") == 1  # one table, printed by rank 0 only
    assert "Traceback" not in proc.stderr


def test_without_flops_and_memory():
    result = _run("tiny-dit", ["skip-dit", "diffusers-pab"], flops=False, memory=False)
    for r in result.rows:
        assert r["flops"] is None and r["ideal_speedup"] is None and r["peak_mem_bytes"] is None
        assert r["latency_s"] > 0 and r["speedup"] > 0
    assert result.row("skip-dit")["full_steps"] + result.row("skip-dit")["cached_steps"] == STEPS
    assert result.row("diffusers-pab")["pattern"] is None  # peers' patterns come from per-call FLOPs


def test_plot_without_matplotlib_is_a_clear_error(monkeypatch, capsys, tmp_path):
    import dit_cache.bench.plot as bench_plot

    monkeypatch.setattr(bench_plot, "plot_available", lambda: (False, "--plot needs matplotlib, which is not installed"))
    assert main(["bench", "--model", "tiny-dit", "--no-progress", "--plot", str(tmp_path / "p.png")]) == 2
    assert "needs matplotlib" in capsys.readouterr().out  # checked before anything runs
