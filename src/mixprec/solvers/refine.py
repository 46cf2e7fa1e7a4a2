"""refine: the exact solver, corrected by real measurements (mixprec's own search).

The exact solver trusts an additive model: a plan's damage is the sum of its groups' single-group
sensitivities. Quantization errors interact, so the measured loss of a plan can exceed that
prediction. refine measures, corrects the entries of the plans that disappoint, and solves again:

    P0 = solve(S, B); measure L(P0)
    P1 = solve(S, B looser, halfway to the highest-precision plan); measure L(P1)   # a second point
    repeat `rounds` times:
        alpha = least squares of L(P) ~ alpha * S0(P) over the measured plans (S0: the original table)
        for the last plan P with ratio r = L(P) / (alpha * S0(P)) > 1:
            S[g, P_g] *= r for every group g not on its least sensitive candidate   # the groups involved
        P = solve(S, B); stop if P was measured already; measure L(P)
    return the measured plan within B with the smallest loss

Every returned plan meets every budget (it comes from the exact solver at B); the result is never
worse, measured, than the plain exact plan P0.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..errors import MixprecError
from .exact import Solution, allowed_mask, plan_costs, solve_exact


def refine(sensitivity: np.ndarray, costs: dict[str, np.ndarray], budgets: dict[str, float],
           measure: Callable[[np.ndarray], float], fixed: dict[str, float] | None = None,
           allowed: np.ndarray | None = None, rounds: int = 3) -> Solution:
    if rounds < 0:
        raise MixprecError(f"rounds must be >= 0, got {rounds}")
    original = np.asarray(sensitivity, dtype=float)
    mask = allowed_mask(original, allowed)
    fixed = dict(fixed or {})
    corrected = original.copy()
    least = np.where(mask, original, np.inf).argmin(axis=1)
    measured: dict[tuple, float] = {}
    trace: list[dict] = []

    def run(choice: np.ndarray, role: str) -> float:
        key = tuple(int(c) for c in choice)
        if key not in measured:
            measured[key] = float(measure(choice))
            objective, totals = plan_costs(choice, original, costs, fixed)
            trace.append({"step": len(trace), "role": role, "predicted": objective, "loss": measured[key],
                          "costs": totals, "choice": list(key)})
        return measured[key]

    first = solve_exact(corrected, costs, budgets, fixed, mask)
    run(first.choice, "exact")
    within = {tuple(int(c) for c in first.choice)}
    highest = {k: float(fixed.get(k, 0.0) + np.where(mask, costs[k], -np.inf).max(axis=1).sum()) for k in budgets}
    looser = solve_exact(original, costs, {k: (b + max(highest[k], b)) / 2 for k, b in budgets.items()}, fixed, mask)
    run(looser.choice, "calibration (looser budget)")
    last = first.choice
    for round_ in range(rounds):
        points = [(plan_costs(np.array(k), original, costs, fixed)[0], loss) for k, loss in measured.items()]
        s = np.array([p for p, _ in points])
        l = np.array([loss for _, loss in points])
        alpha = float((s * l).sum() / (s * s).sum()) if (s * s).sum() > 0 else 0.0
        predicted = alpha * plan_costs(last, original, costs, fixed)[0]
        ratio = measured[tuple(int(c) for c in last)] / predicted if predicted > 0 else 1.0
        if not ratio > 1.0:
            trace.append({"step": len(trace), "role": "stop", "reason": "the last plan is no worse than predicted"})
            break
        rows = np.flatnonzero(last != least)
        corrected[rows, last[rows]] *= ratio
        nxt = solve_exact(corrected, costs, budgets, fixed, mask).choice
        key = tuple(int(c) for c in nxt)
        if key in measured:
            trace.append({"step": len(trace), "role": "stop", "reason": "the corrected solve gave a measured plan"})
            break
        run(nxt, f"round {round_ + 1}")
        within.add(key)
        last = nxt
    best = min(within, key=lambda k: measured[k])
    choice = np.array(best)
    objective, totals = plan_costs(choice, original, costs, fixed)
    return Solution(choice, objective, totals, evaluations=len(measured), measured_loss=measured[best], trace=trace)
