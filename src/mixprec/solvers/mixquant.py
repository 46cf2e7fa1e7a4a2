"""MixQuant bit-width search of Kloberdanz & Le, "MixQuant: mixed precision quantization with a bit-width
optimization search" (2023): per group, the cheapest candidate whose round-off error stays within a
multiplier (the quantization error multiplier, QEM) of the error at the base candidate. Data-free.

    for every group g:
        choice[g] <- the cheapest allowed c with  S[g, c] <= qem * S[g, base]     # qem >= 1

Here S is the round-off error (any non-negative error table works). Conventions:
- ``base`` defaults to the candidate with the largest cost in ``kind`` summed over groups (the highest
  precision; ties: the lower summed error). A group where ``base`` is not allowed uses its own
  highest-precision candidate as its base.
- The rule is read as a ratio test, S[g, c] / S[g, base] <= qem, with 0/0 = 0 and x/0 = inf for x > 0: a
  group whose base error is 0 takes only error-0 candidates for any finite qem, and qem = inf lets every
  candidate qualify (the cheapest plan). Since qem >= 1 the base always qualifies, so each group's cost,
  and the plan's, is non-increasing in qem.
- Budget mode: the plan changes only where qem crosses a ratio S[g, c] / S[g, base], so the smallest qem
  whose plan meets the budget is found exactly by binary search over those breakpoints (and 1): it gives
  the most expensive, least lossy, MixQuant plan within budget.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import MixprecError
from .exact import InfeasibleBudget
from .problem import AllocationProblem, Goal, Solution, last_passing, plan_costs, within
from .search_inputs import cheapest, checked_number, checked_tables, highest_precision


def _error_ratios(S: np.ndarray, cost: np.ndarray, mask: np.ndarray, base: int | None) -> tuple[int, np.ndarray]:
    """The base candidate index and r[g, c] = S[g, c] / S[g, base_g] (0/0 = 0, x/0 = inf)."""
    if base is None:
        total_cost = np.where(np.isfinite(cost), cost, 0.0).sum(axis=0)
        total_error = np.where(mask, S, np.inf).sum(axis=0)
        base = int(np.lexsort((total_error, -total_cost))[0])  # the largest summed cost; ties: the lower summed error
    elif isinstance(base, bool) or not isinstance(base, (int, np.integer)) or not 0 <= base < S.shape[1]:
        raise MixprecError(f"base must be a candidate index in 0..{S.shape[1] - 1} or None "
                           f"(the highest-precision candidate); got {base!r}")
    negative = np.argwhere(mask & (S < 0))
    if len(negative):
        raise MixprecError(f"MixQuant needs a non-negative error table (round-off error); negative at (group, candidate) "
                           f"{negative[:5].tolist()}; use an error metric such as the 'roundoff' sensitivity")
    base_plan = np.where(mask[:, base], int(base), highest_precision(S, cost, mask))
    base_error = S[np.arange(len(S)), base_plan][:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(base_error > 0, S / base_error, np.where(S > 0, np.inf, 0.0))
    return int(base), np.where(mask, ratio, np.inf)


def _qem_plan(ratio: np.ndarray, S: np.ndarray, cost: np.ndarray, mask: np.ndarray, qem: float) -> np.ndarray:
    return cheapest(S, cost, mask & (ratio <= qem))


def _checked_qem(qem) -> float:
    try:
        qem = float(qem)
    except (TypeError, ValueError):
        raise MixprecError(f"qem must be a number >= 1; got {qem!r}") from None
    if not qem >= 1:  # also catches nan
        raise MixprecError(f"qem must be >= 1 (it multiplies the base candidate's error); got {qem!r}")
    return qem


def mixquant_choice(sensitivity: np.ndarray, costs: dict[str, np.ndarray], kind: str, qem: float,
                    base: int | None = None, allowed: np.ndarray | None = None) -> np.ndarray:
    """Per group, the cheapest allowed candidate (in ``kind``) whose error is <= ``qem`` x the base candidate's."""
    S, cost, mask = checked_tables(sensitivity, costs, kind, allowed)
    qem = _checked_qem(qem)
    _, ratio = _error_ratios(S, cost, mask, base)
    return _qem_plan(ratio, S, cost, mask, qem)


def mixquant(sensitivity: np.ndarray, costs: dict[str, np.ndarray], kind: str, fixed: dict[str, float] | None = None,
             allowed: np.ndarray | None = None, budget: float | None = None, qem: float | None = None,
             base: int | None = None) -> Solution:
    """The MixQuant plan for ``qem``, or, given ``budget`` instead, for the smallest qem whose plan meets it."""
    if (budget is None) == (qem is None):
        raise MixprecError(f"give exactly one of qem (the error multiplier, >= 1) or a budget in {kind!r}")
    S, cost, mask = checked_tables(sensitivity, costs, kind, allowed)
    base, ratio = _error_ratios(S, cost, mask, base)
    plan_of = lambda q: _qem_plan(ratio, S, cost, mask, q)

    def entry(q: float, plan: np.ndarray, **extra) -> dict:
        objective, totals = plan_costs(plan, S, costs, fixed)
        return {**extra, "qem": q if math.isfinite(q) else "inf", "base": base, "cost": totals[kind], "objective": objective}

    if qem is not None:
        qem = _checked_qem(qem)
        choice = plan_of(qem)
        objective, totals = plan_costs(choice, S, costs, fixed)
        return Solution(choice, objective, totals, trace=[entry(qem, choice, step=0)])

    budget = checked_number("budget", budget)
    fits = lambda plan: within(plan_costs(plan, S, costs, fixed)[1][kind], budget)  # noqa: E731
    breakpoints = np.unique(np.concatenate([[1.0], ratio[mask & (ratio >= 1)]]))  # sorted; may end with inf
    cheapest_plan = plan_of(breakpoints[-1])  # every allowed candidate qualifies: the cheapest plan
    if not fits(cheapest_plan):
        smallest = plan_costs(cheapest_plan, S, costs, fixed)[1][kind]
        raise InfeasibleBudget(f"no plan meets the budget: {kind} <= {budget:.6g} asked, the smallest achievable is {smallest:.6g}")
    trace: list[dict] = []

    def misses(i: int) -> bool:
        plan = plan_of(breakpoints[i])
        trace.append(entry(float(breakpoints[i]), plan, step=len(trace), within_budget=bool(fits(plan))))
        return not trace[-1]["within_budget"]
    # the plan at the last breakpoint meets the budget; the cost falls as qem grows
    good = last_passing(misses, -1, len(breakpoints) - 1) + 1
    choice = plan_of(breakpoints[good])
    objective, totals = plan_costs(choice, S, costs, fixed)
    trace.append(entry(float(breakpoints[good]), choice, step=len(trace), chosen=True))
    return Solution(choice, objective, totals, trace=trace)


def mixquant_search(problem: AllocationProblem, goal: Goal, qem: float | None = None,
                    base: str | None = None) -> Solution:
    """MixQuant on ``problem``: for ``qem``, or for the smallest qem whose plan meets the goal's budget."""
    kind = goal.one_kind(problem, "mixquant")
    if not goal.budgets and qem is None:
        raise MixprecError("search mixquant needs --budget (QEM is swept to meet it) or --qem (in Python: qem=...)")
    return mixquant(problem.sensitivity, problem.costs, kind, problem.fixed, problem.allowed,
                    budget=goal.budgets.get(kind), qem=qem, base=None if base is None else problem.candidate_index(base))
