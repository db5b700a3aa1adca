"""`dit_cache.bench`: speed, FLOPs, memory and fidelity of every cache method, side by side.

    from dit_cache.bench import BenchConfig, run_bench
    result = run_bench(BenchConfig(model="tiny-dit", methods=["none", "skip-dit", "fora"], steps=10))
    result.rows          # one dict per method (see ROW_KEYS)
    result.write_json("bench.json"); result.write_csv("bench.csv"); result.plot("bench.png")

What one run does (methods in the order given; `unpatched` and `none` are always added first):

1. per method: install it (``dit_cache.patch`` for presets; diffusers' hooks for the peers),
   run one *instrumented* generation on the first seed, untimed: FLOPs
   (`torch.utils.flop_counter.FlopCounterMode`), peak memory, the step pattern (it doubles as
   the first warm-up generation), then ``warmup - 1`` more untimed generations; remove it;
2. timed generations, ``repeats`` per seed and method. ``order="interleaved"`` (default) runs
   them in rounds, each round installing every method in turn (in a new seeded order after the
   first round) for one generation per seed, so drift of a shared machine hits every method alike;
   ``"sequential"`` runs all of a method's repeats in one installation;
3. fidelity of each seed's final latents against the ``unpatched`` latents of the same seed.

Removing a method restores the model exactly (dit-cache's ``unpatch``; the peers' hooks,
registries and instance ``forward`` attributes are deleted). After every installation a
two-step generation runs untimed, so that what a method builds on its first calls (Skip-Cache's
fresh adapters fold their weights, caches and the allocator get their memory) is not timed.

Speedup is against ``none`` (patched, step tracking on, nothing cached); ideal speedup is
``flops(none) / flops(method)``; efficiency = speedup / ideal speedup. The ``unpatched`` row
shows what patching itself costs.

Scale-out: under ``torchrun`` (``WORLD_SIZE > 1``) the seeds are sharded across ranks
(``seeds[rank::world]``; gloo on CPU, nccl on CUDA), every rank measures its own seeds and rank 0
gathers all rows (``gather_object``) and reports. The cache schedules are static (a step's
decision depends only on its index and timestep), so ranks never need to talk during a
generation.

Modules: config (BenchConfig), specs (method names and options), applied / peers / install
(putting a method on the model and taking it off), measure (the phases) with instrument (FLOPs,
memory) and fidelity, machine (background load, machine info), aggregate / columns / rows (the
row columns, declared once), meta, results (JSON/CSV), table, plot, dist, progress, run.
"""
from __future__ import annotations

from .._common.lazy import lazy_exports

_EXPORTS = {
    "ROW_KEYS": ".columns", "DEFAULT_MODEL": ".config", "DEFAULT_SUITE": ".config", "BenchConfig": ".config",
    "BenchInputError": ".errors", "BenchResult": ".results", "SuiteResult": ".results", "run_bench": ".run",
    "render_table": ".table",
}
__getattr__ = lazy_exports(__name__, _EXPORTS, globals())
__all__ = list(_EXPORTS)
