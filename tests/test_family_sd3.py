"""SD3 / SD3.5 (`SD3Transformer2DModel`, joint MMDiT blocks): every method on the tiny config of
the real class, asserted against unpatched references, counters independent of dit-cache (hooks
inside the blocks) and the schedules restated from the methods' rules.

Self-contained: the model, scheduler and pipeline are built here from `SD3Family`'s configs, so
the file runs whether or not the family is registered built-in (dit_cache.testing's model table
is fixed at its import, before this module could register the family)."""
from __future__ import annotations

import copy
import re

import pytest
import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

import dit_cache
from helpers import NormOps
import dit_cache.adapters
from dit_cache import FORAConfig, SkipCacheConfig, StepPlanConfig
from dit_cache.adapters.family import families
from dit_cache.adapters.sd3 import SD3Adapter, SD3Family
from dit_cache.methods.layer_reuse import LayerReuseMethod
from dit_cache.runtime.registry import get_adapter
from dit_cache.testing import reinit_zero_linears

if "sd3" not in {f.name for f in families()}:
    dit_cache.adapters.register_family(SD3Family())
if SD3Transformer2DModel.__name__ not in dit_cache.supported_models():
    dit_cache.register_adapter(SD3Transformer2DModel, SD3Adapter())

SPEC = SD3Family()
TINY = SPEC.model_configs["tiny-sd3"]
U = TINY["transformer"]["num_layers"]  # 6 units, blocks 0-2 dual-attention, block 5 context_pre_only
STEPS = 10
SITE = re.compile(r"^transformer_blocks\.(\d+)\.(attn|attn2|ff|ff_context)$")


# -- builders --------------------------------------------------------------------------------
def build_model(seed: int = 0) -> SD3Transformer2DModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SD3Transformer2DModel(**copy.deepcopy(TINY["transformer"]))
        reinit_zero_linears(model)
    return model.eval().requires_grad_(False)


def scheduler(steps: int = STEPS) -> FlowMatchEulerDiscreteScheduler:
    s = FlowMatchEulerDiscreteScheduler(**SPEC.noise_config)
    s.set_timesteps(steps)
    return s


def timesteps(steps: int = STEPS) -> list[float]:
    return [float(t) for t in scheduler(steps).timesteps]


def sample(model, *, cfg: bool = True, steps: int = STEPS, seed: int = 0):
    """The SD3 pipeline's loop on the bare model: (final latents, every call's output)."""
    g = torch.Generator().manual_seed(seed)
    cond = SPEC.loop_conditioning(model, seed=seed, batch=1, cfg=cfg, frames=None, resolution=128, latent_side=16,
                                  generator=g, device="cpu", dtype=torch.float32)
    noise = torch.randn(1, 16, 16, 16, generator=g)
    outs: list[torch.Tensor] = []
    handle = model.register_forward_hook(lambda m, a, o: outs.append(o[0]))
    try:
        with torch.no_grad():
            x = SPEC.denoise(model, noise, cond, scheduler(steps), cfg_scale=TINY["guidance_scale"] if cfg else None,
                             step_kwargs={})
    finally:
        handle.remove()
    return x, torch.stack(outs)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def snapshot(model) -> dict:
    """Per submodule: instance attributes, children, diffusers hooks, instance `forward`."""
    def hooks(m):
        registry = m.__dict__.get("_diffusers_hook")
        return None if registry is None else tuple(registry.hooks)

    return {n: (set(m.__dict__), tuple(m._modules), hooks(m), "forward" in m.__dict__)
            for n, m in model.named_modules()}


class BlockRuns:
    """Which units really execute in each model call (a pre-hook on `norm1`, inside the block:
    a skipped block never reaches it), what each block's norm1 / norm1_context receive (after any
    substitution and fusion at the entry) and every block call's streams (a hook on the block
    itself: it sees a skipped block's passthrough)."""

    def __init__(self, model):
        self.calls, self.runs, self.entry, self.io = -1, [], [], []
        self.handles = [model.register_forward_pre_hook(self._call)]
        for u, block in enumerate(model.transformer_blocks):
            self.handles += [
                block.norm1.register_forward_pre_hook(self._hook(u, "image")),
                block.norm1_context.register_forward_pre_hook(self._hook(u, "text")),
                block.register_forward_hook(self._block(u), with_kwargs=True),
            ]

    def _call(self, module, args):
        self.calls += 1
        self.runs.append([])

    def _hook(self, unit, stream):
        def hook(module, args):
            if stream == "image":
                self.runs[self.calls].append(unit)
            self.entry.append((self.calls, unit, stream, args[0]))

        return hook

    def _block(self, unit):
        def hook(module, args, kwargs, output):
            self.io.append((self.calls, unit, kwargs, output))

        return hook

    def entry_of(self, call, unit, stream):
        return next(x for c, u, s, x in self.entry if (c, u, s) == (call, unit, stream))

    def remove(self):
        for h in self.handles:
            h.remove()


class SiteRuns:
    """Calls and real executions (a pre-hook on the first Linear inside) of every site."""

    def __init__(self, model):
        self.calls, self.executed, self.handles = {}, {}, []
        for name, mod in model.named_modules():
            m = SITE.match(name)
            if m:
                kind = "mlp" if m.group(2).startswith("ff") else "spatial"
                inner = mod.to_q if kind == "spatial" else mod.net[0]
                self.handles += [mod.register_forward_pre_hook(self._count(self.calls, kind)),
                                 inner.register_forward_pre_hook(self._count(self.executed, kind))]

    @staticmethod
    def _count(counter, kind):
        def hook(module, args):
            counter[kind] = counter.get(kind, 0) + 1

        return hook

    def reused(self, kind):
        return self.calls.get(kind, 0) - self.executed.get(kind, 0)

    def remove(self):
        for h in self.handles:
            h.remove()


def _site_count(model, kind: str) -> int:
    matches = [SITE.match(n) for n, _ in model.named_modules()]
    return sum(1 for m in matches if m and m.group(2).startswith("ff") == (kind == "mlp"))


# -- the adapter's description of the model --------------------------------------------------
def test_adapter_describes_the_joint_blocks():
    model = build_model()
    adapter = get_adapter(model)
    assert isinstance(adapter, SD3Adapter) and len(adapter.units(model)) == U and adapter.hidden_dim(model) == 64
    assert adapter.pairs(model) == [(0, 5), (1, 4), (2, 3)] and adapter.max_shallow(model) == 2
    sites = {s.name: s for s, _ in adapter.reuse_sites(model)}
    assert {n for n, _ in model.named_modules() if SITE.match(n)} == set(sites)
    assert "transformer_blocks.5.ff_context" not in sites and "transformer_blocks.3.attn2" not in sites
    assert sites["transformer_blocks.0.attn"].norm == "transformer_blocks.0.norm1_context.norm"  # dual: shared norm1
    assert sites["transformer_blocks.4.attn"].norm == "transformer_blocks.4.norm1.norm"
    assert sites["transformer_blocks.0.attn2"].norm is None
    assert sites["transformer_blocks.2.ff_context"].norm == "transformer_blocks.2.norm2_context"
    assert SkipCacheConfig().resolve(adapter.defaults, 2, U).shallow == 1
    assert SkipCacheConfig().resolve(adapter.defaults, 11, 24).shallow == 3  # SD3.5-medium: 3 of 24 at each end


def test_real_size_config_builds_on_meta():
    cfg = SPEC.model_configs["sd3.5-medium"]
    with torch.device("meta"):
        model = SD3Transformer2DModel(**cfg["transformer"])
    assert model.inner_dim == 1536 and len(model.transformer_blocks) == 24
    assert [b.use_dual_attention for b in model.transformer_blocks] == [i < 13 for i in range(24)]
    # 2.24 B parameters + the 226 M-entry pos_embed buffer (384^2 x 1536, stored in the checkpoint):
    # 2.47 B, SD3.5-medium's "2.5 B" (its transformer is ~4.9 GB in bf16)
    n, buffers = sum(p.numel() for p in model.parameters()), sum(b.numel() for b in model.buffers())
    assert 2.23e9 < n < 2.26e9 and 2.45e9 < n + buffers < 2.50e9, (n, buffers)


# -- none / unpatch --------------------------------------------------------------------------
@pytest.mark.parametrize("preset", ["none", "skip-dit", "fora", "pab-236", SkipCacheConfig(interval=3, shallow=2)],
                         ids=str)
def test_none_is_the_model_and_unpatch_is_exact(preset):
    model = build_model()
    ref_x, ref_outs = sample(model)
    before, state = snapshot(model), {k: v.clone() for k, v in model.state_dict().items()}
    dit_cache.patch(model, preset)
    x, outs = sample(model)
    if preset == "none":
        assert torch.equal(x, ref_x) and torch.equal(outs, ref_outs)
    else:
        assert not torch.equal(x, ref_x) and torch.isfinite(x).all()
    dit_cache.unpatch(model)
    assert snapshot(model) == before
    after = model.state_dict()
    assert list(after) == list(state) and all(torch.equal(after[k], v) for k, v in state.items())
    x, outs = sample(model)
    assert torch.equal(x, ref_x) and torch.equal(outs, ref_outs)


# -- Skip-Cache ------------------------------------------------------------------------------
def _skip_pattern(config: SkipCacheConfig, ts: list[float]) -> str:
    """Skip-DiT's rule: full iff i % N == 0, or t >= start, or the previous step had t <= close."""
    return "".join("F" if i % config.interval == 0 or t >= config.start or (i and ts[i - 1] <= config.close) else "c"
                   for i, t in enumerate(ts))


@pytest.mark.parametrize("cfg", [True, False], ids=["cfg", "no-cfg"])
@pytest.mark.parametrize("preset, k, config", [
    ("skip-dit", 1, SkipCacheConfig(interval=2, shallow=1, start=1000.0, close=150.0)),  # the SD3 defaults
    (SkipCacheConfig(interval=2, shallow=1), 1, SkipCacheConfig(interval=2, shallow=1, start=1000.0, close=150.0)),
    (SkipCacheConfig(interval=3, shallow=2, start=900.0, close=300.0), 2,
     SkipCacheConfig(interval=3, shallow=2, start=900.0, close=300.0)),
], ids=["skip-dit", "k1", "k2-window"])
def test_skip_cache_runs_the_outer_units_and_reuses_both_streams(preset, k, config, cfg):
    model = build_model()
    ref_x, _ = sample(model, cfg=cfg)
    dit_cache.patch(model, preset)
    runs = BlockRuns(model)
    x, _ = sample(model, cfg=cfg)
    runs.remove()
    s = dit_cache.stats(model)
    pattern = _skip_pattern(config, timesteps())
    assert s["pattern"] == pattern and "c" in pattern and s["calls"] == STEPS
    outer = [*range(k), *range(U - k, U)]
    for call, p in enumerate(pattern):
        assert runs.runs[call] == (list(range(U)) if p == "F" else outer), (call, p)
    cached = pattern.count("c")
    assert s["blocks_skipped"] == cached * (U - 2 * k) and s["block_calls"] == STEPS * U - s["blocks_skipped"]
    # the cache point: on a cached call unit U-k gets both streams of the last full call's unit U-k
    # (the inserted residual adapters are zero-initialised: the fusion adds exactly 0)
    for call, p in enumerate(pattern):
        if p == "c":
            last_full = max(i for i in range(call) if pattern[i] == "F")
            for stream in ("image", "text"):
                assert torch.equal(runs.entry_of(call, U - k, stream), runs.entry_of(last_full, U - k, stream))
    # skipped blocks hand both streams through untouched; the last block's text output is None
    for call, unit, kwargs, out in runs.io:
        if pattern[call] == "c" and k <= unit < U - k:
            assert torch.equal(out[0], kwargs["encoder_hidden_states"]) and torch.equal(out[1], kwargs["hidden_states"])
        if unit == U - 1:
            assert out[0] is None
    batch = 2 if cfg else 1
    assert s["cached"]["branches"] == 1  # batched CFG: one cache for the 2B batch
    assert s["cached"]["cached_bytes"] == batch * (64 + 333) * 64 * 4  # image + text stream, fp32
    assert not torch.equal(x, ref_x) and rel_err(x, ref_x) < 0.2


# -- FORA / PAB ------------------------------------------------------------------------------
def _reuses(config, kind: str, i: int, t: float) -> bool:
    """FORA: every non-refresh step; PAB (diffusers' rule, one call per step): spatial attention
    on steps i != 0 with i % range != 0 inside (low, high); no MLP broadcast by default."""
    if isinstance(config, FORAConfig):
        return i % config.interval != 0
    if kind == "mlp":
        return False
    low, high = config.spatial_window or config.window
    return i != 0 and i % config.spatial_range != 0 and low < t < high


@pytest.mark.parametrize("cfg", [True, False], ids=["cfg", "no-cfg"])
@pytest.mark.parametrize("preset", ["fora", "fora-2", "pab-236", "pab-469", FORAConfig(interval=4)], ids=str)
def test_layer_reuse_counts_match_the_schedule(preset, cfg):
    model = build_model()
    ref_x, _ = sample(model, cfg=cfg)
    dit_cache.patch(model, preset)
    counter = SiteRuns(model)
    x, _ = sample(model, cfg=cfg)
    counter.remove()
    s = dit_cache.stats(model)
    config = type(dit_cache.presets()[preset] if isinstance(preset, str) else preset)(**s["config"])
    ts = timesteps()
    for kind in ("spatial", "mlp"):
        sites = _site_count(model, kind)
        reused = sites * sum(_reuses(config, kind, i, t) for i, t in enumerate(ts))
        computed = sites * STEPS - reused
        assert (counter.executed[kind], counter.reused(kind)) == (computed, reused), kind
        label = "spatial_attn" if kind == "spatial" else "mlp"
        assert (s.get(f"{label}_computed", 0), s.get(f"{label}_reused", 0)) == (computed, reused), kind
    assert s.get("reuse_missed", 0) == 0 and s["attn_reused"] > 0 and s["block_calls"] == STEPS * U
    if isinstance(config, FORAConfig):  # 6 attn + 3 attn2; 6 ff + 5 ff_context
        assert s["cached"]["sites"] == {"spatial": 9, "mlp": 11} and s["cached"]["branches"] == 1
    assert not torch.equal(x, ref_x) and rel_err(x, ref_x) < 0.2


@pytest.mark.parametrize("preset", ["pab-236", "pab-469"])
def test_pab_matches_diffusers_pab(preset):
    """diffusers' `apply_pyramid_attention_broadcast` reaches the same attention modules (attn,
    attn2: Attention under transformer_blocks, none cross) and, with batched CFG (one call per
    step), broadcasts on the same steps."""
    from diffusers.hooks import PyramidAttentionBroadcastConfig, apply_pyramid_attention_broadcast

    config = dit_cache.presets()[preset]
    theirs, ours = build_model(), build_model()
    current = {}
    theirs.register_forward_pre_hook(lambda m, a, kw: current.update(t=float(kw["timestep"][0])), with_kwargs=True)
    apply_pyramid_attention_broadcast(theirs, PyramidAttentionBroadcastConfig(
        spatial_attention_block_skip_range=config.spatial_range,
        spatial_attention_timestep_skip_range=config.window,
        spatial_attention_block_identifiers=(r"^transformer_blocks",),
        current_timestep_callback=lambda: current["t"]))
    dit_cache.patch(ours, preset)
    counters = SiteRuns(theirs), SiteRuns(ours)
    ref_x, ref_outs = sample(theirs)
    x, outs = sample(ours)
    assert counters[0].executed == counters[1].executed and counters[1].reused("spatial") > 0
    assert float((outs - ref_outs).abs().max()) <= 1e-5 and float((x - ref_x).abs().max()) <= 1e-5


@pytest.mark.parametrize("preset", ["fora", "pab-236"])
def test_norm_skip_is_bit_exact(preset, monkeypatch):
    """Skipping the norm only a reusing site reads changes nothing: every output is bit for bit
    that of the same method with the norm skip disabled, and the skips are where predicted
    (attn: one norm per block; attn2: none, its norm is shared; ff / ff_context: their own)."""
    model, computing = build_model(), build_model()
    dit_cache.patch(model, preset)
    with monkeypatch.context() as m:
        m.setattr(LayerReuseMethod, "norm_forward", lambda self, hook, ctx, args, kwargs: hook.run(args, kwargs))
        dit_cache.patch(computing, preset)
    with NormOps() as skipping_ops:
        x, outs = sample(model)
    with NormOps() as computing_ops:
        ref_x, ref_outs = sample(computing)
    assert torch.equal(x, ref_x) and torch.equal(outs, ref_outs)
    s = dit_cache.stats(model)
    reuse_steps = s["attn_reused"] // 9  # 9 attention sites (6 attn + 3 attn2), all reused together
    per_step = U + (U + U - 1 if preset == "fora" else 0)  # attn, then ff and ff_context
    assert s["norms_skipped"] == reuse_steps * per_step > 0
    assert computing_ops.n - skipping_ops.n == s["norms_skipped"]
    assert dit_cache.stats(computing).get("norms_skipped", 0) == 0


# -- per-step plans ----------------------------------------------------------------------------
def test_calibrated_style_plan_with_skip_and_reuse_actions():
    plan = ("F", "S1", "F", "A", "F", "S2", "A", "F", "S1", "F")
    model = build_model()
    dit_cache.patch(model, StepPlanConfig(plan=plan, timesteps=tuple(timesteps())))
    runs = BlockRuns(model)
    x, _ = sample(model)
    runs.remove()
    s = dit_cache.stats(model)
    for call, action in enumerate(plan):
        k = int(action[1:]) if action[0] == "S" else 0
        assert runs.runs[call] == ([*range(k), *range(U - k, U)] if k else list(range(U))), (call, action)
    assert s["attn_reused"] == 2 * 9 and torch.isfinite(x).all()


def test_plan_residual_reuse_copes_with_the_last_blocks_missing_text_stream():
    model = build_model()
    dit_cache.patch(model, StepPlanConfig(plan=("F", "R1") * (STEPS // 2), timesteps=tuple(timesteps())))
    x, _ = sample(model)
    assert torch.isfinite(x).all() and dit_cache.stats(model)["blocks_skipped"] == (STEPS // 2) * (U - 1)


def _calibrate(model, actions):
    return dit_cache.calibrate(model, speedup=1.5, num_inference_steps=STEPS, scheduler=scheduler(), actions=actions,
                               generate=lambda seed: sample(model, seed=seed)[0], progress=False)


def test_calibrated_plan_of_skip_and_reuse_actions_reaches_its_speedup():
    model = build_model()
    cal = _calibrate(model, ["S1", "S2", "A"])
    assert cal.ideal_speedup >= 1.5 and cal.config.model_class == "SD3Transformer2DModel"
    ref_x, _ = sample(model)
    dit_cache.patch(model, cal.config)
    x, _ = sample(model)
    s = dit_cache.stats(model)
    assert s["pattern"] == "".join("F" if a == "F" else "c" for a in cal.config.plan) and "c" in s["pattern"]
    assert torch.isfinite(x).all() and not torch.equal(x, ref_x) and rel_err(x, ref_x) < 0.2


def test_calibration_with_the_default_actions():
    assert _calibrate(build_model(), None).ideal_speedup >= 1.5


# -- adapters file -----------------------------------------------------------------------------
@pytest.mark.parametrize("fusion", [None, "replace"])
def test_adapters_save_load_round_trip(tmp_path, fusion):
    model, target = build_model(), build_model()
    for m, seed in ((model, 1), (target, 2)):
        dit_cache.patch(m, "skip-dit", fusion=fusion)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for n, p in m.named_parameters():
                if "dit_cache_lsc" in n:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    g = torch.Generator().manual_seed(0)
    kw = SPEC.transformer_inputs(TINY["transformer"], batch=2, timestep=500, generator=g, device="cpu",
                                 dtype=torch.float32, transformer=None,
                                 randn=lambda *shape: torch.randn(*shape, generator=g))

    def out(m):
        with torch.no_grad():
            return m(**kw, return_dict=False)[0]

    assert not torch.equal(out(model), out(target))
    path = tmp_path / "adapters.safetensors"
    dit_cache.save_adapters(model, path)
    dit_cache.load_adapters(target, path)
    assert torch.equal(out(model), out(target))
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta, keys = f.metadata(), list(f.keys())
    assert meta["backbone"] == "SD3Transformer2DModel" and len(keys) == 3 * 4  # 3 long skips: norm + linear


# -- the diffusers pipeline --------------------------------------------------------------------
def build_pipeline(seed: int = 0) -> StableDiffusion3Pipeline:
    transformer = build_model(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(**TINY["vae"]).eval().requires_grad_(False)
        parts = SPEC.tiny_pipeline_parts(TINY)
    pipe = StableDiffusion3Pipeline(transformer=transformer, vae=vae, scheduler=scheduler(), **parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(pipe, steps: int = 6, **over) -> torch.Tensor:
    kwargs = SPEC.pipeline_kwargs(labels=[], prompts=["a photo of a red cat sitting on a tree"], resolution=128,
                                  frames=None)
    kwargs.update(num_inference_steps=steps, guidance_scale=TINY["guidance_scale"],
                  generator=torch.Generator().manual_seed(0), **over)
    with torch.no_grad():
        return pipe(**kwargs).images


@pytest.fixture(scope="module")
def pipe():
    return build_pipeline()


def test_pipeline_parts_encode_prompts_like_sd3(pipe):
    ids = pipe.tokenizer(["a red cat"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    assert ids.shape == (1, 77) and int(ids[0, 0]) == 0 and 1 in ids[0].tolist()  # bos ... eos / pad
    body = ids[0, 1 : ids[0].tolist().index(1)]  # between bos and the first eos: no unknown (= eos) token
    assert len(body) >= 3 and pipe.tokenizer.decode(body) == "a red cat"
    emb, neg, pooled, neg_pooled = pipe.encode_prompt("a red cat", None, None, device="cpu")
    assert emb.shape == neg.shape == (1, 77 + 256, 64) and pooled.shape == neg_pooled.shape == (1, 48)
    assert not torch.equal(emb, neg)
    image = run(pipe, steps=2, output_type="pt")  # the tiny VAE decodes SD3's 16 channels
    assert image.shape == (1, 3, 128, 128) and torch.isfinite(image).all()


@pytest.mark.parametrize("preset", ["none", "skip-dit", "fora", "pab-236"])
def test_pipeline_end_to_end(pipe, preset):
    steps = 8
    reference = run(pipe, steps)
    assert reference.shape == (1, 16, 16, 16)
    dit_cache.patch(pipe, preset)
    try:
        out = run(pipe, steps)
        s = dit_cache.stats(pipe)
        assert s["calls"] == steps and s["pattern"] == dit_cache.schedule_pattern(pipe, steps)
    finally:
        dit_cache.unpatch(pipe)
    if preset == "none":
        assert torch.equal(out, reference)
    else:
        assert "c" in s["pattern"] and not torch.equal(out, reference) and rel_err(out, reference) < 0.2
    assert torch.equal(run(pipe, steps), reference)


# -- peers: diffusers' block-chain caches -------------------------------------------------------
def _in_cache_context(model, run):
    """`run()` with every model call inside a cache context, as the bench applies these peers
    (dit_cache/bench/peers/hooks.py): SD3Transformer2DModel is no CacheMixin and the pipeline
    opens none."""
    from diffusers.models.cache_utils import CacheMixin

    contexts = []

    def open_context(module, args):
        contexts.append(CacheMixin.cache_context(model, "cond_uncond"))
        contexts[-1].__enter__()

    def close_context(module, args, output):
        contexts.pop().__exit__(None, None, None)

    handles = [model.register_forward_pre_hook(open_context),
               model.register_forward_hook(close_context, always_call=True)]
    try:
        return run()
    finally:
        for h in handles:
            h.remove()


def test_diffusers_mag_cache_runs_as_a_peer():
    from diffusers import MagCacheConfig, apply_mag_cache

    model = build_model()
    ref_x, _ = sample(model)
    apply_mag_cache(model, MagCacheConfig(mag_ratios=[1.0] * STEPS, num_inference_steps=STEPS, threshold=0.5,
                                          max_skip_steps=2, retention_ratio=0.2))
    x, _ = _in_cache_context(model, lambda: sample(model))
    assert torch.isfinite(x).all() and not torch.equal(x, ref_x)


@pytest.mark.xfail(strict=True, raises=TypeError,
                   reason="diffusers 0.42.1 FirstBlockCache: its tail-block hook computes the text residual "
                          "output[0] - ..., but SD3's last JointTransformerBlock (context_pre_only) returns None there")
def test_diffusers_first_block_cache_runs_as_a_peer():
    from diffusers import FirstBlockCacheConfig, apply_first_block_cache

    model = build_model()
    ref_x, _ = sample(model)
    apply_first_block_cache(model, FirstBlockCacheConfig(threshold=0.5))
    x, _ = _in_cache_context(model, lambda: sample(model))
    assert torch.isfinite(x).all() and not torch.equal(x, ref_x)
