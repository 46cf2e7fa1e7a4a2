"""local: a measured local search within the budgets (mixprec's own; EvoPress and ExLlamaV3's greedy
dKL-per-bit are the references). The table proposes, a measurement decides:

    plan <- the start that measures best (the exact plan, the uniform plans within the budget)
    repeat while evaluations remain:
        moves <- every single move (one group to another candidate) within the budgets, and for each
                 move up that does not fit, the same move paired with the one move down that makes it
                 fit at the least predicted damage
        take the `moves_per_round` moves with the best predicted change  dS = sum of S[g, new] - S[g, old]
        with `screen` (the divergence on a few calibration batches): keep the `survivors` that screen best
        measure those on all the calibration data
        plan <- the best measured one if it measures strictly better than plan, else stop
    return plan

``measure(choice) -> loss`` is a label-free divergence on the calibration data (never the evaluation
split); every returned plan meets every budget and measures no worse than every start.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..errors import MixprecError
from .exact import solve_exact
from .problem import AllocationProblem, Goal, Solution, within


def _fits(problem: AllocationProblem, budgets: dict[str, float], choice: np.ndarray) -> bool:
    return all(within(problem.cost(k, choice), b) for k, b in budgets.items())


def moves(problem: AllocationProblem, budgets: dict[str, float], choice: np.ndarray) -> list[tuple[float, np.ndarray]]:
    """(predicted change of total sensitivity, new choice) of every single move within the budgets, and of
    each move that needs a compensating move down, paired with the one of least predicted damage."""
    S, mask, rows = problem.sensitivity, problem.mask, np.arange(len(choice))
    current = S[rows, choice]
    out, seen = [], set()

    def add(delta: float, new: np.ndarray) -> None:
        key = tuple(int(c) for c in new)
        if key not in seen:
            seen.add(key)
            out.append((float(delta), new))

    downs = []  # (group, candidate) moves that make the plan cheaper in every budget kind
    for g in range(len(choice)):
        for c in np.flatnonzero(mask[g]):
            if c == choice[g]:
                continue
            new = choice.copy()
            new[g] = c
            delta = S[g, c] - current[g]
            if _fits(problem, budgets, new):
                add(delta, new)
            if all(problem.costs[k][g, c] < problem.costs[k][g, choice[g]] for k in budgets):
                downs.append((g, int(c), delta))
    downs.sort(key=lambda m: m[2])
    for g in range(len(choice)):
        for c in np.flatnonzero(mask[g]):
            if c == choice[g]:
                continue
            up = choice.copy()
            up[g] = c
            if _fits(problem, budgets, up):
                continue
            for h, d, delta_down in downs:  # least predicted damage first
                if h == g:
                    continue
                pair = up.copy()
                pair[h] = d
                if _fits(problem, budgets, pair):
                    add(S[g, c] - current[g] + delta_down, pair)
                    break
    out.sort(key=lambda m: m[0])
    return out


def local_search(problem: AllocationProblem, goal: Goal, starts: list[np.ndarray] | None = None,
                 evaluations: int = 64, moves_per_round: int = 8, screen: Callable[[np.ndarray], float] | None = None,
                 survivors: int = 2) -> Solution:
    """Improve the best of ``starts`` (default: the exact plan) by measured moves within ``goal.budgets``,
    with ``goal.measure`` (lower is better), at most ``evaluations`` full measurements. ``screen``: a
    cheaper measure of the same kind (fewer batches) that picks the ``survivors`` of each round's moves."""
    if not goal.budgets:
        raise MixprecError("search local needs --budget, e.g. --budget bops=w4a8 (in Python: budget='bops=w4a8')")
    if goal.measure is None:
        raise MixprecError("search local measures plans: give a measure (the guard's divergence on calibration data)")
    if evaluations < 1 or moves_per_round < 1 or survivors < 1:
        raise MixprecError(f"evaluations, moves_per_round and survivors must be >= 1, got {evaluations}, "
                           f"{moves_per_round} and {survivors}")
    budgets = goal.budgets
    if not starts:
        starts = [solve_exact(problem.sensitivity, problem.costs, budgets, problem.fixed, problem.allowed).choice]
    losses: dict[tuple, float] = {}
    screened: dict[tuple, float] = {}
    trace: list[dict] = []

    def cheap(choice: np.ndarray) -> float:
        key = tuple(int(c) for c in choice)
        if key not in screened:
            screened[key] = float(screen(np.array(key)))
        return screened[key]

    def measure(choice: np.ndarray, role: str) -> float:
        key = tuple(int(c) for c in choice)
        if key not in losses:
            losses[key] = float(goal.measure(np.array(key)))
            objective, costs = problem.totals(np.array(key))
            trace.append({"step": len(trace), "role": role, "loss": losses[key], "predicted": objective,
                          "costs": costs})
        return losses[key]

    starts = [np.asarray(s) for s in starts if _fits(problem, budgets, np.asarray(s))]
    if not starts:
        raise MixprecError("no start plan meets the budget")
    plan = min(starts, key=lambda s: measure(s, "start"))
    loss = measure(plan, "start")
    while len(losses) < evaluations:
        proposals = [new for _, new in moves(problem, budgets, plan) if tuple(int(c) for c in new) not in losses]
        if screen is None:
            proposals = proposals[:min(moves_per_round, evaluations - len(losses))]
        else:
            proposals = sorted(proposals[:moves_per_round], key=cheap)[:min(survivors, evaluations - len(losses))]
        if not proposals:
            break
        best = min(proposals, key=lambda new: measure(new, "move"))
        if measure(best, "move") >= loss:
            trace.append({"step": len(trace), "role": "stop", "reason": "no proposed move measures better"})
            break
        plan, loss = best, measure(best, "move")
        trace.append({"step": len(trace), "role": "accepted", "loss": loss, "evaluations": len(losses)})
    objective, costs = problem.totals(plan)
    if screen is not None:
        trace.append({"step": len(trace), "role": "screened", "plans": len(screened)})
    return Solution(plan, objective, costs, evaluations=len(losses), measured_loss=loss, trace=trace)

