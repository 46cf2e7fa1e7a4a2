"""The Pareto front for one budget kind: plans at evenly spaced budgets between the cheapest and
the most expensive plan, dominated points removed (a plan is dominated when another is no
costlier and no more sensitive, and strictly better in one).

- ``method="exact"``: the integer program at each budget (optimal at that budget).
- ``method="lagrangian"``: at each budget, the costliest plan of the Lagrangian path within it
  (optimal at its own cost, which can be below the budget; no integer program, milliseconds).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import MixprecError
from .exact import solve_exact
from .lagrangian import lagrangian_path
from .problem import Solution, allowed_mask, max_costs, min_costs

METHODS = ("exact", "lagrangian")


@dataclass(frozen=True)
class FrontPoint:
    budget: float
    solution: Solution


def pareto_front(sensitivity: np.ndarray, costs: dict[str, np.ndarray], kind: str, points: int = 30,
                 fixed: dict[str, float] | None = None, allowed: np.ndarray | None = None,
                 method: str = "exact", extra_budgets: list[float] = ()) -> list[FrontPoint]:
    """The non-dominated plans for budget kind ``kind``, cheapest first, solved at ``points`` evenly spaced budgets
    and at ``extra_budgets`` (the costs of the uniform plans: where a mixed plan is compared with them, which
    evenly spaced budgets can miss when a costly candidate, fp16, stretches the range)."""
    if method not in METHODS:
        raise MixprecError(f"unknown front method {method!r}; choose one of {', '.join(METHODS)}")
    if kind not in costs:
        raise MixprecError(f"no cost table for budget kind {kind!r}; kinds: {', '.join(sorted(costs))}")
    fixed = dict(fixed or {})
    mask = allowed_mask(np.asarray(sensitivity, dtype=float), allowed)
    low = min_costs({kind: costs[kind]}, fixed, mask)[kind]
    high = max_costs({kind: costs[kind]}, fixed, mask)[kind]
    budgets = np.unique(np.concatenate([np.linspace(low, high, max(points, 2)),
                                        [b for b in extra_budgets if low <= b <= high]]))
    front: list[FrontPoint] = []
    if method == "exact":
        for budget in budgets:
            solution = solve_exact(sensitivity, costs, {kind: float(budget) * (1 + 1e-12)}, fixed, mask)
            front.append(FrontPoint(float(budget), solution))
    else:
        path = lagrangian_path(sensitivity, costs, kind, fixed, mask)
        path_costs = np.array([s.costs[kind] for s in path])
        for budget in budgets:
            index = int(np.searchsorted(path_costs, budget * (1 + 1e-12), side="right")) - 1
            front.append(FrontPoint(float(budget), path[max(index, 0)]))
    return non_dominated(front, kind)


def non_dominated(front: list[FrontPoint], kind: str) -> list[FrontPoint]:
    front = sorted(front, key=lambda p: (p.solution.costs[kind], p.solution.objective))
    kept: list[FrontPoint] = []
    for point in front:  # cheapest first: keep a point only if it is strictly less sensitive than all cheaper ones
        if kept and point.solution.costs[kind] == kept[-1].solution.costs[kind] \
                and abs(point.solution.objective - kept[-1].solution.objective) <= 1e-15:
            # the same plan from a higher budget: it stands for the highest (the guard compares it with the
            # uniform plans within that budget, the one it was solved at for a uniform candidate's cost)
            kept[-1] = FrontPoint(max(point.budget, kept[-1].budget), kept[-1].solution)
            continue
        if not kept or point.solution.objective < kept[-1].solution.objective - 1e-15:
            if kept and point.solution.costs[kind] == kept[-1].solution.costs[kind]:
                kept[-1] = point
            else:
                kept.append(point)
    return kept
