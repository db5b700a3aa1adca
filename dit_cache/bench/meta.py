"""What a result records beside its rows: versions, machine, settings, summary and targets."""
from __future__ import annotations

import datetime
import sys
from typing import Any

import torch

from ..methods import SkipCacheConfig
from ..schedules import presets
from ..version import __version__
from .machine import machine_info
from .specs import UNPATCHED


def run_meta(config, runner, world: int, threads, device, rows, timesteps) -> dict:
    import diffusers

    by = {r["method"]: r for r in rows}
    none, unp = by.get("none"), by.get(UNPATCHED)
    summary: dict[str, Any] = {}
    if none and unp and none["latency_s"] and unp["latency_s"]:
        summary["none_vs_unpatched_latency"] = none["latency_s"] / unp["latency_s"] - 1.0
    summary["hidden_state_bytes"] = hidden_state_bytes(runner)
    return {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": config.command if config.command is not None else sys.argv,
        "dit_cache": __version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "cache_dit": cache_dit_version(),  # the `peers` extra (None: not installed)
        "machine": machine_info(),
        "threads": threads if threads is not None else torch.get_num_threads(),
        "world_size": world,
        "device": device,
        "run": runner.describe(),
        "timesteps": timesteps,
        "seeds": list(config.seeds),
        "repeats": config.repeats,
        "warmup": config.warmup,
        "max_background": config.max_background,
        "order": config.order,
        "memory_method": next((r.get("mem_method") for r in rows if r.get("mem_method")), None),
        "flop_counter": "torch.utils.flop_counter.FlopCounterMode (+ CPU flash-attention formula)",
        "summary": summary,
        "targets": targets(rows, summary),
    }


def targets(rows: list[dict], summary: dict) -> list[dict]:
    """The issue's benchmark targets, evaluated on these rows (informative, never enforced)."""
    out = []
    by = {r["method"]: r for r in rows}
    if "none_vs_unpatched_latency" in summary:
        v = summary["none_vs_unpatched_latency"]
        out.append({"target": "none within 3% of unpatched latency", "value": v, "ok": abs(v) <= 0.03})
    unp = by.get(UNPATCHED)
    configs = presets()
    for r in rows:
        if r["kind"] != "dit-cache" or r["status"] != "ok":
            continue
        if isinstance(configs.get(r["preset"]), SkipCacheConfig) and r["efficiency"] is not None:
            out.append({"target": f"{r['method']}: efficiency >= 0.90", "value": r["efficiency"], "ok": r["efficiency"] >= 0.90})
        if unp and unp["peak_mem_bytes"] and r["peak_mem_bytes"] is not None:
            bound = unp["peak_mem_bytes"] * 1.05 + summary["hidden_state_bytes"]
            out.append({
                "target": f"{r['method']}: peak memory <= unpatched + one cached hidden state + 5%",
                "value": r["peak_mem_bytes"], "bound": bound, "ok": r["peak_mem_bytes"] <= bound,
            })
    return out


def hidden_state_bytes(runner) -> int:
    """Bytes of one hidden state (B, L, D) of the transformer for this run (all CFG branches
    batched: one batch of 2B)."""
    cfg = runner.transformer.config
    dim = int(cfg.num_attention_heads) * int(cfg.attention_head_dim)
    batch = runner.s.batch * (2 if runner.cfg else 1)
    return batch * runner.latent_tokens() * dim * torch.empty((), dtype=runner.s.dtype).element_size()


def cache_dit_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cache-dit")
    except PackageNotFoundError:
        return None
