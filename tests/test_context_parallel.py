"""dit-cache on a context-parallel transformer (diffusers' `enable_parallelism` with a
`ContextParallelConfig`), two ranks under torchrun with gloo on the CPU (tests/cp_worker.py):
every rank takes the schedule's decisions, the output is the single-process cached output, and
a step issues no collective beyond the ones its computed blocks issue anyway (counted).
Ulysses runs on the CPU; ring attention needs a GPU backend (see RING_ON_CPU) and runs there
with nccl and cuDNN attention."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

WORKER = Path(__file__).with_name("cp_worker.py")
STEPS = 6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(tmp_path, preset: str, mode: str) -> dict:
    out = tmp_path / f"{preset}-{mode}.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), str(WORKER), str(out), "tiny-wan", str(STEPS), preset, mode]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(WORKER.parent))
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(out.read_text(encoding="utf-8"))


RING_ON_CPU = ("ring attention merges partial softmaxes and needs the attention's log-sum-exp, which diffusers' "
               "native CPU attention does not return (ValueError: Native attention does not support return_lse=True)")


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo")
@pytest.mark.parametrize("preset, mode", [
    ("skip-dit", "ulysses"), ("fora", "ulysses"), ("pab-236", "ulysses"),
    pytest.param("skip-dit", "ring", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason=RING_ON_CPU)),
])
def test_context_parallel_wan_matches_single_process_and_adds_no_collective(tmp_path, preset, mode):
    r = _run(tmp_path, preset, mode)
    # the same decisions on every rank, and the ones a single process takes
    assert r["patterns"] == [r["single_pattern"]] * 2 and "c" in r["single_pattern"]
    assert r["blocks_skipped"] == r["single_blocks_skipped"]
    # the output is the single-process one (uncached and cached), and caching changed it
    assert r["parallel_vs_single_uncached"] < 1e-5
    assert r["parallel_vs_single_cached"] < 1e-5 and r["cached_vs_uncached"] > 1e-4
    full, cached = r["full_calls"], r["cached_calls"]
    assert all(sum(c.values()) > 0 for c in full)  # the ranks really talk in every call
    for step, (f, c) in enumerate(zip(full, cached)):
        # outside the blocks (the split at the first block, the gather at proj_out): the same
        assert c.get("outside", 0) == f.get("outside", 0), step
        # every block that ran issued what it issues uncached, or less (FORA's reused attention
        # skips its all-to-alls); a skipped block issued none; nothing else talked
        for where, n in c.items():
            assert n <= f.get(where, 0), (step, where)
        if r["single_pattern"][step] == "F":
            assert c == f, step
