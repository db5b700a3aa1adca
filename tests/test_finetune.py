"""dit_cache.finetune: loss falls, stage 1 touches only adapters, spectral cap, non-finite steps,
exact resume, DDP under torchrun, every family's conditioning, CLI exit codes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import DiTTransformer2DModel, LatteTransformer3DModel
from safetensors.torch import load_file

import dit_cache
from dit_cache.finetuning import data
from dit_cache.cli import main
from dit_cache.finetuning.objective import DiffusionObjective, class_tokens, training_scheduler
from dit_cache.testing import build_pipeline, pipeline_inputs, run_pipeline

TINY_DIT = dict(
    num_attention_heads=2, attention_head_dim=16, in_channels=1, out_channels=2, num_layers=4, sample_size=8,
    patch_size=2, num_embeds_ada_norm=10, norm_type="ada_norm_zero", norm_elementwise_affine=False,
    activation_fn="gelu-approximate",
)
FAST = dict(batch_size=4, lr=1e-3, warmup_steps=2, progress=False, checkpoint_every=0)


def tiny_dit(seed: int = 0) -> DiTTransformer2DModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return DiTTransformer2DModel(**TINY_DIT).eval().requires_grad_(False)


def digits_like(n: int = 12, seed: int = 0) -> data.InMemoryDataset:
    """A small learnable set: a bright bar per class on a dark 8x8 background, plus a little noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    x = torch.full((n, 1, 8, 8), -1.0)
    for i, c in enumerate(labels.tolist()):
        x[i, 0, 2 * c : 2 * c + 2, 1:7] = 1.0
    x += 0.05 * torch.randn(x.shape, generator=g)
    return data.InMemoryDataset(x.clamp(-1, 1), labels=labels)


def log_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def test_loss_falls_on_tiny_overfit_set(tmp_path):
    r = dit_cache.finetune(tiny_dit(), digits_like(8), tmp_path, adapters=None, full_steps=30,
                           **{**FAST, "batch_size": 8, "lr": 3e-3})
    losses = r.losses
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    print(f"loss first5 {first:.4f} -> last5 {last:.4f}; {r.steps_per_second:.1f} steps/s")
    assert len(losses) == 30 and all(isinstance(v, float) for v in losses)
    assert last < 0.5 * first
    assert [rec["step"] for rec in log_of(tmp_path)] == list(range(1, 31))
    meta = json.loads((tmp_path / "finetune.json").read_text())
    assert meta["adapters"] is None and meta["steps"] == 30 and meta["data"]["space"] == "pixel"
    assert not (tmp_path / "adapters.safetensors").exists()
    assert dit_cache.runtime.patch_state.get_state(r.model) is None  # vanilla: never patched


def test_stage1_changes_only_adapter_parameters(tmp_path):
    model = tiny_dit()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    r = dit_cache.finetune(model, digits_like(), tmp_path, adapter_steps=6, **FAST)
    after = r.model.state_dict()
    adapter_keys = {k for k in after if k.startswith("dit_cache_lsc.")}
    assert adapter_keys and set(after) - adapter_keys == set(before)
    for k, v in before.items():
        assert torch.equal(after[k], v), k  # frozen: bit-identical (raw and EMA weights alike)
    assert all(after[k].abs().sum() > 0 for k in adapter_keys if k.endswith("linear.weight"))
    saved = load_file(str(tmp_path / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert set(saved) == set(before) and all(torch.equal(saved[k], before[k]) for k in before)
    assert all(p.requires_grad is False for p in r.model.parameters()) and not r.model.training
    # the saved result reloads as the trained, patched model
    loaded = dit_cache.load_finetuned(tmp_path)
    assert dit_cache.stats(loaded)["method"] == "skip-dit"
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in after.items())


def test_spectral_bound_holds_after_every_step(tmp_path):
    bound, seen = 0.02, []

    def check(record, trainer):
        sigmas = dit_cache.spectral_norms(trainer.model)
        seen.append(max(sigmas.values()))
        assert max(sigmas.values()) <= bound * (1 + 1e-5)
        assert record["sigma_max"] <= bound * (1 + 1e-5) and set(record["sigmas"]) == set(sigmas)

    r = dit_cache.finetune(tiny_dit(), digits_like(), tmp_path, adapter_steps=5, full_steps=3, spectral_bound=bound,
                           callback=check, **{**FAST, "lr": 5e-2})
    assert len(seen) == 8 and max(seen) > 0.99 * bound  # the cap was active
    assert max(dit_cache.spectral_norms(r.model).values()) <= bound * (1 + 1e-5)  # EMA weights too


def test_replace_adapters_from_scratch_auto_bound(tmp_path):
    model = tiny_dit()
    r = dit_cache.finetune(model, digits_like(), tmp_path, adapters="replace", full_steps=3, **FAST)
    meta = json.loads((tmp_path / "finetune.json").read_text())
    assert meta["adapters"] == "replace" and meta["spectral_bound"] >= 1.0
    assert dit_cache.runtime.patch_state.get_state(r.model).fusion == "replace"
    assert all(rec["sigma_max"] <= meta["spectral_bound"] * (1 + 1e-5) for rec in log_of(tmp_path))
    # seeded: the same command gives the same model
    again = dit_cache.finetune(tiny_dit(), digits_like(), tmp_path / "again", adapters="replace", full_steps=3, **FAST)
    assert all(torch.equal(a, b) for a, b in zip(r.model.state_dict().values(), again.model.state_dict().values()))


def test_non_finite_gradient_step_is_skipped_and_counted(tmp_path):
    model = tiny_dit()
    calls = {"n": 0}

    def poison(grad):
        calls["n"] += 1
        return grad * float("nan") if calls["n"] == 3 else grad

    handle = model.proj_out_2.weight.requires_grad_(True).register_hook(poison)
    snapshots = []

    def snap(record, trainer):
        snapshots.append({k: v.clone() for k, v in trainer.model.state_dict().items()})

    try:
        r = dit_cache.finetune(model, digits_like(), tmp_path, adapters=None, full_steps=5, callback=snap, **FAST)
    finally:
        handle.remove()
    log = log_of(tmp_path)
    assert r.skipped_steps == 1 and [rec["skipped_step"] for rec in log] == [False, False, True, False, False]
    assert log[2]["grad_norm"] == "nan" and log[2]["skipped"] == 1 and log[-1]["skipped"] == 1
    assert all(torch.equal(snapshots[2][k], snapshots[1][k]) for k in snapshots[1])  # step 3 changed nothing
    assert not all(torch.equal(snapshots[3][k], snapshots[2][k]) for k in snapshots[2])  # step 4 trained
    assert json.loads((tmp_path / "finetune.json").read_text())["skipped_steps"] == 1


def test_resume_reproduces_uninterrupted_run_exactly(tmp_path):
    opts = dict(FAST, adapter_steps=2, full_steps=4, checkpoint_every=3, batch_size=4)  # crosses the stage boundary
    straight = dit_cache.finetune(tiny_dit(), digits_like(), tmp_path / "a", **opts)

    class Interrupt(Exception):
        pass

    def stop_at_3(record, trainer):
        if record["step"] == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        dit_cache.finetune(tiny_dit(), digits_like(), tmp_path / "b", callback=stop_at_3, **opts)
    assert [p.name for p in (tmp_path / "b" / "checkpoints").iterdir()] == ["checkpoint-00000003"]
    with open(tmp_path / "b" / "train_log.jsonl", "a") as f:
        f.write('{"step": 4, "loss": 0.1}\n{"step": 5, "lo')  # written after the checkpoint, then a torn line
    with pytest.raises(ValueError, match="already holds checkpoints"):
        dit_cache.finetune(tiny_dit(), digits_like(), tmp_path / "b", **opts)
    with pytest.raises(ValueError, match="configuration changed"):
        dit_cache.finetune(tiny_dit(), digits_like(), tmp_path / "b", resume=True, **{**opts, "lr": 2e-3})
    resumed = dit_cache.finetune(tiny_dit(), digits_like(), tmp_path / "b", resume=True, **opts)
    assert resumed.resumed_from.endswith("checkpoint-00000003") and resumed.steps_run == 3
    a, b = log_of(tmp_path / "a"), log_of(tmp_path / "b")
    print("losses", [rec["loss"] for rec in a])
    assert [rec["loss"] for rec in a] == [rec["loss"] for rec in b]  # bit-identical floats
    assert [rec["step"] for rec in b] == list(range(1, 7))
    sa, sb = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    ck = tmp_path / "b" / "checkpoints"
    assert sorted(p.name for p in ck.iterdir()) == ["checkpoint-00000003", "checkpoint-00000006"]


def test_objective_targets_and_learned_sigma():
    x0 = torch.randn(3, 2, 4, 4)
    for kind in ("epsilon", "v_prediction", "sample"):
        sched = training_scheduler(None, prediction_type=kind)
        obj = DiffusionObjective(sched)
        g = torch.Generator().manual_seed(1)
        noisy, t, target = obj.draw(x0, g)
        g = torch.Generator().manual_seed(1)
        t2 = torch.randint(0, 1000, (3,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        assert torch.equal(t, t2) and torch.equal(noisy, sched.add_noise(x0, noise, t))
        expected = {"epsilon": noise, "v_prediction": sched.get_velocity(x0, noise, t), "sample": x0}[kind]
        assert torch.equal(target, expected)
    pred = torch.randn(3, 4, 4, 4)
    assert torch.equal(DiffusionObjective.loss(pred, x0), torch.nn.functional.mse_loss(pred[:, :2], x0))
    with pytest.raises(ValueError, match="channels"):
        DiffusionObjective.loss(torch.randn(3, 3, 4, 4), x0)
    tok = class_tokens(torch.tensor([2, -1]), 5)
    assert tok.shape == (2, 1, 5) and tok[0, 0].tolist() == [0, 0, 1, 0, 0] and not tok[1].any()


def test_pixel_latte_class_tokens_and_bf16(tmp_path):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LatteTransformer3DModel(
            num_attention_heads=2, attention_head_dim=16, in_channels=1, out_channels=2, num_layers=3,
            cross_attention_dim=32, caption_channels=16, sample_size=8, patch_size=2, num_embeds_ada_norm=1000,
            norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6, video_length=4,
        )
    clips = torch.randint(0, 256, (6, 1, 4, 8, 8), dtype=torch.uint8)
    ds = data.InMemoryDataset(clips, labels=[0, 1, 2, 0, 1, 2])
    r = dit_cache.finetune(model, ds, tmp_path, adapter_steps=2, full_steps=2, mixed_precision="bf16", **FAST)
    assert all(isinstance(v, float) for v in r.losses)
    meta = json.loads((tmp_path / "finetune.json").read_text())
    assert meta["conditioning"].startswith("class tokens") and meta["cond_null_index"] == 3


@pytest.mark.parametrize("name", ["tiny-dit", "tiny-latte", "tiny-hunyuan"])
def test_pipeline_retrofit_every_family(name, tmp_path):
    """Latent training through the pipeline's VAE and text encoders; stage 1 touches only the
    long skips (inserted, or Hunyuan-DiT's native ones); the saved result reloads exactly."""
    pipe = build_pipeline(name, seed=0, scheduler="ddpm")
    g = torch.Generator().manual_seed(0)
    if name == "tiny-latte":
        ds = data.InMemoryDataset(torch.randint(0, 256, (4, 3, 4, 32, 32), dtype=torch.uint8, generator=g),
                                  captions=["a red cat", "a dog", "a red cat", ""])
    else:
        ds = data.InMemoryDataset(torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=g),
                                  labels=[0, 1, 0, 1], class_names=["7", "9"] if name == "tiny-dit" else ["cat", "dog"])
    before = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    r = dit_cache.finetune(pipe, ds, tmp_path, adapter_steps=2, save_fp16=name == "tiny-dit",
                           latent_cache=tmp_path / "latents", **{**FAST, "batch_size": 2})
    after = r.model.state_dict()
    native = name == "tiny-hunyuan"
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    if native:
        assert changed and all(".skip_norm." in k or ".skip_linear." in k for k in changed)
    else:
        assert not changed and any(k.startswith("dit_cache_lsc.") for k in after)
    meta = json.loads((tmp_path / "finetune.json").read_text())
    assert meta["adapters"] == ("native" if native else "residual") and meta["data"]["space"].startswith("latent")
    assert len(list((tmp_path / "latents").glob("latents-*.safetensors"))) == 1
    if name == "tiny-dit":  # the cache is hit by the same data + VAE, missed by other data
        from dit_cache.finetuning.sources import encode_latents
        from dit_cache._common.dist import DistContext

        kw = dict(channels=3, size=128, sample=True, batch=4, cache_dir=tmp_path / "latents", ctx=DistContext())
        src, note = encode_latents(pipe.vae, ds, **kw)
        assert note.startswith("cached") and src.mean.shape == (4, 4, 16, 16) and (src.std > 0).all()
        other = data.InMemoryDataset(ds.x.flip(0), labels=ds.labels)
        assert encode_latents(pipe.vae, other, **kw)[1].startswith("encoded and cached")
    loaded = dit_cache.load_finetuned(tmp_path, pipeline=build_pipeline(name, seed=1))
    if name == "tiny-dit":  # fp16 result
        saved = load_file(str(tmp_path / "transformer" / "diffusion_pytorch_model.safetensors"))
        assert all(v.dtype == torch.float16 for v in saved.values())
        assert all(torch.equal(loaded.transformer.state_dict()[k], v.half().float()) for k, v in after.items())
        assert next(loaded.transformer.parameters()).dtype == torch.float32
    else:
        assert all(torch.equal(loaded.transformer.state_dict()[k], v) for k, v in after.items())
        out = run_pipeline(loaded, pipeline_inputs(name, num_inference_steps=3), return_latents=True)
        assert torch.isfinite(out).all()


# ------------------------------------------------------------------------------------------------
# CLI and DDP
# ------------------------------------------------------------------------------------------------


def _png_folder(root: Path, per_class: int = 4):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("0", "1"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(root / c / f"{i}.png")


def test_cli_bad_inputs_exit_2(tmp_path, capsys):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"_class_name": "DiTTransformer2DModel", **TINY_DIT}))
    missing = tmp_path / "no" / "such" / "folder" / "anywhere" / "at" / "all" / "really"
    code = main(["finetune", "--model-config", str(cfg), "--data", str(missing), "--output", str(tmp_path / "o"),
                 "--full-steps", "2"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "no such folder" in err
    code = main(["finetune", "--model-config", "{not json", "--data", "mnist", "--output", str(tmp_path / "o"),
                 "--full-steps", "2"])  # options are checked first, then the model config
    assert code == 2 and "invalid JSON" in capsys.readouterr().err
    code = main(["finetune", "--model-config", str(cfg), "--data", str(tmp_path), "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "nothing to train" in err and len(err.strip().splitlines()) == 1


def test_ddp_two_processes_torchrun_then_cli_retrofit(tmp_path):
    imgs, out = tmp_path / "imgs", tmp_path / "ddp"
    _png_folder(imgs)
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"_class_name": "DiTTransformer2DModel", **TINY_DIT}))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "dit_cache.cli", "finetune", "--model-config", str(cfg), "--data", str(imgs), "--output", str(out),
           "--adapters", "none", "--full-steps", "4", "--batch-size", "4", "--warmup-steps", "1",
           "--checkpoint-every", "2", "--no-progress", "--threads", "1"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "trained 4 step(s)" in proc.stdout
    meta = json.loads((out / "finetune.json").read_text())
    assert meta["world_size"] == 2 and meta["steps"] == 4  # (finetune checks the ranks' weights are identical)
    log = log_of(out)
    assert [r["step"] for r in log] == [1, 2, 3, 4] and all(isinstance(r["loss"], float) for r in log)
    last = out / "checkpoints" / "checkpoint-00000004"
    assert sorted(p.name for p in last.iterdir()) == ["rng-rank0.pt", "rng-rank1.pt", "state.pt"]
    # retrofit the vanilla result with residual adapters (the zoo's model 1 -> model 2 flow), one process
    out2 = tmp_path / "retrofit"
    code = main(["finetune", "--model", str(out / "transformer"), "--data", str(imgs), "--output", str(out2),
                 "--adapter-steps", "2", "--full-steps", "1", "--batch-size", "4", "--checkpoint-every", "0",
                 "--no-progress"])
    assert code == 0
    meta2 = json.loads((out2 / "finetune.json").read_text())
    assert meta2["adapters"] == "residual" and meta2["steps"] == 3
    assert json.loads((out2 / "scheduler" / "scheduler_config.json").read_text())["num_train_timesteps"] == 1000
