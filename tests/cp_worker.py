"""One rank of the context-parallel check (tests/test_context_parallel.py runs it under
``torchrun --nproc-per-node 2``; gloo on CPU). Writes what rank 0 saw to argv[1] (JSON).

Every rank builds the same tiny model and inputs (same seeds). First, on its own (no
parallelism), the single-process references: the uncached and the cached output of a short
flow-matching loop. Then diffusers' context parallelism (`enable_parallelism` with a
`ContextParallelConfig`) is enabled, dit-cache is patched on top, and the same loop runs with
every collective counted per model call (a TorchDispatchMode sees the functional collectives
diffusers issues) and per block (forward pre-hooks say which block is running)."""
from __future__ import annotations

import json
import os
import sys
from collections import Counter

import torch
import torch.distributed as dist
from torch.utils._python_dispatch import TorchDispatchMode

import dit_cache
from dit_cache.testing import build_scheduler, build_transformer

MODEL, STEPS, PRESET = sys.argv[2], int(sys.argv[3]), sys.argv[4]
MODE = sys.argv[5] if len(sys.argv) > 5 else "ulysses"
CUDA = torch.cuda.is_available()
DEVICE = "cpu"  # this rank's device, set in main()


class CollectiveCounter(TorchDispatchMode):
    """Counts collective ops (c10d / functional collectives) by the block they ran in."""

    def __init__(self):
        super().__init__()
        self.where = "outside"
        self.counts: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace in ("_c10d_functional", "c10d", "_c10d_functional_autograd"):
            if not func.__name__.startswith("wait_tensor"):
                self.counts[self.where] += 1
        return func(*args, **(kwargs or {}))


def inputs(model, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    c = model.config
    x = torch.randn(1, c.in_channels, 2, 16, 16, generator=g)  # 2 latent frames of 16 x 16: 128 tokens
    text = torch.randn(1, 16, c.text_dim, generator=g)
    return x.to(DEVICE), text.to(DEVICE)


@torch.no_grad()
def loop(model, counter: CollectiveCounter | None = None) -> tuple[torch.Tensor, list[Counter]]:
    """A flow-matching loop; the collectives of every call, by block."""
    sched = build_scheduler("flow-euler", MODEL)
    sched.set_timesteps(STEPS, device=DEVICE)
    x, text = inputs(model)
    per_call = []
    for t in sched.timesteps:
        if counter is not None:
            counter.counts = Counter()
        out = model(hidden_states=x, timestep=t.expand(1), encoder_hidden_states=text, return_dict=False)[0]
        if counter is not None:
            per_call.append(counter.counts)
        x = sched.step(out, t, x, return_dict=False)[0]
    return x, per_call


def main() -> None:
    global DEVICE
    dist.init_process_group("nccl" if CUDA else "gloo")
    torch.set_num_threads(1)
    rank, world = dist.get_rank(), dist.get_world_size()
    if CUDA:
        DEVICE = f"cuda:{rank % torch.cuda.device_count()}"
        torch.cuda.set_device(DEVICE)

    model = build_transformer(MODEL, seed=0, device=DEVICE)
    if MODE == "ring":  # ring attention merges partial softmaxes: a backend that returns the LSE
        model.set_attention_backend("_native_cudnn")
    reference, _ = loop(model)
    dit_cache.patch(model, PRESET)
    single_cached, _ = loop(model)
    single_stats = dit_cache.stats(model)
    dit_cache.unpatch(model)

    from diffusers import ContextParallelConfig

    if not CUDA:
        # diffusers 0.42 picks `rank % torch.accelerator.device_count()` as the device, a division
        # by zero on a CPU-only machine: give it one "device" so the gloo path runs at all.
        torch.accelerator.device_count = lambda: 1
    degree = {"ulysses_degree": world} if MODE == "ulysses" else {"ring_degree": world}
    model.enable_parallelism(config=ContextParallelConfig(**degree))

    counter = CollectiveCounter()
    names = {id(m): n for n, m in model.named_modules()}
    for block in model.blocks:
        block.register_forward_pre_hook(lambda m, a, k: setattr(counter, "where", names[id(m)]), with_kwargs=True)
        block.register_forward_hook(lambda m, a, o: setattr(counter, "where", "outside"))
    with counter:
        parallel_full, full_calls = loop(model, counter)
        dit_cache.patch(model, PRESET)
        parallel_cached, cached_calls = loop(model, counter)
    stats = dit_cache.stats(model)
    patterns = [None] * world
    dist.all_gather_object(patterns, stats["pattern"])
    if rank == 0:
        rel = lambda a, b: float((a - b).norm() / b.norm())  # noqa: E731
        result = dict(
            world=world, mode=MODE, patterns=patterns, single_pattern=single_stats["pattern"],
            blocks_skipped=stats["blocks_skipped"], single_blocks_skipped=single_stats["blocks_skipped"],
            parallel_vs_single_uncached=rel(parallel_full, reference),
            parallel_vs_single_cached=rel(parallel_cached, single_cached),
            cached_vs_uncached=rel(single_cached, reference),
            full_calls=[dict(c) for c in full_calls], cached_calls=[dict(c) for c in cached_calls],
        )
        with open(sys.argv[1], "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
    dist.barrier()
    dist.destroy_process_group()
    # Gloo's worker threads can still hold work objects at interpreter finalization, and a rank
    # then dies with SIGABRT ("terminate called without an active exception") after its work is
    # done: seen about once in twenty runs here (cf. pytorch/pytorch#179291). The result is
    # written and every rank has passed the barrier, so leave without the finalizers.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
