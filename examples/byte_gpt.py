"""A model as a user writes it: a small causal language model over bytes (nn.TransformerEncoder with a
causal mask, pre-norm, an output layer tied to the byte embedding), trained on the first half of
WikiText-2's test text.

    mixprec analyze --model examples/byte_gpt.py:build --data examples/byte_gpt.py:calibration \
        --candidates w2g32,w3g32,w4g32,w8,fp16 --metric kl --out runs/gpt
    mixprec solve runs/gpt --budget bits=4.5 --model examples/byte_gpt.py:build \
        --data examples/byte_gpt.py:calibration --out plan.json
    mixprec quantize --model examples/byte_gpt.py:build --data examples/byte_gpt.py:calibration \
        --plan plan.json --eval examples/byte_gpt.py:evaluate --out quantized/

The text is ../shared/data/text/wikitext-2-raw-test.txt (or $MIXPREC_DATA/text/...): a missing file is a
clear error naming it. Training reads windows of 64 bytes from the first half of the file (a few hundred
steps: seconds), calibration 64 windows of the third quarter, evaluation (byte perplexity, lower is better)
300 windows of the last quarter. The model is cached in mixprec's cache folder.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import nn

from mixprec.builtin import data_file
from mixprec.cache import trained

SEED, STEPS, LENGTH, VERSION = 0, 400, 64, "v1"


class ByteGPT(nn.Module):
    def __init__(self, width: int = 96, heads: int = 4, layers: int = 2):
        super().__init__()
        self.tokens = nn.Embedding(256, width)
        self.positions = nn.Embedding(LENGTH, width)
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, batch_first=True, norm_first=True,
                                           activation="gelu")
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, 256, bias=False)
        self.out.weight = self.tokens.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # (N, L) byte values -> (N, L, 256) logits
        n = ids.shape[1]
        h = self.tokens(ids) + self.positions(torch.arange(n, device=ids.device))
        mask = nn.Transformer.generate_square_subsequent_mask(n, device=ids.device)
        return self.out(self.norm(self.blocks(h, mask=mask, is_causal=True)))


@lru_cache(maxsize=1)
def _windows() -> torch.Tensor:
    raw = data_file("text/wikitext-2-raw-test.txt", "the byte GPT example's text").read_bytes()
    data = torch.tensor(list(raw), dtype=torch.long)
    return data[: len(data) // (LENGTH + 1) * (LENGTH + 1)].reshape(-1, LENGTH + 1)


def _train() -> ByteGPT:
    torch.manual_seed(SEED)
    model = ByteGPT()
    windows = _windows()[: len(_windows()) // 2]
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(SEED)
    for _ in range(STEPS):
        batch = windows[torch.randint(0, len(windows), (32,), generator=generator)]
        loss = nn.functional.cross_entropy(model(batch[:, :-1]).reshape(-1, 256), batch[:, 1:].reshape(-1))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()


def build() -> ByteGPT:
    return trained(f"example_byte_gpt_{VERSION}.pt", ByteGPT(), _train)


def calibration() -> list[torch.Tensor]:
    windows = _windows()
    start = len(windows) // 2
    return list(windows[start:start + 64, :-1].split(16))


@torch.no_grad()
def evaluate(model: nn.Module) -> dict:
    windows = _windows()
    held = windows[3 * len(windows) // 4:][:300]
    total = 0.0
    for batch in held.split(50):
        logits = model(batch[:, :-1])
        total += float(nn.functional.cross_entropy(logits.reshape(-1, 256), batch[:, 1:].reshape(-1), reduction="sum"))
    return {"main": "ppl", "ppl": math.exp(total / held[:, 1:].numel()), "higher_is_better": False}
