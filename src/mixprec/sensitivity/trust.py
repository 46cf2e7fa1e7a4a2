"""How far to trust a sensitivity metric: the Spearman rank correlation of its table with the
measured single-group drop of the real task metric (the ``task`` table), entry by entry."""
from __future__ import annotations

import math

import numpy as np
from scipy.stats import spearmanr

from .table import SensitivityTable


def rank_correlation(table: SensitivityTable, truth: SensitivityTable) -> float:
    """Spearman correlation over the (group, candidate) entries both tables measured (finite)."""
    cols = [truth.candidates.index(c) for c in table.candidates]
    rows = [truth.groups.index(g) for g in table.groups]
    a = table.values.ravel()
    b = truth.values[np.ix_(rows, cols)].ravel()
    keep = np.isfinite(a) & np.isfinite(b)
    if keep.sum() < 3 or np.ptp(a[keep]) == 0 or np.ptp(b[keep]) == 0:
        return math.nan
    return float(spearmanr(a[keep], b[keep]).statistic)


def format_report(rows: list[dict]) -> str:
    """Rows of {metric, spearman, seconds} as an aligned text table, best correlation first."""
    rows = sorted(rows, key=lambda r: -np.nan_to_num(r["spearman"], nan=-2))
    lines = [f"{'metric':<10} {'Spearman vs measured drop':>26} {'seconds':>9}"]
    lines += [f"{r['metric']:<10} {_rho(r['spearman']):>26} {r['seconds']:>9.1f}" for r in rows]
    if any(r["metric"] == "task" for r in rows):
        lines.append("task: the measured drops themselves (1 by definition; its seconds are what measuring every "
                     "entry cost)")
    if any(r["metric"] == "around" for r in rows):
        lines.append("around: its entries are moves from the base plan, and the measured drops are each group alone "
                     "from the float model, so the two rank different things; a low correlation here says little")
    if any(not np.isfinite(r["spearman"]) for r in rows):
        lines.append("undefined: no rank correlation where every value is equal (the measured metric did not change "
                     "on any entry, or the metric gave every entry the same value) or fewer than 3 entries are "
                     "measured by both; evaluate on more or harder data to see drops")
    return "\n".join(lines)


def _rho(value: float) -> str:
    return f"{value:.3f}" if np.isfinite(value) else "undefined"

