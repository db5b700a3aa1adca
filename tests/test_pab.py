"""PAB: parity with diffusers' `apply_pyramid_attention_broadcast`, the places where the two
differ (tested both ways), VideoSys' MLP broadcast, the decision rule and config errors."""
import copy

import pytest
import torch
from diffusers.hooks import HookRegistry, PyramidAttentionBroadcastConfig, apply_pyramid_attention_broadcast

from helpers import model_t, set_family_timesteps
from diffusers.models.cache_utils import CacheMixin

import dit_cache
from dit_cache.adapters.family import family_spec
from dit_cache import PABConfig
from dit_cache.testing import (
    build_pipeline,
    build_scheduler,
    build_transformer,
    family_of,
    pipeline_inputs,
    run_pipeline,
    transformer_inputs,
)
from reuse_helpers import (
    SubmoduleCounter,
    block_index,
    pab_attention_broadcasts,
    predicted_counts,
    timesteps_of,
    videosys_mlp_action,
)

PAB_PRESETS = ("pab-236", "pab-347", "pab-469")
# DDIM, 16 steps: 937, 875, ..., 62, 0 -> 11 steps inside (100, 800), every residue mod 2..9
STEPS = 16


class TimestepProbe:
    """`current_timestep_callback` for diffusers' PAB on any model: the timestep of the model
    call in progress (read by a forward pre-hook), so it works without pipeline help."""

    def __init__(self, model):
        self.t = None
        self.handle = model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        from dit_cache.runtime.registry import get_adapter

        t = get_adapter(module).timestep(module, args, kwargs)  # FLUX: its timestep / 1000 input x 1000
        self.t = float(t.reshape(-1)[0])

    def __call__(self):
        return self.t


def apply_diffusers_pab(model, config: PABConfig,
                        spatial_ids=(r"^transformer_blocks", r"^single_transformer_blocks", r"^blocks")):
    """diffusers' PAB with the equivalent config. Spatial identifiers anchored at the start of
    the name: diffusers' defaults also match `temporal_transformer_blocks` (Latte)."""
    probe = TimestepProbe(model)
    kwargs = dict(
        spatial_attention_block_skip_range=config.spatial_range,
        temporal_attention_block_skip_range=config.temporal_range,
        cross_attention_block_skip_range=config.cross_range,
        spatial_attention_timestep_skip_range=config.kind_window("spatial"),
        temporal_attention_timestep_skip_range=config.kind_window("temporal"),
        cross_attention_timestep_skip_range=config.kind_window("cross"),
        current_timestep_callback=probe,
    )
    if spatial_ids is not None:
        kwargs["spatial_attention_block_identifiers"] = spatial_ids
    apply_pyramid_attention_broadcast(model, PyramidAttentionBroadcastConfig(**kwargs))
    return probe


def _run(pipe, name, steps=STEPS, **over):
    counter = SubmoduleCounter(pipe.transformer)
    out = run_pipeline(pipe, pipeline_inputs(name, num_inference_steps=steps, **over), return_latents=True)
    counter.remove()
    return out, counter


@pytest.mark.parametrize("preset", PAB_PRESETS)
def test_parity_with_diffusers_pab(name, preset):
    config = dit_cache.presets()[preset]
    # diffusers' PAB keeps one state for every call: under sequential CFG (Wan: cond, then
    # uncond) the uncond call would reuse the cond call's attention. dit-cache keeps one store
    # per branch (test_fora's sequential-CFG test); parity is compared without CFG there.
    over = {} if family_spec(family_of(name)).cfg_batched_kwargs else {"guidance_scale": 1.0}
    theirs = build_pipeline(name)
    apply_diffusers_pab(theirs.transformer, config)
    ref, ref_count = _run(theirs, name, **over)

    ours = build_pipeline(name)
    dit_cache.patch(ours, preset)
    out, count = _run(ours, name, **over)
    s = dit_cache.stats(ours)

    assert float((out - ref).abs().max()) <= 1e-5
    for kind in ("spatial", "temporal", "cross"):
        assert count.executed[kind] == ref_count.executed[kind], kind
        assert count.reused(kind) == ref_count.reused(kind), kind
        assert s.get(f"{kind}_attn_reused", 0) == count.reused(kind), kind
    assert s["attn_reused"] == sum(ref_count.reused(k) for k in ("spatial", "temporal", "cross")) > 0
    # ... and both follow the rule, step by step (one model call per step: batched CFG)
    predicted = predicted_counts(ours.transformer, PABConfig(**s["config"]), timesteps_of(ours, STEPS))
    for kind in ("spatial", "temporal", "cross"):
        assert (count.executed[kind], count.reused(kind)) == predicted[kind], kind


# -- where diffusers' PAB and dit-cache's differ: both behaviours ------------------------------


def _bare_loop(model, name, timesteps, seeds):
    inputs = [transformer_inputs(name, batch=1, seed=s, transformer=model) for s in seeds]
    outs = []
    with torch.no_grad():
        for t in timesteps:
            for kw in inputs:
                outs.append(model(**dict(kw, timestep=torch.full_like(kw["timestep"], model_t(name, t))))[0])
    return outs


def _ddim_timesteps(name, steps):
    sched = build_scheduler(None, family_of(name))
    set_family_timesteps(sched, name, steps)
    return [float(t) for t in sched.timesteps]


def _per_call_prediction(counter, config, timesteps, calls_per_step):
    """diffusers' rule with its per-layer counter advancing on every CALL."""
    executed = {k: 0 for k in ("spatial", "temporal", "cross")}
    for name, kind in counter.kinds.items():
        if kind == "mlp":
            continue
        for call in range(calls_per_step * len(timesteps)):
            t = timesteps[call // calls_per_step]
            if not pab_attention_broadcasts(getattr(config, f"{kind}_range"), config.kind_window(kind), call, t):
                executed[kind] += 1
    return executed


def test_sequential_cfg_diffusers_counts_calls_and_shares_one_store(name):
    """diffusers: the range counts calls and one stored output per layer serves both branches
    (the second branch of a step reuses the first branch's attention). dit-cache: the range
    counts steps and each branch reuses only its own outputs."""
    config = dit_cache.presets()["pab-236"]
    model = build_transformer(name)
    ts = _ddim_timesteps(name, 8)

    theirs = copy.deepcopy(model)
    apply_diffusers_pab(theirs, config)
    counter = SubmoduleCounter(theirs)
    both = _bare_loop(theirs, name, ts, seeds=(1, 2))
    counter.remove()
    for kind, n in _per_call_prediction(counter, config, ts, calls_per_step=2).items():
        assert counter.executed[kind] == n, kind
    alone = copy.deepcopy(model)
    apply_diffusers_pab(alone, config)
    second_alone = _bare_loop(alone, name, ts, seeds=(2,))
    assert not all(torch.allclose(a, b, atol=1e-5) for a, b in zip(both[1::2], second_alone))

    ours = copy.deepcopy(model)
    dit_cache.patch(ours, config)
    counter = SubmoduleCounter(ours)
    both = _bare_loop(ours, name, ts, seeds=(1, 2))
    counter.remove()
    resolved = PABConfig(**dit_cache.stats(ours)["config"])
    predicted = predicted_counts(ours, resolved, ts, calls_per_step=2)
    for kind in ("spatial", "temporal", "cross"):
        assert (counter.executed[kind], counter.reused(kind)) == predicted[kind], kind
    alone = copy.deepcopy(model)
    dit_cache.patch(alone, config)
    assert all(torch.equal(a, b) for a, b in zip(both[1::2], _bare_loop(alone, name, ts, seeds=(2,))))


def test_second_generation_in_the_same_pipeline(name):
    """diffusers' counters restart only when its hooks are reset: the Latte pipeline does that
    (CacheMixin), DiT and Hunyuan-DiT do not, so their second run broadcasts on other steps.
    dit-cache restarts at every generation on all three."""
    config = dit_cache.presets()["pab-347"]
    steps = 8  # 8 % 3 != 0: a continued count is visibly shifted

    over = {} if family_spec(family_of(name)).cfg_batched_kwargs else {"guidance_scale": 1.0}  # see the parity test
    theirs = build_pipeline(name)
    apply_diffusers_pab(theirs.transformer, config)
    first, c1 = _run(theirs, name, steps, **over)
    second, c2 = _run(theirs, name, steps, **over)
    if isinstance(theirs.transformer, CacheMixin):  # the pipeline resets diffusers' hooks (Latte, FLUX, Wan)
        assert torch.equal(first, second) and c1.executed_by_call == c2.executed_by_call
    else:
        assert not torch.allclose(first, second, atol=1e-5) and c1.executed_by_call != c2.executed_by_call
        HookRegistry.check_if_exists_or_initialize(theirs.transformer).reset_stateful_hooks()
        third, c3 = _run(theirs, name, steps, **over)
        assert torch.equal(first, third) and c3.executed_by_call == c1.executed_by_call

    ours = build_pipeline(name)
    dit_cache.patch(ours, config)
    first_o, o1 = _run(ours, name, steps, **over)
    second_o, o2 = _run(ours, name, steps, **over)
    assert torch.equal(first_o, second_o) and o1.executed_by_call == o2.executed_by_call == c1.executed_by_call
    assert torch.equal(first_o, first)  # the first generations agree


def test_train_mode_diffusers_broadcasts_dit_cache_computes():
    name = "tiny-dit"
    config = dit_cache.presets()["pab-236"]
    model = build_transformer(name)
    ts = [700.0, 600.0, 500.0, 400.0]  # all inside (100, 800)
    theirs = copy.deepcopy(model).train()
    apply_diffusers_pab(theirs, config)
    ours = copy.deepcopy(model)
    dit_cache.patch(ours, config)
    ours.train()
    counts = []
    for m in (theirs, ours):
        counter = SubmoduleCounter(m)
        torch.manual_seed(0)
        _bare_loop(m, name, ts, seeds=(1,))
        counter.remove()
        counts.append(counter.reused("spatial"))
    assert counts[0] > 0 and counts[1] == 0


def test_diffusers_default_identifiers_give_latte_temporal_layers_the_spatial_range():
    """Why the parity tests pass `spatial_attention_block_identifiers`: with diffusers'
    defaults `temporal_transformer_blocks.*` matches the spatial pattern "transformer_blocks"."""
    name = "tiny-latte"
    config = PABConfig(spatial_range=2, temporal_range=5, cross_range=None)
    ts = _ddim_timesteps(name, 12)
    model = build_transformer(name)
    counts = {}
    for label, ids in (("default", None), ("anchored", (r"^transformer_blocks",))):
        m = copy.deepcopy(model)
        apply_diffusers_pab(m, config, spatial_ids=ids)
        counter = SubmoduleCounter(m)
        _bare_loop(m, name, ts, seeds=(1,))
        counter.remove()
        counts[label] = counter.executed["temporal"]
    spatial_rule = PABConfig(spatial_range=2, temporal_range=2, cross_range=None)
    assert counts["default"] == predicted_counts(model, spatial_rule, ts)["temporal"][0]
    assert counts["anchored"] == predicted_counts(model, config, ts)["temporal"][0] != counts["default"]
    ours = copy.deepcopy(model)
    dit_cache.patch(ours, config)
    counter = SubmoduleCounter(ours)
    _bare_loop(ours, name, ts, seeds=(1,))
    assert counter.executed["temporal"] == counts["anchored"]


# -- the rule ---------------------------------------------------------------------------------


def test_window_is_open_and_range_counts_steps():
    c = PABConfig()  # spatial 2, temporal 3, cross 6, (100, 800)
    assert not c.broadcasts("spatial", 1, 800.0) and c.broadcasts("spatial", 1, 799.0)
    assert not c.broadcasts("spatial", 1, 100.0) and c.broadcasts("spatial", 1, 101.0)
    assert not c.broadcasts("spatial", 0, 500.0) and not c.broadcasts("spatial", 4, 500.0)
    assert c.broadcasts("temporal", 4, 500.0) and not c.broadcasts("temporal", 6, 500.0)
    assert [c.broadcasts("cross", i, 500.0) for i in range(7)] == [False] + [True] * 5 + [False]
    per_kind = PABConfig(cross_window=(0, 1000))
    assert per_kind.broadcasts("cross", 1, 950.0) and not per_kind.broadcasts("spatial", 1, 950.0)
    assert PABConfig(spatial_range=1).broadcasts("spatial", 1, 500.0) is False
    assert PABConfig(spatial_range=None).broadcasts("spatial", 1, 500.0) is False


def test_absent_kinds_are_turned_off_and_the_pattern_follows_the_model():
    dit = build_transformer("tiny-dit")
    dit_cache.patch(dit, "pab-236")
    config = dit_cache.stats(dit)["config"]
    assert (config["spatial_range"], config["temporal_range"], config["cross_range"]) == (2, None, None)
    sched = build_scheduler("ddim", "dit")
    # DiT: only the spatial range acts, so steps 3 and 5 (odd, in the window) are the cached ones
    assert dit_cache.schedule_pattern(dit, 8, scheduler=sched) == "FcFcFcFF"
    hunyuan = build_transformer("tiny-hunyuan")
    dit_cache.patch(hunyuan, "pab-236")
    assert dit_cache.stats(hunyuan)["config"]["temporal_range"] is None
    assert dit_cache.stats(hunyuan)["config"]["cross_range"] == 6


# -- VideoSys' MLP broadcast ------------------------------------------------------------------

VIDEOSYS_MLP = {t: {"block": [0, 1, 2, 3, 4], "skip_count": 2} for t in (720, 640, 560, 480, 400)}


@pytest.mark.parametrize("scheduler, steps", [("ddim", 50), ("ddim", 25), ("ddpm", 1000)])
def test_mlp_plan_matches_videosys_where_its_timesteps_occur(scheduler, steps):
    sched = build_scheduler(scheduler, "latte")
    sched.set_timesteps(steps)
    all_ts = [int(t) for t in sched.timesteps]
    assert all(t in all_ts for t in VIDEOSYS_MLP)
    plan = PABConfig(mlp=True).plan(all_ts)
    for i, t in enumerate(all_ts):
        for block in range(7):
            ours = plan[i].mlp if block in (0, 1, 2, 3, 4) else None
            assert ours == videosys_mlp_action(all_ts, t, block, VIDEOSYS_MLP), (i, t, block)


def test_mlp_plan_on_schedules_missing_the_timesteps():
    """VideoSys never broadcasts the MLP when the schedule misses its exact timesteps; dit-cache
    anchors on the first step at or below each of them (documented difference)."""
    ts = [875, 750, 625, 500, 375, 250, 125, 0]
    assert all(videosys_mlp_action(ts, t, 0, VIDEOSYS_MLP) is None for t in ts)
    assert [p.mlp for p in PABConfig(mlp=True).plan(ts)] == [None, None, "store", "store", "store", "reuse", "reuse", None]


def test_mlp_broadcast_through_the_latte_pipeline():
    name, steps = "tiny-latte", 25  # DDIM 25: 960, 920, ..., 0 contains 720, 640, 560, 480, 400
    pipe = build_pipeline(name)
    dit_cache.patch(pipe, "pab-236", mlp=True)
    outputs: dict = {}
    handles = [
        block.ff.register_forward_hook(lambda m, a, out, key=key: outputs.setdefault(key, []).append(out))
        for key, block in [(f"s{i}", b) for i, b in enumerate(pipe.transformer.transformer_blocks)]
        + [(f"t{i}", b) for i, b in enumerate(pipe.transformer.temporal_transformer_blocks)]
    ]
    out, counter = _run(pipe, name, steps)
    for h in handles:
        h.remove()
    s = dit_cache.stats(pipe)
    ts = timesteps_of(pipe, steps)
    plan = PABConfig(mlp=True).plan(ts)
    reuse_steps = [i for i, p in enumerate(plan) if p.mlp == "reuse"]
    n_sites = 2 * len(pipe.transformer.transformer_blocks)  # tiny Latte: 4 blocks per stack, all in 0-4
    assert reuse_steps == [7, 9, 11, 13, 15, 16]  # anchors at 6, 8, 10, 12, 14 (t = 720 ... 400)
    assert s["mlp_reused"] == counter.reused("mlp") == n_sites * len(reuse_steps)
    assert counter.executed["mlp"] == n_sites * (steps - len(reuse_steps))
    # a reused MLP output is exactly the one computed at its anchor step
    for i in reuse_steps:
        anchor = max(a for a in range(i) if plan[a].mlp == "store")
        for key, outs in outputs.items():
            assert torch.equal(outs[i], outs[anchor]), (key, i)
    # attention broadcast is unchanged by the MLP option
    for kind in ("spatial", "temporal", "cross"):
        predicted = predicted_counts(pipe.transformer, PABConfig(**s["config"]), ts)
        assert s[f"{kind}_attn_reused"] == predicted[kind][1]
    assert torch.isfinite(out).all()


def test_mlp_blocks_beyond_the_model_are_dropped_or_rejected():
    model = build_transformer("tiny-dit")  # 6 blocks
    dit_cache.patch(model, "pab", mlp=True, mlp_blocks=(4, 5, 6, 20))
    assert dit_cache.stats(model)["config"]["mlp_blocks"] == (4, 5)
    dit_cache.unpatch(model)
    with pytest.raises(ValueError, match="names no block"):
        dit_cache.patch(model, "pab", mlp=True, mlp_blocks=(20,))


# -- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(spatial_range=0), "spatial_range must be an integer >= 1"),
        (dict(temporal_range=-2), "temporal_range must be an integer >= 1"),
        (dict(cross_range=1.5), "cross_range must be an integer >= 1"),
        (dict(spatial_range=True), "spatial_range must be an integer >= 1"),
        (dict(window=(500, 500)), r"empty window \(500, 500\)"),
        (dict(window=(800, 100)), r"reversed window \(800, 100\)"),
        (dict(cross_window=(900, 200)), r"reversed cross_window"),
        (dict(temporal_window=(3, 3)), r"empty temporal_window"),
        (dict(window=None), "window must be a"),
        (dict(window=800), "window must be a \\(low, high\\) pair"),
        (dict(window=("a", 800)), "window must be a \\(low, high\\) pair"),
        (dict(mlp_skip=0), "mlp_skip must be an integer >= 1"),
        (dict(mlp_blocks=(-1,)), "mlp_blocks entry must be an integer >= 0"),
        (dict(mlp_blocks=()), "mlp_blocks must list at least one"),
        (dict(mlp_timesteps=()), "mlp_timesteps must be a non-empty"),
        (dict(mlp="yes"), "mlp must be True or False"),
    ],
)
def test_bad_configs_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PABConfig(**kwargs)


def test_bad_options_through_patch_leave_the_model_untouched():
    model = build_transformer("tiny-latte")
    with pytest.raises(ValueError, match="reversed window"):
        dit_cache.patch(model, "pab-469", window=(800, 100))
    with pytest.raises(ValueError, match="Did you mean 'pab-469'"):
        dit_cache.patch(model, "pab-468")
    assert not hasattr(model.transformer_blocks[0].attn1, "_diffusers_hook")
    dit_cache.patch(model, "pab-469")
    dit_cache.unpatch(model)
