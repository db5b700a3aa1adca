"""Triton fused long-skip kernel: forward/grads vs the reference, opcheck, torch.compile.

Where it runs:
- on a CUDA machine: here, on the GPU;
- with TRITON_INTERPRET=1 already in the environment: here, in Triton's CPU interpreter;
- otherwise (CPU CI): one test re-runs this file in a child process with TRITON_INTERPRET=1.
  Triton decides interpreter-or-compiler when it is first imported, and another test module
  may import it first, so setting the variable inside this process is not reliable; a child
  process also keeps the variable from leaking into other test files.
Skipped when triton is not installed.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed (pip install dit-cache[triton]): Triton kernel tests skipped", allow_module_level=True)

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
ON_GPU = torch.cuda.is_available() and not INTERPRET
REPO = Path(__file__).resolve().parents[1]

if not (INTERPRET or ON_GPU):

    def test_triton_kernel_in_interpreter_subprocess():
        env = dict(os.environ, TRITON_INTERPRET="1")
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--noconftest", str(Path(__file__))]
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        out = proc.stdout + proc.stderr
        print(out)  # the child's per-case report, shown with -s or on failure
        assert proc.returncode == 0, f"Triton interpreter tests failed (TRITON_INTERPRET=1 {' '.join(cmd[1:])}):\n{out[-8000:]}"

else:
    from dit_cache import kernels as K

    torch.set_num_threads(2)
    DEVICE = "cuda" if ON_GPU else "cpu"
    SHAPES = [(1, 1, 8), (3, 7, 40), (2, 33, 72)]
    DTYPES = [torch.float32, torch.float16, torch.bfloat16]
    NAMES = ["x", "s", "norm_weight", "norm_bias", "weight", "bias"]

    def make_case(shape, seed=0):
        """fp64 master copies of inputs and LayerNorm/Linear params (non-trivial affine)."""
        D = shape[-1]
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(shape, generator=g, dtype=torch.float64)
        s = 2.0 * torch.randn(shape, generator=g, dtype=torch.float64) + 0.5
        nw = torch.rand(2 * D, generator=g, dtype=torch.float64) + 0.5
        nb = 0.3 * torch.randn(2 * D, generator=g, dtype=torch.float64)
        w = torch.randn(D, 2 * D, generator=g, dtype=torch.float64) / (2 * D) ** 0.5
        b = 0.1 * torch.randn(D, generator=g, dtype=torch.float64)
        return [x, s, nw, nb, w, b]

    def cast(ts, dtype):
        return [t.to(device=DEVICE, dtype=dtype) for t in ts]

    def tolerance(own_err, truth, dtype, factor=3.0):
        """A few times what torch's own reference loses in this dtype, plus a rounding floor."""
        return factor * own_err + torch.finfo(dtype).eps * max(1.0, truth.abs().max().item())  # + 1 ulp

    @pytest.mark.parametrize("residual", [False, True], ids=["replace", "residual"])
    @pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
    @pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
    def test_forward_matches_reference(shape, dtype, residual):
        case = make_case(shape)
        truth = K.skip_fusion_reference(*case, residual=residual)  # fp64 ground truth
        own = K.skip_fusion_reference(*cast(case, dtype), residual=residual)
        own_err = (own.double().cpu() - truth).abs().max().item()
        with torch.no_grad():
            out = K.skip_fusion(*cast(case, dtype), residual=residual, backend="triton")
        assert out.dtype == dtype and out.shape == truth.shape
        err = (out.double().cpu() - truth).abs().max().item()
        tol = tolerance(own_err, truth, dtype)
        assert err <= tol, f"triton err {err:.3g} > tol {tol:.3g} (torch's own {dtype} err {own_err:.3g})"

    @pytest.mark.parametrize("residual", [False, True], ids=["replace", "residual"])
    def test_uncentred_fold_and_custom_eps(residual):
        """The epilogue's mu * c term and eps matter: with the literal (uncentred) fold c is
        large, so a wrong row mean shows; a large eps shows a wrong eps."""
        case = make_case((3, 7, 40), seed=3)
        case[0] += 3.0  # rows with a clear mean
        eps = 0.05
        x, s, nw, nb, w, b = cast(case, torch.float32)
        f = K.fold_skip_weights(nw, nb, w, b, dtype=torch.float32, center=False)
        assert f.c.abs().max() > 0.1
        with torch.no_grad():
            out = torch.ops.dit_cache.skip_fusion(x, s, f.w1, f.w2, f.c, f.bias, eps, residual)
            out_auto = K.skip_fusion(x, s, nw, nb, w, b, eps=eps, residual=residual, backend="triton")
        truth = K.skip_fusion_reference(*case, eps=eps, residual=residual)
        for o in (out, out_auto):
            err = (o.double().cpu() - truth).abs().max().item()
            assert err <= 2e-5 * max(1.0, truth.abs().max().item()), err

    def _grads(fn, leaves_src, residual):
        leaves = [t.detach().clone().requires_grad_(True) for t in leaves_src]
        out = fn(*leaves, residual=residual)
        g = torch.Generator().manual_seed(5)
        weight = torch.randn(out.shape, generator=g, dtype=torch.float64).to(device=out.device, dtype=out.dtype)
        (out * weight).sum().backward()
        return [t.grad.double().cpu() for t in leaves]

    @pytest.mark.parametrize("residual", [False, True], ids=["replace", "residual"])
    @pytest.mark.parametrize(
        "shape, dtype",
        [((2, 33, 72), torch.float32), ((3, 7, 40), torch.float16), ((3, 7, 40), torch.bfloat16)],
        ids=["2x33x72-fp32", "3x7x40-fp16", "3x7x40-bf16"],
    )
    def test_grads_match_reference_autograd(shape, dtype, residual):
        """Grads for x, s and all four parameters (through the fold) vs autograd of the reference."""
        case = make_case(shape, seed=1)
        truth = _grads(K.skip_fusion_reference, case, residual)
        own = _grads(K.skip_fusion_reference, cast(case, dtype), residual)

        def triton_fn(*a, residual):
            return K.skip_fusion(*a, residual=residual, backend="triton")

        got = _grads(triton_fn, cast(case, dtype), residual)
        for name, a, t, o in zip(NAMES, got, truth, own):
            err = (a - t).abs().max().item()
            tol = tolerance((o - t).abs().max().item(), t, dtype, factor=4.0)
            assert err <= tol, f"d{name}: err {err:.3g} > tol {tol:.3g}"

    def test_strided_rows_and_folded_cache():
        """x and s as views into a wider buffer (row stride 2D); a cache per dtype, refreshed on change."""
        D = 40
        case = make_case((3, 7, D))
        base = torch.cat([case[0], case[1]], -1).float().to(DEVICE)
        x, s = base[..., :D], base[..., D:]
        params = cast(case[2:], torch.float32)
        cache: dict = {}
        with torch.no_grad():
            out = K.skip_fusion(x, s, *params, backend="triton", cache=cache)
            torch.testing.assert_close(out, K.skip_fusion_reference(x, s, *params), rtol=1e-5, atol=1e-5)
            K.skip_fusion(x, s, *params, backend="torch", cache=cache)  # fp32 on both paths: same entry
            params[2].mul_(0.5)  # in-place change of the Linear weight
            out = K.skip_fusion(x, s, *params, backend="triton", cache=cache)
            torch.testing.assert_close(out, K.skip_fusion_reference(x, s, *params), rtol=1e-5, atol=1e-5)
        assert len(cache) == 1

    def _op_args(requires_grad):
        D = 40
        case = make_case((2, 5, D), seed=2)
        x, s, nw, nb, w, b = cast(case, torch.float32)
        f = K.fold_skip_weights(nw, nb, w, b, dtype=torch.float32)
        args = [x, s, f.w1, f.w2, f.c, f.bias]
        if requires_grad:
            args = [t.detach().clone().requires_grad_(True) for t in args]
        return args

    def test_opcheck():
        """Schema, fake tensor, autograd registration, AOT dispatch of dit_cache::skip_fusion
        (residual mode: its backward adds the identity path on top of the replace-mode one)."""
        torch.library.opcheck(torch.ops.dit_cache.skip_fusion.default, (*_op_args(True), 1e-6, True))

    def test_torch_compile_traces_the_op():
        op = torch.ops.dit_cache.skip_fusion

        def f(x, s, w1, w2, c, b):
            return op(x, s, w1, w2, c, b, 1e-6, True).square().sum()

        args = _op_args(True)
        compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
        loss_c = compiled(*args)
        grads_c = torch.autograd.grad(loss_c, args)
        loss_e = f(*args)
        grads_e = torch.autograd.grad(loss_e, args)
        torch.testing.assert_close(loss_c, loss_e)
        for a, b in zip(grads_c, grads_e):
            torch.testing.assert_close(a, b)

    def test_op_rejects_bad_dtypes_and_shapes():
        x, s, w1, w2, c, b = _op_args(False)
        with pytest.raises(TypeError, match="supports"):
            w64 = torch.randn(40, 80, dtype=torch.float64, device=x.device)
            K.skip_fusion(x.double(), s.double(), None, None, w64, None, backend="triton")
        with pytest.raises(ValueError, match=r"\(D, D\)"):
            torch.ops.dit_cache.skip_fusion(x, s, w1[:, :8], w2, c, b, 1e-6, False)
        with pytest.raises(ValueError, match="fp32"):
            torch.ops.dit_cache.skip_fusion(x, s, w1, w2, c.half(), b, 1e-6, False)
