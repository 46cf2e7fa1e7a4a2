"""A model as a user writes it: a small vision transformer (nn.TransformerEncoder, a class token, learned
positions) on scikit-learn's 8x8 handwritten digits, each image cut into 16 patches of 2x2 pixels.

    mixprec analyze --model examples/vit_digits.py:build --data examples/vit_digits.py:calibration \
        --candidates w2a8,w3a8,w4a8,w6a8,w8a8 --out runs/vit
    mixprec solve runs/vit --budget bops=w4a8 --model examples/vit_digits.py:build \
        --data examples/vit_digits.py:calibration --out plan.json
    mixprec export --model examples/vit_digits.py:build --data examples/vit_digits.py:calibration \
        --plan plan.json --target ort-cpu --out vit.onnx --eval examples/vit_digits.py:evaluate

The data are real (1,797 images shipped inside scikit-learn, so nothing is downloaded): the split of
mixprec's built-in demo, 1,200 training images (the first 256 also calibrate) and 597 held out for
evaluation. The model trains once (about a minute on two cores) and is cached in mixprec's cache folder.
Its attention is torch's own nn.MultiheadAttention, which mixprec runs as four projection layers.
"""
from __future__ import annotations

import torch
from torch import nn

from mixprec.builtin.demo_cnn import evaluate, fit, labeled_calibration
from mixprec.cache import trained

# the specs this file gives: file.py:build, :calibration and :evaluate (the demo's own evaluation: top-1 on
# the held-out digits)
__all__ = ["build", "calibration", "evaluate"]

SEED, EPOCHS, VERSION = 0, 60, "v1"


class ViT(nn.Module):
    def __init__(self, width: int = 64, heads: int = 4, layers: int = 2):
        super().__init__()
        self.embed = nn.Linear(4, width)
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        self.pos = nn.Parameter(torch.zeros(1, 17, width))
        layer = nn.TransformerEncoderLayer(width, heads, 2 * width, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 10)

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # (N, 1, 8, 8)
        n = images.shape[0]
        patches = images.reshape(n, 4, 2, 4, 2).permute(0, 1, 3, 2, 4).reshape(n, 16, 4)
        h = torch.cat([self.cls.expand(n, -1, -1), self.embed(patches)], 1) + self.pos
        return self.head(self.norm(self.encoder(h)[:, 0]))


def _train() -> ViT:
    torch.manual_seed(SEED)
    model = ViT()
    nn.init.normal_(model.pos, std=0.02)
    return fit(model, EPOCHS, lr=2e-3)


def build() -> ViT:
    return trained(f"example_vit_digits_{VERSION}.pt", ViT(), _train)


def calibration() -> list[tuple[torch.Tensor, torch.Tensor]]:
    return labeled_calibration()  # the first 256 digits with their labels, batches of 64
