"""kl: KL divergence of the output distribution from the float model's, averaged over every
predicted position (classifier rows, language-model tokens).

    S[g, c] = mean_rows KL(softmax(y) || softmax(y_q))
"""
from __future__ import annotations

from dataclasses import dataclass


from . import Metric
from .context import MeasureContext
from .divergence import kl_divergence
from .outputs import OutputRunner


divergence = kl_divergence


@dataclass(frozen=True)
class KL(Metric):
    name = "kl"
    needs_outputs = True

    def measure(self, ctx: MeasureContext, group_indices: list[int], runner: OutputRunner,
                state: None = None) -> dict[tuple[int, int], float]:
        return runner.measure(group_indices, divergence)
