"""Triton kernel of the fused long-skip projection. Imports triton: load lazily only.

One program computes a (BLOCK_M, BLOCK_N) tile of

    out = r * (x @ w1^T + s @ w2^T - mu * c) + b'   (+ x)

It streams its rows of x, then of s, through the K loop; the same tiles that feed tl.dot
also feed the per-row sum and sum of squares, so LayerNorm costs no extra pass over memory
(the stats are recomputed by each of the N/BLOCK_N programs of a row band: ALU work of
1/BLOCK_N of the MMA, free in practice). The torch reference of this math is
``folded.skip_fusion_folded`` / ``reference.skip_fusion_reference``.
"""

from __future__ import annotations

import contextlib

import triton
import triton.language as tl

# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages): usual Hopper/Ampere GEMM tiles.
_GPU_TILES = [
    (128, 128, 64, 8, 3),
    (128, 256, 64, 8, 3),
    (256, 128, 64, 8, 3),
    (64, 128, 64, 4, 4),
    (128, 64, 64, 4, 4),
    (64, 64, 64, 4, 4),
    (128, 128, 32, 4, 4),
    (64, 128, 32, 4, 4),
    (64, 64, 32, 2, 5),  # small M (batch-1 sampling at low resolution)
]
_SMEM_BUDGET = 200 * 1024  # H100 allows 227 KB per block; keep headroom for the epilogue


def _configs(interpret: bool) -> list:
    if interpret:
        # The interpreter is numpy: one small config (no autotune benchmark, which needs a GPU)
        # that still exercises several K iterations and ragged edges on the test shapes.
        return [triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "GROUP_M": 4}, num_warps=4, num_stages=1)]
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, num_warps=w, num_stages=st)
        for bm, bn, bk, w, st in _GPU_TILES
    ]


def _prune(configs, named_args, **kwargs):
    # Each pipeline stage holds one x/s tile and one w tile: drop configs that cannot fit
    # (fp32 doubles the bytes), and tiles far larger than the problem.
    elem = named_args["x_ptr"].element_size()
    M, N = named_args["M"], named_args["N"]
    kept = []
    for cfg in configs:
        kw = cfg.kwargs
        smem = cfg.num_stages * (kw["BLOCK_M"] + kw["BLOCK_N"]) * kw["BLOCK_K"] * elem
        too_big = kw["BLOCK_M"] > 2 * max(M, 64) or kw["BLOCK_N"] > 2 * max(N, 64)
        if smem <= _SMEM_BUDGET and not too_big:
            kept.append(cfg)
    return kept or configs[-1:]


def _skip_fusion_kernel(
    x_ptr, s_ptr, w1_ptr, w2_ptr, c_ptr, b_ptr, out_ptr,
    M, N, K,
    stride_xm, stride_xk, stride_sm, stride_sk,
    stride_w1n, stride_w1k, stride_w2n, stride_w2k,
    stride_om, stride_on,
    eps,
    RESIDUAL: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    DOT_IN_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):  # fmt: skip
    # Grouped launch order: GROUP_M row bands reuse the same weight column band from L2.
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_pid_in_group = GROUP_M * num_pid_n
    first_pid_m = (pid // num_pid_in_group) * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BM,)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (BN,)
    offs_k = tl.arange(0, BLOCK_K)  # (BK,)
    mask_m = offs_m < M
    mask_n = offs_n < N
    rows = offs_m.to(tl.int64)  # row * stride overflows int32 past 2**31 elements

    # Sums of (h - shift) with shift = first element of the row: E[h^2] - mu^2 in fp32 would
    # cancel catastrophically for rows whose mean is large against their std.
    shift = tl.load(x_ptr + rows * stride_xm, mask=mask_m, other=0.0).to(tl.float32)  # (BM,)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)  # (BM, BN)
    row_sum = tl.zeros((BLOCK_M,), dtype=tl.float32)
    row_sq = tl.zeros((BLOCK_M,), dtype=tl.float32)

    # x @ w1^T, then s @ w2^T: `part` is a compile-time constant, so this unrolls into two K
    # loops (one input tile and one weight tile per step: half the shared memory per pipeline
    # stage of a single loop loading four tiles).
    for part in tl.static_range(2):
        if part == 0:
            a_ptr, stride_am, stride_ak = x_ptr, stride_xm, stride_xk
            w_ptr, stride_wn, stride_wk = w1_ptr, stride_w1n, stride_w1k
        else:
            a_ptr, stride_am, stride_ak = s_ptr, stride_sm, stride_sk
            w_ptr, stride_wn, stride_wk = w2_ptr, stride_w2n, stride_w2k
        for k0 in range(0, K, BLOCK_K):
            k = k0 + offs_k
            mask_k = k < K
            a = tl.load(
                a_ptr + rows[:, None] * stride_am + k[None, :] * stride_ak,
                mask=mask_m[:, None] & mask_k[None, :], other=0.0,
            )  # (BM, BK)
            w = tl.load(
                w_ptr + k[:, None] * stride_wk + offs_n[None, :] * stride_wn,
                mask=mask_k[:, None] & mask_n[None, :], other=0.0,
            )  # (BK, BN)
            if DOT_IN_FP32:  # interpreter + bf16 only: its tl.dot multiplies raw bf16 bit patterns
                acc = tl.dot(a.to(tl.float32), w.to(tl.float32), acc, input_precision="ieee")
            else:
                acc = tl.dot(a, w, acc, input_precision=INPUT_PRECISION)
            d = tl.where(mask_k[None, :], a.to(tl.float32) - shift[:, None], 0.0)  # (BM, BK)
            row_sum += tl.sum(d, axis=1)
            row_sq += tl.sum(d * d, axis=1)

    # LayerNorm as an epilogue: mean and reciprocal std of the 2K-long row [x, s]
    n = 2.0 * K
    mean_d = row_sum / n  # mean of (h - shift)
    var = tl.maximum(row_sq / n - mean_d * mean_d, 0.0)  # (BM,)
    mu = shift + mean_d
    r = 1.0 / tl.sqrt(var + eps)

    c = tl.load(c_ptr + offs_n, mask=mask_n, other=0.0)  # (BN,) fp32
    b = tl.load(b_ptr + offs_n, mask=mask_n, other=0.0)  # (BN,) fp32
    out = r[:, None] * (acc - mu[:, None] * c[None, :]) + b[None, :]  # (BM, BN) fp32
    mask_out = mask_m[:, None] & mask_n[None, :]
    if RESIDUAL:  # N == K here: the residual tile is x[offs_m, offs_n]
        res = tl.load(x_ptr + rows[:, None] * stride_xm + offs_n[None, :] * stride_xk, mask=mask_out, other=0.0)
        out += res.to(tl.float32)
    tl.store(
        out_ptr + rows[:, None] * stride_om + offs_n[None, :] * stride_on,
        out.to(out_ptr.dtype.element_ty),
        mask=mask_out,
    )


# Triton fixes interpreter-or-compiler when it is first imported: its standard library
# (tl.sum, tl.cdiv, ...) is decorated then. A kernel of the other mode cannot call it.
_STDLIB_INTERPRETED = type(tl.standard.sum).__name__ == "InterpretedFunction"


def build(interpret: bool):
    """The autotuned kernel, compiled for the GPU or wrapped for the interpreter."""
    if interpret != _STDLIB_INTERPRETED:
        now, then = ("set", "unset") if interpret else ("unset", "set")
        raise RuntimeError(
            f"TRITON_INTERPRET=1 is {now} now but was {then} when triton was first imported in this "
            "process; Triton fixes its mode at import, so set or unset TRITON_INTERPRET before anything "
            "imports triton (e.g. in the shell that starts Python)"
        )
    knobs = getattr(triton, "knobs", None)  # triton >= 3.4; older ones read the env var directly
    scope = knobs.runtime.scope() if knobs is not None else contextlib.nullcontext()
    with scope:  # decorate in the same mode whatever the env says now
        if knobs is not None:
            knobs.runtime.interpret = interpret
        fn = triton.jit(_skip_fusion_kernel)
        return triton.autotune(
            configs=_configs(interpret),
            key=["M", "N", "K"],
            prune_configs_by=None if interpret else {"early_config_prune": _prune},
        )(fn)


cdiv = triton.cdiv
