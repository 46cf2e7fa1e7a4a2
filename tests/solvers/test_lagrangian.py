import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from mixprec.errors import MixprecError
from mixprec.solvers.exact import solve_exact
from mixprec.solvers.lagrangian import group_hull, lagrangian_path
from mixprec.solvers.pareto import pareto_front


@st.composite
def instances(draw):
    G, C = draw(st.integers(1, 7)), draw(st.integers(1, 5))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    S = rng.exponential(1.0, (G, C)).round(2)  # rounding makes ties and collinear points common
    costs = {"bytes": rng.integers(1, 12, (G, C)).astype(float), "bops": rng.random((G, C))}
    allowed = rng.random((G, C)) < 0.8
    allowed[np.arange(G), rng.integers(0, C, G)] = True
    return S, costs, allowed


@settings(max_examples=150, deadline=None)
@given(instances())
def test_every_plan_on_the_path_is_optimal_at_its_own_cost(instance):
    S, costs, allowed = instance
    path = lagrangian_path(S, costs, "bytes", {"bytes": 2.0}, allowed)
    rows = np.arange(S.shape[0])
    cost = [p.costs["bytes"] for p in path]
    sens = [p.objective for p in path]
    assert all(a < b for a, b in zip(cost, cost[1:]))
    assert all(a > b for a, b in zip(sens, sens[1:]))
    for plan in path:
        assert allowed[rows, plan.choice].all()
        best = solve_exact(S, costs, {"bytes": plan.costs["bytes"] + 1e-9}, {"bytes": 2.0}, allowed)
        assert plan.objective == pytest.approx(best.objective, abs=1e-9)
    # ends: the cheapest plan (least damage at that cost) and the least-sensitive plan overall
    assert cost[0] == pytest.approx(2.0 + np.where(allowed, costs["bytes"], np.inf).min(axis=1).sum())
    assert sens[-1] == pytest.approx(np.where(allowed, S, np.inf).min(axis=1).sum())


def test_group_hull_drops_dominated_and_concave_points():
    cost = np.array([1.0, 2.0, 3.0, 4.0, 2.0])
    sens = np.array([10.0, 9.0, 2.0, 1.0, 12.0])  # (2, 9) lies above the chord (1,10)-(3,2); (2, 12) is dominated
    assert group_hull(cost, sens, np.ones(5, bool)) == [0, 2, 3]
    assert group_hull(cost, sens, np.array([False, True, True, True, True])) == [1, 2, 3]


@settings(max_examples=40, deadline=None)
@given(instances())
def test_lagrangian_front_is_never_better_than_the_exact_front(instance):
    S, costs, allowed = instance
    exact = pareto_front(S, costs, "bytes", 10, allowed=allowed)
    fast = pareto_front(S, costs, "bytes", 10, allowed=allowed, method="lagrangian")
    for p in fast:
        best = solve_exact(S, costs, {"bytes": p.budget * (1 + 1e-12)}, allowed=allowed)
        assert p.solution.costs["bytes"] <= p.budget * (1 + 1e-9)
        assert p.solution.objective >= best.objective - 1e-9
    assert fast[-1].solution.objective == pytest.approx(exact[-1].solution.objective)


def test_unknown_method_and_kind_are_refused():
    S = np.ones((2, 2))
    with pytest.raises(MixprecError, match="front method"):
        pareto_front(S, {"bytes": S}, "bytes", method="dp")
    with pytest.raises(MixprecError, match="no cost table"):
        pareto_front(S, {"bytes": S}, "latency_ms")
