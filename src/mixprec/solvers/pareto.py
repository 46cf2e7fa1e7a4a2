"""The Pareto front for one budget kind: the exact plan at evenly spaced budgets between the
cheapest and the most expensive plan, dominated points removed (a plan is dominated when another
is no costlier and no more sensitive, and strictly better in one)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .exact import Solution, allowed_mask, min_costs, solve_exact


@dataclass(frozen=True)
class FrontPoint:
    budget: float
    solution: Solution


def pareto_front(sensitivity: np.ndarray, costs: dict[str, np.ndarray], kind: str, points: int = 30,
                 fixed: dict[str, float] | None = None, allowed: np.ndarray | None = None) -> list[FrontPoint]:
    """Up to ``points`` non-dominated plans for budget kind ``kind``, cheapest first."""
    fixed = dict(fixed or {})
    mask = allowed_mask(np.asarray(sensitivity, dtype=float), allowed)
    low = min_costs({kind: costs[kind]}, fixed, mask)[kind]
    high = float(fixed.get(kind, 0.0) + np.where(mask, costs[kind], -np.inf).max(axis=1).sum())
    front: list[FrontPoint] = []
    for budget in np.linspace(low, high, max(points, 2)):
        solution = solve_exact(sensitivity, costs, {kind: float(budget) * (1 + 1e-12)}, fixed, mask)
        front.append(FrontPoint(float(budget), solution))
    front.sort(key=lambda p: (p.solution.costs[kind], p.solution.objective))
    kept: list[FrontPoint] = []
    for point in front:  # cheapest first: keep a point only if it is strictly less sensitive than all cheaper ones
        if not kept or point.solution.objective < kept[-1].solution.objective - 1e-15:
            if kept and point.solution.costs[kind] == kept[-1].solution.costs[kind]:
                kept[-1] = point
            else:
                kept.append(point)
    return kept
