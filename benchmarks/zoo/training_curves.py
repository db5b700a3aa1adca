"""Training curves of the zoo: loss and FID-MNIST / class accuracy vs step, from the runs'
train_log.jsonl and their checkpoints (EMA weights, every 500 steps).

    python benchmarks/zoo/training_curves.py mnist-dit mnist-skip-dit \
        --json benchmarks/results/zoo_training_curves.json --plot benchmarks/results/zoo_training_curves.png

Each checkpoint samples `--samples` digits (class-balanced, seeds fixed) with DDIM `--steps`
steps and CFG 4 - every step full (models with long skips run them, nothing is cached).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

RUNS = Path(os.environ.get("ZOO_RUNS", "/tmp/zoo-runs"))


def smoothed_loss(run: Path, window: int = 100) -> list[tuple[int, float]]:
    recs = [json.loads(ln) for ln in (run / "train_log.jsonl").read_text().splitlines() if ln.strip()]
    out, acc = [], []
    for r in recs:
        if isinstance(r.get("loss"), float):
            acc.append(r["loss"])
        if r["step"] % window == 0 and acc:
            tail = acc[-window:]
            out.append((r["step"], sum(tail) / len(tail)))
    return out


def model_at(run: Path, checkpoint: Path):
    """The run's architecture holding the checkpoint's EMA weights (patched, every step full,
    when it has long-skip adapters)."""
    import diffusers

    import dit_cache

    meta = json.loads((run / "finetune.json").read_text())
    cfg = json.loads((run / "transformer" / "config.json").read_text())
    model = getattr(diffusers, meta["model_class"]).from_config(cfg)
    if meta.get("adapters") in ("residual", "replace"):
        dit_cache.patch(model, "skip-dit", fusion=meta["adapters"], interval=1)
    state = torch.load(checkpoint / "state.pt", map_location="cpu", weights_only=True)
    shadow = state["ema"]["shadow"]
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(shadow[n])
    return model.eval(), meta


def evaluate(model, meta, samples: int, steps: int, quality) -> dict:
    from dit_cache.bench.runners import RunSettings, ZooRunner

    runner = ZooRunner("ckpt", model, meta, RunSettings(steps=steps, batch=100))
    outs, labels = [], []
    for seed in range(samples // 100):
        prepared = runner.prepare(seed)
        outs.append(runner.generate(prepared))
        labels.append(prepared["labels"])
    x, y = torch.cat(outs), torch.cat(labels)
    return {"fid_mnist": quality.fid(x), "class_acc": quality.class_accuracy(x, y), "n": len(x)}


def main(argv=None) -> int:
    from dit_cache.finetuning.checkpoints import list_checkpoints
    from dit_cache.zoo.quality import MnistQuality

    p = argparse.ArgumentParser()
    p.add_argument("names", nargs="+")
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", required=True)
    p.add_argument("--plot")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = {"command": "python " + " ".join(sys.argv), "samples": args.samples, "steps": args.steps, "runs": {}}
    for name in args.names:
        run = RUNS / name
        meta0 = json.loads((run / "finetune.json").read_text())
        quality = MnistQuality(video=meta0["family"] == "latte")
        points = []
        for ckpt in list_checkpoints(run / "checkpoints"):
            step = int(ckpt.name.split("-")[-1])
            model, meta = model_at(run, ckpt)
            points.append({"step": step, **evaluate(model, meta, args.samples, args.steps, quality)})
            print(name, points[-1], flush=True)
        result["runs"][name] = {"loss": smoothed_loss(run), "checkpoints": points,
                                "seconds": meta0.get("seconds_last_run"), "steps": meta0.get("steps")}
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    if args.plot:
        plot(result, args.plot)
    return 0


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for name, r in result["runs"].items():
        steps, loss = zip(*r["loss"])
        a.plot(steps, loss, label=name)
        b.plot([c["step"] for c in r["checkpoints"]], [c["fid_mnist"] for c in r["checkpoints"]], marker="o", label=name)
    a.set(xlabel="step", ylabel="training loss (mean of 100 steps)", yscale="log")
    b.set(xlabel="step", ylabel=f"FID-MNIST ({result['samples']} samples, EMA)", yscale="log")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
