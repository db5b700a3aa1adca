"""FLOPs and peak memory of one instrumented generation.

- FLOPs: `torch.utils.flop_counter.FlopCounterMode` over one whole generation (matmuls,
  convolutions and attention; element-wise ops are not counted, the usual convention). Torch's
  table has no entry for the fused CPU attention kernel
  (``aten._scaled_dot_product_flash_attention_for_cpu``); runtime/flops.py adds it with torch's
  own SDPA formula, so attention counts on CPU as it does on GPU and on the meta device.
- Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` over the generation (every tensor on
  the device). On CPU, the profiler's allocator events (``torch.profiler`` with
  ``profile_memory=True``): the bytes of the model's parameters and buffers (every component,
  including inserted adapters) when the generation starts, plus the highest net amount of
  memory the CPU allocator handed out during it (activations, cached features, folded weights
  built on first use). Process RSS is not used: it includes the Python runtime and allocator
  slack, and never goes down.
"""
from __future__ import annotations

import os
import sys
from contextlib import ExitStack
from typing import Callable

import torch
from torch import nn

from ..runtime.flops import flop_counter


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
    res = Instrumented()
    dev = torch.device(device)
    with ExitStack() as stack:
        counter = None
        if count_flops:

            counter = stack.enter_context(flop_counter())
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
