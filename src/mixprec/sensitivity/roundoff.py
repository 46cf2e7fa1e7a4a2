"""roundoff (MixQuant, Kloberdanz & Le 2023): data-free weight quantization error of the group,
relative to the weights' energy.

    S[g, c] = sum_layers ||Q_c(W) - W||^2 / sum_layers ||W||^2
Activation quantization is not seen by this metric (it needs no data).
"""
from __future__ import annotations

from dataclasses import dataclass

from . import Metric
from .context import MeasureContext


@dataclass(frozen=True)
class Roundoff(Metric):
    name = "roundoff"
    needs_data = False

    def measure(self, ctx: MeasureContext, group_indices: list[int], runner=None,
                state: None = None) -> dict[tuple[int, int], float]:
        values = {}
        for g in group_indices:
            group = ctx.groups.groups[g]
            for c, cand in enumerate(ctx.candidates):
                noise = signal = 0.0
                for layer in group.layer_names:
                    w = ctx.layer(layer).weight.detach().float()
                    noise += float((ctx.quantized_weight(layer, cand).float() - w).pow(2).sum())
                    signal += float(w.pow(2).sum())
                values[(g, c)] = noise / signal if signal > 0 else 0.0
        return values
