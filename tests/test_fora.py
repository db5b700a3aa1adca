"""FORA: matches a hand-rolled reference on DiT, reuses per CFG branch, recomputes the
modulation and Hunyuan-DiT's native skips every step, computes in train mode."""
import copy

import pytest
import torch
import torch.nn.functional as F

from helpers import NormOps, model_t, set_family_timesteps
import dit_cache
from dit_cache import FORAConfig
from dit_cache.methods.layer_reuse import LayerReuseMethod
from dit_cache.testing import (
    build_pipeline,
    build_scheduler,
    build_transformer,
    family_of,
    pipeline_inputs,
    run_pipeline,
    transformer_inputs,
)
from reuse_helpers import SubmoduleCounter, predicted_counts


def reference_dit_forward(model, x, t, class_labels, store: dict, refresh: bool):
    """DiTTransformer2DModel.forward written out block by block (ada_norm_zero blocks), with
    FORA: on refresh steps each block's attention and MLP outputs (before the gate) are stored
    in `store`; otherwise the stored ones are used. The modulation always uses the current t."""
    h = model.pos_embed(x)
    for i, block in enumerate(model.transformer_blocks):
        norm_h, gate_msa, shift_mlp, scale_mlp, gate_mlp = block.norm1(h, t, class_labels, hidden_dtype=h.dtype)
        if refresh:
            store[i, "attn"] = block.attn1(norm_h, encoder_hidden_states=None, attention_mask=None)
        h = gate_msa.unsqueeze(1) * store[i, "attn"] + h
        norm_h = block.norm3(h) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        if refresh:
            store[i, "mlp"] = block.ff(norm_h)
        h = gate_mlp.unsqueeze(1) * store[i, "mlp"] + h
    conditioning = model.transformer_blocks[0].norm1.emb(t, class_labels, hidden_dtype=h.dtype)
    shift, scale = model.proj_out_1(F.silu(conditioning)).chunk(2, dim=1)
    h = model.proj_out_2(model.norm_out(h) * (1 + scale[:, None]) + shift[:, None])
    p, c = model.patch_size, model.out_channels
    side = int(h.shape[1] ** 0.5)
    h = torch.einsum("nhwpqc->nchpwq", h.reshape(-1, side, side, p, p, c))
    return h.reshape(-1, c, side * p, side * p)


def _dit_loop(forward, steps: int):
    """DDIM sampling with a (cond, null-class) batch, like DiTPipeline's batched CFG."""
    sched = build_scheduler("ddim", "dit")
    sched.set_timesteps(steps)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 4, 16, 16, generator=g)
    labels = torch.tensor([7, 1000])
    outs = []
    with torch.no_grad():
        for i, t in enumerate(sched.timesteps):
            out = forward(i, torch.cat([x, x]), t.expand(2), labels)
            outs.append(out)
            cond, uncond = out[:, :4].chunk(2)
            x = sched.step(uncond + 4.0 * (cond - uncond), t, x).prev_sample
    return x, outs


def test_reference_without_reuse_is_the_model():
    model = build_transformer("tiny-dit")
    kw = transformer_inputs("tiny-dit", transformer=model)
    with torch.no_grad():
        expected = model(**kw)[0]
        got = reference_dit_forward(model, kw["hidden_states"], kw["timestep"], kw["class_labels"], {}, True)
    assert torch.allclose(got, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("interval", [2, 3])
def test_fora_matches_reference_implementation_on_dit(interval):
    steps = 10
    model = build_transformer("tiny-dit")
    reference = copy.deepcopy(model)
    store: dict = {}
    ref_x, ref_outs = _dit_loop(
        lambda i, x, t, y: reference_dit_forward(reference, x, t, y, store, refresh=i % interval == 0), steps
    )
    dit_cache.patch(model, "fora", interval=interval)
    x, outs = _dit_loop(lambda i, x, t, y: model(x, timestep=t, class_labels=y).sample, steps)
    s = dit_cache.stats(model)
    assert s["pattern"] == "".join("F" if i % interval == 0 else "c" for i in range(steps))
    per_step = [float((a - b).abs().max()) for a, b in zip(outs, ref_outs)]
    assert max(per_step) <= 1e-5, per_step
    assert float((x - ref_x).abs().max()) <= 1e-5
    # and caching did change the result relative to the uncached model
    dit_cache.unpatch(model)
    plain_x, _ = _dit_loop(lambda i, x, t, y: model(x, timestep=t, class_labels=y).sample, steps)
    assert float((plain_x - x).abs().max()) > 1e-3
    n_blocks = len(model.transformer_blocks)
    refresh = sum(i % interval == 0 for i in range(steps))
    assert s["attn_computed"] == s["mlp_computed"] == n_blocks * refresh
    assert s["attn_reused"] == s["mlp_reused"] == n_blocks * (steps - refresh)


def test_modulation_is_recomputed_on_reuse_steps():
    """On a reuse step the attention/MLP outputs are the stored ones, yet the output still
    follows the new timestep (adaLN shift/scale/gate)."""
    model = build_transformer("tiny-dit")
    dit_cache.patch(model, "fora")
    kw = transformer_inputs("tiny-dit", transformer=model)
    with torch.no_grad():
        first = model(**dict(kw, timestep=torch.full_like(kw["timestep"], 800)))[0]
        second = model(**dict(kw, timestep=torch.full_like(kw["timestep"], 600)))[0]
    s = dit_cache.stats(model)
    assert s["pattern"] == "Fc" and s["attn_reused"] == len(model.transformer_blocks)
    assert not torch.equal(first, second)


def test_hunyuan_native_long_skips_run_every_step():
    pipe = build_pipeline("tiny-hunyuan")
    model = pipe.transformer
    calls = []
    handles = [
        b.skip_linear.register_forward_pre_hook(lambda m, a: calls.append(1))
        for b in model.blocks
        if b.skip_linear is not None
    ]
    dit_cache.patch(pipe, "fora")
    steps = 6
    run_pipeline(pipe, pipeline_inputs("tiny-hunyuan", num_inference_steps=steps))
    for h in handles:
        h.remove()
    assert len(calls) == steps * len(handles) > 0
    assert dit_cache.stats(pipe)["attn_reused"] > 0


def _bare_loop(model, name, timesteps, seeds, latents_seed=None):
    """One call per seed per timestep; with `latents_seed` every call shares that seed's
    latents (sequential CFG: the branches differ in conditioning only)."""
    inputs = [transformer_inputs(name, batch=1, seed=s, transformer=model) for s in seeds]
    if latents_seed is not None:
        latents = transformer_inputs(name, batch=1, seed=latents_seed, transformer=model)["hidden_states"]
        inputs = [dict(kw, hidden_states=latents) for kw in inputs]
    outs = []
    with torch.no_grad():
        for t in timesteps:
            for kw in inputs:
                outs.append(model(**dict(kw, timestep=torch.full_like(kw["timestep"], model_t(name, t))))[0])
    return outs


@pytest.mark.parametrize("preset", ["fora", "pab-236"])
def test_sequential_cfg_keeps_one_store_per_branch(name, model, preset):
    sched = build_scheduler(None, family_of(name))
    set_family_timesteps(sched, name, 8)
    ts = [float(t) for t in sched.timesteps]
    cond_only, uncond_only = copy.deepcopy(model), copy.deepcopy(model)
    for m in (model, cond_only, uncond_only):
        dit_cache.patch(m, preset)
    both = _bare_loop(model, name, ts, seeds=(1, 2), latents_seed=1)
    ref_c = _bare_loop(cond_only, name, ts, seeds=(1,), latents_seed=1)
    ref_u = _bare_loop(uncond_only, name, ts, seeds=(2,), latents_seed=1)
    assert all(torch.equal(a, b) for a, b in zip(both[0::2], ref_c))
    assert all(torch.equal(a, b) for a, b in zip(both[1::2], ref_u))
    s = dit_cache.stats(model)
    assert s["cached"]["branches"] == 2 and s["calls"] == 2 * len(ts)
    assert s["attn_reused"] == 2 * dit_cache.stats(cond_only)["attn_reused"] > 0
    assert s.get("reuse_missed", 0) == 0


@pytest.mark.parametrize("preset", ["fora", "pab-469"])
def test_training_mode_always_computes(name, model, preset):
    reference = copy.deepcopy(model).train()
    dit_cache.patch(model, preset)
    model.train()
    ts = [900.0, 700.0, 500.0, 300.0]
    torch.manual_seed(0)  # train mode drops class labels at random
    outs = _bare_loop(model, name, ts, seeds=(1,))
    torch.manual_seed(0)
    refs = _bare_loop(reference, name, ts, seeds=(1,))
    assert all(torch.equal(a, b) for a, b in zip(outs, refs))
    s = dit_cache.stats(model)
    assert s.get("attn_reused", 0) == 0 and s.get("mlp_reused", 0) == 0 and s["cached"]["stored_outputs"] == 0


def test_new_generation_and_reset_drop_stored_outputs():
    pipe = build_pipeline("tiny-dit")
    dit_cache.patch(pipe, "fora")
    inputs = pipeline_inputs("tiny-dit", num_inference_steps=5)
    first = run_pipeline(pipe, inputs)
    assert dit_cache.stats(pipe)["cached"]["stored_outputs"] > 0
    assert torch.equal(run_pipeline(pipe, inputs), first)  # no state carried over
    dit_cache.reset(pipe)
    assert dit_cache.stats(pipe)["cached"]["stored_outputs"] == 0


def test_bare_model_counts_match_prediction(name, model):
    sched = build_scheduler(None, family_of(name))
    set_family_timesteps(sched, name, 7)
    ts = [float(t) for t in sched.timesteps]
    dit_cache.patch(model, "fora-3")
    counter = SubmoduleCounter(model)
    _bare_loop(model, name, ts, seeds=(1,))
    counter.remove()
    predicted = predicted_counts(model, FORAConfig(interval=3), ts)
    for kind, (computed, reused) in predicted.items():
        assert (counter.executed[kind], counter.reused(kind)) == (computed, reused), kind


@pytest.mark.parametrize("bad", [0, -1, None, 2.5, True])
def test_bad_interval_raises(bad):
    with pytest.raises(ValueError, match="interval must be an integer >= 1"):
        FORAConfig(interval=bad)


def test_bad_options_and_names_raise_and_leave_model_untouched():
    model = build_transformer("tiny-dit")
    with pytest.raises(ValueError, match="interval must be an integer >= 1"):
        dit_cache.patch(model, "fora", interval=0)
    with pytest.raises(ValueError, match="Did you mean 'fora-7'"):
        dit_cache.patch(model, "fora-9")
    with pytest.raises(TypeError, match="unknown option"):
        dit_cache.patch(model, "fora", spatial_range=2)
    dit_cache.patch(model, "fora")  # nothing was left behind by the failures
    dit_cache.unpatch(model)



@pytest.mark.parametrize("preset", ["fora", "pab-236"])
def test_a_reusing_site_skips_the_norm_only_it_reads(name, model, preset, monkeypatch):
    """On a reuse call the normalization feeding only that site is not computed (counted at the
    aten op), nor the block's modulation of its output (it gets one token), and every output is
    bit for bit the one of the same method computing it."""
    sched = build_scheduler(None, family_of(name))
    set_family_timesteps(sched, name, 6)
    ts = [float(t) for t in sched.timesteps]
    computing = copy.deepcopy(model)
    dit_cache.patch(model, preset)
    with monkeypatch.context() as m:  # the reference: the same hooks, the norms always run
        m.setattr(LayerReuseMethod, "norm_forward", lambda self, hook, ctx, args, kwargs: hook.run(args, kwargs))
        dit_cache.patch(computing, preset)
    with NormOps() as skipping_ops:
        outs = _bare_loop(model, name, ts, seeds=(1,))
    with NormOps() as computing_ops:
        refs = _bare_loop(computing, name, ts, seeds=(1,))
    assert all(torch.equal(a, b) for a, b in zip(outs, refs))
    s = dit_cache.stats(model)
    reused = s.get("attn_reused", 0) + s.get("mlp_reused", 0)
    assert 0 < s["norms_skipped"] <= reused
    assert computing_ops.n - skipping_ops.n == s["norms_skipped"]
    assert skipping_ops.elementwise < computing_ops.elementwise
    if name == "tiny-dit":  # adaLN-zero blocks: every site has its own norm
        assert s["norms_skipped"] == reused
        # ... and modulates it (`x * (1 + scale) + shift`: a mul and an add) on one token of L
        b, length, dim = _block_input_shape(model, name)
        saved = computing_ops.elementwise - skipping_ops.elementwise
        assert saved == s["norms_skipped"] * 2 * b * (length - 1) * dim


def _block_input_shape(model, name) -> tuple:
    seen = []
    handle = model.transformer_blocks[0].register_forward_pre_hook(lambda m, a: seen.append(tuple(a[0].shape)))
    try:
        with torch.no_grad():
            model(**transformer_inputs(name, batch=1, seed=1, transformer=model))
    finally:
        handle.remove()
    return seen[0]


def test_norms_run_under_autograd():
    """Backward may replay a block: its norms are computed whenever gradients are recorded."""
    model = build_transformer("tiny-dit")
    dit_cache.patch(model, "fora")
    kw = transformer_inputs("tiny-dit", transformer=model)
    kw["hidden_states"].requires_grad_(True)
    for t in (800, 600):
        model(**dict(kw, timestep=torch.full_like(kw["timestep"], t)))[0].sum().backward()
    s = dit_cache.stats(model)
    assert s["attn_reused"] > 0 and s.get("norms_skipped", 0) == 0
