"""Sensitivity metrics: one file each, one registry, the same table out."""
from __future__ import annotations

from . import kl, roundoff, sqnr

# name -> module with NEEDS_LABELS and measure(ctx, group_indices, runner) -> {(g, c): value}
METRICS = {"roundoff": roundoff, "sqnr": sqnr, "kl": kl}
DEFAULT_METRIC = "sqnr"
