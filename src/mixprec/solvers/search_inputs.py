"""What the single-kind searches (greedy_pareto, greedy, mixquant) share: their input checks,
the highest-precision and cheapest plans, and a cache that measures each plan once."""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from ..errors import MixprecError
from .problem import allowed_mask, cheapest, highest_precision  # noqa: F401 (the searches take them from here)


def checked_tables(sensitivity: np.ndarray, costs: dict[str, np.ndarray], kind: str,
                   allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The sensitivity table, the cost table of ``kind`` and the allowed mask, after the checks every search shares."""
    S = np.asarray(sensitivity, dtype=float)
    if S.ndim != 2 or 0 in S.shape:
        raise MixprecError(f"sensitivity must be a (groups, candidates) table with at least one of each; got shape {S.shape}")
    if kind not in costs:
        raise MixprecError(f"no cost table for budget kind {kind!r}; kinds: {sorted(costs)}")
    for name, table in costs.items():
        if np.shape(table) != S.shape:
            raise MixprecError(f"cost table {name!r} has shape {np.shape(table)}; it must match the sensitivity table {S.shape}")
    if allowed is not None:
        if np.shape(allowed) != S.shape:
            raise MixprecError(f"allowed mask has shape {np.shape(allowed)}; it must match the sensitivity table {S.shape}")
        allowed = np.asarray(allowed, dtype=bool)
    mask = allowed_mask(S, allowed)
    cost = np.asarray(costs[kind], dtype=float)
    bad = np.argwhere(mask & ~np.isfinite(cost))
    if len(bad):
        raise MixprecError(f"cost table {kind!r} is not finite at allowed (group, candidate) {bad[:5].tolist()}; "
                           "give a finite cost or disallow the candidate")
    return S, cost, mask


class LossCache:
    """``measure`` behind a cache keyed by the plan: no plan is measured twice; ``len()`` = distinct measurements.
    A NaN loss (a broken quantized model) counts as +inf, so it never meets a loss bound."""

    def __init__(self, measure: Callable[[np.ndarray], float],
                 measured: Callable[[np.ndarray, float], None] | None = None):
        """measured(choice, loss): called once per new measurement (a search's trace)."""
        if not callable(measure):
            raise MixprecError(f"measure must be a function choice -> loss; got {type(measure).__name__}")
        self.measure = measure
        self.measured = measured
        self.losses: dict[tuple[int, ...], float] = {}

    def __call__(self, choice: np.ndarray) -> float:
        key = tuple(int(c) for c in choice)
        if key not in self.losses:
            loss = float(self.measure(np.array(key)))
            self.losses[key] = math.inf if math.isnan(loss) else loss
            if self.measured is not None:
                self.measured(np.array(key), self.losses[key])
        return self.losses[key]

    def __contains__(self, choice) -> bool:
        return tuple(int(c) for c in choice) in self.losses

    def __len__(self) -> int:
        return len(self.losses)


def json_loss(loss: float | None) -> float | None:
    """A loss for the trace: None where it is not a finite number (JSON has no inf)."""
    return float(loss) if loss is not None and math.isfinite(loss) else None


def checked_number(name: str, value) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise MixprecError(f"{name} must be a number; got {value!r}") from None
    if not math.isfinite(number):
        raise MixprecError(f"{name} must be a finite number; got {value!r}")
    return number
