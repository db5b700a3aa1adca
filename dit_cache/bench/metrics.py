"""Measurements of one benchmark run: FLOPs, peak memory, latency statistics, fidelity.

- FLOPs: `torch.utils.flop_counter.FlopCounterMode` over one whole generation (matmuls,
  convolutions and attention; element-wise ops are not counted, the usual convention). Torch's
  table has no entry for the fused CPU attention kernel
  (``aten._scaled_dot_product_flash_attention_for_cpu``); it is added here with torch's own
  SDPA formula, so attention counts on CPU as it does on GPU.
- Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` over the generation (every tensor on
  the device). On CPU, the profiler's allocator events (``torch.profiler`` with
  ``profile_memory=True``): the bytes of the model's parameters and buffers (every component,
  including inserted adapters) when the generation starts, plus the highest net amount of
  memory the CPU allocator handed out during it (activations, cached features, folded weights
  built on first use). Process RSS is not used: it includes the Python runtime and allocator
  slack, and never goes down.
- Fidelity: final latents against the unpatched model's latents for the same seed, per image
  (per frame for video): PSNR with the reference image's value range as the data range, SSIM
  (torchmetrics, Gaussian window, same data range), max abs error.
"""
from __future__ import annotations

import math
import statistics
from typing import Any, Callable

import torch
from torch import nn


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _custom_flop_mapping() -> dict:
    mapping = {}
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is not None:
        from torch.utils.flop_counter import flop_registry

        if op.default not in flop_registry and op not in flop_registry:
            mapping[op.default] = _sdpa_cpu_flops
    return mapping


def state_bytes(modules: list[nn.Module]) -> int:
    """Bytes of every distinct parameter/buffer storage of `modules` (shared storages once)."""
    seen: set = set()
    total = 0
    for module in modules:
        for tensor in [*module.parameters(), *module.buffers()]:
            if tensor.device.type == "meta":
                continue
            storage = tensor.untyped_storage()
            key = (storage.data_ptr(), tensor.device)
            if key in seen:
                continue
            seen.add(key)
            total += storage.nbytes()
    return total


class Instrumented:
    """Result of one instrumented generation."""

    def __init__(self):
        self.flops: int | None = None
        self.call_flops: list[int] = []  # FLOPs of each transformer call, in order
        self.peak_bytes: int | None = None
        self.state_bytes: int | None = None
        self.activation_peak_bytes: int | None = None
        self.memory_method: str = ""
        self.output: torch.Tensor | None = None


def instrumented_run(
    generate: Callable[[], torch.Tensor],
    transformer: nn.Module,
    modules: list[nn.Module],
    device: str,
    count_flops: bool = True,
    measure_memory: bool = True,
) -> Instrumented:
    """Run `generate()` once under the FLOP counter and the memory probe."""
    from contextlib import ExitStack

    res = Instrumented()
    dev = torch.device(device)
    with ExitStack() as stack:
        counter = None
        if count_flops:
            from torch.utils.flop_counter import FlopCounterMode

            counter = stack.enter_context(FlopCounterMode(display=False, custom_mapping=_custom_flop_mapping()))
            starts: list[int] = []

            def before_call(module, args):
                starts.append(counter.get_total_flops())

            def after_call(module, args, output):
                res.call_flops.append(counter.get_total_flops() - starts.pop())

            for handle in (transformer.register_forward_pre_hook(before_call), transformer.register_forward_hook(after_call)):
                stack.callback(handle.remove)
        prof = None
        if measure_memory:
            res.state_bytes = state_bytes(modules)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
                torch.cuda.reset_peak_memory_stats(dev)
                start_alloc = torch.cuda.memory_allocated(dev)
                res.memory_method = "cuda.max_memory_allocated"
            else:
                prof = stack.enter_context(_QuietProfile())
                res.memory_method = "torch.profiler allocator events + parameter/buffer bytes"
        res.output = generate()
    if counter is not None:
        res.flops = int(counter.get_total_flops())
    if measure_memory:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            peak = torch.cuda.max_memory_allocated(dev)
            res.activation_peak_bytes = max(0, peak - start_alloc)
            res.peak_bytes = peak
        else:
            res.activation_peak_bytes = _profiler_peak(prof)
            if res.activation_peak_bytes is not None:
                res.peak_bytes = res.state_bytes + res.activation_peak_bytes
    return res


class _QuietProfile:
    """`torch.profiler.profile(profile_memory=True)` on CPU. Kineto prints `USDT: ...
    profiler_start/stop` lines on file descriptor 2 when it starts and stops, so fd 2 is
    silenced for exactly those two calls (not while the model runs)."""

    def __enter__(self):
        from torch.profiler import ProfilerActivity, profile

        self.prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        early = torch.empty(16)
        with _silenced_fd2():
            self.prof.__enter__()
            # Freeing a block allocated before profiling started makes the CPU allocator warn
            # ("Memory block of unknown size...") once per process: let that happen here, silenced.
            del early
        return self.prof

    def __exit__(self, *exc):
        with _silenced_fd2():
            return self.prof.__exit__(*exc)


class _silenced_fd2:
    def __enter__(self):
        import os
        import sys

        try:
            sys.stderr.flush()
            self.saved = os.dup(2)
            devnull = os.open(os.devnull, os.O_WRONLY)
        except (OSError, AttributeError, ValueError):
            self.saved = None
            return
        os.dup2(devnull, 2)
        os.close(devnull)

    def __exit__(self, *exc):
        import os

        if self.saved is not None:
            os.dup2(self.saved, 2)
            os.close(self.saved)


def _profiler_peak(prof) -> int | None:
    """Highest net CPU allocation during the profiled region (from raw allocator events)."""
    try:
        events = prof.profiler.kineto_results.events()
    except AttributeError:  # pragma: no cover - profiler internals moved
        return None
    deltas = sorted((e.start_ns(), e.nbytes()) for e in events if _is_cpu_mem(e))
    current = peak = 0
    for _, nbytes in deltas:
        current += nbytes
        peak = max(peak, current)
    return peak


def _is_cpu_mem(event) -> bool:
    if event.name() != "[memory]":
        return False
    try:
        return event.device_type() == torch.autograd.DeviceType.CPU
    except AttributeError:  # pragma: no cover
        return True


# ------------------------------------------------------------------------------------------
# Latency
# ------------------------------------------------------------------------------------------


def latency_stats(samples: list[float]) -> dict[str, Any]:
    if not samples:
        return {"latency_s": None, "latency_q1_s": None, "latency_q3_s": None, "latency_iqr_s": None, "latency_min_s": None}
    xs = sorted(samples)
    med = statistics.median(xs)
    if len(xs) >= 2:
        q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    else:
        q1 = q3 = xs[0]
    return {"latency_s": med, "latency_q1_s": q1, "latency_q3_s": q3, "latency_iqr_s": q3 - q1, "latency_min_s": xs[0]}


# ------------------------------------------------------------------------------------------
# Fidelity
# ------------------------------------------------------------------------------------------


def _images(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) or video (B, C, F, H, W) -> a stack of (C, H, W) images (frames)."""
    x = x.detach().to(device="cpu", dtype=torch.float64)
    if x.dim() == 5:
        b, c, f, h, w = x.shape
        return x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
    if x.dim() == 4:
        return x
    raise ValueError(f"expected (B, C, H, W) or (B, C, F, H, W) latents, got shape {tuple(x.shape)}")


def fidelity(output: torch.Tensor, reference: torch.Tensor) -> dict[str, Any]:
    """Per-image PSNR / SSIM and the max abs error of `output` against `reference`."""
    if output.shape != reference.shape:
        raise ValueError(f"output shape {tuple(output.shape)} != reference shape {tuple(reference.shape)}")
    out, ref = _images(output), _images(reference)
    diff = out - ref
    max_abs = float(diff.abs().max()) if diff.numel() else 0.0
    psnrs, ssims = [], []
    for o, r in zip(out, ref):
        data_range = float(r.max() - r.min()) or 1.0
        mse = float((o - r).pow(2).mean())
        psnrs.append(math.inf if mse == 0.0 else 10.0 * math.log10(data_range**2 / mse))
        ssims.append(_ssim(o, r, data_range))
    return {"psnr": psnrs, "ssim": ssims, "max_abs_err": max_abs}


def _ssim(o: torch.Tensor, r: torch.Tensor, data_range: float) -> float | None:
    try:
        from torchmetrics.functional.image import structural_similarity_index_measure
    except ImportError:
        return None
    if torch.equal(o, r):
        return 1.0
    side = min(o.shape[-2:])
    kernel = min(11, side if side % 2 else side - 1)
    if kernel < 3:
        return None
    sigma = 1.5 * kernel / 11
    value = structural_similarity_index_measure(
        o[None], r[None], data_range=data_range, kernel_size=kernel, sigma=sigma
    )
    return float(value)


def have_ssim() -> bool:
    try:
        import torchmetrics  # noqa: F401
    except ImportError:
        return False
    return True


def mean_psnr(values: list[float]) -> float | None:
    """Mean over images; bit-identical images (infinite PSNR) are left out of the mean, and the
    result is inf only when every image is bit-identical."""
    if not values:
        return None
    finite = [v for v in values if math.isfinite(v)]
    return statistics.fmean(finite) if finite else math.inf


def mean_or_none(values: list) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.fmean(vals) if vals else None
