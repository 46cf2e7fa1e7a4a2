import itertools

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from mixprec.errors import MixprecError
from mixprec.solvers.exact import InfeasibleBudget, solve_exact


def brute_force(S, costs, budgets, fixed, allowed):
    best = None
    G, C = S.shape
    for choice in itertools.product(range(C), repeat=G):
        rows = np.arange(G)
        if not allowed[rows, choice].all():
            continue
        if all(fixed.get(k, 0) + costs[k][rows, choice].sum() <= b + 1e-9 for k, b in budgets.items()):
            value = S[rows, choice].sum()
            if best is None or value < best:
                best = value
    return best


@st.composite
def instances(draw):
    G, C, K = draw(st.integers(1, 8)), draw(st.integers(1, 4)), draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    S = rng.exponential(1.0, (G, C)).round(3)
    costs = {f"k{i}": rng.integers(1, 20, (G, C)).astype(float) for i in range(K)}
    fixed = {f"k{i}": float(rng.integers(0, 5)) for i in range(K)}
    allowed = rng.random((G, C)) < 0.85
    allowed[np.arange(G), rng.integers(0, C, G)] = True
    lo = {k: fixed[k] + np.where(allowed, c, np.inf).min(axis=1).sum() for k, c in costs.items()}
    hi = {k: fixed[k] + np.where(allowed, c, -np.inf).max(axis=1).sum() for k, c in costs.items()}
    fraction = draw(st.floats(0.0, 1.0))
    budgets = {k: lo[k] + fraction * (hi[k] - lo[k]) for k in costs}
    return S, costs, budgets, fixed, allowed


@settings(max_examples=150, deadline=None)
@given(instances())
def test_exact_solver_matches_brute_force(instance):
    S, costs, budgets, fixed, allowed = instance
    best = brute_force(S, costs, budgets, fixed, allowed)
    if best is None:
        with pytest.raises(InfeasibleBudget):
            solve_exact(S, costs, budgets, fixed, allowed)
        return
    solution = solve_exact(S, costs, budgets, fixed, allowed)
    assert solution.objective == pytest.approx(best, abs=1e-9)
    rows = np.arange(S.shape[0])
    assert allowed[rows, solution.choice].all()
    for k, b in budgets.items():
        assert solution.costs[k] <= b + 1e-6


def test_infeasible_budget_states_the_smallest_achievable_value():
    S = np.array([[0.0, 1.0], [0.0, 2.0]])
    costs = {"bytes": np.array([[8.0, 4.0], [8.0, 4.0]])}
    with pytest.raises(InfeasibleBudget, match=r"bytes <= 5 asked, the smallest achievable is 8"):
        solve_exact(S, costs, {"bytes": 5.0})


def test_pins_and_infinite_sensitivity_are_respected():
    S = np.array([[0.0, 1.0], [0.0, np.inf]])
    costs = {"bytes": np.array([[8.0, 4.0], [8.0, 4.0]])}
    allowed = np.array([[False, True], [True, True]])
    sol = solve_exact(S, costs, {"bytes": 100.0}, allowed=allowed)
    assert sol.choice.tolist() == [1, 0]
    with pytest.raises(MixprecError, match="no cost table"):
        solve_exact(S, costs, {"bops": 1.0})
