import json
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from mixprec.errors import MixprecError
from mixprec.solvers.exact import InfeasibleBudget, plan_costs
from mixprec.solvers.mixquant import mixquant, mixquant_choice
from mixprec.solvers.problem import within


@st.composite
def instances(draw):
    """A positive error table, byte costs, an allowed mask that always allows the base candidate, and the base."""
    G, C = draw(st.integers(1, 7)), draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    S = (0.01 + rng.exponential(1.0, (G, C))).round(2)
    cost = rng.integers(1, 20, (G, C)).astype(float)
    base = draw(st.integers(0, C - 1))
    allowed = rng.random((G, C)) < 0.8
    allowed[:, base] = True
    return S, {"bytes": cost}, allowed, base


def group_costs(choice, cost):
    return cost[np.arange(len(choice)), choice]


@settings(max_examples=100, deadline=None)
@given(instances(), st.floats(1.0, 50.0), st.floats(1.0, 50.0))
def test_qem_rule_ends_and_monotonicity(instance, q1, q2):
    S, costs, allowed, base = instance
    cost = costs["bytes"]
    rows = np.arange(len(S))
    for huge in (1e12, math.inf):  # every candidate qualifies: each group's cheapest
        choice = mixquant_choice(S, costs, "bytes", huge, base=base, allowed=allowed)
        assert allowed[rows, choice].all()
        assert group_costs(choice, cost).tolist() == np.where(allowed, cost, np.inf).min(axis=1).tolist()
    choice = mixquant_choice(S, costs, "bytes", 1.0, base=base, allowed=allowed)  # base or better, at most its cost
    assert allowed[rows, choice].all() and (S[rows, choice] <= S[:, base]).all()
    assert (group_costs(choice, cost) == np.where(allowed & (S <= S[:, [base]]), cost, np.inf).min(axis=1)).all()
    low, high = sorted((q1, q2))
    assert (group_costs(mixquant_choice(S, costs, "bytes", low, base=base, allowed=allowed), cost)
            >= group_costs(mixquant_choice(S, costs, "bytes", high, base=base, allowed=allowed), cost)).all()


@settings(max_examples=100, deadline=None)
@given(instances(), st.floats(-0.2, 1.2), st.floats(1.0, 30.0))
def test_budget_mode_is_the_smallest_breakpoint_qem_whose_plan_fits(instance, fraction, probe):
    S, costs, allowed, base = instance
    cost, fixed = costs["bytes"], {"bytes": 2.0}
    plan_cost = lambda choice: plan_costs(choice, S, costs, fixed)[1]["bytes"]
    ratio = S / S[:, [base]]
    breakpoints = sorted({1.0} | {float(r) for r in ratio[allowed] if r >= 1})
    plans = [mixquant_choice(S, costs, "bytes", q, base=base, allowed=allowed) for q in breakpoints]
    # the plan changes only at breakpoints: a qem between two is the plan of the lower one
    below = max(i for i, q in enumerate(breakpoints) if q <= probe)
    assert mixquant_choice(S, costs, "bytes", probe, base=base, allowed=allowed).tolist() == plans[below].tolist()
    cheapest, dearest = plan_cost(plans[-1]), plan_cost(plans[0])
    budget = cheapest + fraction * (dearest - cheapest) if dearest > cheapest else cheapest + fraction
    fits = [i for i, plan in enumerate(plans) if within(plan_cost(plan), budget)]  # the solvers' tolerance
    if not fits:
        with pytest.raises(InfeasibleBudget, match=f"the smallest achievable is {cheapest:.6g}"):
            mixquant(S, costs, "bytes", fixed, allowed, budget=budget, base=base)
        return
    solution = mixquant(S, costs, "bytes", fixed, allowed, budget=budget, base=base)
    assert solution.choice.tolist() == plans[fits[0]].tolist()
    assert within(solution.costs["bytes"], budget)
    assert solution.costs["bytes"] == max(plan_cost(plans[i]) for i in fits)  # the most expensive qem-plan that fits
    assert solution.trace[-1]["chosen"] and solution.trace[-1]["qem"] == breakpoints[fits[0]]
    assert solution.trace[-1]["base"] == base
    assert len(solution.trace) <= math.ceil(math.log2(len(breakpoints))) + 2  # a binary search over breakpoints
    json.dumps(solution.trace, allow_nan=False)


def test_a_zero_base_error_admits_only_exact_candidates_until_qem_is_infinite():
    S = np.array([[0.0, 0.0, 1.0], [0.0, 2.0, 3.0]])  # base 0 is exact in both groups
    costs = {"bytes": np.array([[16.0, 8.0, 4.0], [16.0, 8.0, 4.0]])}
    assert mixquant_choice(S, costs, "bytes", 1e9).tolist() == [1, 0]
    assert mixquant_choice(S, costs, "bytes", math.inf).tolist() == [2, 2]
    solution = mixquant(S, costs, "bytes", budget=20.0)
    assert solution.choice.tolist() == [2, 2] and solution.trace[-1]["qem"] == "inf"
    json.dumps(solution.trace, allow_nan=False)
    assert mixquant(S, costs, "bytes", budget=24.0).trace[-1]["qem"] == 1.0


def test_default_base_is_the_dearest_candidate_and_a_group_without_it_uses_its_own_highest():
    S = np.array([[0.5, 0.125, 1.0], [0.25, 0.125, 0.75]])
    costs = {"bytes": np.array([[8.0, 16.0, 4.0], [8.0, 16.0, 4.0]])}
    solution = mixquant(S, costs, "bytes", qem=2.0)
    assert solution.trace[0]["base"] == 1  # 16 bytes in both groups
    assert solution.choice.tolist() == [1, 0]  # group 0: 0.5 > 2 x 0.125 keeps the base; group 1: 0.25 <= 2 x 0.125
    allowed = np.array([[True, True, True], [True, False, True]])  # group 1's base is then candidate 0 (0.25)
    assert mixquant_choice(S, costs, "bytes", 2.0, allowed=allowed).tolist() == [1, 0]  # 0.75 > 2 x 0.25
    assert mixquant_choice(S, costs, "bytes", 3.0, allowed=allowed).tolist() == [1, 2]  # 0.75 <= 3 x 0.25


def test_bad_arguments_say_what_is_wrong():
    S = np.array([[0.1, 1.0], [0.2, 2.0]])
    costs = {"bytes": np.array([[8.0, 4.0], [8.0, 4.0]])}
    for qem in (0.5, math.nan, "lots"):
        with pytest.raises(MixprecError, match="qem must be"):
            mixquant_choice(S, costs, "bytes", qem)
    with pytest.raises(MixprecError, match="exactly one of qem"):
        mixquant(S, costs, "bytes", qem=2.0, budget=10.0)
    with pytest.raises(MixprecError, match="exactly one of qem"):
        mixquant(S, costs, "bytes")
    with pytest.raises(MixprecError, match="budget must be a finite number"):
        mixquant(S, costs, "bytes", budget=math.inf)
    with pytest.raises(MixprecError, match="non-negative error table"):
        mixquant_choice(-S, costs, "bytes", 2.0)
    with pytest.raises(MixprecError, match=r"base must be a candidate index in 0\.\.1"):
        mixquant_choice(S, costs, "bytes", 2.0, base=2)
    with pytest.raises(InfeasibleBudget, match="bytes <= 5 asked, the smallest achievable is 8"):
        mixquant(S, costs, "bytes", budget=5.0)
