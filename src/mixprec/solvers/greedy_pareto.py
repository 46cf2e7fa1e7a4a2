"""Greedy Pareto path and search: phase 2 of Pandey, Nagel, van Baalen, Huang, Patel, Blankevoort,
"A practical mixed precision algorithm for post-training quantization" (2023, arXiv 2302.05397;
AIMET's AMP).

    plan <- every group on its highest-precision candidate;  path <- [plan]
    while some group has a cheaper allowed candidate:
        over every group g and every cheaper candidate c of g:
            ratio(g, c) = (S[g, c] - S[g, cur_g]) / (C[g, cur_g] - C[g, c])   # damage per unit of cost saved
        move the (g, c) with the smallest ratio (ties: the larger saving);  path.append(plan)
    budget only:       the first plan on the path whose cost <= budget
    measure, max_loss: the cheapest plan on the path whose measured loss <= max_loss, by binary or
                       interpolation search over the path index (the loss is assumed to grow along the path)

A cheaper candidate that is also less sensitive has a negative ratio, so it is taken first: a free win.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Callable

import numpy as np

from ..errors import MixprecError
from .exact import InfeasibleBudget
from .problem import AllocationProblem, Goal, Solution, last_passing, plan_costs, within
from .search_inputs import LossCache, checked_number, checked_tables, highest_precision, json_loss


def greedy_path(sensitivity: np.ndarray, costs: dict[str, np.ndarray], kind: str,
                fixed: dict[str, float] | None = None, allowed: np.ndarray | None = None) -> list[Solution]:
    """The greedy Pareto path in budget kind ``kind``, from the highest-precision plan to the cheapest one."""
    S, cost, mask = checked_tables(sensitivity, costs, kind, allowed)
    rows = np.arange(len(S))
    choice = highest_precision(S, cost, mask)

    def record(step: int, group=None, old=None, new=None) -> Solution:
        objective, totals = plan_costs(choice, S, costs, fixed)
        move = {"step": step, "group": group, "from": old, "to": new, "cost": totals[kind], "objective": objective,
                "loss": None}
        return Solution(choice.copy(), objective, totals, trace=[move])

    path = [record(0)]
    while True:
        cur_cost, cur_s = cost[rows, choice][:, None], S[rows, choice][:, None]
        cheaper = mask & (cost < cur_cost)
        if not cheaper.any():
            return path
        saved = np.where(cheaper, cur_cost - cost, 1.0)
        ratio = np.where(cheaper, (S - cur_s) / saved, np.inf)  # damage per unit of cost saved
        # smallest ratio; ties: the larger saving, then the lower (group, candidate)
        g, c = divmod(int(np.lexsort((np.arange(S.size), -saved.ravel(), ratio.ravel()))[0]), S.shape[1])
        old, choice[g] = int(choice[g]), c
        path.append(record(len(path), g, old, c))


def _binary(loss_at: Callable[[int], float], lo: int, hi: int, max_loss: float) -> int | None:
    """Largest i in [lo, hi] with loss_at(i) <= max_loss (loss non-decreasing in i), or None."""
    good = last_passing(lambda i: loss_at(i) <= max_loss, lo - 1, hi + 1)
    return good if good >= lo else None


def _interpolation(loss_at: Callable[[int], float], lo: int, hi: int, max_loss: float) -> int | None:
    """As _binary, but guessing where the loss crosses max_loss by linear interpolation between the bracket ends.
    A guess that does not halve the bracket is followed by one bisection step, so at most ~2 log2(n) measurements."""
    if loss_at(lo) > max_loss:
        return None
    if loss_at(hi) <= max_loss:
        return hi
    good, bad, bisect = lo, hi, False
    while bad - good > 1:
        low_loss, high_loss, width = loss_at(good), loss_at(bad), bad - good
        if bisect or not math.isfinite(high_loss):
            mid = (good + bad) // 2
        else:  # i = good + (max_loss - L_good) / (L_bad - L_good) * (bad - good), kept strictly inside
            mid = good + int((max_loss - low_loss) / (high_loss - low_loss) * width)
            mid = min(max(mid, good + 1), bad - 1)
        if loss_at(mid) <= max_loss:
            good = mid
        else:
            bad = mid
        bisect = bad - good > width / 2
    return good


SEARCHES = {"binary": _binary, "interpolation": _interpolation}


def greedy_pareto(sensitivity: np.ndarray, costs: dict[str, np.ndarray], kind: str,
                  fixed: dict[str, float] | None = None, allowed: np.ndarray | None = None,
                  budget: float | None = None, measure: Callable[[np.ndarray], float] | None = None,
                  max_loss: float | None = None, search: str = "binary") -> Solution:
    """A plan on the greedy path: the first within ``budget`` (no measurement), or, given ``measure`` and
    ``max_loss``, the cheapest (within ``budget`` if given) whose measured loss is <= ``max_loss``. If no plan
    on the path meets ``max_loss``, the highest-precision plan within budget. The trace has one entry per
    measurement, then one for the plan returned, with "chosen": True and "met_max_loss" (False: with a note)."""
    if search not in SEARCHES:
        raise MixprecError(f"unknown search {search!r}; use one of {sorted(SEARCHES)}")
    if (measure is None) != (max_loss is None):
        raise MixprecError("give measure and max_loss together: measure(choice) -> loss, and the largest loss allowed")
    if budget is None and measure is None:
        raise MixprecError(f"give a budget in {kind!r}, or measure and max_loss (or both)")
    budget = None if budget is None else checked_number("budget", budget)
    max_loss = None if max_loss is None else checked_number("max_loss", max_loss)
    losses = None if measure is None else LossCache(measure)
    path = greedy_path(sensitivity, costs, kind, fixed, allowed)
    steps = [plan.trace[0] for plan in path]

    start = 0
    if budget is not None:
        fit = [i for i, plan in enumerate(path) if within(plan.costs[kind], budget)]
        if not fit:
            raise InfeasibleBudget(f"no plan meets the budget: {kind} <= {budget:.6g} asked, "
                                   f"the smallest achievable is {path[-1].costs[kind]:.6g}")
        start = fit[0]  # the cost falls strictly along the path: plans start.. are within budget
    if losses is None:
        return replace(path[start], trace=steps[:start + 1])

    trace: list[dict] = []

    def loss_at(i: int) -> float:
        known = len(losses)
        loss = losses(path[i].choice)
        if len(losses) > known:
            trace.append({"step": len(trace), "index": i, "cost": path[i].costs[kind],
                          "objective": path[i].objective, "loss": json_loss(loss), "met_max_loss": loss <= max_loss})
        return loss

    best = SEARCHES[search](loss_at, start, len(path) - 1, max_loss)
    chosen = {"chosen": True, "index": start if best is None else best, "met_max_loss": best is not None}
    if best is None:
        chosen["note"] = (f"no plan on the path within budget has a measured loss <= {max_loss:.6g}; "
                          "returned the highest-precision plan within budget")
    plan = path[chosen["index"]]
    loss = loss_at(chosen["index"])  # already measured by either search
    trace.append({"step": len(trace), **chosen, "cost": plan.costs[kind], "objective": plan.objective, "loss": json_loss(loss)})
    return replace(plan, evaluations=len(losses), measured_loss=loss, trace=trace)


def greedy_pareto_search(problem: AllocationProblem, goal: Goal, path_search: str = "binary") -> Solution:
    """AIMET AMP's phase 2 on ``problem``: within the goal's one budget, and with ``goal.measure`` and
    ``goal.max_loss``, the cheapest plan on the path that meets the loss bound."""
    kind = goal.one_kind(problem, "greedy-pareto")
    if not goal.budgets and goal.max_loss is None:
        raise MixprecError("search greedy-pareto needs a cost target (--budget) or an accuracy target (--max-drop; in Python: max_drop=...)")
    return greedy_pareto(problem.sensitivity, problem.costs, kind, problem.fixed, problem.allowed,
                         budget=goal.budgets.get(kind), measure=goal.measure if goal.max_loss is not None else None,
                         max_loss=goal.max_loss, search=path_search)
