"""Sensitivity metrics: one file each, one registry, the same table out."""
from __future__ import annotations

from . import fisher, hessian, kl, local, roundoff, sqnr, task

# name -> module with NEEDS_LABELS and measure(ctx, group_indices, runner) -> {(g, c): value}
METRICS = {"roundoff": roundoff, "sqnr": sqnr, "kl": kl, "task": task, "local": local,
           "hessian": hessian, "fisher": fisher}
DEFAULT_METRIC = "sqnr"
