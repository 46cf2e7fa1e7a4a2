"""The Lagrangian path for one budget kind: every plan that minimises S + lambda * C for some
lambda >= 0, from the cheapest plan to the least sensitive one.

Such a plan is optimal for the integer program at a budget equal to its own cost (Everett 1963,
"Generalized Lagrange multiplier method"), so the path is a set of exact Pareto points, the
vertices of the front's lower convex hull, found in O(G C log(G C)) without an integer program.
Between two vertices the integer program can do better; ``pareto_front(method="exact")`` solves
those budgets exactly.

    per group: the lower convex hull of its allowed (cost, S) points, cheapest first
    moves: every hull segment of every group, by sensitivity saved per unit of cost, best first
    path: start with every group at its cheapest hull point; apply the moves in that order
"""
from __future__ import annotations

import numpy as np

from .problem import Solution, allowed_mask, plan_costs


def group_hull(cost: np.ndarray, sensitivity: np.ndarray, allowed: np.ndarray) -> list[int]:
    """Candidate indices on the lower convex hull of one group's (cost, S) points, cheapest
    first, sensitivity strictly falling."""
    idx = [int(j) for j in np.flatnonzero(allowed)]
    idx.sort(key=lambda j: (cost[j], sensitivity[j]))
    frontier: list[int] = []
    for j in idx:  # keep only points less sensitive than every cheaper one
        if not frontier or sensitivity[j] < sensitivity[frontier[-1]]:
            if frontier and cost[j] == cost[frontier[-1]]:
                continue
            frontier.append(j)
    hull: list[int] = []
    for j in frontier:  # lower hull: drop the last point while it lies on or above the chord
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            cross = (cost[b] - cost[a]) * (sensitivity[j] - sensitivity[a]) - \
                (sensitivity[b] - sensitivity[a]) * (cost[j] - cost[a])
            if cross <= 0:
                hull.pop()
            else:
                break
        hull.append(j)
    return hull


def lagrangian_path(sensitivity: np.ndarray, costs: dict[str, np.ndarray], kind: str,
                    fixed: dict[str, float] | None = None, allowed: np.ndarray | None = None) -> list[Solution]:
    """The hull plans for budget kind ``kind``, cheapest first; each is optimal at its own cost."""
    sensitivity = np.asarray(sensitivity, dtype=float)
    mask = allowed_mask(sensitivity, allowed)
    cost = np.asarray(costs[kind], dtype=float)
    hulls = [group_hull(cost[g], sensitivity[g], mask[g]) for g in range(len(sensitivity))]
    moves = []  # (saving per unit cost, group, position on the hull)
    for g, hull in enumerate(hulls):
        for k in range(1, len(hull)):
            a, b = hull[k - 1], hull[k]
            moves.append(((sensitivity[g, a] - sensitivity[g, b]) / (cost[g, b] - cost[g, a]), g, k))
    moves.sort(key=lambda m: (-m[0], m[1], m[2]))  # convex hulls: a group's segments stay in order
    choice = np.array([hull[0] for hull in hulls], dtype=int)
    objective, totals = plan_costs(choice, sensitivity, costs, fixed)
    path = [Solution(choice.copy(), objective, dict(totals))]
    for _, g, k in moves:  # running totals: one move changes one group
        old, new = choice[g], hulls[g][k]
        choice[g] = new
        objective += sensitivity[g, new] - sensitivity[g, old]
        totals = {kind: total + costs[kind][g, new] - costs[kind][g, old] for kind, total in totals.items()}
        path.append(Solution(choice.copy(), float(objective), totals))
    return path
