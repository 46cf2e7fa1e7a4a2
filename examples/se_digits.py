"""A model as a user writes it: a small MobileNetV3-style CNN (squeeze-excitation gates multiplying the
features, hardswish, a dilated depthwise conv, a grouped conv with reflect padding, a residual add) on
scikit-learn's 8x8 handwritten digits.

    mixprec analyze --model examples/se_digits.py:build --data examples/se_digits.py:calibration \
        --candidates w2a8,w3a8,w4a8,w6a8,w8a8 --out runs/se
    mixprec solve runs/se --budget bytes=w3a8 --model examples/se_digits.py:build \
        --data examples/se_digits.py:calibration --out plan.json
    mixprec export --model examples/se_digits.py:build --data examples/se_digits.py:calibration \
        --plan plan.json --target ort-cpu --out se.onnx --eval examples/se_digits.py:evaluate

The data are real (1,797 images shipped inside scikit-learn, so nothing is downloaded): the split of
mixprec's built-in demo, 1,200 training images (the first 256 also calibrate) and 597 held out for
evaluation. The model trains once (a few minutes of CPU time on two cores) and is cached in mixprec's cache folder.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from mixprec.builtin.demo_cnn import evaluate, fit, labeled_calibration
from mixprec.cache import trained

# the specs this file gives: file.py:build, :calibration and :evaluate (the demo's own evaluation: top-1 on
# the held-out digits)
__all__ = ["build", "calibration", "evaluate"]

SEED, EPOCHS, VERSION = 0, 40, "v1"


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.reduce = nn.Conv2d(channels, channels // 4, 1)
        self.expand = nn.Conv2d(channels // 4, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = F.hardsigmoid(self.expand(F.relu(self.reduce(F.adaptive_avg_pool2d(x, 1)))))
        return x * gate


class SENet(nn.Module):
    def __init__(self, width: int = 32):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.Hardswish())
        self.depthwise = nn.Sequential(nn.Conv2d(width, width, 3, padding=2, dilation=2, groups=width, bias=False),
                                       nn.BatchNorm2d(width), nn.Hardswish())
        self.se = SqueezeExcite(width)
        self.project = nn.Sequential(nn.Conv2d(width, width, 1, bias=False), nn.BatchNorm2d(width))
        self.grouped = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, groups=4, padding_mode="reflect")
        self.head = nn.Linear(2 * width, 10)

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # (N, 1, 8, 8)
        h = self.stem(images)
        h = h + self.project(self.se(self.depthwise(h)))  # an inverted-residual block's add
        h = F.hardswish(self.grouped(h))
        return self.head(h.mean((2, 3)))


def _train() -> SENet:
    torch.manual_seed(SEED)
    model = SENet()
    return fit(model, EPOCHS, lr=3e-3)


def build() -> SENet:
    return trained(f"example_se_digits_{VERSION}.pt", SENet(), _train)


def calibration() -> list[tuple[torch.Tensor, torch.Tensor]]:
    return labeled_calibration()  # the first 256 digits with their labels, batches of 64
