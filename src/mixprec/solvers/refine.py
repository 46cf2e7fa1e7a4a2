"""refine: the exact solver, corrected by real measurements (mixprec's own search).

The exact solver trusts an additive model: a plan's damage is the sum of its groups' single-group
sensitivities. Quantization errors interact, so a group can hurt more (or less) inside a plan than
alone. refine measures each lowered group's contribution in the context of the plan, rescales its
sensitivities to match, and solves again:

    P = solve(S, B); measure L(P); best = P
    repeat `rounds` times:
        alpha = L(P) / S0(P)                      # loss per unit of sensitivity, on this plan
        for the `probes` lowered groups g of P with the largest S0[g, P_g]:
            m_g = L(P) - L(P with g back on its least sensitive candidate)   # g's share in context
            S[g, :] = S0[g, :] * clip(m_g / (alpha * S0[g, P_g]), 0.1, 10)
        P = solve(S, B); stop if P was measured already; measure L(P); keep the best
    return best

Every returned plan comes from the exact solver at B, so it meets every budget, and it is never
worse than the plain exact plan on the data `measure` evaluates. It decides on that data: measured
on the evaluation split, its figure there is optimistic; measure on held-out data. A round costs up
to 1 + `probes` evaluations.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..errors import MixprecError
from .exact import solve_exact
from .problem import AllocationProblem, Goal, Solution, allowed_mask, plan_costs

SCALE_LIMITS = (0.1, 10.0)


def refine(sensitivity: np.ndarray, costs: dict[str, np.ndarray], budgets: dict[str, float],
           measure: Callable[[np.ndarray], float], fixed: dict[str, float] | None = None,
           allowed: np.ndarray | None = None, rounds: int = 2, probes: int = 16) -> Solution:
    if rounds < 0 or probes < 1:
        raise MixprecError(f"rounds must be >= 0 and probes >= 1, got rounds={rounds}, probes={probes}")
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
            measured[key] = float(measure(np.array(key)))
            objective, totals = plan_costs(np.array(key), original, costs, fixed)
            trace.append({"step": len(trace), "role": role, "predicted": objective, "loss": measured[key],
                          "costs": totals, "choice": list(key)})
        return measured[key]

    plan = solve_exact(corrected, costs, budgets, fixed, mask).choice
    within = [tuple(int(c) for c in plan)]
    loss = run(plan, "exact")
    rows = np.arange(len(plan))
    for round_ in range(rounds):
        predicted = float(original[rows, plan].sum())
        lowered = [int(g) for g in np.flatnonzero(plan != least)]
        if not lowered or loss <= 0 or predicted <= 0:
            trace.append({"step": len(trace), "role": "stop", "reason": "nothing lowered or no loss to explain"})
            break
        alpha = loss / predicted
        lowered.sort(key=lambda g: -original[g, plan[g]])
        for g in lowered[:probes]:
            probe = plan.copy()
            probe[g] = least[g]
            share = loss - run(probe, f"round {round_ + 1}: group {g} restored")
            scale = float(np.clip(share / (alpha * original[g, plan[g]]), *SCALE_LIMITS))
            corrected[g] = original[g] * scale
        plan = solve_exact(corrected, costs, budgets, fixed, mask).choice
        key = tuple(int(c) for c in plan)
        if key in measured:
            trace.append({"step": len(trace), "role": "stop", "reason": "the corrected solve gave a measured plan"})
            break
        loss = run(plan, f"round {round_ + 1}: corrected plan")
        within.append(key)
    best = min(within, key=lambda k: measured[k])
    choice = np.array(best)
    objective, totals = plan_costs(choice, original, costs, fixed)
    return Solution(choice, objective, totals, evaluations=len(measured), measured_loss=measured[best], trace=trace)


def refine_search(problem: AllocationProblem, goal: Goal, rounds: int = 2, probes: int = 16) -> Solution:
    """refine on ``problem`` within every budget of ``goal``, measuring with ``goal.measure``."""
    if not goal.budgets:
        raise MixprecError("search refine needs --budget, e.g. --budget bops=w4a8 (in Python: budget='bops=w4a8')")
    if goal.measure is None:
        raise MixprecError("search refine measures plans: give an evaluation (measure)")
    return refine(problem.sensitivity, problem.costs, goal.budgets, goal.measure, problem.fixed, problem.allowed,
                  rounds=rounds, probes=probes)
