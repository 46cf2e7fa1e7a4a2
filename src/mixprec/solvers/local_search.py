"""local: a measured local search within the budgets (mixprec's own; EvoPress and ExLlamaV3's greedy
dKL-per-bit are the references). The table proposes, a measurement decides:

    plan <- the start that measures best (the exact plan, the best uniform plans within the budget)
    repeat until the time budget or the evaluations are spent:
        moves <- every single move (one group to another candidate) within the budgets, and for each
                 move up that does not fit, the same move paired with the one move down that makes it
                 fit at the least predicted damage, ranked by the predicted change dS = sum of S[g, new] - S[g, old]
        walk the ranked moves not yet measured, `moves_per_round` at a time (with `screen`, the divergence on
        a few calibration batches, keeping the `survivors` of each chunk that screen best); measure them
        on all the calibration data and take the first that measures strictly better than plan
        ("best": the best of its chunk)
        no move measures better: stop
    return plan

Taking the first better move (rather than measuring a whole chunk and taking its best) spends fewer
measurements per move taken, and walking on past a chunk with no better move lets a search with time
left find moves the table ranks low.
``measure(choice) -> loss`` is a label-free divergence on the calibration data (never the evaluation
split); every returned plan meets every budget and measures no worse than every start.
"""
from __future__ import annotations

import sys
import time
from typing import Callable

import numpy as np

from ..errors import MixprecError
from .exact import solve_exact
from .problem import AllocationProblem, Goal, Solution, within
from .search_inputs import LossCache, json_loss


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
                 evaluations: int | None = None, moves_per_round: int = 8,
                 screen: Callable[[np.ndarray], float] | None = None, survivors: int = 2,
                 seconds: float | None = None, accept: str = "first") -> Solution:
    """Improve the best of ``starts`` (default: the exact plan) by measured moves within ``goal.budgets``,
    with ``goal.measure`` (lower is better), at most ``evaluations`` full measurements (None: no limit
    where ``seconds`` is given, else 64), and no new one once the search has taken ``seconds`` (None: no
    time limit; the first ``moves_per_round`` moves are measured whatever the time). ``screen``: a
    cheaper measure of the same kind (fewer batches) that picks the ``survivors`` of each chunk of
    ``moves_per_round`` moves. ``accept``: "first" takes the first move (in predicted order) that
    measures better; "best" the best of the first chunk that holds a better one."""
    if not goal.budgets:
        raise MixprecError("search local needs --budget, e.g. --budget bops=w4a8 (in Python: budget='bops=w4a8')")
    if goal.measure is None:
        raise MixprecError("search local measures plans: give a measure (the guard's divergence on calibration data)")
    if accept not in ("best", "first"):
        raise MixprecError(f"accept must be 'best' or 'first', got {accept!r}")
    if seconds is not None and not seconds > 0:
        raise MixprecError(f"seconds must be a positive number of seconds, got {seconds!r}")
    if evaluations is None:
        evaluations = 64 if seconds is None else sys.maxsize
    if evaluations < 1 or moves_per_round < 1 or survivors < 1:
        raise MixprecError(f"evaluations, moves_per_round and survivors must be >= 1, got {evaluations}, "
                           f"{moves_per_round} and {survivors}")
    budgets = goal.budgets
    if not starts:
        starts = [solve_exact(problem.sensitivity, problem.costs, budgets, problem.fixed, problem.allowed).choice]
    trace: list[dict] = []
    role = "start"

    def record(choice: np.ndarray, loss: float) -> None:
        objective, costs = problem.totals(choice)
        trace.append({"step": len(trace), "role": role, "loss": json_loss(loss), "predicted": objective,
                      "costs": costs})

    losses = LossCache(goal.measure, record)  # a NaN loss (a broken plan) counts as +inf: never taken
    cheap = LossCache(screen) if screen is not None else None
    starts = [np.asarray(s) for s in starts if _fits(problem, budgets, np.asarray(s))]
    if not starts:
        raise MixprecError("no start plan meets the budget")
    began = time.perf_counter()
    plan = min(starts, key=losses)
    loss = start_loss = losses(plan)
    measured_starts = len(losses)
    role = "move"

    def out_of_time() -> bool:  # the first chunk of moves is always measured: a tiny model's analysis can
        # take less time than loading it for the first measurement
        return seconds is not None and time.perf_counter() - began >= seconds \
            and len(losses) - measured_starts >= moves_per_round

    stop = None
    while stop is None:
        ranked = [new for _, new in moves(problem, budgets, plan) if new not in losses]
        if not ranked:
            stop = "no move within the budget is left to measure"
            break
        best, best_loss = None, loss
        for first in range(0, len(ranked), moves_per_round):
            chunk = ranked[first:first + moves_per_round]
            if cheap is not None:
                chunk = sorted(chunk, key=cheap)[:survivors]
            for new in chunk:
                if len(losses) >= evaluations:
                    stop = f"{evaluations} evaluations made"
                elif out_of_time():
                    stop = f"time budget of {seconds:.1f} s spent"
                if stop is not None or (best is not None and accept == "first"):
                    break
                value = losses(new)
                if value < best_loss:
                    best, best_loss = new, value
            if best is not None or stop is not None:
                break
        if best is None:
            stop = stop or "every move within the budget measured, none better"
            break
        plan, loss = best, best_loss
        trace.append({"step": len(trace), "role": "accepted", "loss": json_loss(loss), "evaluations": len(losses)})
    spent = time.perf_counter() - began
    taken = sum(step["role"] == "accepted" for step in trace)
    trace.append({"step": len(trace), "role": "stop", "reason": stop, "seconds": round(spent, 2),
                  "note": f"local search: {len(losses)} plans measured in {spent:.1f} s, {taken} move(s) taken, "
                          f"measured loss {start_loss:.6g} -> {loss:.6g} ({loss - start_loss:+.3g}); stopped: {stop}"})
    objective, costs = problem.totals(plan)
    if cheap is not None:
        trace.append({"step": len(trace), "role": "screened", "plans": len(cheap)})
    return Solution(plan, objective, costs, evaluations=len(losses), measured_loss=loss, trace=trace)

