"""Feature stability of the zoo DiTs (the Skip-DiT paper's Figure 1 argument), two views:

1. perturbation: cosine similarity between each block's output for x_t and for
   x_t + 0.05 * N(0, I) (same t, label), over held-in digits at t in {100, 300, 500, 700, 900};
2. across steps: cosine similarity between each block's output at consecutive steps of a
   20-step DDIM sampling (CFG 4) - what a cache reuses.

Every step is full (models with long skips run them: Skip-Cache with interval=1).

    python benchmarks/zoo/feature_stability.py --json benchmarks/results/zoo_feature_stability.json \
        --plot benchmarks/results/zoo_feature_stability.png
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

MODELS = ("mnist-dit", "mnist-dit-retrofit", "mnist-skip-dit")


class BlockRecorder:
    """Plain forward hooks on the blocks (removed by `close`), recording (B, L, D) outputs."""

    def __init__(self, blocks):
        self.outputs: list[torch.Tensor] = []
        self.handles = [b.register_forward_hook(self._hook) for b in blocks]

    def _hook(self, module, args, output):
        self.outputs.append((output[0] if isinstance(output, tuple) else output).detach().flatten(1))

    def take(self) -> list[torch.Tensor]:
        out, self.outputs = self.outputs, []
        return out

    def close(self):
        for h in self.handles:
            h.remove()


def load(name: str):
    import dit_cache

    # models with adapters: patched with them, every step full; mnist-dit: the plain model
    return dit_cache.zoo.load(name, schedule="skip-dit", interval=1)


def perturbation(model, generator) -> list[float]:
    from dit_cache.finetuning.data import mnist, to_float
    from dit_cache.finetuning.objective import training_scheduler

    sched = training_scheduler(None)
    data = mnist()
    idx = torch.arange(0, 5000, 50)  # 100 digits, 10 per class
    x0, labels = to_float(data.x[idx]), data.labels[idx]
    rec = BlockRecorder(model.transformer_blocks)
    sims = []
    with torch.no_grad():
        for t in (100, 300, 500, 700, 900):
            tt = torch.full((len(x0),), t)
            xt = sched.add_noise(x0, torch.randn(x0.shape, generator=generator), tt)
            delta = 0.05 * torch.randn(x0.shape, generator=generator)
            model(xt, timestep=tt, class_labels=labels)
            a = rec.take()
            model(xt + delta, timestep=tt, class_labels=labels)
            b = rec.take()
            sims.append([float(F.cosine_similarity(u, v, dim=1).mean()) for u, v in zip(a, b)])
    rec.close()
    return [sum(col) / len(col) for col in zip(*sims)]


def across_steps(model, meta: dict) -> list[float]:
    from dit_cache.bench.runners import RunSettings, ZooRunner

    runner = ZooRunner("m", model, meta, RunSettings(steps=20, batch=20))  # model already patched where needed
    rec = BlockRecorder(model.transformer_blocks)
    runner.generate(runner.prepare(0))
    outs = rec.take()
    rec.close()
    n = len(model.transformer_blocks)
    per_step = [outs[i : i + n] for i in range(0, len(outs), n)]
    sims = [[float(F.cosine_similarity(a, b, dim=1).mean()) for a, b in zip(s0, s1)] for s0, s1 in zip(per_step, per_step[1:])]
    return [sum(col) / len(col) for col in zip(*sims)]


def main(argv=None) -> int:
    import dit_cache

    p = argparse.ArgumentParser()
    p.add_argument("--json", required=True)
    p.add_argument("--plot")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = {"command": "python " + " ".join(sys.argv), "models": {}}
    for name in MODELS:
        model = load(name)
        g = torch.Generator().manual_seed(0)
        meta = dit_cache.zoo.meta(name)
        result["models"][name] = {"perturbation": perturbation(model, g), "across_steps": across_steps(model, meta)}
        print(name, {k: [round(v, 4) for v in vals] for k, vals in result["models"][name].items()}, flush=True)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for ax, key, title in zip(axes, ("perturbation", "across_steps"),
                                  ("x_t vs x_t + 0.05 noise", "consecutive DDIM steps (20 steps)")):
            for name, r in result["models"].items():
                ax.plot(range(len(r[key])), r[key], marker="o", label=name)
            ax.set(xlabel="block", ylabel="cosine similarity of block outputs", title=title)
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
