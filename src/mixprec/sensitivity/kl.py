"""kl: KL divergence of the output distribution from the float model's, averaged over every
predicted position (classifier rows, language-model tokens).

    S[g, c] = mean_rows KL(softmax(y) || softmax(y_q))
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import Metric
from .context import MeasureContext
from .outputs import OutputRunner


def divergence(ref: torch.Tensor, out: torch.Tensor) -> tuple[float, float]:
    log_p = torch.log_softmax(ref.reshape(-1, ref.shape[-1]), dim=-1)
    log_q = torch.log_softmax(out.reshape(-1, out.shape[-1]), dim=-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(dim=-1).clamp_min(0)  # >= 0 up to rounding
    return float(kl.sum()), float(kl.numel())


@dataclass(frozen=True)
class KL(Metric):
    name = "kl"
    needs_outputs = True

    def measure(self, ctx: MeasureContext, group_indices: list[int], runner: OutputRunner,
                state: None = None) -> dict[tuple[int, int], float]:
        return runner.measure(group_indices, divergence)
