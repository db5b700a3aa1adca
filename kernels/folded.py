"""Folded torch path: LayerNorm folded into the Linear, no concat, no normalised copy.

With LN weight g, bias beta and Linear W = [W1 | W2] (D x 2D), bias b:

    W' = W * g            (column scale)          b' = b + W @ beta
    out = r * (x @ W1'^T + s @ W2'^T - mu * c) + b'     (+ x in residual mode)

where mu, r are the mean and reciprocal std of the 2D-long row [x, s] and c = W'.sum(1).

We additionally centre each row of W' (subtract its mean) before splitting it. That is an
exact identity (the LN output has zero mean, so a constant added to a row of W' changes
nothing) and it makes c ~ 0: the GEMM output is then already on the scale of the final
result instead of being a large number from which mu * c is later subtracted. Without it a
half-precision GEMM output would lose most of its digits to that cancellation. c is kept
as the fp32 row sum of the weights *as the GEMM sees them* (after rounding to the compute
dtype), so the epilogue stays exact to the algebra.
"""

from __future__ import annotations

import weakref
from typing import NamedTuple

import torch

__all__ = [
    "FoldedSkipWeights",
    "fold_skip_weights",
    "get_folded_weights",
    "skip_fusion_folded",
    "torch_compute_dtype",
]


class FoldedSkipWeights(NamedTuple):
    w1: torch.Tensor  # (D, D) folded weight applied to x, compute dtype
    w2: torch.Tensor  # (D, D) folded weight applied to s, compute dtype
    c: torch.Tensor  # (D,) fp32 row sums of [w1 | w2] as used by the GEMM (~0 once centred)
    bias: torch.Tensor  # (D,) fp32 folded bias b' = b + W @ beta


def _fold_dtype(gemm_dtype: torch.dtype) -> torch.dtype:
    # Fold in fp32 (fp64 only for an fp64 GEMM, so gradcheck works); half weights upcast first.
    return torch.float64 if gemm_dtype == torch.float64 else torch.float32


def fold_skip_weights(
    norm_weight: torch.Tensor | None,
    norm_bias: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    dtype: torch.dtype | None = None,
    center: bool = True,
) -> FoldedSkipWeights:
    """Fold LayerNorm(2D) affine params into the following Linear(2D -> D).

    Differentiable: run it under autograd and gradients reach the original parameters.
    ``dtype`` is the dtype of the GEMM weights w1/w2 (default: ``weight.dtype``);
    c and bias are always kept in fp32 (fp64 for fp64 weights).
    """
    D, two_d = weight.shape
    if two_d != 2 * D:
        raise ValueError(f"weight must have shape (D, 2D), got {tuple(weight.shape)}")
    dtype = dtype or weight.dtype
    fdt = _fold_dtype(dtype)
    w = weight.to(fdt)  # (D, 2D)
    if norm_weight is not None:
        w_scaled = w * norm_weight.to(fdt)  # (D, 2D) column scale by g
    else:
        w_scaled = w
    b = bias.to(fdt) if bias is not None else w.new_zeros(D)  # (D,)
    if norm_bias is not None:
        b = b + torch.mv(w, norm_bias.to(fdt))  # b' = b + W @ beta, with the *unscaled* W
    if center:
        w_scaled = w_scaled - w_scaled.mean(dim=1, keepdim=True)
    w_gemm = w_scaled.to(dtype)  # (D, 2D) what the GEMM will multiply with
    c = w_gemm.to(fdt).sum(dim=1)  # (D,) exact for the rounded weights
    return FoldedSkipWeights(w_gemm[:, :D].contiguous(), w_gemm[:, D:].contiguous(), c, b)


def _needs_param_grad(params) -> bool:
    return torch.is_grad_enabled() and any(p is not None and p.requires_grad for p in params)


class _CacheEntry(NamedTuple):
    refs: tuple  # weakrefs to the params: a reused address must not hit a dead entry
    versions: tuple | None  # p._version per param: in-place updates (optimizer.step) bump it
    folded: FoldedSkipWeights | None

    def __reduce__(self):
        # Pickling or deep-copying the module that owns the cache: weakrefs cannot be pickled
        # and a copy must not point at the original's params. Copy an empty (always-miss) entry.
        return (_CacheEntry, ((), None, None))


def get_folded_weights(
    norm_weight: torch.Tensor | None,
    norm_bias: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    dtype: torch.dtype,
    cache: dict | None = None,
) -> FoldedSkipWeights:
    """Folded weights, cached in the caller-owned ``cache`` dict when that is safe.

    Folds inside autograd on every call when gradients for the parameters are wanted, so
    training through the op is exact. Otherwise the fold is cached under a key of the
    parameters' data_ptr/dtype/device plus the compute dtype; the entry is reused only while
    every parameter is the same live tensor with the same ``_version``. Mutating a parameter
    in place (optimizer step, ``load_state_dict``, ``p.copy_()`` under no_grad) invalidates it;
    writing through ``p.data`` does NOT bump ``_version`` (call ``cache.clear()`` after that).
    One entry per parameter set and dtype, so the dict does not grow with training steps.
    """
    params = (norm_weight, norm_bias, weight, bias)
    if (
        cache is None
        or _needs_param_grad(params)
        or torch.compiler.is_compiling()  # let the compiler trace (and hoist) the fold
        or any(p is not None and p.is_inference() for p in params)  # no version counter
    ):
        return fold_skip_weights(norm_weight, norm_bias, weight, bias, dtype=dtype)

    def sig(p, attr):
        return None if p is None else attr(p)

    key = (
        "dit_cache.skip_fusion",
        dtype,
        weight.device,
        torch.is_inference_mode_enabled(),  # inference tensors cannot be saved for backward later
        tuple(sig(p, lambda t: (t.data_ptr(), t.dtype, tuple(t.shape))) for p in params),
    )
    versions = tuple(sig(p, lambda t: t._version) for p in params)
    entry = cache.get(key)
    if (
        entry is not None
        and entry.versions == versions
        and _same_params(entry.refs, params)
    ):
        return entry.folded
    with torch.no_grad():
        folded = fold_skip_weights(norm_weight, norm_bias, weight, bias, dtype=dtype)
    refs = tuple(None if p is None else weakref.ref(p) for p in params)
    # The same parameter objects under an old address (module.to(), .half()): drop that entry
    # instead of keeping a dead copy of the folded weights alive.
    for old_key, old in list(cache.items()):
        same_slot = (old_key[0], old_key[1], old_key[3]) == (key[0], key[1], key[3])  # ignore device, ptrs
        if isinstance(old, _CacheEntry) and same_slot and _same_params(old.refs, params):
            del cache[old_key]
    cache[key] = _CacheEntry(refs, versions, folded)
    return folded


def _same_params(refs, params) -> bool:
    return all((r is None and p is None) or (r is not None and r() is p) for r, p in zip(refs, params))


def torch_compute_dtype(x: torch.Tensor) -> torch.dtype:
    # CPU half/bf16 GEMMs accumulate poorly and are slow anyway: compute in fp32 there.
    if x.device.type == "cpu" and x.dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    return x.dtype


# A row whose mean exceeds this many stds loses ~ulp * (mu/std)^2 in the one-pass variance.
_ONE_PASS_MAX_MEAN_OVER_STD = 4.0


def _stable_row_stats(x2: torch.Tensor, s2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # Two halves' moments combined exactly (Chan et al.): var of the 2D row without a concat.
    sdt = torch.promote_types(x2.dtype, torch.float32)
    vx, mx = torch.var_mean(x2.to(sdt), dim=-1, correction=0)  # (M,)
    vs, ms = torch.var_mean(s2.to(sdt), dim=-1, correction=0)  # (M,)
    mu = 0.5 * (mx + ms)
    var = 0.5 * (vx + vs) + (0.5 * (mx - ms)) ** 2
    return mu, var


def _row_stats(x2: torch.Tensor, s2: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row mean and reciprocal std of [x, s] in fp32: (M,), (M,)."""
    differentiable = torch.is_grad_enabled() and (x2.requires_grad or s2.requires_grad)
    if differentiable or x2.device.type != "cpu" or torch.compiler.is_compiling():
        # var_mean is memory-bound on GPU and differentiable; on CPU it is slow (Welford).
        mu, var = _stable_row_stats(x2, s2)
    else:
        # One pass of sum and sum of squares: ~10x faster than var_mean on CPU.
        sdt = torch.promote_types(x2.dtype, torch.float32)
        kw = {} if x2.dtype == sdt else {"dtype": sdt}  # passing dtype= makes a converted copy
        n = 2 * x2.shape[-1]
        total = x2.sum(-1, **kw) + s2.sum(-1, **kw)  # (M,)
        sq = (
            torch.linalg.vector_norm(x2, dim=-1, **kw).square() + torch.linalg.vector_norm(s2, dim=-1, **kw).square()
        )  # (M,)
        mu = total / n
        var = (sq / n - mu * mu).clamp_min(0.0)
        bad = mu * mu > (_ONE_PASS_MAX_MEAN_OVER_STD**2) * var
        if bool(bad.any()):  # rare: recompute only the ill-conditioned rows stably
            idx = bad.nonzero().squeeze(1)
            mu_b, var_b = _stable_row_stats(x2.index_select(0, idx), s2.index_select(0, idx))
            mu = mu.index_copy(0, idx, mu_b)
            var = var.index_copy(0, idx, var_b)
    return mu, torch.rsqrt(var + eps)


def skip_fusion_folded(
    x: torch.Tensor,
    s: torch.Tensor,
    folded: FoldedSkipWeights,
    eps: float = 1e-6,
    residual: bool = False,
) -> torch.Tensor:
    """out = r * (x @ w1^T + s @ w2^T - mu * c) + b' (+ x); x, s (..., D) -> (..., D)."""
    D = x.shape[-1]
    cdt = folded.w1.dtype
    x2 = x.reshape(-1, D).to(cdt)  # (M, D); no copy unless CPU half -> fp32
    s2 = s.reshape(-1, D).to(cdt)  # (M, D)
    mu, r = _row_stats(x2, s2, eps)  # (M,), (M,) fp32
    y = torch.mm(x2, folded.w1.t())  # (M, D)
    y.addmm_(s2, folded.w2.t())  # (M, D) second GEMM accumulates into the same output
    # Epilogue in fp32 (type promotion): b' + r * y - (r * mu) (x) c
    grad_path = torch.is_grad_enabled() and any(t.requires_grad for t in (x2, s2, *folded))
    if y.dtype == torch.promote_types(y.dtype, folded.bias.dtype) and not grad_path:
        # in place: at large M a fresh (M, D) buffer costs page faults comparable to the epilogue
        out = torch.addcmul(folded.bias, y, r.unsqueeze(1), out=y)
    else:
        out = torch.addcmul(folded.bias, y, r.unsqueeze(1))  # (M, D), fp32 for half y
    out.addr_(r * mu, folded.c, alpha=-1.0)  # rank-1 correction, ~0 after centring
    if residual:
        out.add_(x.reshape(-1, D))
    return out.to(x.dtype).reshape(x.shape)
