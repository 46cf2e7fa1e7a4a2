"""The guard: a mixed plan is returned only when it measures better than the best uniform plan
that meets the same budgets and pins (mixprec's promise: never worse than uniform).

    rivals  <- every uniform plan within the budgets (pins kept), and each one's variant with the
               first and last groups at 8 bits (the baseline users compare against)
    D(p)    <- a label-free divergence of plan p's output from the float model, on calibration data
    best    <- argmin over rivals of D;   return the mixed plan if D(mixed) < D(best), else best

Ties go to uniform. The divergence is measured, not predicted: the additive sensitivity model is
what fails near aggressive plans, so the guard does not trust it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

MIXED = "mixed"


@dataclass(frozen=True)
class GuardResult:
    chosen: str  # MIXED or the label of the uniform rival returned
    choice: np.ndarray
    divergence: dict[str, float] = field(default_factory=dict)  # label -> measured divergence (MIXED included)
    reason: str = ""

    def to_dict(self, kind: str, data: str) -> dict:
        return {"divergence": kind, "data": data, "chosen": self.chosen, "reason": self.reason,
                "measured": {k: (v if np.isfinite(v) else None) for k, v in self.divergence.items()}}


def guard(choice: np.ndarray, rivals: dict[str, np.ndarray], measure: Callable[[np.ndarray], float]) -> GuardResult:
    """The mixed ``choice`` against the uniform ``rivals`` (label -> choice), by ``measure`` (lower is better)."""
    if not rivals:
        return GuardResult(MIXED, choice, {}, "no uniform plan meets the budget")
    same = [label for label, rival in rivals.items() if np.array_equal(rival, choice)]
    if same:
        return GuardResult(same[0], choice, {}, f"the plan is {same[0]}")
    measured = {MIXED: measure(choice)}
    for label, rival in rivals.items():
        measured[label] = measure(rival)
    best = min(rivals, key=lambda label: (measured[label], label))
    if measured[MIXED] < measured[best]:
        return GuardResult(MIXED, choice, measured, f"the mixed plan measures {measured[MIXED]:.4g} against "
                           f"{measured[best]:.4g} for the best uniform plan within the budget ({best})")
    return GuardResult(best, rivals[best], measured, f"{best} measures {measured[best]:.4g}, the mixed plan "
                       f"{measured[MIXED]:.4g} (ties go to uniform): the uniform plan is returned")
