"""sqnr (Pandey et al. 2023, sec. 3.1): noise-to-signal ratio of the network output with only
this group quantized, against the float model, on the calibration data (label-free).

    S[g, c] = sum ||y_q - y||^2 / sum ||y||^2     (1 / SQNR; lower is better)
"""
from __future__ import annotations

from dataclasses import dataclass


from . import Metric
from .context import MeasureContext
from .divergence import sqnr_divergence
from .outputs import OutputRunner


divergence = sqnr_divergence


@dataclass(frozen=True)
class SQNR(Metric):
    name = "sqnr"
    needs_outputs = True

    def measure(self, ctx: MeasureContext, group_indices: list[int], runner: OutputRunner,
                state: None = None) -> dict[tuple[int, int], float]:
        return runner.measure(group_indices, divergence)
