"""Tests for dit_cache.testing: offline model / pipeline builders (fast: a few seconds)."""

from __future__ import annotations

import pytest
import torch

from dit_cache.adapters import family_spec
from dit_cache.runtime.registry import get_adapter

from dit_cache.testing import (
    MODEL_CONFIGS,
    SCHEDULERS,
    TINY_MODELS,
    reinit_zero_linears,
    build_pipeline,
    build_scheduler,
    build_transformer,
    pipeline_inputs,
    run_pipeline,
    transformer_blocks,
    transformer_inputs,
)

REAL_MODELS = ("dit-xl-2", "latte-1", "hunyuan-dit", "dit-s-2", "pixart-sigma", "sd3.5-medium", "flux.1-dev",
               "wan2.1-1.3b")

# Final latents of a 3-step run at batch 1: (C, [F,] h, w) per tiny model.
LATENT_SHAPE = {
    "tiny-dit": (1, 4, 16, 16),
    "tiny-latte": (1, 4, 4, 16, 16),
    "tiny-hunyuan": (1, 4, 16, 16),
    "tiny-pixart": (1, 4, 16, 16),
    "tiny-sd3": (1, 16, 16, 16),
    "tiny-flux": (1, 64, 64),  # packed: 8 x 8 tokens of 2 x 2 x 16 latent values
    "tiny-wan": (1, 16, 3, 16, 16),
}
# Default pipeline_inputs output: DiT decodes (no latent output), the others return latents.
DEFAULT_OUTPUT_SHAPE = {
    "tiny-dit": (1, 3, 128, 128),
    "tiny-latte": (1, 4, 4, 16, 16),
    "tiny-hunyuan": (1, 4, 16, 16),
    "tiny-pixart": (1, 4, 16, 16),
    "tiny-sd3": (1, 16, 16, 16),
    "tiny-flux": (1, 64, 64),
    "tiny-wan": (1, 16, 3, 16, 16),
}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models run fastest on one thread; with 2 threads on a shared 2-vCPU machine,
    OpenMP spin-waiting made 3-step runs 50-100x slower (35 ms -> 2-4 s) in measurements."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_transformers():
    return {name: build_transformer(name) for name in TINY_MODELS}


# --------------------------------------------------------------------------- configs


def test_model_names_and_families():
    assert set(TINY_MODELS) == {"tiny-dit", "tiny-latte", "tiny-hunyuan", "tiny-pixart", "tiny-sd3", "tiny-flux", "tiny-wan"}
    assert set(MODEL_CONFIGS) == set(TINY_MODELS) | set(REAL_MODELS)
    fams = {n: c["family"] for n, c in MODEL_CONFIGS.items()}
    assert fams == {
        "tiny-dit": "dit",
        "dit-xl-2": "dit",
        "dit-s-2": "dit",
        "tiny-latte": "latte",
        "latte-1": "latte",
        "tiny-hunyuan": "hunyuan",
        "hunyuan-dit": "hunyuan",
        "tiny-pixart": "pixart",
        "pixart-sigma": "pixart",
        "tiny-sd3": "sd3",
        "sd3.5-medium": "sd3",
        "tiny-flux": "flux",
        "flux.1-dev": "flux",
        "tiny-wan": "wan",
        "wan2.1-1.3b": "wan",
    }
    assert MODEL_CONFIGS["tiny-hunyuan"]["transformer"]["num_layers"] % 2 == 0


def test_unknown_names_raise():
    with pytest.raises(ValueError, match="unknown model"):
        build_transformer("dit-xxl")
    with pytest.raises(ValueError, match="unknown scheduler"):
        build_scheduler("heun", "tiny-dit")
    for name in REAL_MODELS:
        with pytest.raises(ValueError, match="tiny"):
            build_pipeline(name)


# --------------------------------------------------------------------------- real-size (meta only)


@pytest.mark.parametrize(
    "name, n_blocks, dim, params_m",
    [
        ("dit-xl-2", 28, 1152, 749.8),
        ("latte-1", 56, 1152, 1057.2),  # 28 spatial + 28 temporal
        ("hunyuan-dit", 40, 1408, 1516.5),
    ],
)
def test_real_size_config_on_meta(name, n_blocks, dim, params_m):
    model = build_transformer(name, device="meta")
    assert all(p.device.type == "meta" for p in model.parameters())
    cfg = model.config
    assert cfg.num_attention_heads * cfg.attention_head_dim == dim
    assert cfg.patch_size == 2 and cfg.in_channels == 4
    blocks = transformer_blocks(model)
    assert len(blocks) == n_blocks
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(n_params - params_m) < 1.0, n_params
    if name == "dit-xl-2":
        assert (cfg.num_layers, cfg.sample_size, cfg.out_channels) == (28, 32, 8)
        assert cfg.norm_type == "ada_norm_zero" and cfg.num_embeds_ada_norm == 1000
    elif name == "latte-1":
        assert len(model.transformer_blocks) == len(model.temporal_transformer_blocks) == 28
        assert (cfg.sample_size, cfg.video_length, cfg.caption_channels) == (64, 16, 4096)
        assert cfg.norm_type == "ada_norm_single" and cfg.cross_attention_dim == 1152
    else:
        assert cfg.hidden_size == 1408 and cfg.sample_size == 128
        assert (cfg.text_len, cfg.text_len_t5) == (77, 256)
        assert (cfg.cross_attention_dim, cfg.cross_attention_dim_t5) == (1024, 2048)
        assert model.blocks[0].ff.net[2].in_features == int(1408 * 4.3637)  # 6144
        assert sum(b.skip_linear is not None for b in model.blocks) == 19  # long skips
    # transformer_inputs matches the real config: shape-only forward on the meta device
    inputs = transformer_inputs(name, batch=1, device="meta", transformer=model)
    out = model(**inputs)[0]
    hs = inputs["hidden_states"]
    assert out.shape == (hs.shape[0], 2 * hs.shape[1], *hs.shape[2:])


def test_meta_build_respects_dtype():
    model = build_transformer("dit-xl-2", device="meta", dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


# --------------------------------------------------------------------------- tiny transformers


@pytest.mark.parametrize("name", TINY_MODELS)
def test_transformer_forward(name, tiny_transformers):
    model = tiny_transformers[name]
    assert not model.training
    inputs = transformer_inputs(name, batch=2, transformer=model)
    hs = inputs["hidden_states"]
    with torch.no_grad():
        out = model(**inputs)[0]
    c = model.config
    learned_sigma = bool(c.get("learn_sigma")) or c.get("out_channels") == 2 * c.in_channels
    assert out.shape == ((2, 2 * hs.shape[1], *hs.shape[2:]) if learned_sigma else hs.shape)
    assert torch.isfinite(out).all() and out.std() > 0.1
    if name == "tiny-hunyuan":
        assert inputs["timestep"].is_floating_point()
        assert inputs["image_rotary_emb"][0].shape[0] == (hs.shape[-1] // 2) ** 2
    # the output depends on the input latents and on the timestep
    with torch.no_grad():
        new_x = transformer_inputs(name, batch=2, seed=1)["hidden_states"]
        other = model(**{**inputs, "hidden_states": new_x})[0]
        t_other = model(**transformer_inputs(name, batch=2, timestep=50, transformer=model))[0]
    assert _rel(other, out) > 0.1
    assert _rel(t_other, out) > 1e-3


@pytest.mark.parametrize("name", TINY_MODELS)
def test_transformer_weights_deterministic(name, tiny_transformers):
    state = tiny_transformers[name].state_dict()
    rng = torch.get_rng_state()
    same = build_transformer(name, seed=0).state_dict()
    other = build_transformer(name, seed=1).state_dict()
    assert torch.equal(torch.get_rng_state(), rng), "building must not consume the global RNG"
    assert all(torch.equal(state[k], same[k]) for k in state)
    assert any(not torch.equal(state[k], other[k]) for k in state)
    assert transformer_inputs(name)["hidden_states"].equal(transformer_inputs(name)["hidden_states"])


@pytest.mark.parametrize("name", TINY_MODELS)
def test_no_zero_initialised_linears(name, tiny_transformers):
    model = tiny_transformers[name]
    zero = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and not m.weight.any()]
    assert zero == []
    # the guard itself re-initialises an adaLN-zero style layer
    lin = torch.nn.Linear(4, 8)
    torch.nn.init.zeros_(lin.weight)
    torch.nn.init.zeros_(lin.bias)
    wrapper = torch.nn.Sequential(lin)
    assert reinit_zero_linears(wrapper) == ["0"]
    assert lin.weight.any() and lin.bias.any()


@pytest.mark.parametrize("name", TINY_MODELS)
def test_every_block_matters(name, tiny_transformers):
    """Perturbing or skipping any single block changes the output (no identity blocks)."""
    model = tiny_transformers[name]
    inputs = transformer_inputs(name, batch=1, transformer=model)
    blocks = transformer_blocks(model)
    assert len(blocks) == {"tiny-dit": 6, "tiny-latte": 8}.get(name, 6)
    io = get_adapter(model).block_io
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        ref = model(**inputs)[0]
        for block_name, block in blocks:
            saved = [p.detach().clone() for p in block.parameters()]
            for p in block.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g))
            perturbed = model(**inputs)[0]
            for p, s in zip(block.parameters(), saved):
                p.copy_(s)

            def identity(mod, args, kwargs, out):
                return io.returned(io.read(args, kwargs))  # every stream passed through

            handle = block.register_forward_hook(identity, with_kwargs=True)
            try:
                skipped = model(**inputs)[0]
            finally:
                handle.remove()
            assert _rel(perturbed, ref) > 1e-3, f"{block_name}: weight perturbation has no effect"
            assert _rel(skipped, ref) > 1e-2, f"{block_name}: skipping the block has no effect"
        assert torch.equal(model(**inputs)[0], ref)  # weights restored


def test_bf16_transformer_runs():
    model = build_transformer("tiny-dit", dtype=torch.bfloat16)
    inputs = transformer_inputs("tiny-dit", dtype=torch.bfloat16)
    with torch.no_grad():
        out = model(**inputs)[0]
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


# --------------------------------------------------------------------------- schedulers


def test_scheduler_configs_per_family():
    assert set(SCHEDULERS) == {"ddim", "ddpm", "dpm++", "euler", "flow-euler"}
    flow = {"sd3": 3.0, "flux": None, "wan": 3.0}  # static shift; FLUX shifts by image size
    for family, shift in flow.items():
        c = build_scheduler("flow-euler", family).config
        assert c.num_train_timesteps == 1000 and c.use_dynamic_shifting == (shift is None)
        assert shift is None or c.shift == shift
    for sched in (s for s in SCHEDULERS if s != "flow-euler"):
        for name in ("tiny-dit", "latte", "hunyuan-dit"):
            s = build_scheduler(sched, name)
            assert s.config.num_train_timesteps == 1000
        dit, hy = build_scheduler(sched, "dit").config, build_scheduler(sched, "hunyuan").config
        assert (dit.beta_schedule, dit.beta_start, dit.beta_end) == ("linear", 0.0001, 0.02)
        assert (hy.beta_schedule, hy.beta_start, hy.beta_end) == ("scaled_linear", 0.00085, 0.03)
        assert hy.prediction_type == "v_prediction" and dit.prediction_type == "epsilon"
    assert type(build_scheduler("dpm++", "dit")).__name__ == "DPMSolverMultistepScheduler"
    assert type(build_scheduler("euler", "latte")).__name__ == "EulerDiscreteScheduler"
    assert type(build_scheduler("euler", "dit")).__name__ == "DiTPipelineEulerScheduler"
    assert type(build_scheduler("euler", "dit", raw=True)).__name__ == "EulerDiscreteScheduler"


def test_dit_pipeline_euler_matches_reference_loop():
    """DiTPipeline + adapted Euler == a textbook Euler loop (stock Euler in DiTPipeline is wrong)."""
    name, steps = "tiny-dit", 4
    pipe = build_pipeline(name, scheduler="euler")
    inputs = pipeline_inputs(name, num_inference_steps=steps, batch=2)
    got = run_pipeline(pipe, inputs, return_latents=True)

    sched = build_scheduler("euler", name, raw=True)
    sched.set_timesteps(steps)
    x = torch.randn((2, 4, 16, 16), generator=torch.Generator().manual_seed(0)) * sched.init_noise_sigma
    labels = torch.tensor(inputs["class_labels"])
    labels = torch.cat([labels, torch.full_like(labels, 1000)])
    gs = inputs["guidance_scale"]
    with torch.no_grad():
        for t in sched.timesteps:
            xin = sched.scale_model_input(torch.cat([x, x]), t)
            eps = pipe.transformer(xin, timestep=t[None].expand(4), class_labels=labels).sample[:, :4]
            cond, uncond = eps.chunk(2)
            x = sched.step(uncond + gs * (cond - uncond), t, x).prev_sample
    assert _rel(got, x) < 1e-4

    pipe.scheduler = build_scheduler("euler", name, raw=True)  # the stock scheduler
    assert _rel(run_pipeline(pipe, inputs, return_latents=True), x) > 0.1


# --------------------------------------------------------------------------- pipelines


@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
@pytest.mark.parametrize("name", TINY_MODELS)
def test_pipeline_runs_deterministically(name, scheduler):
    if scheduler not in family_spec(MODEL_CONFIGS[name]["family"]).schedulers:
        with pytest.raises(ValueError, match="samples with"):
            build_pipeline(name, scheduler=scheduler)
        return
    pipe = build_pipeline(name, scheduler=scheduler)
    components = [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]
    assert len(components) >= 2 and not any(m.training for m in components)

    inputs = pipeline_inputs(name, num_inference_steps=3)
    out = run_pipeline(pipe, inputs)
    assert out.shape == DEFAULT_OUTPUT_SHAPE[name]
    a = run_pipeline(pipe, inputs, return_latents=True)  # same dict again: generator is re-seeded
    b = run_pipeline(pipe, pipeline_inputs(name, num_inference_steps=3), return_latents=True)
    c = run_pipeline(pipe, pipeline_inputs(name, num_inference_steps=3, seed=1), return_latents=True)
    assert a.shape == LATENT_SHAPE[name]
    assert torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert _rel(c, a) > 0.05


@pytest.mark.parametrize("name", TINY_MODELS)
def test_pipeline_rebuild_batch_and_decode(name):
    """A rebuilt pipeline reproduces bit-exactly; batch 2 and the VAE decode path work."""
    inputs = pipeline_inputs(name, num_inference_steps=2)
    first = run_pipeline(build_pipeline(name), inputs, return_latents=True)
    pipe = build_pipeline(name)
    again = run_pipeline(pipe, pipeline_inputs(name, num_inference_steps=2), return_latents=True)
    assert torch.equal(first, again)
    other_weights = run_pipeline(
        build_pipeline(name, seed=1), pipeline_inputs(name, num_inference_steps=2), return_latents=True
    )
    assert not torch.equal(first, other_weights)

    lat = run_pipeline(pipe, pipeline_inputs(name, num_inference_steps=2, batch=2), return_latents=True)
    assert lat.shape == (2, *LATENT_SHAPE[name][1:])
    img = run_pipeline(pipe, pipeline_inputs(name, num_inference_steps=2, batch=2, output_type="pt"))
    res = MODEL_CONFIGS[name]["resolution"]
    assert img.shape[-2:] == (res, res) and img.shape[0] == 2
    assert 0.0 <= img.min() and img.max() <= 1.0


def test_dit_labels_and_no_guidance():
    pipe = build_pipeline("tiny-dit")
    assert pipe.get_label_ids(["goldfish", "ostrich"]) == [1, 9]
    inputs = pipeline_inputs("tiny-dit", num_inference_steps=2, guidance_scale=1.0)
    with_cfg = run_pipeline(pipe, pipeline_inputs("tiny-dit", num_inference_steps=2), return_latents=True)
    without = run_pipeline(pipe, inputs, return_latents=True)
    assert without.shape == with_cfg.shape and not torch.equal(without, with_cfg)


def test_family_specs_are_found_by_name_class_and_pipeline():
    from dit_cache.adapters.family import (
        family_spec,
        spec_for_model,
        spec_for_pipeline_class,
        spec_for_transformer_class,
    )

    for name, cfg in MODEL_CONFIGS.items():
        spec = family_spec(cfg["family"])
        model = build_transformer(name, device="meta")
        assert spec_for_model(model) is spec and spec_for_model(type(model)) is spec
        assert spec_for_transformer_class(type(model).__name__) is spec
        assert spec_for_pipeline_class(spec.pipeline_class_name) is spec
        assert cfg["transformer"] == spec.model_configs[name]["transformer"]

    class Subclass(type(model)):
        pass

    assert spec_for_model(Subclass) is spec  # along the MRO
    assert spec_for_pipeline_class("NoSuchPipeline") is None
    assert spec_for_transformer_class(None) is None
    with pytest.raises(ValueError, match="unknown model family"):
        family_spec("auraflow")
    with pytest.raises(ValueError, match="no model family describes"):
        spec_for_model(torch.nn.Linear)
