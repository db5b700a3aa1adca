"""`ditcache convert`: original DiT / Skip-DiT / Latte-skip checkpoints -> diffusers (+ adapters).

The references below are small functional forwards of the ORIGINAL architectures written
from their published descriptions (DiT: patchify conv, MAE 2-D sin-cos positions, sinusoidal
timestep + MLP, label table with a CFG null row, adaLN-zero blocks, GELU-tanh MLP, final
adaLN layer, unpatchify; Skip-DiT: x <- Linear(LN(cat[x, skip])) before each deep block with a
push/pop stack; Latte T2V: PixArt-alpha blocks alternating over space and time). They are
independent of diffusers, so a converted model matching them proves the key mapping.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from diffusers import DiTTransformer2DModel, LatteTransformer3DModel
from safetensors import safe_open
from safetensors.torch import save_file

import dit_cache
from dit_cache.cli import main
from dit_cache.conversion import ADAPTER_FILE, INFO_FILE, ConvertError, read_checkpoint

D, HEADS, DEPTH, P, LATENT, C, CLASSES = 64, 4, 4, 2, 16, 4, 10
FRAMES, CAPTION, TEXT_LEN = 4, 32, 6
TOL = 1e-5
MEASURED: dict[str, float] = {}  # max |diff| per parity test (printed with -s)


# ------------------------------------------------------------------ reference building blocks
def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """[sin(p w_k), cos(p w_k)], w_k = 10000^(-k/(dim/2)) (MAE / DiT / Latte)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    out = pos.double()[:, None] * omega[None]
    return torch.cat([out.sin(), out.cos()], dim=1)


def sincos_2d(dim: int, side: int) -> torch.Tensor:
    """MAE's 2-D table: token (row i, column j) -> [emb(j), emb(i)] (meshgrid(w, h) order)."""
    i, j = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    return torch.cat([sincos_1d(dim // 2, j.flatten()), sincos_1d(dim // 2, i.flatten())], dim=1).float()


def timestep_sinusoid(t: torch.Tensor, freq_shift: int = 0, dim: int = 256) -> torch.Tensor:
    """GLIDE/DiT: cat[cos(t f), sin(t f)], f_k = exp(-ln(10000) k / (half - freq_shift)).
    DiT uses freq_shift=0; diffusers' DiT embedder uses 1 (checked separately)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / (half - freq_shift))
    args = t[:, None].float() * freqs[None]
    return torch.cat([args.cos(), args.sin()], dim=-1)


def lin(sd, name, x):
    return F.linear(x, sd[name + ".weight"], sd.get(name + ".bias"))


def ln(x, eps=1e-6):
    return F.layer_norm(x, x.shape[-1:], eps=eps)


def attention(q, k, v, heads=HEADS):
    b, n, d = q.shape
    q, k, v = (z.reshape(b, z.shape[1], heads, d // heads).transpose(1, 2) for z in (q, k, v))
    a = (q @ k.transpose(-1, -2) / math.sqrt(d // heads)).softmax(-1)
    return (a @ v).transpose(1, 2).reshape(b, n, d)


def skip_fuse(sd, j, x, skip, nested=True):
    """Skip-DiT: Linear_{2D->D}(LayerNorm_{2D, fp32, eps 1e-6}(cat[x, skip])) replaces x."""
    cat = torch.cat([x, skip], dim=-1)
    up = torch.promote_types(cat.dtype, torch.float32)  # at least fp32
    w, b = sd[f"skip_norms.{j}.weight"].to(up), sd[f"skip_norms.{j}.bias"].to(up)
    normed = F.layer_norm(cat.to(up), cat.shape[-1:], w, b, 1e-6)
    return lin(sd, f"skip_linears.{j}" + (".linear" if nested else ""), normed.to(x.dtype))


def unpatchify(h, side, p=P):
    n, _, cp = h.shape
    c = cp // (p * p)
    h = h.reshape(n, side, side, p, p, c)
    return torch.einsum("nhwpqc->nchpwq", h).reshape(n, c, side * p, side * p)


# ------------------------------------------------------------------ DiT / Skip-DiT reference
def dit_block(sd, i, x, c):
    b = f"blocks.{i}."
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = lin(sd, b + "adaLN_modulation.1", F.silu(c)).chunk(6, 1)
    h = ln(x) * (1 + scale_msa[:, None]) + shift_msa[:, None]
    q, k, v = lin(sd, b + "attn.qkv", h).chunk(3, dim=-1)  # timm: qkv -> (3, heads, head_dim)
    x = x + gate_msa[:, None] * lin(sd, b + "attn.proj", attention(q, k, v))
    h = ln(x) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
    return x + gate_mlp[:, None] * lin(sd, b + "mlp.fc2", F.gelu(lin(sd, b + "mlp.fc1", h), approximate="tanh"))


def dit_forward(sd, x, t, y, skips=False, freq_shift=0, nested=True):
    side = x.shape[-1] // P
    h = F.conv2d(x, sd["x_embedder.proj.weight"], sd["x_embedder.proj.bias"], stride=P).flatten(2).transpose(1, 2)
    h = h + sincos_2d(D, side)
    freq = timestep_sinusoid(t, freq_shift).to(h.dtype)
    t_emb = lin(sd, "t_embedder.mlp.2", F.silu(lin(sd, "t_embedder.mlp.0", freq)))
    c = t_emb + sd["y_embedder.embedding_table.weight"][y]  # y == CLASSES is the CFG null class
    stack = []
    for i in range(DEPTH):
        if skips and i >= DEPTH // 2:
            h = skip_fuse(sd, i - DEPTH // 2, h, stack.pop(), nested)
        h = dit_block(sd, i, h, c)
        if skips and i < DEPTH // 2:
            stack.append(h)
    shift, scale = lin(sd, "final_layer.adaLN_modulation.1", F.silu(c)).chunk(2, 1)
    h = lin(sd, "final_layer.linear", ln(h) * (1 + scale[:, None]) + shift[:, None])
    return unpatchify(h, side)


def _rand(g, *shape, scale=1.0):
    fan_in = math.prod(shape[1:]) if len(shape) > 1 else 1
    return torch.randn(*shape, generator=g) * scale / math.sqrt(fan_in)


def _linear(sd, g, name, out_f, in_f, scale=1.0):
    sd[name + ".weight"] = _rand(g, out_f, in_f, scale=scale)
    sd[name + ".bias"] = torch.randn(out_f, generator=g) * 0.1


def _skips(sd, g, n, nested=True):
    for j in range(n):
        sd[f"skip_norms.{j}.weight"] = 1 + 0.2 * torch.randn(2 * D, generator=g)
        sd[f"skip_norms.{j}.bias"] = 0.2 * torch.randn(2 * D, generator=g)
        _linear(sd, g, f"skip_linears.{j}" + (".linear" if nested else ""), D, 2 * D)


def dit_state_dict(seed=0, skips=False, nested=True, out_channels=2 * C):
    """A random DiT (or Skip-DiT) state dict in the facebookresearch/DiT module layout."""
    g = torch.Generator().manual_seed(seed)
    sd = {
        "x_embedder.proj.weight": _rand(g, D, C, P, P),
        "x_embedder.proj.bias": 0.1 * torch.randn(D, generator=g),
        "y_embedder.embedding_table.weight": torch.randn(CLASSES + 1, D, generator=g),
        "pos_embed": sincos_2d(D, LATENT // P)[None],  # fixed, stored as a frozen parameter
    }
    _linear(sd, g, "t_embedder.mlp.0", D, 256, scale=4.0)
    _linear(sd, g, "t_embedder.mlp.2", D, D)
    for i in range(DEPTH):
        b = f"blocks.{i}."
        _linear(sd, g, b + "attn.qkv", 3 * D, D)
        _linear(sd, g, b + "attn.proj", D, D)
        _linear(sd, g, b + "mlp.fc1", 4 * D, D)
        _linear(sd, g, b + "mlp.fc2", D, 4 * D)
        _linear(sd, g, b + "adaLN_modulation.1", 6 * D, D, scale=0.5)
    _linear(sd, g, "final_layer.adaLN_modulation.1", 2 * D, D, scale=0.5)
    _linear(sd, g, "final_layer.linear", P * P * out_channels, D)
    if skips:
        _skips(sd, g, DEPTH // 2, nested)
    return sd


def dit_inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, C, LATENT, LATENT, generator=g)
    return x, torch.tensor([999, 500, 3]), torch.tensor([1, 7, CLASSES])


# ------------------------------------------------------------------ Latte T2V (skip) reference
def latte_norm(sd, name, x):  # LayerNorm(eps 1e-6), affine only if the checkpoint has weights
    return F.layer_norm(x, x.shape[-1:], sd.get(name + ".weight"), sd.get(name + ".bias"), 1e-6)


def latte_block(sd, b, x, t6, y=None):
    mods = (sd[b + "scale_shift_table"][None] + t6.reshape(-1, 6, D)).chunk(6, dim=1)
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods  # each (N, 1, D)
    h = latte_norm(sd, b + "norm1", x) * (1 + scale_msa) + shift_msa
    a = b + "attn1."
    x = x + gate_msa * lin(sd, a + "to_out.0", attention(lin(sd, a + "to_q", h), lin(sd, a + "to_k", h), lin(sd, a + "to_v", h)))
    if y is not None:  # PixArt cross-attention: no norm, no gate
        a = b + "attn2."
        x = x + lin(sd, a + "to_out.0", attention(lin(sd, a + "to_q", x), lin(sd, a + "to_k", y), lin(sd, a + "to_v", y)))
    # FF norm: "norm2" in the spatial block, "norm3" in the reference temporal block (BasicTransformerBlock_)
    h = latte_norm(sd, b + ("norm2" if y is not None else "norm3"), x) * (1 + scale_mlp) + shift_mlp
    return x + gate_mlp * lin(sd, b + "ff.net.2", F.gelu(lin(sd, b + "ff.net.0.proj", h), approximate="tanh"))


def latte_forward(sd, x, t, text):
    bsz, cin, frames, hgt, wid = x.shape
    side = hgt // P
    h = x.permute(0, 2, 1, 3, 4).reshape(bsz * frames, cin, hgt, wid)  # (b f) c h w
    h = F.conv2d(h, sd["pos_embed.proj.weight"], sd["pos_embed.proj.bias"], stride=P).flatten(2).transpose(1, 2)
    h = h + sincos_2d(D, side)
    tokens = h.shape[1]
    e = "adaln_single.emb.timestep_embedder."
    t_emb = lin(sd, e + "linear_2", F.silu(lin(sd, e + "linear_1", timestep_sinusoid(t).to(h.dtype))))
    t6 = lin(sd, "adaln_single.linear", F.silu(t_emb))
    y = lin(sd, "caption_projection.linear_2", F.gelu(lin(sd, "caption_projection.linear_1", text), approximate="tanh"))
    y_spatial, t_spatial, t_temporal = y.repeat_interleave(frames, 0), t6.repeat_interleave(frames, 0), t6.repeat_interleave(tokens, 0)
    stack = []
    for i in range(DEPTH):
        if i >= DEPTH // 2:  # Skip-DiT T2V: fuse before the spatial block of pair i
            h = skip_fuse(sd, i - DEPTH // 2, h, stack.pop())
        h = latte_block(sd, f"transformer_blocks.{i}.", h, t_spatial, y_spatial)
        h = h.reshape(bsz, frames, tokens, D).permute(0, 2, 1, 3).reshape(bsz * tokens, frames, D)  # (b t) f d
        if i == 0:
            h = h + sincos_1d(D, torch.arange(frames)).float()[None]
        h = latte_block(sd, f"temporal_transformer_blocks.{i}.", h, t_temporal)
        h = h.reshape(bsz, tokens, frames, D).permute(0, 2, 1, 3).reshape(bsz * frames, tokens, D)
        if i < DEPTH // 2:
            stack.append(h)
    shift, scale = (sd["scale_shift_table"][None] + t_emb.repeat_interleave(frames, 0)[:, None]).chunk(2, dim=1)
    h = lin(sd, "proj_out", ln(h) * (1 + scale) + shift)
    out = unpatchify(h, side)
    return out.reshape(bsz, frames, *out.shape[1:]).permute(0, 2, 1, 3, 4)


def latte_state_dict(seed=0, pos_table=False, affine=False):
    """A random Latte T2V skip state dict in the Skip-DiT `LatteT2V_skip` layout."""
    g = torch.Generator().manual_seed(seed)
    sd = {
        "pos_embed.proj.weight": _rand(g, D, C, P, P),
        "pos_embed.proj.bias": 0.1 * torch.randn(D, generator=g),
        "scale_shift_table": torch.randn(2, D, generator=g) / math.sqrt(D),
        "caption_projection.y_embedding": torch.randn(12, CAPTION, generator=g),  # unused buffer
    }
    if pos_table:
        sd["pos_embed.pos_embed"] = sincos_2d(D, LATENT // P)[None]
    _linear(sd, g, "adaln_single.emb.timestep_embedder.linear_1", D, 256, scale=4.0)
    _linear(sd, g, "adaln_single.emb.timestep_embedder.linear_2", D, D)
    _linear(sd, g, "adaln_single.linear", 6 * D, D, scale=0.5)
    _linear(sd, g, "caption_projection.linear_1", D, CAPTION)
    _linear(sd, g, "caption_projection.linear_2", D, D)
    _linear(sd, g, "proj_out", P * P * 2 * C, D)
    for i in range(DEPTH):
        for b in (f"transformer_blocks.{i}.", f"temporal_transformer_blocks.{i}."):
            sd[b + "scale_shift_table"] = torch.randn(6, D, generator=g) / math.sqrt(D)
            attns = ("attn1", "attn2") if b.startswith("transformer") else ("attn1",)
            for a in attns:
                for proj in ("to_q", "to_k", "to_v", "to_out.0"):
                    _linear(sd, g, f"{b}{a}.{proj}", D, D)
            _linear(sd, g, b + "ff.net.0.proj", 4 * D, D)
            _linear(sd, g, b + "ff.net.2", D, 4 * D)
            if affine:  # Latte-1 has none (norm_elementwise_affine=False); a variant that has them
                for norm in ("norm1", "norm2" if b.startswith("transformer") else "norm3"):
                    sd[f"{b}{norm}.weight"] = 1 + 0.2 * torch.randn(D, generator=g)
                    sd[f"{b}{norm}.bias"] = 0.2 * torch.randn(D, generator=g)
    _skips(sd, g, DEPTH // 2)
    return sd


def latte_inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, C, FRAMES, LATENT, LATENT, generator=g)
    return x, torch.tensor([999, 250]), torch.randn(2, TEXT_LEN, CAPTION, generator=g)


# ------------------------------------------------------------------ helpers
def _max_diff(a, b):
    return (a - b).abs().max().item()


def _only(tmp_path, *names):
    """Nothing but `names` in tmp_path: no OUT, no temporary or backup directory left behind."""
    assert sorted(os.listdir(tmp_path)) == sorted(names)


def _run_dit(model, inputs):
    x, t, y = inputs
    with torch.no_grad():
        return model(x, timestep=t, class_labels=y).sample


def _double(sd, inputs):
    """The state dict and float inputs in float64: the mapping must then agree to ~1e-12."""
    return {k: v.double() for k, v in sd.items()}, tuple(v.double() if v.is_floating_point() else v for v in inputs)


# ------------------------------------------------------------------ parity
def test_dit_parity_ema_subdict_and_timestep_embedding(tmp_path):
    sd = dit_state_dict(seed=0)
    other = dit_state_dict(seed=5)  # "model" weights: must NOT be picked over "ema"
    ns = argparse.Namespace(model="DiT-S/2", image_size=128)  # DiT training checkpoints carry args
    torch.save({"model": other, "ema": sd, "opt": {"param_groups": [{"lr": 1e-4}]}, "args": ns}, tmp_path / "ck.pt")
    result = dit_cache.convert(tmp_path / "ck.pt", tmp_path / "out", "dit", config={"num_heads": HEADS})
    assert result.checkpoint_key == "ema" and result.adapters is None
    assert sorted(os.listdir(tmp_path / "out")) == ["config.json", "diffusion_pytorch_model.safetensors", INFO_FILE]
    info = json.loads((tmp_path / "out" / INFO_FILE).read_text())
    assert info["layout"] == "dit" and info["config"]["num_layers"] == DEPTH and info["ignored_keys"] == ["pos_embed"]
    cfg = info["config"]
    assert (cfg["num_attention_heads"], cfg["attention_head_dim"], cfg["out_channels"]) == (HEADS, D // HEADS, 2 * C)
    assert (cfg["sample_size"], cfg["patch_size"], cfg["num_embeds_ada_norm"]) == (LATENT, P, CLASSES)

    model = DiTTransformer2DModel.from_pretrained(tmp_path / "out").eval()
    inputs = dit_inputs()
    # Stock diffusers: exactly DiT except for its timestep sinusoid (k/127 instead of k/128).
    stock = _run_dit(model, inputs)
    MEASURED["dit stock vs reference with diffusers' sinusoid"] = d_stock = _max_diff(stock, dit_forward(sd, *inputs, freq_shift=1))
    assert d_stock < TOL
    MEASURED["dit stock vs original DiT"] = _max_diff(stock, dit_forward(sd, *inputs))
    dit_cache.use_original_dit_timestep_embedding(model)
    out = _run_dit(model, inputs)
    ref = dit_forward(sd, *inputs)
    MEASURED["dit"] = d = _max_diff(out, ref)
    assert d < TOL, d
    assert ref.abs().max() > 0.5  # a meaningful scale: the tolerance is not vacuous
    sd64, inputs64 = _double(sd, inputs)
    MEASURED["dit, float64"] = d = _max_diff(_run_dit(model.double(), inputs64), dit_forward(sd64, *inputs64))
    assert d < 1e-10, d


@pytest.mark.parametrize("nested", [True, False], ids=["skip_linears.j.linear", "skip_linears.j"])
def test_skip_dit_parity_with_adapters(tmp_path, nested):
    sd = dit_state_dict(seed=2, skips=True, nested=nested)
    save_file(sd, str(tmp_path / "skip.safetensors"))
    result = dit_cache.convert(tmp_path / "skip.safetensors", tmp_path / "out", "skip-dit", config=f"num_heads={HEADS}")
    assert result.adapters == tmp_path / "out" / ADAPTER_FILE
    with safe_open(str(result.adapters), "pt") as f:
        assert f.metadata()["fusion"] == "replace" and f.metadata()["backbone"] == "DiTTransformer2DModel"
        assert sorted(f.keys()) == sorted(f"lsc.{u}.{m}.{p}" for u in (2, 3) for m in ("norm", "linear") for p in ("weight", "bias"))

    model = DiTTransformer2DModel.from_pretrained(tmp_path / "out").eval()
    assert not any("skip" in k or "lsc" in k for k in model.state_dict())  # adapters live only in the adapter file
    dit_cache.use_original_dit_timestep_embedding(model)
    dit_cache.patch(model, "skip-dit", fusion="replace", interval=1)  # every step full: no caching
    dit_cache.load_adapters(model, result.adapters)
    inputs = dit_inputs()
    out = _run_dit(model, inputs)
    ref = dit_forward(sd, *inputs, skips=True, nested=nested)
    MEASURED[f"skip-dit ({'nested' if nested else 'flat'} skip_linears)"] = d = _max_diff(out, ref)
    assert d < TOL, d
    sd64, inputs64 = _double(sd, inputs)
    ref64 = dit_forward(sd64, *inputs64, skips=True, nested=nested)
    MEASURED[f"skip-dit ({'nested' if nested else 'flat'}), float64"] = d = _max_diff(_run_dit(model.double(), inputs64), ref64)
    assert d < 1e-10, d
    assert _max_diff(ref, dit_forward(sd, *inputs, skips=False)) > 0.1  # the long skips matter


@pytest.mark.parametrize("pos_table,affine", [(False, False), (True, False), (False, True)], ids=["plain", "pos-table", "affine-norms"])
def test_latte_skip_parity_with_adapters(tmp_path, pos_table, affine):
    sd = latte_state_dict(seed=3, pos_table=pos_table, affine=affine)
    torch.save({"ema": sd}, tmp_path / "Latte-skip.pt")
    overrides = [f"num_heads={HEADS}", f"video_length={FRAMES}"] + ([] if pos_table else [f"sample_size={LATENT}"])
    result = dit_cache.convert(tmp_path / "Latte-skip.pt", tmp_path / "out", "latte-skip", config=overrides)
    assert "caption_projection.y_embedding" in result.ignored_keys
    model = LatteTransformer3DModel.from_pretrained(tmp_path / "out").eval()
    assert model.config.norm_elementwise_affine == affine
    assert (model.config.sample_size, model.config.video_length, model.config.caption_channels) == (LATENT, FRAMES, CAPTION)
    dit_cache.patch(model, "skip-dit", fusion="replace", interval=1)
    dit_cache.load_adapters(model, result.adapters)
    x, t, text = inputs = latte_inputs()
    with torch.no_grad():
        out = model(x, timestep=t, encoder_hidden_states=text).sample
    ref = latte_forward(sd, *inputs)
    label = "affine norms" if affine else ("with pos table" if pos_table else "plain")
    MEASURED[f"latte-skip ({label})"] = d = _max_diff(out, ref)
    assert d < TOL, d
    assert ref.abs().max() > 0.5
    sd64, (x, t, text) = _double(sd, inputs)
    with torch.no_grad():
        out64 = model.double()(x, timestep=t, encoder_hidden_states=text).sample
    MEASURED[f"latte-skip ({label}), float64"] = d = _max_diff(out64, latte_forward(sd64, x, t, text))
    assert d < 1e-10, d


def test_converted_skip_dit_runs_skip_cache(tmp_path):
    """The point of the conversion: the released model under Skip-Cache (cached steps skip blocks)."""
    save_file(dit_state_dict(seed=4, skips=True), str(tmp_path / "s.safetensors"))
    dit_cache.convert(tmp_path / "s.safetensors", tmp_path / "out", "skip-dit", config={"num_heads": HEADS})
    model = DiTTransformer2DModel.from_pretrained(tmp_path / "out").eval()
    dit_cache.patch(model, "skip-dit", fusion="replace", interval=2, shallow=1)
    dit_cache.load_adapters(model, tmp_path / "out" / ADAPTER_FILE)
    x, _, y = dit_inputs()
    for t in (900, 800, 700, 600):
        out = _run_dit(model, (x, torch.full((3,), t), y))
        assert torch.isfinite(out).all()
    s = dit_cache.stats(model)
    assert s["pattern"] == "FcFc" and s["blocks_skipped"] > 0


# ------------------------------------------------------------------ bad checkpoints write nothing
def _convert_fails(tmp_path, src, layout="dit", match="", **kw):
    kw.setdefault("config", {"num_heads": HEADS})
    with pytest.raises(ConvertError, match=match) as info:
        dit_cache.convert(src, tmp_path / "out", layout, **kw)
    return str(info.value)


def test_missing_key_lists_it_and_writes_nothing(tmp_path):
    sd = dit_state_dict()
    del sd["blocks.2.mlp.fc1.weight"], sd["blocks.3.mlp.fc1.weight"]
    save_file(sd, str(tmp_path / "ck.safetensors"))
    msg = _convert_fails(tmp_path, tmp_path / "ck.safetensors", match="missing 2 key")
    assert "blocks.{2-3}.mlp.fc1.weight" in msg
    _only(tmp_path, "ck.safetensors")


def test_wrong_shape_lists_it_and_writes_nothing(tmp_path):
    sd = dit_state_dict()
    sd["blocks.1.attn.proj.weight"] = torch.zeros(D, D + 1)
    torch.save(sd, tmp_path / "ck.pth")
    msg = _convert_fails(tmp_path, tmp_path / "ck.pth", match="wrong shape")
    assert f"({D}, {D + 1}) (expected ({D}, {D}))" in msg and "blocks.{1}.attn.proj.weight" in msg
    _only(tmp_path, "ck.pth")


def test_unexpected_keys_and_layout_hints(tmp_path):
    save_file(dit_state_dict(skips=True), str(tmp_path / "skip.safetensors"))
    msg = _convert_fails(tmp_path, tmp_path / "skip.safetensors", "dit", match="unexpected 8 key")
    assert "skip_norms.{0-1}.weight" in msg and "--from skip-dit" in msg
    save_file(dit_state_dict(), str(tmp_path / "plain.safetensors"))
    msg = _convert_fails(tmp_path, tmp_path / "plain.safetensors", "skip-dit", match="missing 8 key")
    assert "--from dit" in msg
    _convert_fails(tmp_path, tmp_path / "plain.safetensors", "latte-skip", match="does not look like the 'latte-skip' layout")
    _only(tmp_path, "skip.safetensors", "plain.safetensors")


def test_not_a_state_dict(tmp_path):
    torch.save([torch.ones(2)], tmp_path / "list.pt")
    _convert_fails(tmp_path, tmp_path / "list.pt", match="does not hold a state dict")
    torch.save({"step": 3, "weights": torch.ones(2)}, tmp_path / "mixed.pt")
    _convert_fails(tmp_path, tmp_path / "mixed.pt", match="is not a state dict")
    (tmp_path / "junk.pt").write_bytes(b"definitely not a checkpoint")
    _convert_fails(tmp_path, tmp_path / "junk.pt", match="cannot be read")
    _convert_fails(tmp_path, tmp_path / "absent.pt", match="no such file")
    _only(tmp_path, "list.pt", "mixed.pt", "junk.pt")


class NeedsCode:  # pickled by reference: loading it would import and run this module's code
    def __reduce__(self):
        return (print, ("this ran at load time",))


class RunsShell:  # os.system: torch >= 2.13 words this refusal "unsupported GLOBAL posix.system"
    def __reduce__(self):
        return (os.system, ("echo this ran at load time",))


def test_pickle_needing_code_is_refused(tmp_path, capsys):
    torch.save({"ema": dit_state_dict(), "hook": NeedsCode()}, tmp_path / "evil.pt")
    msg = _convert_fails(tmp_path, tmp_path / "evil.pt", match="pickle that needs code")
    assert "(print)" in msg and "this ran" not in capsys.readouterr().out
    assert "weights_only=False" not in msg
    _only(tmp_path, "evil.pt")


def test_os_system_pickle_names_the_global_and_never_suggests_unsafe_loading(tmp_path, capfd):
    torch.save({"ema": dit_state_dict(), "hook": RunsShell()}, tmp_path / "shell.pt")
    msg = _convert_fails(tmp_path, tmp_path / "shell.pt", match="pickle that needs code")
    assert "posix.system" in msg and "os.system" in msg
    assert "weights_only" not in msg.replace("only plain tensors", "") and "trusted source" not in msg
    assert "this ran" not in capfd.readouterr().out
    assert main(["convert", str(tmp_path / "shell.pt"), str(tmp_path / "out"), "--from", "dit"]) == 2
    out = capfd.readouterr().out
    assert out.count("\n") == 1 and "posix.system" in out and "weights_only=False" not in out
    _only(tmp_path, "shell.pt")


def test_integer_tensor_is_a_convert_error_naming_it_and_its_dtype(tmp_path, capsys):
    sd = dit_state_dict()
    sd["blocks.1.attn.qkv.weight"] = sd["blocks.1.attn.qkv.weight"].to(torch.int32)
    save_file(sd, str(tmp_path / "int.safetensors"))
    msg = _convert_fails(tmp_path, tmp_path / "int.safetensors", match="not floating point")
    assert "blocks.{1}.attn.qkv.weight (int32)" in msg
    assert main(["convert", str(tmp_path / "int.safetensors"), str(tmp_path / "out"), "--from", "dit",
                 "--config", "num_heads=4"]) == 2
    assert "int32" in capsys.readouterr().out
    _only(tmp_path, "int.safetensors")


@pytest.mark.parametrize("layout, key, value", [
    ("dit", "blocks.2.mlp.fc1.weight", float("nan")),
    ("dit", "t_embedder.mlp.0.bias", float("inf")),
    ("dit", "final_layer.linear.weight", float("-inf")),
    ("skip-dit", "skip_linears.1.linear.weight", float("nan")),
    ("skip-dit", "skip_norms.0.bias", float("nan")),
])
def test_nonfinite_weights_are_refused_by_name(tmp_path, capsys, layout, key, value):
    sd = dit_state_dict(skips=layout == "skip-dit")
    assert key in sd
    sd[key] = sd[key].clone()
    sd[key].view(-1)[3] = value
    save_file(sd, str(tmp_path / "ck.safetensors"))
    msg = _convert_fails(tmp_path, tmp_path / "ck.safetensors", layout, match="NaN or infinite values")
    shown = key.replace(".1.", ".{1}.").replace(".2.", ".{2}.").replace(".0.", ".{0}.")
    assert shown in msg and "--allow-nonfinite" in msg
    _only(tmp_path, "ck.safetensors")
    argv = ["convert", str(tmp_path / "ck.safetensors"), str(tmp_path / "out"), "--from", layout, "--config", "num_heads=4"]
    assert main(argv) == 2 and shown in capsys.readouterr().out
    assert main(argv + ["--allow-nonfinite"]) == 0  # the opt-out converts it as it is
    capsys.readouterr()


def test_cast_overflowing_to_infinity_is_refused(tmp_path):
    sd = dit_state_dict()
    sd["blocks.0.mlp.fc2.bias"] = sd["blocks.0.mlp.fc2.bias"].clone()
    sd["blocks.0.mlp.fc2.bias"][0] = 1e6  # finite in float32, inf in float16
    save_file(sd, str(tmp_path / "ck.safetensors"))
    msg = _convert_fails(tmp_path, tmp_path / "ck.safetensors", match="casting to float16 overflows", dtype="float16")
    assert "ff.net.2.bias" in msg or "fc2" in msg
    dit_cache.convert(tmp_path / "ck.safetensors", tmp_path / "out", "dit", config={"num_heads": HEADS}, dtype="bfloat16")


def test_heads_and_config_errors(tmp_path):
    save_file(dit_state_dict(), str(tmp_path / "ck.safetensors"))
    src = tmp_path / "ck.safetensors"
    _convert_fails(tmp_path, src, match="num_heads=H", config=None)  # width 64 is not in DiT's table
    _convert_fails(tmp_path, src, match="does not divide", config={"num_heads": 5})
    _convert_fails(tmp_path, src, match="unknown --config", config={"num_head": 4})
    _convert_fails(tmp_path, src, match="expected a positive int", config={"num_heads": "4"})
    _convert_fails(tmp_path, src, match="contradicts pos_embed", config={"num_heads": 4, "sample_size": 32})
    _convert_fails(tmp_path, src, match="expected a JSON file", config="num_heads")
    sd = dit_state_dict()
    sd["pos_embed"] = torch.randn_like(sd["pos_embed"])  # learned, not sin-cos: not representable
    save_file(sd, str(tmp_path / "learned.safetensors"))
    _convert_fails(tmp_path, tmp_path / "learned.safetensors", match="not the fixed 2-D sin-cos")
    _only(tmp_path, "ck.safetensors", "learned.safetensors")


def test_output_directory_rules(tmp_path, monkeypatch):
    save_file(dit_state_dict(skips=True), str(tmp_path / "ck.safetensors"))
    src, out = tmp_path / "ck.safetensors", tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    _convert_fails(tmp_path, src, "skip-dit", match="already exists")
    _convert_fails(tmp_path, src, "skip-dit", match="not written by ditcache convert", overwrite=True)
    assert (out / "precious.txt").read_text() == "keep me"
    (out / "precious.txt").unlink()
    out.rmdir()

    # a failure after the temporary directory exists (here: saving the adapters) leaves nothing
    import dit_cache.runtime.adapter_io as adapter_io

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(adapter_io, "save_adapters", boom)
    with pytest.raises(OSError, match="disk full"):
        dit_cache.convert(src, out, "skip-dit", config={"num_heads": HEADS})
    _only(tmp_path, "ck.safetensors")
    monkeypatch.undo()

    dit_cache.convert(src, out, "skip-dit", config={"num_heads": HEADS})
    first = (out / ADAPTER_FILE).read_bytes()
    save_file(dit_state_dict(seed=9, skips=True), str(src))
    dit_cache.convert(src, out, "skip-dit", config={"num_heads": HEADS}, overwrite=True)  # replaces own output
    assert (out / ADAPTER_FILE).read_bytes() != first
    _only(tmp_path, "ck.safetensors", "out")
    assert oct(os.stat(out).st_mode & 0o777) != oct(0o700)  # not mkdtemp's private mode


def test_read_checkpoint_prefixes_and_key(tmp_path):
    torch.save({"state_dict": {"module.a": torch.ones(1), "module.b": torch.zeros(1)}}, tmp_path / "ddp.pt")
    sd, key = read_checkpoint(tmp_path / "ddp.pt")
    assert sorted(sd) == ["a", "b"] and key == "state_dict"
    torch.save({"weights": {"x": {"a": torch.ones(1)}}}, tmp_path / "nested.pt")
    assert read_checkpoint(tmp_path / "nested.pt", "weights.x")[0].keys() == {"a"}
    with pytest.raises(ConvertError, match="no entry 'weights.y'"):
        read_checkpoint(tmp_path / "nested.pt", "weights.y")


def test_dtype_cast(tmp_path):
    save_file(dit_state_dict(), str(tmp_path / "ck.safetensors"))
    dit_cache.convert(tmp_path / "ck.safetensors", tmp_path / "out", "dit", config={"num_heads": HEADS}, dtype="bfloat16")
    with safe_open(str(tmp_path / "out" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}


# ------------------------------------------------------------------ CLI
def test_cli_end_to_end(tmp_path, capsys):
    save_file(dit_state_dict(skips=True), str(tmp_path / "skip.safetensors"))
    src, out = str(tmp_path / "skip.safetensors"), str(tmp_path / "out")
    # exit 2: heads not inferable, nothing written
    assert main(["convert", src, out, "--from", "skip-dit"]) == 2
    assert "num_heads" in capsys.readouterr().out
    _only(tmp_path, "skip.safetensors")
    # exit 2: wrong layout, one line listing the unexpected keys
    assert main(["convert", src, out, "--from", "dit", "--config", "num_heads=4"]) == 2
    err = capsys.readouterr().out
    assert err.count("\n") == 1 and "unexpected 8 key" in err
    # exit 2 from argparse: unknown layout, one line too
    assert main(["convert", src, out, "--from", "pixart"]) == 2
    err = capsys.readouterr().out
    assert err.count("\n") == 1 and "invalid choice: 'pixart'" in err
    # success, config as a JSON file
    (tmp_path / "cfg.json").write_text(json.dumps({"num_attention_heads": HEADS}))
    assert main(["convert", src, out, "--from", "skip-dit", "--config", str(tmp_path / "cfg.json")]) == 0
    text = capsys.readouterr().out
    assert "DiTTransformer2DModel" in text and ADAPTER_FILE in text and "use_original_dit_timestep_embedding" in text
    assert sorted(os.listdir(out)) == sorted(["config.json", "diffusion_pytorch_model.safetensors", ADAPTER_FILE, INFO_FILE])
    # exit 2: exists
    assert main(["convert", src, out, "--from", "skip-dit", "--config", "num_heads=4"]) == 2
    assert "already exists" in capsys.readouterr().out


def test_cli_subprocess(tmp_path):
    """The entry point in a fresh interpreter (one run: each costs an interpreter start-up)."""
    torch.save({"ema": latte_state_dict()}, tmp_path / "Latte-skip.pt")
    cmd = [sys.executable, "-m", "dit_cache.cli", "convert", str(tmp_path / "Latte-skip.pt"), str(tmp_path / "out")]
    ok = subprocess.run(cmd + ["--from", "latte-skip", "--config", "num_heads=4,video_length=4"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "LatteTransformer3DModel" in ok.stdout and "latent size 64 assumed" in ok.stdout  # the assumption is shown
    assert main(["convert", *cmd[4:], "--from", "dit", "--config", "num_heads=4", "--overwrite"]) == 2


def test_report_measured():
    """Prints the parity numbers gathered above (shown with -s)."""
    for name, value in MEASURED.items():
        print(f"  max |diff| {name}: {value:.3g}")
