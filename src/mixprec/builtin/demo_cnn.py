"""The built-in demo: a small CNN on scikit-learn's handwritten digits (1,797 real 8x8 images,
shipped inside scikit-learn, so it works offline on a fresh machine).

Split (fixed seed): 1,200 training images (the first 256 of them are the calibration set) and
597 held-out evaluation images. The CNN is trained once (seconds) and cached.
"""
from __future__ import annotations

from functools import lru_cache

import torch
from torch import nn

from . import Builtin
from ..cache import trained
from ..errors import MixprecError
from ..evaluation import EvalResult

TRAIN, SEED, EPOCHS = 1200, 0, 40
WEIGHTS_VERSION = "v1"


class DigitsCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.conv3 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc = nn.Linear(64, 10)
        self.act = nn.ReLU()
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv1(x))
        x = self.pool(self.act(self.conv2(x)))
        x = self.act(self.conv3(x))
        return self.fc(x.mean(dim=(2, 3)))


@lru_cache(maxsize=1)
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits
    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(SEED))
    return images[order], labels[order]


def fit(model: nn.Module, epochs: int, lr: float) -> nn.Module:
    """``model`` trained with Adam on the 1,200 training images, in batches of 64 in a fixed order; in eval mode.
    The demo's CNN and the examples on the digits (examples/) train so."""
    images, labels = digits()
    x, y = images[:TRAIN], labels[:TRAIN]
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(SEED)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(TRAIN, generator=generator).split(64):
            optimiser.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            optimiser.step()
    return model.eval()


def train(progress: bool = False) -> DigitsCNN:
    torch.manual_seed(SEED)
    return fit(DigitsCNN(), EPOCHS, 3e-3)


def load_model() -> DigitsCNN:
    return trained(f"demo_cnn_digits_{WEIGHTS_VERSION}.pt", DigitsCNN(), train)


def labeled_calibration(n: int = 256) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``n`` digits (the calibration set) as (images, labels) batches of 64."""
    if not 1 <= n <= 256:
        raise MixprecError(f"the demo's calibration set has 256 images; asked for {n}")
    images, labels = digits()
    return list(zip(images[:n].split(64), labels[:n].split(64)))


def calibration(n: int = 256) -> list[torch.Tensor]:
    return [images for images, _ in labeled_calibration(n)]


def calibration_labels(n: int = 256) -> list[torch.Tensor]:
    return [labels for _, labels in labeled_calibration(n)]


@torch.no_grad()
def evaluate(model: nn.Module, limit: int | None = None) -> EvalResult:
    images, labels = digits()
    x, y = images[TRAIN:], labels[TRAIN:]
    if limit is not None:
        x, y = x[:limit], y[:limit]
    device = next(model.parameters()).device
    correct = sum(int((model(xb.to(device)).argmax(1).cpu() == yb).sum()) for xb, yb in zip(x.split(256), y.split(256)))
    return EvalResult("top1", 100.0 * correct / len(y), True, {"samples": len(y)})


def builtin(name: str = "demo-cnn") -> Builtin:
    return Builtin(
        name=name,
        description="4-layer CNN trained on scikit-learn's 8x8 handwritten digits (built-in demo)",
        model=load_model,
        calibration=calibration,
        calibration_labels=calibration_labels,
        evaluate=evaluate,
        example_input=lambda: digits()[0][:2],
        calibration_source="256 of the 1,200 training images of sklearn digits",
        evaluation_source="597 held-out sklearn digits images",
        default_calibration_samples=256,
    )
