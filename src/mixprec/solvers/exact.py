"""Exact bit allocation: a multiple-choice knapsack with any number of budgets, as an integer
program solved by HiGHS (scipy.optimize.milp). The formulation of WO2024186332A1:

    min  sum_g sum_c S[g, c] x[g, c]
    s.t. sum_c x[g, c] = 1                       for every group g
         fixed_k + sum_g sum_c C_k[g, c] x[g, c] <= B_k   for every budget k
         x[g, c] in {0, 1},  x[g, c] = 0 where c is not allowed for g (pins, hardware, +inf sensitivity)
"""
from __future__ import annotations

import contextlib
import os
import sys

import numpy as np
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, milp

from ..errors import MixprecError
from .lagrangian import lagrangian_path
from .problem import AllocationProblem, Goal, Solution, allowed_mask, min_costs, plan_costs, within  # noqa: F401 (re-exported)


class InfeasibleBudget(MixprecError):
    """No plan meets every budget; the message states the smallest achievable value of each."""


@contextlib.contextmanager
def _native_stdout_silenced():
    """HiGHS's C++ code sometimes prints debugging lines straight to file descriptor 1."""
    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError):
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def solve_exact(sensitivity: np.ndarray, costs: dict[str, np.ndarray], budgets: dict[str, float],
                fixed: dict[str, float] | None = None, allowed: np.ndarray | None = None,
                time_limit_s: float | None = None) -> Solution:
    """Optimal choice per group; ``costs`` and ``budgets`` share kinds; ``fixed`` adds constants."""
    fixed = dict(fixed or {})
    sensitivity = np.asarray(sensitivity, dtype=float)
    groups, cands = sensitivity.shape
    unknown = sorted(set(budgets) - set(costs))
    if unknown:
        raise MixprecError(f"no cost table for budget kind(s) {unknown}; kinds: {sorted(costs)}")
    mask = allowed_mask(sensitivity, allowed)
    lowest = min_costs({k: costs[k] for k in budgets}, fixed, mask)
    short = {k: v for k, v in lowest.items() if not within(v, budgets[k])}
    if short:
        raise InfeasibleBudget("no plan meets the budget: " + "; ".join(
            f"{k} <= {budgets[k]:.6g} asked, the smallest achievable is {lowest[k]:.6g}" for k in sorted(short)))
    work = normalised(sensitivity, mask)
    if len(budgets) == 1:
        kind, budget = next(iter(budgets.items()))
        mask, known = fix_by_lagrangian_bound(work, costs[kind], budget - fixed.get(kind, 0.0), mask)
    else:
        mask, known = fix_by_lp_bound(work, {k: costs[k] for k in budgets},
                                      {k: b - fixed.get(k, 0.0) for k, b in budgets.items()}, mask)
    free = np.flatnonzero(mask.sum(axis=1) > 1)  # groups left with a decision to make
    choice = mask.argmax(axis=1)  # the one candidate of every other group
    if len(free):
        sub, objective = _scaled_to_plan(work[free], mask[free], None if known is None else known[free])
        if objective is None:  # the known plan is optimal: every free group at its least sensitive candidate
            choice[free] = known[free]
            return Solution(choice, *plan_costs(choice, sensitivity, costs, fixed))
        n = len(free) * cands
        objective = objective.ravel()
        one_per_group = sparse.kron(sparse.eye(len(free)), np.ones((1, cands)), format="csr")
        constraints = [LinearConstraint(one_per_group, 1, 1)]
        settled = np.setdiff1d(np.arange(groups), free)
        for kind, budget in budgets.items():
            row = np.where(sub, costs[kind][free], 0.0).ravel()
            spent = fixed.get(kind, 0.0) + costs[kind][settled, choice[settled]].sum()
            constraints.append(LinearConstraint(row[None, :], -np.inf, budget - spent))
        options = {"mip_rel_gap": 0.0, **({"time_limit": time_limit_s} if time_limit_s else {})}
        with _native_stdout_silenced():
            result = milp(objective, integrality=np.ones(n), bounds=Bounds(0, sub.ravel().astype(float)),
                          constraints=constraints, options=options)
        if result.x is None:
            raise InfeasibleBudget(f"no plan meets the budgets together ({result.message}); each alone can reach: "
                                   + "; ".join(f"{k} {lowest[k]:.6g}" for k in sorted(budgets)))
        choice[free] = result.x.reshape(len(free), cands).argmax(axis=1)
    return Solution(choice, *plan_costs(choice, sensitivity, costs, fixed))


def normalised(sensitivity: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The table each group's least sensitive allowed candidate subtracted from its row, then divided
    by the largest allowed entry left (0 where not allowed): the same optimal plans, in numbers of
    order 1. HiGHS's tolerances are absolute (its MIP gap 1e-6, its LP's 1e-7), and sqnr entries near
    8 bits and float16 are 1e-7 and below: unscaled, it stopped at plans worse than the optimum."""
    shifted = _shifted(sensitivity, mask)
    top = float(shifted.max())
    return shifted / top if top > 0 else shifted


def _shifted(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Each row less its least allowed entry (so that entry is 0), 0 where not allowed."""
    return np.where(mask, values - np.where(mask, values, np.inf).min(axis=1, keepdims=True), 0.0)


def _scaled_to_plan(work: np.ndarray, mask: np.ndarray, known: np.ndarray | None
                    ) -> tuple[np.ndarray, np.ndarray | None]:
    """The integer program's (mask, objective) for these groups: rows shifted to a least entry of 0,
    and, given a feasible plan of total T in those units, every entry above T dropped (any plan using
    one totals more than T) and the rest divided by T, so that the optimum is at most 1 and no more
    than the plan's distance from it below 1: HiGHS's absolute gap is then a relative one. The
    objective is None where the plan totals 0, which no plan can beat."""
    objective = _shifted(work, mask)
    if known is None:
        return mask, objective
    total = float(objective[np.arange(len(known)), known].sum())
    if total <= 0:
        return mask, None
    mask = mask & (objective <= total)
    return mask, np.where(mask, objective / total, 0.0)


def fix_by_lagrangian_bound(sensitivity: np.ndarray, cost: np.ndarray, capacity: float,
                            mask: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Drop the entries no optimal plan can use, for one budget (reduced-cost fixing, e.g.
    Wolsey, "Integer Programming", sec. 7.5): with lambda the multiplier at the budget, any plan
    using (g, c) has S >= L(lambda) + r[g, c], where L is the Lagrangian bound and r the entry's
    reduced cost; an entry with L + r above a known feasible plan's S is dropped. The integer
    program then decides only the few groups near the budget's critical slope. Returns the
    mask kept and the feasible plan it was measured against (None where none was found)."""
    path = lagrangian_path(sensitivity, {"cost": cost}, "cost", None, mask)
    fits = [i for i, p in enumerate(path) if within(p.costs["cost"], capacity)]
    if not fits:
        return mask, None
    i = fits[-1]
    if i == len(path) - 1:  # the least sensitive plan fits: it is the answer
        keep = np.zeros_like(mask)
        keep[np.arange(len(mask)), path[i].choice] = True
        return keep, path[i].choice
    lam = (path[i].objective - path[i + 1].objective) / (path[i + 1].costs["cost"] - path[i].costs["cost"])
    best = _fill(path[i].choice.copy(), sensitivity, {"cost": cost}, {"cost": capacity}, mask)
    upper = float(sensitivity[np.arange(len(best)), best].sum())
    priced = np.where(mask, sensitivity + lam * cost, np.inf)
    floor = priced.min(axis=1, keepdims=True)
    lower = float(floor.sum() - lam * capacity)
    keep = mask & (lower + (priced - floor) <= upper + 1e-9 * max(1.0, abs(upper)))
    keep[np.arange(len(best)), best] = True
    return keep, best


def _fill(choice: np.ndarray, sensitivity: np.ndarray, costs: dict[str, np.ndarray], capacity: dict[str, float],
          mask: np.ndarray) -> np.ndarray:
    """Spend what the budgets have left on the single upgrades that save the most sensitivity."""
    rows = np.arange(len(choice))
    while True:
        fits = mask.copy()
        for k, c in costs.items():
            fits &= c - c[rows, choice][:, None] <= capacity[k] - c[rows, choice].sum()
        gain = np.where(fits, sensitivity[rows, choice][:, None] - sensitivity, 0.0)
        g, c = np.unravel_index(int(gain.argmax()), gain.shape)
        if gain[g, c] <= 0:
            return choice
        choice[g] = c


def fix_by_lp_bound(sensitivity: np.ndarray, costs: dict[str, np.ndarray], capacity: dict[str, float],
                    mask: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Reduced-cost fixing for several budgets: the LP relaxation's value is a lower bound and its
    reduced costs price each entry; an entry whose bound exceeds a feasible plan (the LP solution
    rounded down to the cheapest candidate it mixes) cannot be in an optimal plan."""
    from scipy.optimize import linprog
    groups, cands = sensitivity.shape
    objective = np.where(mask, sensitivity, 0.0).ravel()
    one_per_group = sparse.kron(sparse.eye(groups), np.ones((1, cands)), format="csr")
    rows = np.stack([np.where(mask, costs[k], 0.0).ravel() for k in capacity])
    upper = mask.ravel().astype(float)
    lp = linprog(objective, A_ub=rows, b_ub=np.array(list(capacity.values())), A_eq=one_per_group,
                 b_eq=np.ones(groups), bounds=np.stack([np.zeros_like(upper), upper], axis=1), method="highs")
    if lp.status != 0 or lp.lower is None:
        return mask, None
    x = lp.x.reshape(groups, cands)
    scale = {k: max(float(np.abs(c).max()), 1e-300) for k, c in costs.items()}
    price = sum(costs[k] / scale[k] for k in capacity)  # a group the LP splits takes its cheapest part
    choice = np.where(x > 1e-9, price, np.inf).argmin(axis=1)
    at = np.arange(groups)
    if any(costs[k][at, choice].sum() > b * (1 + 1e-12) + 1e-12 for k, b in capacity.items()):
        return mask, None
    choice = _fill(choice, sensitivity, costs, capacity, mask)
    best = float(sensitivity[at, choice].sum())
    reduced = lp.lower.marginals.reshape(groups, cands)
    keep = mask & (lp.fun + reduced <= best + 1e-9 * max(1.0, abs(best)))
    keep[at, choice] = True
    return keep, choice


def exact_search(problem: AllocationProblem, goal: Goal, time_limit_s: float | None = None) -> Solution:
    """The optimal plan within every budget of ``goal``."""
    if not goal.budgets:
        raise MixprecError("search exact needs --budget, e.g. --budget bops=w4a8 (in Python: budget='bops=w4a8')")
    return solve_exact(problem.sensitivity, problem.costs, goal.budgets, problem.fixed, problem.allowed, time_limit_s)
