"""Quality of generated MNIST digits, scored by the shipped classifier (`zoo.classifier`):

* **FID-MNIST**: torchmetrics' ``FrechetInceptionDistance`` with the classifier's 128-d
  penultimate features in place of Inception (real statistics: the digits the zoo models were
  trained on, rendered as that model's data: centred 32x32 digits or moving-digit frames).
* **Class accuracy**: the share of samples generated for class c that the classifier labels c
  (for clips: per frame).

``python -m dit_cache.zoo.quality --train`` retrains the classifier.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from .classifier import (
    CLASSIFIER_FILE,
    NUM_FEATURES,
    MnistClassifier,
    accuracy,
    load_classifier,
    moving_frames,
    save_classifier,
    still_digits,
    train_classifier,
)


class FIDFeatures(nn.Module):
    """The feature module torchmetrics' FID takes (``num_features`` tells it the size)."""

    num_features = NUM_FEATURES

    def __init__(self, classifier: MnistClassifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(x.float())


def as_frames(samples: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Images (N, 1, H, W) or clips (N, 1, F, H, W) -> frames (N*F, 1, H, W), frames per sample."""
    if samples.dim() == 5:
        n, c, f, h, w = samples.shape
        return samples.permute(0, 2, 1, 3, 4).reshape(n * f, c, h, w), f
    if samples.dim() != 4:
        raise ValueError(f"expected images (N, 1, H, W) or clips (N, 1, F, H, W), got shape {tuple(samples.shape)}")
    return samples, 1


class MnistQuality:
    """FID-MNIST and class accuracy of generated samples (float in [-1, 1], 1 channel, 32x32)."""

    def __init__(self, video: bool = False, classifier: MnistClassifier | None = None):
        self.classifier = classifier if classifier is not None else load_classifier()
        self.video = video
        self._metric = None
        self._real: torch.Tensor | None = None
        self._floors: dict[int, float] = {}

    def _real_frames(self) -> torch.Tensor:
        """The real digits (or moving-digit frames) the FID compares with, rendered once."""
        if self._real is None:
            self._real = moving_frames() if self.video else still_digits()[0]
        return self._real

    def _fid_metric(self):
        """The FID metric holding the real statistics, computed once: ``reset`` keeps them
        (``reset_real_features=False``) and clears only the generated samples."""
        if self._metric is None:
            from torchmetrics.image.fid import FrechetInceptionDistance

            metric = FrechetInceptionDistance(feature=FIDFeatures(self.classifier), reset_real_features=False)
            real = self._real_frames()
            for i in range(0, len(real), 1000):
                metric.update(real[i : i + 1000], real=True)
            self._metric = metric
        self._metric.reset()
        return self._metric

    @torch.no_grad()
    def fid(self, samples: torch.Tensor) -> float:
        frames, _ = as_frames(samples.clamp(-1, 1))
        if len(frames) < 2:
            raise ValueError("FID needs at least 2 samples")
        metric = self._fid_metric()
        for i in range(0, len(frames), 1000):
            metric.update(frames[i : i + 1000], real=False)
        return float(metric.compute())

    @torch.no_grad()
    def fid_floor(self, n: int) -> float:
        """FID-MNIST of `n` real digits (frames): what a perfect model would score with that
        many samples, so that a FID is read against it, not against 0 (cached per `n`)."""
        if n not in self._floors:
            real = self._real_frames()
            pick = torch.randperm(len(real), generator=torch.Generator().manual_seed(0))[:n]
            metric = self._fid_metric()
            metric.update(real[pick], real=False)
            self._floors[n] = float(metric.compute())
        return self._floors[n]

    def class_accuracy(self, samples: torch.Tensor, labels: torch.Tensor) -> float:
        frames, per = as_frames(samples.clamp(-1, 1))
        return accuracy(self.classifier, frames, torch.as_tensor(labels).repeat_interleave(per))


def main(argv=None) -> int:
    import argparse
    import time

    p = argparse.ArgumentParser(description="train the shipped MNIST classifier (FID-MNIST features)")
    p.add_argument("--train", action="store_true")
    p.add_argument("--output", default=str(CLASSIFIER_FILE))
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if not args.train:
        p.error("nothing to do: pass --train")
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model, acc = train_classifier(epochs=args.epochs)
    meta = {**acc, "epochs": args.epochs, "seed": 0, "seconds": round(time.perf_counter() - t0, 1),
            "command": f"python -m dit_cache.zoo.quality --train --epochs {args.epochs} --threads {args.threads}"}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    save_classifier(model, Path(args.output), meta)
    print(json.dumps(meta, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
