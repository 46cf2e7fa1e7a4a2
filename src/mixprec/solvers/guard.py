"""The guard: a mixed plan is returned only when it measures better than the best uniform plan
that meets the same budgets and pins (mixprec's promise: never worse than uniform).

    rivals  <- every uniform plan within the budgets (pins kept), and each one's variant with the
               first and last groups at 8 bits (the baseline users compare against)
    D(p)    <- a label-free divergence of plan p's output from the float model, on calibration data,
               or a tuple of divergences (D_1(p), ..., D_k(p)) that must agree
    best    <- argmin over rivals of D (tuples: the lowest mean rank over the divergences, ties to the
               last divergence, then to the label; a rival lower on every divergence always wins)
    return the mixed plan if D_i(mixed) < min over rivals of D_i for every i, else best

Ties go to uniform. The divergence is measured, not predicted: the additive sensitivity model is
what fails near aggressive plans, so the guard does not trust it. With several divergences the
mixed plan must win on each (a consensus): for classifiers, top-1 disagreement alone and 1/SQNR
alone each misranked one of two measured failures of the exact plan, and never both at once
(benchmarks/guard_divergences.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence, Union

import numpy as np

MIXED = "mixed"
Measured = Union[float, Sequence[float]]


def _tuple(value: Measured) -> tuple[float, ...]:
    return tuple(float(v) for v in value) if isinstance(value, (tuple, list)) else (float(value),)


def _finite(value: Measured):
    if isinstance(value, (tuple, list)):
        return [v if np.isfinite(v) else None for v in value]
    return value if np.isfinite(value) else None


def _show(value: Measured) -> str:
    return " / ".join(f"{v:.4g}" for v in _tuple(value))


@dataclass(frozen=True)
class GuardResult:
    chosen: str  # MIXED or the label of the uniform rival returned
    choice: np.ndarray
    divergence: dict[str, Measured] = field(default_factory=dict)  # label -> measured divergence(s), MIXED included
    reason: str = ""

    def to_dict(self, kind: str, data: str) -> dict:
        return {"divergence": kind, "data": data, "chosen": self.chosen, "reason": self.reason,
                "measured": {k: _finite(v) for k, v in self.divergence.items()}}


def _best(rivals: dict[str, np.ndarray], measured: dict[str, Measured]) -> str:
    """The rival to return: with one divergence the lowest; with several, the lowest mean rank, ties to the last
    divergence (for classifiers 1/SQNR, continuous where top-1 disagreement moves in whole samples), then the
    label. No divergence is privileged by its place in the tuple, and a rival lower on all of them wins."""
    labels = sorted(rivals)
    values = {label: _tuple(measured[label]) for label in labels}
    width = len(next(iter(values.values())))
    if width == 1:
        return min(labels, key=lambda label: (values[label], label))
    ranks = {label: 0.0 for label in labels}
    for i in range(width):
        for label in labels:  # ties share the better rank
            ranks[label] += sum(values[other][i] < values[label][i] for other in labels)
    return min(labels, key=lambda label: (ranks[label], values[label][-1], label))


def guard(choice: np.ndarray, rivals: dict[str, np.ndarray], measure: Callable[[np.ndarray], Measured]) -> GuardResult:
    """The mixed ``choice`` against the uniform ``rivals`` (label -> choice), by ``measure`` (lower is better;
    a tuple of divergences: the mixed plan must be lower on every one)."""
    if not rivals:
        return GuardResult(MIXED, choice, {}, "no uniform plan meets the budget")
    same = [label for label, rival in rivals.items() if np.array_equal(rival, choice)]
    if same:
        return GuardResult(same[0], choice, {}, f"the plan is {same[0]}")
    measured = {MIXED: measure(choice)}
    for label, rival in rivals.items():
        measured[label] = measure(rival)
    best = _best(rivals, measured)
    mixed = _tuple(measured[MIXED])
    lowest = [min(_tuple(measured[label])[i] for label in rivals) for i in range(len(mixed))]
    if all(m < low for m, low in zip(mixed, lowest)):
        return GuardResult(MIXED, choice, measured, f"the mixed plan measures {_show(measured[MIXED])} against "
                           f"{_show(measured[best])} for the best uniform plan within the budget ({best})")
    return GuardResult(best, rivals[best], measured, f"{best} measures {_show(measured[best])}, the mixed plan "
                       f"{_show(measured[MIXED])} (ties go to uniform"
                       + (", and the mixed plan must measure lower on every divergence" if len(mixed) > 1 else "")
                       + "): the uniform plan is returned")
