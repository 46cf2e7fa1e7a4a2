import numpy as np
from hypothesis import given, settings, strategies as st

from mixprec.solvers.exact import solve_exact
from mixprec.solvers.pareto import pareto_front


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.integers(1, 4), st.integers(0, 2**31 - 1))
def test_front_is_non_dominated_monotone_and_exact(groups, cands, seed):
    rng = np.random.default_rng(seed)
    S = rng.exponential(1.0, (groups, cands))
    costs = {"bytes": rng.integers(1, 30, (groups, cands)).astype(float), "bops": rng.random((groups, cands))}
    front = pareto_front(S, costs, "bytes", points=12, fixed={"bytes": 3.0})
    assert front
    cost = [p.solution.costs["bytes"] for p in front]
    sens = [p.solution.objective for p in front]
    assert cost == sorted(cost) and len(set(cost)) == len(cost)
    assert all(a > b for a, b in zip(sens, sens[1:]))  # more bytes buys strictly less damage
    for p in front:  # each point is the exact optimum at its own cost
        best = solve_exact(S, costs, {"bytes": p.solution.costs["bytes"]}, {"bytes": 3.0})
        assert abs(best.objective - p.solution.objective) < 1e-9
    # the ends: the cheapest plan's cost and the least-sensitive plan's damage
    assert cost[0] == 3.0 + costs["bytes"].min(axis=1).sum()
    assert abs(sens[-1] - S.min(axis=1).sum()) < 1e-9


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 6), st.integers(0, 2**31 - 1))
def test_the_front_holds_the_best_plan_at_the_cost_of_every_uniform_plan(groups, seed):
    """Budgets at the uniform plans' costs join the evenly spaced ones: a costly candidate (fp16) stretching the
    range leaves no evenly spaced budget near the cheap uniform plans, where mixed plans are compared with them."""
    rng = np.random.default_rng(seed)
    bits = np.array([2.0, 3.0, 4.0, 16.0])
    S = np.sort(rng.exponential(1.0, (groups, 4)), axis=1)[:, ::-1].copy()  # fewer bits, more damage
    costs = {"bits": np.tile(bits, (groups, 1)) * rng.integers(1, 5, (groups, 1))}
    uniform = [float(costs["bits"][:, j].sum()) for j in range(4)]
    front = pareto_front(S, costs, "bits", points=3, extra_budgets=uniform)
    for budget in uniform:
        best = solve_exact(S, costs, {"bits": budget})
        within = [p for p in front if p.solution.costs["bits"] <= budget + 1e-9]
        assert within and abs(within[-1].solution.objective - best.objective) < 1e-9


def test_a_plan_solved_at_several_budgets_stands_for_the_highest():
    """The same plan from an evenly spaced budget and from a uniform candidate's cost just above it: the front keeps
    the candidate's budget, so the guard compares the plan with that uniform plan (as solve at that budget does)."""
    from mixprec.solvers.pareto import FrontPoint, non_dominated
    from mixprec.solvers.problem import Solution
    plan = Solution(np.array([0, 1]), 0.5, {"bytes": 4.1765})
    cheaper = Solution(np.array([0, 0]), 0.9, {"bytes": 3.0})
    kept = non_dominated([FrontPoint(3.2, cheaper), FrontPoint(4.178, plan), FrontPoint(4.1802, plan)], "bytes")
    assert [p.budget for p in kept] == [3.2, 4.1802]
    assert kept[1].solution is plan
