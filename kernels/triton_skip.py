"""The Triton fused op as a torch custom op: ``torch.ops.dit_cache.skip_fusion``.

Importing this module does not import triton (the kernel module is loaded on first launch),
so the package works without the optional extra. The op takes the *folded* weights
(see ``folded.fold_skip_weights``): gradients to the original LayerNorm/Linear parameters
flow through the fold, which the caller runs under autograd.

    skip_fusion(x, s, w1, w2, c, bias, eps, residual) -> out
    x, s (..., D) fp16/bf16/fp32; w1, w2 (D, D) in x.dtype; c, bias (D,) fp32
"""

from __future__ import annotations

import torch

from .backend import triton_interpret_enabled, triton_unavailable_reason
from .folded import FoldedSkipWeights

__all__ = ["skip_fusion_triton", "skip_fusion_backward", "TRITON_DTYPES", "OP_NAME"]

OP_NAME = "dit_cache::skip_fusion"
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

_kernels: dict = {}  # interpret (bool) -> autotuned kernel, built on first use


def _get_kernel(interpret: bool):
    kernel = _kernels.get(interpret)
    if kernel is None:
        from . import _triton_kernel  # the only place triton gets imported

        kernel = _kernels[interpret] = _triton_kernel.build(interpret)
    return kernel


def _check_op_args(x, s, w1, w2, c, bias) -> None:
    D = x.shape[-1]
    if x.shape != s.shape:
        raise ValueError(f"x and s must have the same shape (..., D); got {tuple(x.shape)} and {tuple(s.shape)}")
    if x.dtype not in TRITON_DTYPES:
        raise TypeError(f"the Triton kernel supports {TRITON_DTYPES}, got {x.dtype}; use backend='torch'")
    for name, t in (("s", s), ("w1", w1), ("w2", w2)):
        if t.dtype != x.dtype:
            raise TypeError(f"{name} must have dtype {x.dtype} (the dtype of x), got {t.dtype}")
    for name, t in (("w1", w1), ("w2", w2)):
        if tuple(t.shape) != (D, D):
            raise ValueError(f"folded {name} must be (D, D) = ({D}, {D}), got {tuple(t.shape)}")
    for name, t in (("c", c), ("bias", bias)):
        if tuple(t.shape) != (D,) or t.dtype != torch.float32:
            raise ValueError(f"folded {name} must be fp32 of shape ({D},), got {t.dtype} {tuple(t.shape)}")
    for name, t in (("s", s), ("w1", w1), ("w2", w2), ("c", c), ("bias", bias)):
        if t.device != x.device:  # the kernel would read another device's memory
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}")


def _launch(x2, s2, w1, w2, c, bias, eps: float, residual: bool) -> torch.Tensor:
    """x2, s2 (M, K); w1, w2 (N, K); c, bias (N,) -> out (M, N) in x2.dtype."""
    reason = triton_unavailable_reason(x2.device)
    if reason is not None:
        raise RuntimeError(f"{OP_NAME}: {reason}")
    interpret = triton_interpret_enabled()
    M, K = x2.shape
    N = w1.shape[0]
    out = torch.empty((M, N), device=x2.device, dtype=x2.dtype)  # (M, N)
    if M == 0:
        return out
    kernel = _get_kernel(interpret)
    # Mirror torch: fp32 GEMMs use TF32 only if the user allowed it for torch matmuls. Half
    # inputs keep Triton's default ("tf32"), which only ever affects fp32 operands.
    ieee = x2.dtype == torch.float32 and (interpret or not torch.backends.cuda.matmul.allow_tf32)
    c = c.contiguous()
    bias = bias.contiguous()

    def grid(meta):
        return (triton_cdiv(M, meta["BLOCK_M"]) * triton_cdiv(N, meta["BLOCK_N"]),)

    def run():
        kernel[grid](
            x2, s2, w1, w2, c, bias, out,
            M, N, K,
            x2.stride(0), x2.stride(1), s2.stride(0), s2.stride(1),
            w1.stride(0), w1.stride(1), w2.stride(0), w2.stride(1),
            out.stride(0), out.stride(1),
            float(eps),
            RESIDUAL=bool(residual),
            INPUT_PRECISION="ieee" if ieee else "tf32",
            # numpy has no bf16: the interpreter's tl.dot reads bf16 tiles as integers
            DOT_IN_FP32=interpret and x2.dtype == torch.bfloat16,
        )  # fmt: skip

    if x2.device.type == "cuda":
        with torch.cuda.device(x2.device):  # Triton launches on the current device
            run()
    else:
        run()
    return out


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _skip_fusion_impl(
    x: torch.Tensor,
    s: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    c: torch.Tensor,
    bias: torch.Tensor,
    eps: float,
    residual: bool,
) -> torch.Tensor:
    _check_op_args(x, s, w1, w2, c, bias)
    D = x.shape[-1]
    x2 = x.reshape(-1, D)  # (M, D), a view when possible
    s2 = s.reshape(-1, D)
    if x2.stride(-1) != 1:  # coalesced loads need unit stride along D
        x2 = x2.contiguous()
    if s2.stride(-1) != 1:
        s2 = s2.contiguous()
    return _launch(x2, s2, w1, w2, c, bias, eps, residual).reshape(x.shape)


def _register():
    if hasattr(torch.ops.dit_cache, "skip_fusion"):
        return None  # defined by an earlier import of this file under another module name
    op = torch.library.custom_op(OP_NAME, mutates_args=())(_skip_fusion_impl)
    op.register_fake(_skip_fusion_fake)
    op.register_autograd(_backward, setup_context=_setup_context)
    return op


def _skip_fusion_fake(x, s, w1, w2, c, bias, eps, residual):
    _check_op_args(x, s, w1, w2, c, bias)
    return x.new_empty(x.shape)  # contiguous, like the real output


def skip_fusion_backward(
    grad: torch.Tensor,
    x: torch.Tensor,
    s: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    c: torch.Tensor,
    eps: float,
    residual: bool,
    needs_input_grad=(True,) * 6,
):
    """Grads of out = r * (h @ W^T - mu c^T) + b' (+ x), h = [x, s], W = [w1 | w2], in torch.

    c is an input in its own right (not tied to W). With z = r * grad and gW = grad @ W:
      dW = z^T h,  dc = -(r mu)^T grad,  db = sum_rows(grad)
      dr = h . gW - mu (grad . c),  dvar = -r^3 dr / 2,  dmu = -r (grad . c)
      dh = r gW + dmu / n + dvar * 2 (h - mu) / n          (n = 2D)
    Recomputes mu, r from the saved inputs (a concat in backward is fine: it is not the
    inference hot path). Returns (dx, ds, dw1, dw2, dc, dbias), None where not needed.
    """
    D = x.shape[-1]
    n = 2 * D
    adt = torch.promote_types(x.dtype, torch.float32)
    h = torch.cat([x.reshape(-1, D), s.reshape(-1, D)], dim=1).to(adt)  # (M, 2D)
    W = torch.cat([w1, w2], dim=1).to(adt)  # (N, 2D)
    g = grad.reshape(-1, W.shape[0]).to(adt)  # (M, N)
    var, mu = torch.var_mean(h, dim=1, correction=0)  # (M,)
    r = torch.rsqrt(var + eps)  # (M,)
    gc = torch.mv(g, c.to(adt))  # (M,) grad . c
    dx = ds = dw1 = dw2 = dc = db = None
    if needs_input_grad[0] or needs_input_grad[1]:
        gW = g @ W  # (M, 2D)
        dr = (h * gW).sum(dim=1) - mu * gc  # (M,)
        dvar = -0.5 * r.pow(3) * dr
        dmu = -r * gc
        dh = r[:, None] * gW + (dmu / n)[:, None] + (2.0 / n) * dvar[:, None] * (h - mu[:, None])  # (M, 2D)
        if needs_input_grad[0]:
            dxf = dh[:, :D] + g if residual else dh[:, :D]
            dx = dxf.to(x.dtype).reshape(x.shape)
        if needs_input_grad[1]:
            ds = dh[:, D:].to(s.dtype).reshape(s.shape)
    if needs_input_grad[2] or needs_input_grad[3]:
        dW = (g * r[:, None]).t() @ h  # (N, 2D)
        dw1 = dW[:, :D].to(w1.dtype) if needs_input_grad[2] else None
        dw2 = dW[:, D:].to(w2.dtype) if needs_input_grad[3] else None
    if needs_input_grad[4]:
        dc = -torch.mv(g.t(), r * mu).to(c.dtype)  # (N,)
    if needs_input_grad[5]:
        db = g.sum(dim=0).to(c.dtype)  # (N,) bias and c share a dtype (fp32) by contract
    return dx, ds, dw1, dw2, dc, db


def _setup_context(ctx, inputs, output):
    x, s, w1, w2, c, _bias, eps, residual = inputs
    ctx.save_for_backward(x, s, w1, w2, c)
    ctx.eps = eps
    ctx.residual = residual


def _backward(ctx, grad):
    x, s, w1, w2, c = ctx.saved_tensors
    grads = skip_fusion_backward(grad, x, s, w1, w2, c, ctx.eps, ctx.residual, ctx.needs_input_grad[:6])
    return (*grads, None, None)


_register()


def skip_fusion_triton(
    x: torch.Tensor, s: torch.Tensor, folded: FoldedSkipWeights, eps: float = 1e-6, residual: bool = False
) -> torch.Tensor:
    """Run the fused Triton op on folded weights (fold with dtype=x.dtype)."""
    return torch.ops.dit_cache.skip_fusion(x, s, folded.w1, folded.w2, folded.c, folded.bias, float(eps), bool(residual))
