import json
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from mixprec.errors import MixprecError
from mixprec.solvers.exact import InfeasibleBudget, plan_costs, solve_exact
from mixprec.solvers.greedy_pareto import greedy_path, greedy_pareto


def random_instance(seed, G, C, monotone=False):
    """S, costs, fixed, allowed; with monotone=True a cheaper candidate is never less sensitive (no free wins)."""
    rng = np.random.default_rng(seed)
    S = rng.exponential(1.0, (G, C)).round(3)
    costs = {"bytes": rng.integers(1, 20, (G, C)).astype(float), "bops": rng.random((G, C))}
    if monotone:
        for g in range(G):
            S[g, np.argsort(costs["bytes"][g], kind="stable")] = np.sort(S[g])[::-1]
    allowed = rng.random((G, C)) < 0.85
    allowed[np.arange(G), rng.integers(0, C, G)] = True
    return S, costs, {"bytes": float(rng.integers(0, 5))}, allowed


def convex_instance(seed, G, C):
    """Per group, S is a convex, decreasing function of the cost: greedy by ratio is exact at its breakpoints."""
    rng = np.random.default_rng(seed)
    S, cost = np.zeros((G, C)), np.zeros((G, C))
    for g in range(G):
        levels = np.sort(rng.choice(np.arange(1, 40), C, replace=False))[::-1].astype(float)  # most expensive first
        slopes = np.cumsum(rng.uniform(0.05, 1.0, C))  # damage per byte saved, growing as the group gets cheaper
        values = np.concatenate([[rng.uniform(0, 1)], np.zeros(C - 1)])
        for j in range(1, C):
            values[j] = values[j - 1] + slopes[j - 1] * (levels[j - 1] - levels[j])
        perm = rng.permutation(C)
        S[g, perm], cost[g, perm] = values, levels
    return S, {"bytes": cost}


def allowed_moves(S, cost, mask, choice):
    """(group, candidate, ratio, saving) of every move to a cheaper allowed candidate."""
    return [(g, c, (S[g, c] - S[g, choice[g]]) / (cost[g, choice[g]] - cost[g, c]), cost[g, choice[g]] - cost[g, c])
            for g in range(len(S)) for c in range(S.shape[1]) if mask[g, c] and cost[g, c] < cost[g, choice[g]]]


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 6), st.integers(1, 4))
def test_path_falls_in_cost_by_the_best_ratio_move_from_highest_precision_to_cheapest(seed, G, C):
    S, costs, fixed, allowed = random_instance(seed, G, C)
    path = greedy_path(S, costs, "bytes", fixed, allowed)
    cost, rows = costs["bytes"], np.arange(G)
    assert path[0].costs["bytes"] == fixed["bytes"] + np.where(allowed, cost, -np.inf).max(axis=1).sum()
    assert path[-1].costs["bytes"] == fixed["bytes"] + np.where(allowed, cost, np.inf).min(axis=1).sum()
    totals = [p.costs["bytes"] for p in path]
    assert all(a > b for a, b in zip(totals, totals[1:]))
    for before, after in zip(path, path[1:]):
        assert allowed[rows, after.choice].all()
        (g,) = np.flatnonzero(before.choice != after.choice)  # one group moves per step
        moves = allowed_moves(S, cost, allowed, before.choice)
        taken = next(m for m in moves if m[:2] == (g, after.choice[g]))
        assert all(taken[2] <= m[2] + 1e-12 for m in moves)  # the smallest damage per byte saved
        objective, plan_totals = plan_costs(after.choice, S, costs, fixed)
        assert after.objective == pytest.approx(objective) and after.costs == pytest.approx(plan_totals)
        assert after.trace[0]["group"] == g and after.trace[0]["to"] == after.choice[g]
    assert not allowed_moves(S, cost, allowed, path[-1].choice)


def test_ratio_ties_go_to_the_larger_saving_and_free_wins_come_first():
    S = np.array([[0.0, 1.0, 2.0], [0.0, -0.5, 5.0]])  # group 1: a cheaper candidate that is less sensitive
    costs = {"bytes": np.array([[8.0, 6.0, 4.0], [8.0, 7.0, 1.0]])}
    path = greedy_path(S, costs, "bytes")
    assert [p.choice.tolist() for p in path] == [[0, 0], [0, 1], [2, 1], [2, 2]]
    # step 2: group 0 to candidate 1 and to candidate 2 both cost 0.5 per byte; candidate 2 saves more


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 7), st.integers(1, 4), st.floats(0.0, 1.0))
def test_budget_mode_is_the_first_path_plan_within_budget_and_no_better_than_exact(seed, G, C, fraction):
    S, costs, fixed, allowed = random_instance(seed, G, C)
    path = greedy_path(S, costs, "bytes", fixed, allowed)
    budget = path[-1].costs["bytes"] + fraction * (path[0].costs["bytes"] - path[-1].costs["bytes"])
    solution = greedy_pareto(S, costs, "bytes", fixed, allowed, budget=budget)
    assert solution.costs["bytes"] <= budget + 1e-9
    assert solution.evaluations == 0 and solution.measured_loss is None
    index = next(i for i, p in enumerate(path) if p.choice.tolist() == solution.choice.tolist())
    assert index == 0 or path[index - 1].costs["bytes"] > budget
    assert solution.objective >= solve_exact(S, costs, {"bytes": budget}, fixed, allowed).objective - 1e-9
    assert len(solution.trace) == index + 1


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 5), st.integers(2, 4))
def test_on_a_separable_convex_instance_every_path_plan_is_exactly_optimal(seed, G, C):
    S, costs = convex_instance(seed, G, C)
    for plan in greedy_path(S, costs, "bytes"):
        best = solve_exact(S, costs, {"bytes": plan.costs["bytes"]})
        assert plan.objective == pytest.approx(best.objective, abs=1e-9)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 6), st.integers(1, 4))
def test_without_dominated_candidates_every_path_plan_is_exactly_optimal(seed, G, C):
    # each min-ratio move lands on the next vertex of its group's lower convex hull, so the path is the greedy of
    # the LP relaxation of the multiple-choice knapsack, whose breakpoints are integral (Sinha & Zoltners 1979)
    S, costs, fixed, allowed = random_instance(seed, G, C, monotone=True)
    for plan in greedy_path(S, costs, "bytes", fixed, allowed):
        best = solve_exact(S, costs, {"bytes": plan.costs["bytes"]}, fixed, allowed)
        assert plan.objective == pytest.approx(best.objective, abs=1e-9)


def test_a_dominated_candidate_makes_the_first_plans_worse_than_the_optimum():
    S = np.array([[1.0, 0.0], [0.0, 0.5]])  # group 0's cheaper candidate is also the less sensitive one
    costs = {"bytes": np.array([[8.0, 4.0], [8.0, 4.0]])}
    path = greedy_path(S, costs, "bytes")
    assert [p.choice.tolist() for p in path] == [[0, 0], [1, 0], [1, 1]]
    assert path[0].objective > solve_exact(S, costs, {"bytes": 16.0}).objective  # [1, 0] is cheaper and better


def scan(path, loss, max_loss, start):
    """The reference: the cheapest plan from ``start`` on with loss <= max_loss, else ``start``."""
    ok = [i for i in range(start, len(path)) if loss(path[i].choice) <= max_loss]
    return (ok[-1], True) if ok else (start, False)


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 7), st.integers(1, 4), st.floats(-0.1, 1.1),
       st.sampled_from(["binary", "interpolation"]), st.booleans())
def test_binary_and_interpolation_search_find_the_plan_a_linear_scan_finds(seed, G, C, level, search, with_budget):
    S, costs, fixed, allowed = random_instance(seed, G, C, monotone=True)
    path = greedy_path(S, costs, "bytes", fixed, allowed)
    objectives = [p.objective for p in path]
    assert objectives == sorted(objectives)  # no free wins: the damage grows along the path
    calls = []
    loss = lambda choice: plan_costs(choice, S, costs)[0]
    measure = lambda choice: calls.append(choice.tolist()) or loss(choice)
    max_loss = objectives[0] + level * (objectives[-1] - objectives[0])
    budget, start = None, 0
    if with_budget:
        start = len(path) // 2
        budget = path[start].costs["bytes"]
    expected, met = scan(path, loss, max_loss, start)
    solution = greedy_pareto(S, costs, "bytes", fixed, allowed, budget=budget, measure=measure, max_loss=max_loss,
                             search=search)
    assert solution.choice.tolist() == path[expected].choice.tolist()
    assert solution.measured_loss == pytest.approx(loss(path[expected].choice))
    assert solution.evaluations == len(calls) == len({tuple(c) for c in calls})  # each plan measured once
    assert solution.trace[-1]["met_max_loss"] is met
    json.dumps(solution.trace, allow_nan=False)


def test_searches_on_a_long_path_measure_a_logarithmic_number_of_plans():
    S, costs, fixed, allowed = random_instance(7, 80, 4, monotone=True)
    allowed[:] = True
    path = greedy_path(S, costs, "bytes", fixed, allowed)
    assert len(path) > 120
    loss = lambda choice: plan_costs(choice, S, costs)[0]
    lowest, highest = path[0].objective, path[-1].objective
    for level in (0.01, 0.2, 0.5, 0.9):
        max_loss = lowest + level * (highest - lowest)
        expected, _ = scan(path, loss, max_loss, 0)
        for search, most in (("binary", math.ceil(math.log2(len(path) + 1))), ("interpolation", 2 * math.log2(len(path)) + 2)):
            solution = greedy_pareto(S, costs, "bytes", fixed, allowed, measure=loss, max_loss=max_loss, search=search)
            assert solution.choice.tolist() == path[expected].choice.tolist()
            assert solution.evaluations <= most < len(path)


def test_when_no_plan_meets_max_loss_the_highest_precision_plan_within_budget_comes_back_flagged():
    S, costs, fixed, allowed = random_instance(3, 5, 3, monotone=True)
    path = greedy_path(S, costs, "bytes", fixed, allowed)
    budget = path[2].costs["bytes"]
    for search in ("binary", "interpolation"):
        solution = greedy_pareto(S, costs, "bytes", fixed, allowed, budget=budget, measure=lambda choice: 5.0,
                                 max_loss=0.5, search=search)
        assert solution.choice.tolist() == path[2].choice.tolist() and solution.measured_loss == 5.0
        assert solution.trace[-1]["met_max_loss"] is False and "no plan" in solution.trace[-1]["note"]
        assert solution.trace[-1]["chosen"] and solution.trace[-1]["index"] == 2
        json.dumps(solution.trace, allow_nan=False)


def test_a_nan_loss_counts_as_too_lossy_and_stays_out_of_the_trace():
    S, costs, fixed, allowed = random_instance(5, 8, 3, monotone=True)
    allowed[:] = True
    path = greedy_path(S, costs, "bytes", fixed, allowed)
    threshold = path[len(path) // 3].costs["bytes"]
    broken_when_cheap = lambda choice: 0.0 if plan_costs(choice, S, costs, fixed)[1]["bytes"] >= threshold else math.nan
    for search in ("binary", "interpolation"):
        solution = greedy_pareto(S, costs, "bytes", fixed, allowed, measure=broken_when_cheap, max_loss=0.5, search=search)
        assert solution.costs["bytes"] == threshold and solution.measured_loss == 0.0
        assert any(step["loss"] is None for step in solution.trace)
        json.dumps(solution.trace, allow_nan=False)


def test_bad_arguments_say_what_to_give():
    S = np.array([[0.0, 1.0], [0.0, 2.0]])
    costs = {"bytes": np.array([[8.0, 4.0], [8.0, 4.0]])}
    loss = lambda choice: 0.0
    with pytest.raises(MixprecError, match="give a budget in 'bytes', or measure and max_loss"):
        greedy_pareto(S, costs, "bytes")
    with pytest.raises(MixprecError, match="measure and max_loss together"):
        greedy_pareto(S, costs, "bytes", measure=loss)
    with pytest.raises(MixprecError, match="unknown search 'linear'"):
        greedy_pareto(S, costs, "bytes", budget=10, search="linear")
    with pytest.raises(InfeasibleBudget, match="bytes <= 5 asked, the smallest achievable is 8"):
        greedy_pareto(S, costs, "bytes", budget=5.0)
    with pytest.raises(MixprecError, match="max_loss must be a finite number"):
        greedy_pareto(S, costs, "bytes", measure=loss, max_loss=math.nan)
    with pytest.raises(MixprecError, match="no cost table for budget kind 'bops'"):
        greedy_path(S, costs, "bops")
    with pytest.raises(MixprecError, match=r"shape \(1, 2\); it must match"):
        greedy_path(S, {"bytes": np.ones((1, 2))}, "bytes")
    with pytest.raises(MixprecError, match="no allowed candidate"):
        greedy_path(S, costs, "bytes", allowed=np.array([[True, True], [False, False]]))
    with pytest.raises(MixprecError, match="measure must be a function"):
        greedy_pareto(S, costs, "bytes", measure=3.0, max_loss=1.0)
