import json
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from mixprec.errors import MixprecError
from mixprec.solvers.greedy import bisection, greedy


@st.composite
def instances(draw):
    """S, costs, allowed, a hidden loss table (0 at each group's most expensive candidate, growing as it gets
    cheaper, so the measured loss is additive and monotone), and a loss bound."""
    G, C = draw(st.integers(1, 8)), draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    S = rng.exponential(1.0, (G, C)).round(3)
    costs = {"bytes": rng.integers(1, 20, (G, C)).astype(float)}
    allowed = rng.random((G, C)) < 0.85
    allowed[np.arange(G), rng.integers(0, C, G)] = True
    top = np.where(allowed, costs["bytes"], -np.inf).max(axis=1, keepdims=True)
    hidden = rng.uniform(0.1, 1.0, (G, 1)) * (top - costs["bytes"])
    max_loss = draw(st.floats(-0.1, 1.0)) * np.where(allowed, hidden, 0).max(axis=1).sum()
    return S, costs, allowed, hidden, float(max_loss)


def plans(S, cost, allowed):
    """The test's own high plan, low plan and search order (least sensitive at low first)."""
    ok = lambda g: [c for c in range(S.shape[1]) if allowed[g, c]]
    high = np.array([max(ok(g), key=lambda c: (cost[g, c], -S[g, c], -c)) for g in range(len(S))])
    low = np.array([min(ok(g), key=lambda c: (cost[g, c], S[g, c], c)) for g in range(len(S))])
    order = sorted((g for g in range(len(S)) if low[g] != high[g]), key=lambda g: S[g, low[g]])
    return high, low, order


def counting(hidden):
    calls = []
    measure = lambda choice: calls.append(tuple(choice.tolist())) or float(hidden[np.arange(len(choice)), choice].sum())
    return measure, calls


@settings(max_examples=150, deadline=None)
@given(instances())
def test_greedy_stays_within_the_bound_and_no_remaining_group_can_be_lowered(instance):
    S, costs, allowed, hidden, max_loss = instance
    high, low, order = plans(S, costs["bytes"], allowed)
    measure, calls = counting(hidden)
    solution = greedy(S, costs, "bytes", measure, max_loss, allowed=allowed)
    loss = lambda choice: hidden[np.arange(len(choice)), choice].sum()
    assert solution.evaluations == len(calls) == len(set(calls))
    json.dumps(solution.trace, allow_nan=False)
    if max_loss < 0:  # even the highest-precision plan (loss 0) is over the bound
        assert solution.choice.tolist() == high.tolist() and solution.evaluations == 1
        assert solution.trace[-1]["met_max_loss"] is False and "highest-precision" in solution.trace[-1]["note"]
        return
    assert solution.evaluations == 1 + len(order)
    assert [step["group"] for step in solution.trace[1:-1]] == order  # least sensitive at low first
    assert solution.measured_loss == pytest.approx(loss(solution.choice)) and solution.measured_loss <= max_loss
    assert all(solution.choice[g] in (high[g], low[g]) for g in range(len(S)))
    for g in order:  # maximal: lowering any group still at high would break the bound
        if solution.choice[g] == high[g]:
            lowered = solution.choice.copy()
            lowered[g] = low[g]
            assert loss(lowered) > max_loss
    assert solution.trace[-1]["lowered"] == [g for g in order if solution.choice[g] == low[g]]


@settings(max_examples=150, deadline=None)
@given(instances())
def test_bisection_finds_the_longest_prefix_within_the_bound_in_logarithmic_measurements(instance):
    S, costs, allowed, hidden, max_loss = instance
    high, low, order = plans(S, costs["bytes"], allowed)
    measure, calls = counting(hidden)
    solution = bisection(S, costs, "bytes", measure, max_loss, allowed=allowed)
    G = len(S)
    assert solution.evaluations == len(calls) == len(set(calls))
    assert solution.evaluations <= math.ceil(math.log2(G + 1)) + 1
    json.dumps(solution.trace, allow_nan=False)
    if max_loss < 0:
        assert solution.choice.tolist() == high.tolist() and solution.trace[-1]["met_max_loss"] is False
        return

    def prefix(k):
        plan = high.copy()
        plan[order[:k]] = low[order[:k]]
        return plan

    loss = lambda choice: hidden[np.arange(G), choice].sum()
    best_k = max(k for k in range(len(order) + 1) if loss(prefix(k)) <= max_loss)  # the linear scan
    assert solution.choice.tolist() == prefix(best_k).tolist() and solution.trace[-1]["k"] == best_k
    assert solution.measured_loss == pytest.approx(loss(solution.choice)) and solution.measured_loss <= max_loss
    # greedy keeps every move of that prefix (the loss is additive and monotone), and maybe more
    by_greedy = greedy(S, costs, "bytes", counting(hidden)[0], max_loss, allowed=allowed)
    assert all(by_greedy.choice[g] == low[g] for g in order[:best_k])


def test_low_is_one_candidate_for_all_groups_and_a_group_that_cannot_take_it_stays_high():
    S = np.array([[0.0, 0.5, 1.0], [0.0, 0.2, 3.0], [0.0, 0.1, 0.3]])
    costs = {"bytes": np.array([[16.0, 8.0, 4.0]] * 3)}
    allowed = np.array([[True, True, True], [True, True, False], [True, True, True]])
    measure, calls = counting(np.array([[0.0, 0.1, 0.2]] * 3))
    for search in (greedy, bisection):
        solution = search(S, costs, "bytes", measure, 1.0, allowed=allowed, low=1)
        assert solution.choice.tolist() == [1, 1, 1]
        calls.clear()
        solution = search(S, costs, "bytes", measure, 1.0, allowed=allowed, low=2)
        assert solution.choice.tolist() == [2, 0, 2]  # group 1 may not take candidate 2
        assert calls and all(plan[1] == 0 for plan in calls)
    solution = greedy(S, costs, "bytes", measure, 1.0, allowed=allowed, low=2)
    assert [step["group"] for step in solution.trace[1:-1]] == [2, 0]  # S at low: 0.3 before 1.0; group 1 skipped


def test_a_single_candidate_group_is_never_measured_and_a_nan_loss_is_reverted():
    S = np.array([[0.0, 1.0], [0.0, np.inf], [0.0, 2.0]])
    costs = {"bytes": np.array([[8.0, 4.0]] * 3)}
    measure = lambda choice: math.nan if choice[2] == 1 else 0.0
    solution = greedy(S, costs, "bytes", measure, 0.5)
    assert solution.choice.tolist() == [1, 0, 0] and solution.evaluations == 3
    assert solution.trace[2]["group"] == 2 and solution.trace[2]["loss"] is None and not solution.trace[2]["met_max_loss"]
    json.dumps(solution.trace, allow_nan=False)


def test_bad_arguments_say_what_is_wrong():
    S = np.array([[0.0, 1.0], [0.0, 2.0]])
    costs = {"bytes": np.array([[8.0, 4.0], [8.0, 4.0]])}
    zero = lambda choice: 0.0
    for search in (greedy, bisection):
        with pytest.raises(MixprecError, match=r"low must be a candidate index in 0\.\.1"):
            search(S, costs, "bytes", zero, 0.1, low=2)
        with pytest.raises(MixprecError, match="low must be a candidate index"):
            search(S, costs, "bytes", zero, 0.1, low=True)
        with pytest.raises(MixprecError, match="max_loss must be a number"):
            search(S, costs, "bytes", zero, None)
        with pytest.raises(MixprecError, match="measure must be a function"):
            search(S, costs, "bytes", None, 0.1)
        with pytest.raises(MixprecError, match="no cost table for budget kind 'bops'"):
            search(S, costs, "bops", zero, 0.1)
