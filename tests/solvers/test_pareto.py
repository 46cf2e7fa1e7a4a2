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
