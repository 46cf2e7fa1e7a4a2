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


@settings(max_examples=150, deadline=None)
@given(instances(), st.integers(-12, 3))
def test_exact_solver_is_optimal_at_any_scale_of_the_table(instance, exponent):
    """sqnr entries near 8 bits and float16 are 1e-7 and below, and span decades within a row;
    HiGHS's tolerances are absolute, so the plan must not depend on the table's scale."""
    S, costs, budgets, fixed, allowed = instance
    rng = np.random.default_rng(exponent + 20)
    S = S * 4.0 ** -rng.integers(0, 8, S.shape) * 10.0 ** exponent
    best = brute_force(S, costs, budgets, fixed, allowed)
    if best is None:
        return
    solution = solve_exact(S, costs, budgets, fixed, allowed)
    assert solution.objective == pytest.approx(best, rel=1e-6, abs=0)


def test_a_table_of_tiny_sensitivities_gets_its_optimal_plan():
    """The sqnr table of a small tied language model (groups {emb,out}, l1, l2; candidates w2, w4a8,
    w8a8, w4, w8, fp16) and its bits per weight: unscaled, HiGHS stopped within its absolute gap of
    1e-6 at fp16/fp16/w8, 2.6 % worse than the optimum fp16/w8/fp16."""
    S = np.array([[0.1420279137909796, 0.009003866467555362, 6.930283668917508e-05, 0.008983640245650083,
                   3.476600045664698e-05, 8.202677126724066e-08],
                  [0.003317678293617546, 0.00015628687652123325, 2.541781835299142e-06, 0.0001528124622613036,
                   5.248801412153582e-07, 3.2104838896445936e-09],
                  [0.009713490077446778, 0.00017383662157974218, 1.0459594651501519e-06, 0.00017359481452416963,
                   5.407368318851552e-07, 3.1422479103421405e-09]])
    bits = np.array([[0.702247191011236, 1.2640449438202248, 2.3876404494382024, 1.2640449438202248,
                      2.3876404494382024, 4.49438202247191],
                     [0.898876404494382, 1.6179775280898876, 3.056179775280899, 1.6179775280898876,
                      3.056179775280899, 5.752808988764045],
                     [0.8089887640449438, 1.5280898876404494, 2.966292134831461, 1.5280898876404494,
                      2.966292134831461, 5.752808988764045]])
    budget = {"bits_per_weight": 13.735}
    best = brute_force(S, {"bits_per_weight": bits}, budget, {}, np.ones_like(S, dtype=bool))
    solution = solve_exact(S, {"bits_per_weight": bits}, budget)
    assert solution.objective == pytest.approx(best, rel=1e-9)
    assert solution.choice.tolist() == [5, 4, 5]


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
