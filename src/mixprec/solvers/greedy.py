"""Sensitivity-guided searches of Schaefer et al., "Mixed precision post training quantization of neural
networks with sensitivity guided search" (2023, arXiv 2302.01382): lower groups from a high to a low
precision, least sensitive first, while the measured loss stays within a bound.

    high <- every group on its highest-precision candidate;  low_g <- the low candidate of group g
    order <- the groups sorted by S[g, low_g], least sensitive first
    if loss(high) > max_loss: return high                      # nothing can be lowered

    greedy:                                    # one measurement per group
        plan <- high
        for g in order:
            plan[g] <- low_g;  if loss(plan) > max_loss: plan[g] <- high_g   # keep the move only if within the bound
        return plan

    bisection:                                 # ~log2(G) measurements, assumes the loss grows with k
        plan(k) <- high with the first k groups of order on low
        k* <- the largest k in 0..G with loss(plan(k)) <= max_loss, by binary search over k
        return plan(k*)

A group whose low candidate is not allowed (pinned, or +inf sensitivity), or is its high candidate, is
left at high and takes no measurement.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..errors import MixprecError
from .problem import AllocationProblem, Goal, Solution, last_passing, plan_costs
from .search_inputs import LossCache, cheapest, checked_number, checked_tables, highest_precision, json_loss


def _setup(sensitivity, costs, kind, measure, max_loss, allowed, low):
    """The checked tables, the high and low plans, the movable groups in search order, the loss cache, the bound."""
    S, cost, mask = checked_tables(sensitivity, costs, kind, allowed)
    max_loss = checked_number("max_loss", max_loss)
    losses = LossCache(measure)
    high = highest_precision(S, cost, mask)
    if low is None:
        low_plan = cheapest(S, cost, mask)
    else:
        if isinstance(low, bool) or not isinstance(low, (int, np.integer)) or not 0 <= low < S.shape[1]:
            raise MixprecError(f"low must be a candidate index in 0..{S.shape[1] - 1} or None "
                               f"(each group's cheapest candidate); got {low!r}")
        low_plan = np.where(mask[:, low], int(low), high)  # a group that cannot take low stays high
    movable = np.flatnonzero(low_plan != high)
    order = movable[np.argsort(S[movable, low_plan[movable]], kind="stable")]  # least sensitive at low first
    return S, high, low_plan, order, losses, max_loss


def _measured(plan, S, costs, fixed, kind, losses, max_loss, **step) -> dict:
    """Measure a plan (once: the cache) and describe it for the trace."""
    loss = losses(plan)
    objective, totals = plan_costs(plan, S, costs, fixed)
    return {**step, "cost": totals[kind], "objective": objective, "loss": json_loss(loss), "met_max_loss": loss <= max_loss}


def _solution(plan, S, costs, fixed, kind, losses, max_loss, trace, note=None, **extra) -> Solution:
    """The plan returned, with a last trace entry that describes it ("chosen": True)."""
    loss = losses(plan)  # already measured
    objective, totals = plan_costs(plan, S, costs, fixed)
    trace.append({"step": len(trace), "chosen": True, **extra, "cost": totals[kind], "objective": objective,
                  "loss": json_loss(loss), "met_max_loss": loss <= max_loss, **({"note": note} if note else {})})
    return Solution(plan.copy(), objective, totals, evaluations=len(losses), measured_loss=loss, trace=trace)


HIGH_TOO_LOSSY = "the highest-precision plan already has a loss above max_loss; returned it"


def greedy(sensitivity: np.ndarray, costs: dict[str, np.ndarray], kind: str, measure: Callable[[np.ndarray], float],
           max_loss: float, fixed: dict[str, float] | None = None, allowed: np.ndarray | None = None,
           low: int | None = None) -> Solution:
    """Walk the groups least sensitive first, moving each to ``low`` and keeping the move if the measured loss
    stays <= ``max_loss``; one measurement per movable group, plus one of the highest-precision plan."""
    S, high, low_plan, order, losses, max_loss = _setup(sensitivity, costs, kind, measure, max_loss, allowed, low)
    measured = lambda plan, **step: _measured(plan, S, costs, fixed, kind, losses, max_loss, **step)
    first = measured(high, step=0, group=None, **{"from": None}, to=None)
    if not first["met_max_loss"]:
        return _solution(high, S, costs, fixed, kind, losses, max_loss, [first], HIGH_TOO_LOSSY)
    plan, trace = high.copy(), [first]
    for g in order:
        plan[g] = low_plan[g]
        trace.append(measured(plan, step=len(trace), group=int(g), **{"from": int(high[g])}, to=int(low_plan[g])))
        if not trace[-1]["met_max_loss"]:
            plan[g] = high[g]  # revert: this group stays at high precision
    lowered = [int(g) for g in order if plan[g] == low_plan[g]]
    return _solution(plan, S, costs, fixed, kind, losses, max_loss, trace, lowered=lowered)


def bisection(sensitivity: np.ndarray, costs: dict[str, np.ndarray], kind: str, measure: Callable[[np.ndarray], float],
              max_loss: float, fixed: dict[str, float] | None = None, allowed: np.ndarray | None = None,
              low: int | None = None) -> Solution:
    """The largest k such that the k least sensitive groups at ``low`` keep the measured loss <= ``max_loss``,
    by binary search over k (assumes the loss grows with k): at most ceil(log2(G + 1)) + 1 measurements."""
    S, high, low_plan, order, losses, max_loss = _setup(sensitivity, costs, kind, measure, max_loss, allowed, low)
    measured = lambda plan, **step: _measured(plan, S, costs, fixed, kind, losses, max_loss, **step)

    def plan_at(k: int) -> np.ndarray:
        plan = high.copy()
        plan[order[:k]] = low_plan[order[:k]]
        return plan

    first = measured(high, step=0, k=0)
    if not first["met_max_loss"]:
        return _solution(high, S, costs, fixed, kind, losses, max_loss, [first], HIGH_TOO_LOSSY)
    trace = [first]

    def passes(k: int) -> bool:
        trace.append(measured(plan_at(k), step=len(trace), k=k))
        return trace[-1]["met_max_loss"]
    # plan_at(0) meets max_loss (measured); past the end counts as failing
    good = last_passing(passes, 0, len(order) + 1)
    return _solution(plan_at(good), S, costs, fixed, kind, losses, max_loss, trace, k=good)


def _low(problem: AllocationProblem, low: str | None) -> int | None:
    return None if low is None else problem.candidate_index(low)


def greedy_search(problem: AllocationProblem, goal: Goal, low: str | None = None) -> Solution:
    """Schaefer et al.'s greedy search on ``problem``; ``goal.measure`` and ``goal.max_loss`` required."""
    return greedy(problem.sensitivity, problem.costs, goal.one_kind(problem, "greedy"), goal.measure, goal.max_loss,
                  problem.fixed, problem.allowed, low=_low(problem, low))


def bisection_search(problem: AllocationProblem, goal: Goal, low: str | None = None) -> Solution:
    """Schaefer et al.'s bisection search on ``problem``; ``goal.measure`` and ``goal.max_loss`` required."""
    return bisection(problem.sensitivity, problem.costs, goal.one_kind(problem, "bisection"), goal.measure,
                     goal.max_loss, problem.fixed, problem.allowed, low=_low(problem, low))
