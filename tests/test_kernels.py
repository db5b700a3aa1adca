"""Fused long-skip projection: folded torch path vs the plain reference, cache, grads, errors.

Triton kernel tests live in test_kernels_triton.py (they need the interpreter or a GPU).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dit_cache import kernels as K
from dit_cache.kernels import folded as kf
from dit_cache.kernels import triton_skip as kt

SHAPES = [(1, 1, 8), (3, 7, 40), (2, 33, 72)]
REPO = Path(__file__).resolve().parents[1]


def make_params(D, dtype=torch.float32, seed=0, zero_linear=False):
    """LayerNorm(2D) + Linear(2D -> D) parameters with a non-trivial affine."""
    g = torch.Generator().manual_seed(seed)
    nw = (torch.rand(2 * D, generator=g) + 0.5).to(dtype)
    nb = (0.3 * torch.randn(2 * D, generator=g)).to(dtype)
    w = (torch.randn(D, 2 * D, generator=g) / (2 * D) ** 0.5).to(dtype)
    b = (0.1 * torch.randn(D, generator=g)).to(dtype)
    if zero_linear:
        w.zero_(), b.zero_()
    return [nw, nb, w, b]


def make_inputs(shape, dtype=torch.float32, seed=1, offset=0.5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    s = 2.0 * torch.randn(shape, generator=g) + offset  # different scale and mean than x
    return x.to(dtype), s.to(dtype)


def f64(ts):
    return [t.double() if t is not None else None for t in ts]


def assert_scaled_close(out, ref, rtol, what=""):
    """max |out - ref| <= rtol * max(1, max |ref|): error relative to the output's scale."""
    err = (out.double() - ref.double()).abs().max().item()
    scale = max(1.0, ref.abs().max().item())
    assert err <= rtol * scale, f"{what}: max err {err:.3g} > {rtol:.1g} * scale {scale:.3g}"


# ---------------------------------------------------------------- reference
def test_reference_matches_diffusers_style_modules():
    """The reference equals FP32LayerNorm + Linear modules (what Hunyuan-DiT runs)."""
    D = 24
    x, s = make_inputs((2, 5, D), torch.bfloat16)
    ln = torch.nn.LayerNorm(2 * D, eps=1e-6).to(torch.bfloat16)
    lin = torch.nn.Linear(2 * D, D).to(torch.bfloat16)
    h = torch.cat([x, s], -1)
    h = torch.nn.functional.layer_norm(h.float(), (2 * D,), ln.weight.float(), ln.bias.float(), 1e-6).to(h.dtype)
    expected = lin(h)
    got = K.skip_fusion_reference(x, s, ln.weight, ln.bias, lin.weight, lin.bias)
    assert got.dtype == torch.bfloat16 and torch.equal(got, expected)
    assert torch.equal(K.skip_fusion_reference(x, s, ln.weight, ln.bias, lin.weight, lin.bias, residual=True), x + expected)


# ---------------------------------------------------------------- folded torch path, forward
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_folded_matches_reference_fp32(shape, residual):
    D = shape[-1]
    x, s = make_inputs(shape)
    p = make_params(D)
    ref = K.skip_fusion_reference(x, s, *p, residual=residual)
    out = K.skip_fusion(x, s, *p, residual=residual, backend="torch")
    assert out.shape == x.shape and out.dtype == x.dtype
    assert_scaled_close(out, ref, 1e-5, f"{shape} residual={residual}")
    # and against an fp64 ground truth
    assert_scaled_close(out, K.skip_fusion_reference(*f64([x, s]), *f64(p), residual=residual), 1e-5)


def test_auto_backend_is_torch_on_cpu_and_matches():
    x, s = make_inputs((2, 9, 16))
    p = make_params(16)
    assert K.resolve_backend("auto", x.device) == "torch"
    assert_scaled_close(K.skip_fusion(x, s, *p), K.skip_fusion_reference(x, s, *p), 1e-5)
    assert torch.equal(K.skip_fusion(x, s, *p, backend="reference"), K.skip_fusion_reference(x, s, *p))


def test_folded_large_mean_rows_stay_accurate():
    """Rows with |mean| >> std take the stable two-pass statistics (one-pass would cancel)."""
    D = 64
    x, s = make_inputs((4, 10, D))
    x[0] += 300.0  # every row of batch 0 has mean ~ 150 std
    s[1, :5] -= 40.0
    p = make_params(D)
    truth = K.skip_fusion_reference(*f64([x, s]), *f64(p))
    with torch.no_grad():
        assert_scaled_close(K.skip_fusion(x, s, *p, backend="torch"), truth, 1e-5, "folded")
        # the reference itself in fp32 is the yardstick: the folded path must not be worse by much
        assert_scaled_close(K.skip_fusion_reference(x, s, *p), truth, 1e-5, "reference")


def test_folded_custom_eps():
    x, s = make_inputs((3, 7, 40))
    p = make_params(40)
    for eps in (1e-5, 0.05):
        ref = K.skip_fusion_reference(*f64([x, s]), *f64(p), eps=eps)
        assert_scaled_close(K.skip_fusion(x, s, *p, eps=eps, backend="torch"), ref, 1e-5, f"eps={eps}")


def test_folded_without_affine_or_bias():
    D = 40
    x, s = make_inputs((3, 7, D))
    _, _, w, _ = make_params(D)
    for nw, nb, b in [(None, None, None), (torch.ones(2 * D), None, None), (None, torch.zeros(2 * D), torch.zeros(D))]:
        ref = K.skip_fusion_reference(x, s, nw, nb, w, b)
        assert_scaled_close(K.skip_fusion(x, s, nw, nb, w, b, backend="torch"), ref, 1e-5)


def test_zero_linear_residual_is_identity():
    """Function-preserving retrofit: zero-init Linear in residual mode returns x exactly."""
    x, s = make_inputs((2, 5, 32))
    p = make_params(32, zero_linear=True)
    assert torch.equal(K.skip_fusion(x, s, *p, residual=True, backend="torch"), x)


def test_noncontiguous_and_empty_inputs():
    D = 40
    base = torch.randn(3, 7, 2 * D)
    x, s = base[..., :D], base[..., D:].mul(2)  # x is a strided view
    p = make_params(D)
    assert_scaled_close(K.skip_fusion(x, s, *p, backend="torch"), K.skip_fusion_reference(x, s, *p), 1e-5)
    e = torch.zeros(0, 5, D)
    assert K.skip_fusion(e, e, *p, backend="torch").shape == (0, 5, D)


def test_fold_centring_is_exact_and_makes_c_small():
    D = 40
    x, s = make_inputs((3, 7, D))
    nw, nb, w, b = make_params(D)
    centred = kf.fold_skip_weights(nw, nb, w, b)
    plain = kf.fold_skip_weights(nw, nb, w, b, center=False)
    assert centred.c.abs().max() < 1e-5 < plain.c.abs().max()
    with torch.no_grad():
        out_c = kf.skip_fusion_folded(x, s, centred)
        out_p = kf.skip_fusion_folded(x, s, plain)
    assert_scaled_close(out_c, out_p, 1e-5)
    # the literal fold of the spec: W' = W*g, b' = b + W@beta, c = W'.sum(1)
    torch.testing.assert_close(torch.cat([plain.w1, plain.w2], 1), w * nw)
    torch.testing.assert_close(plain.bias, b + w @ nb)
    torch.testing.assert_close(plain.c, (w * nw).sum(1))


def _torch_own_error(x, s, p, residual, dtype):
    truth = K.skip_fusion_reference(*f64([x, s]), *f64(p), residual=residual)
    own = K.skip_fusion_reference(x.to(dtype), s.to(dtype), *[t.to(dtype) for t in p], residual=residual)
    return truth, (own.double() - truth).abs().max().item()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("residual", [False, True])
def test_folded_half_inputs_on_cpu(dtype, residual):
    """CPU half inputs compute in fp32: no worse than torch's own reference in that dtype."""
    x, s = make_inputs((2, 33, 72))
    p = make_params(72)
    truth, own_err = _torch_own_error(x, s, p, residual, dtype)
    with torch.no_grad():
        out = K.skip_fusion(x.to(dtype), s.to(dtype), *[t.to(dtype) for t in p], residual=residual, backend="torch")
    assert out.dtype == dtype
    err = (out.double() - truth).abs().max().item()
    assert err <= 2 * own_err + 1e-3 * truth.abs().max().item(), (err, own_err)


# ---------------------------------------------------------------- cache
def test_cache_hit_then_invalidated_by_optimizer_step():
    D = 40
    x, s = make_inputs((3, 7, D))
    params = [torch.nn.Parameter(t) for t in make_params(D)]
    opt = torch.optim.AdamW(params, lr=0.05)
    cache: dict = {}
    for step in range(3):
        with torch.no_grad():
            out = K.skip_fusion(x, s, *params, residual=True, backend="torch", cache=cache)
            folded_1 = next(iter(cache.values())).folded
            K.skip_fusion(x, s, *params, residual=True, backend="torch", cache=cache)
            assert next(iter(cache.values())).folded is folded_1, "second call must hit the cache"
            ref = K.skip_fusion_reference(x, s, *params, residual=True)
        assert_scaled_close(out, ref, 1e-5, f"step {step}")
        assert len(cache) == 1, "one entry per parameter set, not one per version"
        # a training step through the op (grads enabled: folds inside autograd, bypasses the cache)
        opt.zero_grad()
        loss = K.skip_fusion(x, s, *params, residual=True, backend="torch", cache=cache).square().mean()
        loss.backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
        opt.step()  # in-place update bumps every param's _version
    with torch.no_grad():
        out = K.skip_fusion(x, s, *params, backend="torch", cache=cache)
        assert next(iter(cache.values())).folded is not folded_1
        assert_scaled_close(out, K.skip_fusion_reference(x, s, *params), 1e-5, "after steps")


def test_cache_sees_in_place_copy_and_new_tensors():
    D = 16
    x, s = make_inputs((2, 3, D))
    p = make_params(D)
    cache: dict = {}
    K.skip_fusion(x, s, *p, backend="torch", cache=cache)
    with torch.no_grad():
        p[2].copy_(torch.randn(D, 2 * D))  # like load_state_dict
    assert_scaled_close(K.skip_fusion(x, s, *p, backend="torch", cache=cache), K.skip_fusion_reference(x, s, *p), 1e-5)
    q = [t.clone() * 1.5 for t in p]  # other tensors, same values -> distinct entry, right answer
    assert_scaled_close(K.skip_fusion(x, s, *q, backend="torch", cache=cache), K.skip_fusion_reference(x, s, *q), 1e-5)


def test_cache_drops_entry_of_moved_params():
    """module.half() / .to(): same Parameter objects at a new address replace their old entry."""
    lin, norm = torch.nn.Linear(32, 16), torch.nn.LayerNorm(32)
    x, s = make_inputs((2, 3, 16))
    cache: dict = {}

    def run(x, s):
        with torch.no_grad():
            return K.skip_fusion(x, s, norm.weight, norm.bias, lin.weight, lin.bias, backend="torch", cache=cache)

    run(x, s)
    for p in (*lin.parameters(), *norm.parameters()):
        p.data = p.data.clone()  # new storage, same Parameter objects (what Module._apply does)
    out = run(x, s)
    assert len(cache) == 1
    ref = K.skip_fusion_reference(x, s, norm.weight, norm.bias, lin.weight, lin.bias)
    assert_scaled_close(out, ref, 1e-5)


class _Fusion(torch.nn.Module):
    """A module owning its fold cache, as dit_cache.runtime.fusion.LongSkipFusion does."""

    def __init__(self, D):
        super().__init__()
        self.norm, self.linear, self.cache = torch.nn.LayerNorm(2 * D), torch.nn.Linear(2 * D, D), {}

    def forward(self, x, s):
        n, lin = self.norm, self.linear
        return K.skip_fusion(x, s, n.weight, n.bias, lin.weight, lin.bias, backend="torch", cache=self.cache)


def test_module_owning_a_cache_can_be_pickled_and_deep_copied():
    import copy
    import io

    m = _Fusion(16)
    x, s = make_inputs((2, 3, 16))
    with torch.no_grad():
        m(x, s)
        twin = copy.deepcopy(m)
        with torch.no_grad():
            twin.linear.weight.mul_(2.0)
        buf = io.BytesIO()
        torch.save(m, buf)
        buf.seek(0)
        loaded = torch.load(buf, weights_only=False)
        for mod in (m, twin, loaded):
            ref = K.skip_fusion_reference(x, s, mod.norm.weight, mod.norm.bias, mod.linear.weight, mod.linear.bias)
            assert_scaled_close(mod(x, s), ref, 1e-5)


def test_two_models_do_not_share_fold_state():
    D = 16
    x, s = make_inputs((2, 3, D))
    m1, m2 = make_params(D, seed=1), make_params(D, seed=2)
    c1, c2 = {}, {}
    with torch.no_grad():
        o1 = K.skip_fusion(x, s, *m1, backend="torch", cache=c1)
        o2 = K.skip_fusion(x, s, *m2, backend="torch", cache=c2)
    assert not torch.allclose(o1, o2)
    assert_scaled_close(o2, K.skip_fusion_reference(x, s, *m2), 1e-5)
    assert_scaled_close(o1, K.skip_fusion_reference(x, s, *m1), 1e-5)


def test_cache_bypassed_when_params_need_grad_and_used_under_no_grad():
    D = 16
    x, s = make_inputs((2, 3, D))
    params = [torch.nn.Parameter(t) for t in make_params(D)]
    cache: dict = {}
    K.skip_fusion(x, s, *params, backend="torch", cache=cache)
    assert cache == {}, "grad-enabled call with trainable params must fold inside autograd"
    with torch.no_grad():
        K.skip_fusion(x, s, *params, backend="torch", cache=cache)
    assert len(cache) == 1
    with torch.inference_mode():
        out = K.skip_fusion(x, s, *params, backend="torch", cache=cache)
    assert_scaled_close(out, K.skip_fusion_reference(x, s, *params).detach(), 1e-5)
    # frozen params, trainable input: cached weights are fine, grads reach x
    for p in params:
        p.requires_grad_(False)
    xg = x.clone().requires_grad_(True)
    K.skip_fusion(xg, s, *params, backend="torch", cache=cache).sum().backward()
    assert xg.grad is not None


# ---------------------------------------------------------------- gradients
def _grads(fn, x, s, p, residual):
    leaves = [t.detach().clone().requires_grad_(True) for t in [x, s, *p]]
    g = torch.Generator().manual_seed(3)
    out = fn(*leaves, residual=residual)
    weight = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.dtype)  # same draw for every dtype
    (out * weight).sum().backward()
    return [t.grad for t in leaves]


NAMES = ["x", "s", "norm_weight", "norm_bias", "weight", "bias"]


@pytest.mark.parametrize("residual", [False, True])
def test_folded_grads_match_reference_autograd(residual):
    x, s = make_inputs((3, 7, 40))
    p = make_params(40)

    def folded(*a, residual):
        return K.skip_fusion(*a, residual=residual, backend="torch")

    # fp64: the algebra is exact, so the grads agree to rounding
    g_ref = _grads(K.skip_fusion_reference, *f64([x, s]), f64(p), residual)
    g_fold = _grads(folded, *f64([x, s]), f64(p), residual)
    for name, a, b in zip(NAMES, g_fold, g_ref):
        assert_scaled_close(a, b, 1e-10, f"fp64 d{name}")
    # fp32
    g32 = _grads(folded, x, s, p, residual)
    for name, a, b in zip(NAMES, g32, g_ref):
        assert a.dtype == torch.float32
        assert_scaled_close(a, b, 2e-5, f"fp32 d{name}")


@pytest.mark.parametrize("residual", [False, True])
def test_triton_op_backward_formula(residual):
    """The hand-written backward of the Triton op vs autograd of the op's math, in fp64.
    c is an independent input (not tied to the weights), as in the op's signature."""
    torch.manual_seed(0)
    M, D = 11, 12
    x, s = torch.randn(M, D, dtype=torch.float64), torch.randn(M, D, dtype=torch.float64) * 2 + 1
    w1, w2 = torch.randn(D, D, dtype=torch.float64), torch.randn(D, D, dtype=torch.float64)
    c, bias = torch.randn(D, dtype=torch.float64), torch.randn(D, dtype=torch.float64)
    leaves = [t.clone().requires_grad_(True) for t in (x, s, w1, w2, c, bias)]
    xl, sl, w1l, w2l, cl, bl = leaves
    h = torch.cat([xl, sl], 1)
    var, mu = torch.var_mean(h, 1, correction=0)
    r = torch.rsqrt(var + 1e-6)
    out = r[:, None] * (xl @ w1l.t() + sl @ w2l.t() - mu[:, None] * cl) + bl
    if residual:
        out = out + xl
    go = torch.randn(M, D, dtype=torch.float64)
    expected = torch.autograd.grad(out, leaves, go)
    got = kt.skip_fusion_backward(go, x, s, w1, w2, c, 1e-6, residual)
    for name, a, b in zip(["x", "s", "w1", "w2", "c", "bias"], got, expected):
        torch.testing.assert_close(a.double(), b, rtol=1e-9, atol=1e-9, msg=f"d{name}")


# ---------------------------------------------------------------- errors and backends
@pytest.mark.parametrize(
    "mutate, exc, match",
    [
        (lambda a: a.__setitem__(1, torch.randn(2, 5, 9)), ValueError, "same shape"),
        (lambda a: a.__setitem__(4, torch.randn(8, 8)), ValueError, r"\(D, 2D\) = \(8, 16\)"),
        (lambda a: a.__setitem__(5, torch.randn(7)), ValueError, "bias must have shape"),
        (lambda a: a.__setitem__(2, torch.randn(8)), ValueError, "norm_weight must have shape"),
        (lambda a: a.__setitem__(1, a[1].double()), TypeError, "one floating dtype"),
        (lambda a: a.__setitem__(0, torch.randn(2, 5, 0)), ValueError, "D > 0"),
    ],
)
def test_shape_validation_errors(mutate, exc, match):
    args = [*make_inputs((2, 5, 8)), *make_params(8)]
    mutate(args)
    with pytest.raises(exc, match=match):
        K.skip_fusion(*args)


def test_resolve_backend(monkeypatch):
    assert K.resolve_backend("torch") == "torch"
    assert K.resolve_backend("reference") == "reference"
    assert K.resolve_backend("auto", "cpu") == "torch"
    with pytest.raises(ValueError, match="unknown backend"):
        K.resolve_backend("cuda")
    if not torch.cuda.is_available():
        assert K.resolve_backend("auto") == "torch"
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="CUDA.*TRITON_INTERPRET=1"):
        K.resolve_backend("triton", "cpu")
    x, s = make_inputs((1, 2, 8))
    with pytest.raises(RuntimeError, match="backend='triton' cannot run"):
        K.skip_fusion(x, s, *make_params(8), backend="triton")
    # triton missing: the message says how to get it, even with the interpreter requested
    monkeypatch.setattr(K.backend, "_triton_import_error", lambda: "ImportError: No module named 'triton'")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(RuntimeError, match=r"pip install dit-cache\[triton\]"):
        K.resolve_backend("triton", "cpu")
    assert K.resolve_backend("auto", "cuda") == "torch"


def test_package_imports_and_runs_without_triton():
    """`import triton` is blocked: the package, the torch backend and the errors still work."""
    code = (
        "import sys, importlib.util; sys.modules['triton'] = None\n"
        "import torch\n"
        # load the folder as a stand-alone package: skips dit_cache's own (diffusers) imports
        "spec = importlib.util.spec_from_file_location('ditk', 'kernels/__init__.py',"
        " submodule_search_locations=['kernels'])\n"
        "K = importlib.util.module_from_spec(spec); sys.modules['ditk'] = K; spec.loader.exec_module(K)\n"
        "assert K.resolve_backend('auto', 'cuda') == 'torch'\n"
        "x = torch.randn(2, 3, 8)\n"
        "y = K.skip_fusion(x, x, None, None, torch.randn(8, 16), None)\n"
        "assert y.shape == x.shape\n"
        "try:\n"
        "    K.resolve_backend('triton', 'cuda')\n"
        "except RuntimeError as e:\n"
        "    assert 'pip install dit-cache[triton]' in str(e), e\n"
        "else:\n"
        "    raise AssertionError('no error')\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error path")
def test_xformers_needs_cuda_clear_error():
    ok, reason = K.xformers_available()
    assert not ok and "CUDA" in reason

    class Model(torch.nn.Module):
        called = False

        def enable_xformers_memory_efficient_attention(self):
            self.called = True

    m = Model()
    with pytest.raises(RuntimeError, match=r"pip install dit-cache\[xformers\]"):
        K.enable_xformers(m)
    assert not m.called


@pytest.mark.parametrize("backend", ["torch", "reference"])
@pytest.mark.parametrize("residual", [False, True])
def test_skip_fusion_under_cpu_autocast_matches_reference(backend, residual):
    """Under autocast the op behaves like the reference op would (Linear in the autocast dtype)."""
    g = torch.Generator().manual_seed(0)
    D = 24
    x, s = torch.randn(2, 5, D, generator=g), torch.randn(2, 5, D, generator=g)
    nw, nb = torch.randn(2 * D, generator=g), torch.randn(2 * D, generator=g)
    w, b = torch.randn(D, 2 * D, generator=g) * 0.1, torch.randn(D, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = K.skip_fusion(x, s, nw, nb, w, b, residual=residual, backend=backend, cache={})
        expected = K.skip_fusion_reference(x.bfloat16(), s.bfloat16(), nw, nb, w.bfloat16(), b.bfloat16(), residual=residual)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected.float(), rtol=2e-2, atol=2e-2)
