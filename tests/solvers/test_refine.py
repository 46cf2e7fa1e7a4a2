import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from mixprec.errors import MixprecError
from mixprec.solvers.exact import solve_exact
from mixprec.solvers.refine import refine


def test_refine_steps_away_from_an_interacting_pair():
    # three groups, candidates (high, low); any two groups at low fit the budget
    S = np.array([[0.0, 1.0], [0.0, 1.1], [0.0, 1.2]])
    costs = {"bytes": np.array([[2.0, 1.0]] * 3)}

    def measure(choice):  # additive, except groups 0 and 1 together at low cost 5 more
        return float(S[np.arange(3), choice].sum() + (5.0 if choice[0] == 1 and choice[1] == 1 else 0.0))

    exact = solve_exact(S, costs, {"bytes": 4.0})
    assert list(exact.choice) == [1, 1, 0]
    result = refine(S, costs, {"bytes": 4.0}, measure)
    assert list(result.choice) == [1, 0, 1]
    assert result.measured_loss == pytest.approx(2.2)
    assert result.costs["bytes"] <= 4.0
    # round 1: the exact plan, each of its two lowered groups restored, the corrected plan;
    # round 2: the new plan's lowered groups restored (one of those plans was measured in round 1),
    # then the solve repeats itself
    assert result.evaluations == 5
    roles = [t["role"] for t in result.trace]
    assert roles[:4] == ["exact", "round 1: group 1 restored", "round 1: group 0 restored", "round 1: corrected plan"]
    assert roles[-1] == "stop"


def test_refine_stops_when_the_additive_model_holds():
    S = np.array([[0.0, 1.0], [0.0, 1.1], [0.0, 1.2]])
    costs = {"bytes": np.array([[2.0, 1.0]] * 3)}
    calls = []

    def measure(choice):
        calls.append(tuple(choice))
        return 0.5 * float(S[np.arange(3), choice].sum())

    result = refine(S, costs, {"bytes": 4.0}, measure, rounds=5)
    assert list(result.choice) == list(solve_exact(S, costs, {"bytes": 4.0}).choice)
    assert len(calls) == len(set(calls)) == 3  # the plan and its two lowered groups restored, once each


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 6), st.integers(2, 4), st.integers(0, 2**31 - 1), st.floats(0.1, 0.9))
def test_refine_meets_the_budget_and_never_loses_to_the_exact_plan(G, C, seed, fraction):
    rng = np.random.default_rng(seed)
    S = rng.exponential(1.0, (G, C))
    costs = {"bytes": rng.integers(1, 10, (G, C)).astype(float), "bops": rng.random((G, C))}
    pair = rng.random((G, C, G, C)) * 2.0
    some_plan = rng.integers(0, C, G)  # the budgets admit at least this plan
    hi = {k: c.max(axis=1).sum() for k, c in costs.items()}
    budgets = {k: max(c[np.arange(G), some_plan].sum(), fraction * hi[k]) for k, c in costs.items()}

    def measure(choice):
        rows = np.arange(G)
        interaction = sum(pair[a, choice[a], b, choice[b]] * S[a, choice[a]] * S[b, choice[b]]
                          for a in range(G) for b in range(a + 1, G))
        return float(S[rows, choice].sum() + interaction)

    exact = solve_exact(S, costs, budgets)
    result = refine(S, costs, budgets, measure, rounds=3, probes=3)
    for k, b in budgets.items():
        assert result.costs[k] <= b + 1e-9
    assert result.measured_loss <= measure(exact.choice) + 1e-12
    assert result.measured_loss == pytest.approx(measure(result.choice))
    assert result.evaluations <= 1 + 3 * (1 + 3)


def test_refine_refuses_negative_rounds():
    for bad in ({"rounds": -1}, {"probes": 0}):
        with pytest.raises(MixprecError, match="rounds must be"):
            refine(np.ones((1, 2)), {"bytes": np.ones((1, 2))}, {"bytes": 1.0}, lambda c: 0.0, **bad)
