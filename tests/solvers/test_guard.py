"""The guard returns the mixed plan only when it measures strictly better than the best uniform rival."""
import warnings
import math

import numpy as np
import torch
import pytest
from hypothesis import given, strategies as st

import mixprec
from mixprec.builtin import get_builtin
from mixprec.errors import BudgetNote
from mixprec.solvers.guard import MIXED, Sampled, guard, paired_z


@given(st.lists(st.floats(0, 10, allow_nan=False), min_size=2, max_size=6))
def test_guard_returns_the_least_divergent_and_ties_go_to_uniform(values):
    mixed, rivals = values[0], values[1:]
    choices = {f"uniform {i}": np.array([i + 1]) for i in range(len(rivals))}
    measured = {0: mixed, **{i + 1: v for i, v in enumerate(rivals)}}
    result = guard(np.array([0]), choices, lambda c: measured[int(c[0])])
    best = min(rivals)
    if mixed < best:
        assert result.chosen == MIXED and result.choice.tolist() == [0]
    else:
        assert result.chosen != MIXED and measured[int(result.choice[0])] == best
    assert result.divergence[result.chosen] == min(result.divergence.values())


def test_guard_without_rivals_or_with_an_identical_rival_measures_nothing():
    def boom(choice):
        raise AssertionError("nothing to measure")
    assert guard(np.array([1, 2]), {}, boom).chosen == MIXED
    same = guard(np.array([1, 1]), {"uniform a": np.array([1, 1])}, boom)
    assert same.chosen == "uniform a" and same.divergence == {}


@pytest.fixture(scope="module")
def demo():
    b = get_builtin("demo-cnn")
    model, data = b.model(), b.calibration(128)
    return b, model, data, mixprec.analyze(model, data, candidates="w2a8,w4a8,w8a8", progress=False)


def test_rivals_meet_the_budget_and_include_the_first_last_8_bit_variant(demo):
    _, _, _, analysis = demo
    problem = analysis.problem()
    budget = problem.uniform_cost("bops", "w4a8") * 1.3
    rivals = analysis.uniform_rivals(problem, {"bops": budget})
    assert "uniform w4a8" in rivals and "uniform w8a8" not in rivals
    assert all(problem.cost("bops", c) <= budget for c in rivals.values())
    variant = rivals["uniform w4a8, first/last w8a8"]
    names = [problem.candidates[j] for j in variant]
    assert names[0] == names[-1] == "w8a8" and set(names[1:-1]) == {"w4a8"}


def test_solve_returns_the_better_of_mixed_and_uniform_on_the_calibration_divergence(demo):
    _, _, _, analysis = demo
    for budget in ("bops=w4a8", "bytes=w4a8", "bops=0.6x"):
        plan = analysis.solve(budget)
        guard_info = plan.metadata["guard"]
        measured = {k: v for k, v in guard_info["measured"].items() if v is not None}
        if measured:  # measured against its rivals: mixed only if lower on every divergence, beyond 1 standard error
            rivals = [v for k, v in measured.items() if k != MIXED]
            lowest = [min(r[i] for r in rivals) for i in range(len(measured[MIXED]))]
            z = guard_info["paired_z"]
            assert guard_info["margin_se"] == 1.0 and guard_info["samples"] == 128
            mixed_wins = all(m < low for m, low in zip(measured[MIXED], lowest)) \
                and all(v is not None and v < -1.0 for zs in z.values() for v in zs)
            assert (guard_info["chosen"] == MIXED) == mixed_wins
            if not mixed_wins:
                assert measured[guard_info["chosen"]] == min(rivals)
                assert any("--search local" in n for n in plan.metadata["notes"])  # what to try next
        for kind, value in plan.metadata["budgets"].items():
            assert plan.metadata["predicted_costs"][kind] <= value * (1 + 1e-12)
        unguarded = analysis.solve(budget, guard=False)
        assert "guard" not in unguarded.metadata
        if guard_info["chosen"] == MIXED:
            assert unguarded.assignments == plan.assignments and "replaced_plan" not in guard_info
        elif measured:  # the mixed plan it measured and did not return is kept, as --no-guard returns it
            assert guard_info["replaced_plan"] == unguarded.assignments != plan.assignments


@given(st.lists(st.tuples(st.floats(0, 10, allow_nan=False), st.floats(0, 10, allow_nan=False)),
                min_size=2, max_size=6))
def test_a_consensus_guard_returns_mixed_only_when_it_is_lower_than_the_best_rival_on_every_divergence(values):
    mixed, rivals = values[0], values[1:]
    choices = {f"uniform {i}": np.array([i + 1]) for i in range(len(rivals))}
    measured = {0: mixed, **{i + 1: v for i, v in enumerate(rivals)}}
    result = guard(np.array([0]), choices, lambda c: measured[int(c[0])])
    rank = lambda v: sum(sum(r[k] < v[k] for r in rivals) for k in range(2))  # noqa: E731
    # the best rival: the lowest mean rank, ties to the last divergence, then to the label
    best = min(range(len(rivals)), key=lambda i: (rank(rivals[i]), rivals[i][1], f"uniform {i}"))
    ks = [k for k in range(2) if not (mixed[k] == 0 and rivals[best][k] == 0)]  # both 0: silent
    wins = bool(ks) and all(mixed[k] < rivals[best][k] for k in ks)
    assert (result.chosen == MIXED) == wins
    if wins:  # no rival measures at most the mixed plan's on both divergences and lower on one
        assert not any(r[0] <= mixed[0] and r[1] <= mixed[1] and r != mixed for r in rivals)
    else:  # the uniform plan returned is the best rival: no other ranks better on average
        returned = measured[int(result.choice[0])]
        assert returned == rivals[best] and rank(returned) == min(rank(r) for r in rivals)
        assert not any(r[0] < returned[0] and r[1] < returned[1] for r in rivals)  # nothing dominates it
        assert "every divergence" in result.reason
    assert result.to_dict("agreement+sqnr", "calibration data")["measured"][MIXED] == list(mixed)


def test_a_divergence_both_plans_measure_zero_on_does_not_decide():
    # no top-1 disagreement with the float model on any calibration sample for either plan: 1/SQNR decides
    choices = {"uniform w4": np.array([1])}
    measured = {0: (0.0, 0.0005), 1: (0.0, 0.002)}
    assert guard(np.array([0]), choices, lambda c: measured[int(c[0])], margin=0).chosen == MIXED
    measured = {0: (0.0, 0.003), 1: (0.0, 0.002)}  # worse on the divergence that decides
    assert guard(np.array([0]), choices, lambda c: measured[int(c[0])], margin=0).chosen == "uniform w4"
    measured = {0: (0.0, 0.0), 1: (0.0, 0.0)}  # nothing decides: a tie, to uniform
    assert guard(np.array([0]), choices, lambda c: measured[int(c[0])], margin=0).chosen == "uniform w4"
    measured = {0: (0.0, 0.0005), 1: (1.0, 0.002)}  # 0 against a rival above 0 still decides
    assert guard(np.array([0]), choices, lambda c: measured[int(c[0])], margin=0).chosen == MIXED


def test_the_default_guard_of_a_classifier_measures_agreement_sqnr_and_given_labels_ce(demo):
    """The built-in's own calibration images get its calibration labels beside them (the guard's ce); other
    images of the same shapes do not (no labels rather than wrong ones)."""
    b, model, data, _ = demo
    analysis = mixprec.analyze(model, data, candidates="w2a8,w4a8,w8a8", model_name="demo-cnn", progress=False)
    info = analysis.solve("bops=0.4x").metadata["guard"]
    assert info["measured"], "a mixed plan between uniform points is measured against its rivals"
    assert info["divergence"] == "agreement+sqnr+ce"
    assert all(len(v) == 3 for v in info["measured"].values())
    single = analysis.solve("bops=0.4x", guard_divergence="kl").metadata["guard"]
    assert single["divergence"] == "kl" and all(isinstance(v, float) for v in single["measured"].values())
    ce = analysis.solve("bops=0.4x", guard_divergence="ce").metadata["guard"]
    assert ce["divergence"] == "ce" and all(v > 0 for v in ce["measured"].values())
    shuffled = [x.flip(0) for x in data]  # not the built-in's calibration images: the pair, unlabelled
    other = mixprec.analyze(model, shuffled, candidates="w2a8,w4a8,w8a8", model_name="demo-cnn", progress=False)
    assert other.solve("bops=0.4x").metadata["guard"]["divergence"] == "agreement+sqnr"
    labelled = [(x, y) for x, y in zip(data, b.calibration_labels(128))]  # the user's own pairs: their labels
    own = mixprec.analyze(model, labelled, candidates="w2a8,w4a8,w8a8", progress=False)
    assert own.solve("bops=0.4x").metadata["guard"]["divergence"] == "agreement+sqnr+ce"


def test_a_mixed_plan_closer_to_float_but_tied_on_the_labels_loss_is_not_returned():
    """ResNet-56 at the bytes of W5A8: the exact plan disagreed with the float model less and had a far lower
    1/SQNR than uniform W5A8, but no lower cross-entropy against the labels; it scored lower on the evaluation
    split. A consensus with ce returns uniform."""
    rng = np.random.default_rng(0)
    n = 512
    base = [rng.random(n) / n for _ in range(3)]  # the rival's shares of agreement, 1/SQNR, ce
    rival = Sampled(tuple(float(b.sum()) for b in base), tuple(base))
    # far below the rival on agreement and 1/SQNR (3 and 8 per-sample standard deviations); on ce, above it
    shares = [b + rng.normal(shift, 1.0, n) / n for b, shift in zip(base, (-3.0, -8.0, 0.03))]
    mixed = Sampled(tuple(float(x.sum()) for x in shares), tuple(shares))
    assert paired_z(mixed, rival, 0) < -10 and paired_z(mixed, rival, 1) < -10 and paired_z(mixed, rival, 2) > -1
    result = guard(np.array([0]), {"uniform w5a8": np.array([1])}, lambda c: mixed if c[0] == 0 else rival, margin=1.0)
    assert result.chosen == "uniform w5a8"
    assert "divergence 3 of 3" in result.reason or "must measure lower on every divergence" in result.reason


def test_among_uniform_rivals_no_divergence_is_privileged_by_its_place():
    """Two rivals, each lower on one divergence: the mean ranks tie, and the last divergence (the continuous
    1/SQNR of a classifier's consensus) decides, not the first (top-1 disagreement, in whole samples)."""
    rivals = {"uniform w2a8": np.array([1]), "uniform w2a8, first/last w8a8": np.array([2])}
    # ResNet-20 at the BOPs of w2a8 (the rivals' figures); the mixed plan ties the best rival on disagreement
    measured = {0: (0.78125, 1.50), 1: (0.7754, 2.97), 2: (0.78125, 2.83)}
    result = guard(np.array([0]), rivals, lambda c: measured[int(c[0])])
    assert result.chosen == "uniform w2a8, first/last w8a8"
    dominated = {0: (0.5, 1.0), 1: (0.6, 2.0), 2: (0.4, 1.5)}
    assert guard(np.array([0]), rivals, lambda c: dominated[int(c[0])]).chosen == "uniform w2a8, first/last w8a8"


def _sampled(rng, n, shift, width=1):
    return Sampled(tuple(0.0 for _ in range(width)), tuple(rng.normal(shift, 1.0, n) / n for _ in range(width)))


def _with_values(s: Sampled) -> Sampled:
    return Sampled(tuple(float(x.sum()) for x in s.samples), s.samples)


@given(st.integers(0, 2**32 - 1), st.integers(2, 300), st.floats(-1, 1), st.floats(0, 3))
def test_paired_z_is_the_sum_of_differences_over_its_standard_error(seed, n, shift, margin):
    rng = np.random.default_rng(seed)
    a, b = _with_values(_sampled(rng, n, shift)), _with_values(_sampled(rng, n, 0.0))
    d = a.samples[0] - b.samples[0]
    z = paired_z(a, b, 0)
    assert z == pytest.approx(d.sum() / (np.sqrt(n) * d.std(ddof=1)), rel=1e-9)
    result = guard(np.array([0]), {"uniform a": np.array([1])}, lambda c: a if c[0] == 0 else b, margin)
    wins = a.values[0] < b.values[0] and z < -margin
    assert (result.chosen == MIXED) == wins
    assert result.to_dict("kl", "calibration data")["paired_z"]["uniform a"] == [round(z, 3)]


def test_a_mixed_plan_lower_within_the_noise_is_a_tie_and_uniform_is_returned():
    """ResNet-56 at the BOPs of W4A8: the mixed plan disagreed with the float model's top-1 on 46 of 512
    calibration images, uniform on 48; the two plans differed on some 40 images in all."""
    n = 512
    mixed, rival = np.zeros(n), np.zeros(n)
    mixed[:46] = 1
    rival[:30] = 1
    rival[46:64] = 1  # 30 shared disagreements, 16 only the mixed plan's, 18 only uniform's
    m = Sampled((mixed.sum() / n,), (mixed / n,))
    r = Sampled((rival.sum() / n,), (rival / n,))
    measure = lambda c: m if c[0] == 0 else r  # noqa: E731
    strict = guard(np.array([0]), {"uniform w4a8": np.array([1])}, measure, margin=0)
    assert strict.chosen == MIXED  # any lower value wins
    tied = guard(np.array([0]), {"uniform w4a8": np.array([1])}, measure)
    assert tied.chosen == "uniform w4a8" and "standard error" in tied.reason
    assert -1 < tied.z["uniform w4a8"][0] < 0
    clear = rival.copy()
    clear[64:120] = 1  # uniform now disagrees on 56 more images: far beyond the noise
    far = Sampled((clear.sum() / n,), (clear / n,))
    assert guard(np.array([0]), {"uniform w4a8": np.array([1])}, lambda c: m if c[0] == 0 else far).chosen == MIXED


def test_the_margin_applies_to_every_divergence():
    rng = np.random.default_rng(0)
    n = 400
    base = rng.normal(1.0, 0.1, (2, n)) / n
    mixed = Sampled((base[0].sum(), base[1].sum()), (base[0], base[1]))
    far = Sampled(((base[0] + 0.01).sum(), (base[1] + 0.01).sum()), (base[0] + 0.01, base[1] + 0.01))
    wiggle = np.where(np.arange(n) % 2 == 0, 0.02, -0.02)
    near1 = base[1] + (0.0002 + wiggle) / n  # the second divergence: a hair above the mixed plan's, within the noise
    near = Sampled(((base[0] + 0.01).sum(), near1.sum()), (base[0] + 0.01, near1))
    rivals = {"uniform a": np.array([1]), "uniform b": np.array([2])}
    values = {0: mixed, 1: far, 2: near}
    result = guard(np.array([0]), rivals, lambda c: values[int(c[0])])
    assert result.chosen != MIXED and -1 < result.z["uniform b"][1] < 0 and result.z["uniform a"][1] < -1
    assert guard(np.array([0]), rivals, lambda c: values[int(c[0])], margin=0).chosen == MIXED
    with pytest.raises(ValueError, match="margin"):
        guard(np.array([0]), rivals, lambda c: values[int(c[0])], margin=-1)


def test_a_uniform_answer_names_the_local_search_as_what_to_try_next(demo):
    _, _, _, analysis = demo
    plan = analysis.solve("bops=w2a8")  # only uniform w2a8 fits: the exact plan is that uniform plan
    assert plan.metadata["guard"]["chosen"] == "uniform w2a8"
    assert any("--search local" in note for note in plan.metadata["notes"])
    # every candidate has 8-bit activations: at a BOPs budget, activation candidates are the other lever
    assert any("w4a6,w5a6,w8a6" in note for note in plan.metadata["notes"])
    mixed = analysis.solve("bytes=w4a8", guard=False)  # no guard, no advice about it
    assert not any("--search local" in note for note in mixed.metadata.get("notes", []))


@pytest.mark.parametrize("candidates, budgets, said", [
    (["w2a8", "w4a8", "w8a8"], {"bops": 1.0}, True),
    (["w2a8-mse", "w4a8-minmax", "w8a8", "fp32"], {"bops": 1.0}, True),  # float and range suffixes change nothing
    (["w2a8", "w4a8", "w8a8"], {"bytes": 1.0}, False),  # activation bits cost no bytes
    (["w4a8", "w8a8", "w4a6", "w8a6"], {"bops": 1.0}, False),  # activation widths already to choose from
    (["w4", "w8", "fp16"], {"bops": 1.0}, False),  # weight-only: no activation quantizer to narrow
    (["w2a4", "w4a4"], {"bops": 1.0}, False),  # nothing narrower worth suggesting
])
def test_a_bops_budget_over_one_activation_width_suggests_narrower_activations(candidates, budgets, said):
    from mixprec.analysis import _one_activation_width
    notes = _one_activation_width(candidates, budgets)
    assert bool(notes) == said
    if said:
        assert "8 bits" in notes[0] and "int-cnn-a6" in notes[0]


def test_a_front_plan_that_is_uniform_already_is_not_said_to_be_replaced(demo):
    _, model, data, _ = demo
    analysis = mixprec.analyze(model, data, candidates="w2a8,w4a8,w8a8", model_name="demo-cnn", progress=False)
    front = analysis.pareto("bops", 6)
    uniform_names = {f"uniform {c}" for c in ("w2a8", "w4a8", "w8a8")}
    for plan in front.plans:
        guard = plan.guard or {}
        if guard.get("chosen") in uniform_names and not guard.get("measured"):  # uniform as solved: nothing measured
            assert "guard:" not in (plan.search or "")
        if "guard:" in (plan.search or ""):  # said to be replaced: it was measured against its rival
            assert guard.get("measured")
    # counted over the plans solved, before equal plans merge (a replaced plan may equal its neighbour)
    counts = front.extra["guard_replaced"]
    assert counts["solved"] >= len(front.plans)
    assert counts["replaced"] >= sum("guard:" in (p.search or "") for p in front.plans)


def test_a_difference_just_under_the_margin_never_reads_as_the_margin():
    # z = -0.998 against a margin of 1: the message must not say "1.00 standard errors"
    from mixprec.solvers.guard import paired_z
    base = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    spread = np.array([0.3, -0.2, 0.1, -0.4, 0.2])
    for shift in np.linspace(0.01, 0.3, 3000):
        mixed = Sampled((float((base - shift + spread).sum()),), (base - shift + spread,))
        rival = Sampled((float(base.sum()),), (base,))
        z = paired_z(mixed, rival, 0)
        if -1.0 < z < -0.995:
            break
    else:
        raise AssertionError("no shift gives z just above -1")
    measured = {0: mixed, 1: rival}
    result = guard(np.array([0]), {"uniform w4": np.array([1])}, lambda c: measured[int(c[0])], margin=1.0)
    assert result.chosen == "uniform w4" and "1.00 standard errors" not in result.reason
    assert "0.99 standard errors" in result.reason


def test_a_tie_on_one_of_two_divergences_names_it_and_gives_the_others():
    # lower on both, beyond the margin on the second only: the message says which one missed the margin
    from mixprec.solvers.guard import paired_z
    base = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    noisy = base - 0.05 + np.array([0.3, -0.2, 0.1, -0.4, 0.2])  # lower, within the noise
    clear = base - 0.5 + np.array([0.01, -0.01, 0.0, 0.01, -0.01])  # lower, far beyond it
    mixed = Sampled((float(noisy.sum()), float(clear.sum())), (noisy, clear))
    rival = Sampled((float(base.sum()), float(base.sum())), (base, base))
    first, second = paired_z(mixed, rival, 0), paired_z(mixed, rival, 1)
    assert -1 < first < 0 and second < -5
    measured = {0: mixed, 1: rival}
    result = guard(np.array([0]), {"uniform w4": np.array([1])}, lambda c: measured[int(c[0])], margin=1.0)
    assert result.chosen == "uniform w4"
    assert (f"{math.floor(abs(first) * 100) / 100:.2f} standard errors on divergence 1 of 2; on the other(s): "
            f"{abs(second):.2f}") in result.reason


def test_a_search_that_stops_at_the_drop_says_when_its_plan_exceeds_the_budget(demo):
    # greedy and bisection lower groups while the measured drop allows: the budget's value does not bound them
    b, _, _, analysis = demo
    budget = f"bops={analysis.problem().uniform_cost('bops', 'w2a8') * 1.01:.0f}"
    for search in ("greedy", "bisection"):
        with pytest.warns(BudgetNote, match="exceeds the budget"):
            plan = analysis.solve(budget, search=search, evaluate=lambda m: b.evaluate(m, limit=256), max_drop="0.5%",
                                  guard=False)
        assert any("exceeds the budget" in n for n in plan.metadata.get("notes", []))
    exact = analysis.solve(budget, guard=False)  # the exact solver meets it, and says nothing of the kind
    assert not any("exceeds the budget" in n for n in exact.metadata.get("notes", []))
    # guarded, the plan over its budget is compared with the uniform plans of no greater cost than itself (the
    # uniform plans within the budget were no like-for-like rivals)
    with pytest.warns(BudgetNote, match="exceeds the budget"):
        guarded = analysis.solve(budget, search="greedy", evaluate=lambda m: b.evaluate(m, limit=256),
                                 max_drop="0.5%")
    assert any("no greater cost than the plan itself" in n for n in guarded.metadata["notes"])
    limit = float(budget.split("=")[1])
    # here greedy keeps every group at w8a8 (no lowering meets the drop): uniform w8a8 itself, never swapped for the
    # uniform w2a8 within the budget that the drop forbids
    assert guarded.metadata["guard"]["reason"] == "the plan is uniform w8a8"
    assert analysis.problem().totals(np.array([analysis.problem().candidate_index(guarded.assignments[g])
                                               for g in analysis.problem().groups]))[1]["bops"] > limit


@pytest.mark.parametrize("kwargs,says", [({"guard_divergence": "xx"}, "unknown guard divergence 'xx'"),
                                         ({"guard_margin": "1"}, "guard_margin must be a number"),
                                         ({"guard_margin": -1}, "guard_margin must be a number")])
def test_a_bad_guard_option_is_an_error_not_a_guard_turned_off(demo, kwargs, says):
    from mixprec.errors import SpecError
    with pytest.raises(SpecError, match=says):
        demo[3].solve("bops=0.5x", **kwargs)


@pytest.mark.parametrize("budget", [2000, 2000.0, ["bytes=2000"]])
def test_a_budget_that_is_not_a_string_or_dict_says_what_to_give(demo, budget):
    from mixprec.errors import SpecError
    with pytest.raises(SpecError, match="a budget is a string such as 'bytes=2MB'"):
        demo[3].solve(budget)


def test_the_labels_loss_vetoes_the_mixed_plan_but_does_not_rank_the_uniform_plans():
    """ResNet-20 at the BOPs of W2A8: near collapse, ce ranked plain W2A8 over its first/last-8-bit variant
    (21.73 against 24.61 on the evaluation split); with rank_by=2 disagreement and 1/SQNR rank them."""
    rivals = {"uniform w2a8": np.array([1]), "uniform w2a8, first/last w8a8": np.array([2])}
    measured = {0: (0.9, 9.0, 9.0), 1: (0.77, 3.0, 4.0), 2: (0.77, 2.8, 5.0)}  # (disagreement, 1/SQNR, ce)
    assert guard(np.array([0]), rivals, lambda c: measured[int(c[0])]).chosen == "uniform w2a8"
    assert guard(np.array([0]), rivals, lambda c: measured[int(c[0])], rank_by=2).chosen == \
        "uniform w2a8, first/last w8a8"


def test_a_rival_ranked_below_the_best_does_not_veto_a_plan_lower_than_the_best_on_every_divergence():
    """The mixed plan measures lower than the best rival (the plan it would be replaced by) on all three
    divergences and ties another rival on top-1 disagreement: vetoing it would return the best rival, which it
    is lower than everywhere, so the mixed plan is returned."""
    rivals = {"uniform w3a8": np.array([1]), "uniform w3a8, first/last w8a8": np.array([2])}
    measured = {0: (0.0039, 0.0103, 0.0136), 1: (0.0078, 0.0174, 0.0249), 2: (0.0039, 0.0180, 0.0140)}
    result = guard(np.array([0]), rivals, lambda c: measured[int(c[0])], margin=0, rank_by=2)
    assert result.chosen == MIXED and "(uniform w3a8)" in result.reason


def test_the_reason_names_the_divergence_the_mixed_plan_is_not_lower_on():
    rivals = {"uniform w3a8": np.array([1]), "uniform w3a8, first/last w8a8": np.array([2])}
    measured = {0: (0.0078, 0.0103, 0.0136), 1: (0.0078, 0.0174, 0.0249), 2: (0.0039, 0.0180, 0.0140)}
    result = guard(np.array([0]), rivals, lambda c: measured[int(c[0])], margin=0, rank_by=2)
    assert result.chosen == "uniform w3a8"
    assert "on divergence 1 of 3 it measures 0.0078, not lower than 0.0078" in result.reason
    # given their names, the reason says which divergence: on agreement, and every figure with its name
    named = guard(np.array([0]), rivals, lambda c: measured[int(c[0])], margin=0, rank_by=2,
                  names=("agreement", "sqnr", "ce"))
    assert "on agreement it measures 0.0078, not lower than 0.0078" in named.reason
    assert "agreement 0.0078 / sqnr 0.0174 / ce 0.0249" in named.reason
    # names that do not fit the divergences are not used
    assert "on divergence 1 of 3" in guard(np.array([0]), rivals, lambda c: measured[int(c[0])], margin=0,
                                           rank_by=2, names=("agreement", "sqnr")).reason


def test_one_differing_image_of_top1_disagreement_abstains_and_the_others_decide():
    """A new user's small CNN: the mixed plan disagreed with the float model on 0 of 256 calibration images,
    uniform on 1 (z = -1.00 exactly, which no plan can beat at a margin of 1), while 1/SQNR was far lower. The
    disagreement cannot decide at this margin; 1/SQNR does. The same single image against the mixed plan vetoes."""
    n = 256
    rng = np.random.default_rng(1)
    none, one = np.zeros(n), np.zeros(n)
    one[7] = 1 / n
    quiet = rng.uniform(0.5, 1.5, n) / n * 0.01
    loud = quiet * 3
    mixed = Sampled((0.0, float(quiet.sum())), (none, quiet))
    rival = Sampled((1 / n, float(loud.sum())), (one, loud))
    assert paired_z(mixed, rival, 0) == pytest.approx(-1.0)
    measured = {0: mixed, 1: rival}
    result = guard(np.array([0]), {"uniform w4a8": np.array([1])}, lambda c: measured[int(c[0])], margin=1.0)
    assert result.chosen == MIXED
    # plan.json says which divergence decided (the disagreement abstained), so a reader leaves its z aside
    assert result.to_dict("consensus", "calibration")["deciding"] == {"uniform w4a8": [1]}
    worse = Sampled((1 / n, float(quiet.sum())), (one, quiet))  # the one image is the mixed plan's: a veto
    measured = {0: worse, 1: Sampled((0.0, float(loud.sum())), (none, loud))}
    assert guard(np.array([0]), {"uniform w4a8": np.array([1])}, lambda c: measured[int(c[0])],
                 margin=1.0).chosen == "uniform w4a8"
    alone = {0: Sampled((0.0,), (none,)), 1: Sampled((1 / n,), (one,))}  # a single divergence still ties
    assert guard(np.array([0]), {"uniform w4a8": np.array([1])}, lambda c: alone[int(c[0])],
                 margin=1.0).chosen == "uniform w4a8"


@given(st.integers(2, 300), st.data())
def test_k_differing_samples_bound_the_paired_z_by_the_abstention_rule(n, data):
    # the largest |z| that k nonzero paired differences can give is sqrt(k (n - 1) / (n - k)), reached by equal ones
    from mixprec.solvers.guard import _unresolvable
    k = data.draw(st.integers(1, n - 1))
    values = np.array(data.draw(st.lists(st.floats(0.01, 10), min_size=k, max_size=k)))
    signs = np.array(data.draw(st.lists(st.sampled_from([-1.0, 1.0]), min_size=k, max_size=k)))
    a, b = np.zeros(n), np.zeros(n)
    a[:k] = values * signs
    bound = math.sqrt(k * (n - 1) / (n - k))
    z = paired_z(Sampled((float(a.sum()),), (a,)), Sampled((0.0,), (b,)), 0)
    assert abs(z) <= bound * (1 + 1e-9)
    equal = np.zeros(n)
    equal[:k] = 1.0
    assert abs(paired_z(Sampled((float(k),), (equal,)), Sampled((0.0,), (b,)), 0)) == pytest.approx(bound)
    assert _unresolvable(Sampled((float(k),), (equal,)), Sampled((0.0,), (b,)), 0, bound) is True
    assert _unresolvable(Sampled((float(k),), (equal,)), Sampled((0.0,), (b,)), 0, bound * 0.999) is False


def test_a_misspelt_solve_keyword_is_an_error_naming_the_keywords(demo):
    # guard_margn=0 reached the exact solver as a bare TypeError
    analysis = demo[3]
    with pytest.raises(mixprec.MixprecError, match="unknown keyword.*guard_margn.*guard_margin.*time_limit_s"):
        analysis.solve("bytes=w4a8", guard_margn=0)


def test_a_single_divergence_is_named_in_the_reason():
    measured = {0: 0.0118, 1: 0.0089}
    result = guard(np.array([0]), {"uniform w4a8": np.array([1])}, lambda c: measured[int(c[0])], margin=0,
                   names=("1/SQNR",))
    assert result.chosen == "uniform w4a8" and "measures 1/SQNR 0.0089, the mixed plan 1/SQNR 0.0118" in result.reason


def test_a_first_last_variant_that_is_another_uniform_plan_is_measured_once_under_its_own_name():
    """Two groups: the first and last are all of them, so 'uniform w2a8, first/last w8a8' is uniform w8a8."""
    import torch
    from torch import nn
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    data = [torch.randn(16, 6) for _ in range(2)]
    analysis = mixprec.analyze(model, data, candidates="w2a8,w4a8,w8a8", progress=False)
    problem = analysis.problem()
    rivals = analysis.uniform_rivals(problem, {"bytes": problem.totals(problem.uniform_choice("w8a8"))[1]["bytes"]})
    assert sorted(rivals) == ["uniform w2a8", "uniform w4a8", "uniform w8a8"]
    assert len({r.tobytes() for r in rivals.values()}) == len(rivals)


def test_a_veto_within_the_noise_says_so_and_that_more_samples_can_resolve_it():
    """Far lower on two divergences, a hair higher on the third: uniform is returned (the consensus is strict,
    benchmarks/guard_veto.py), and the reason says the blocking difference is within the noise."""
    rng = np.random.default_rng(0)
    n = 256
    rival = [rng.normal(1.0, 0.3, n) for _ in range(3)]
    mixed = [rival[0] - 0.5, rival[1] - 0.5, rival[2] + np.where(np.arange(n) % 2, 0.31, -0.3)]  # z about +0.27
    measured = {0: Sampled(tuple(float(x.sum()) for x in mixed), tuple(mixed)),
                1: Sampled(tuple(float(x.sum()) for x in rival), tuple(rival))}
    result = guard(np.array([0]), {"uniform w3a8": np.array([1])}, lambda c: measured[int(c[0])], margin=1.0,
                   names=("agreement", "sqnr", "ce"))
    assert result.chosen == "uniform w3a8"
    assert "on ce it measures" in result.reason and "within the noise" in result.reason
    assert "more calibration samples can tell the plans apart" in result.reason
    # a veto by a clear margin does not call itself noise
    clear = [rival[0] - 0.5, rival[1] - 0.5, rival[2] + 0.5]
    measured[0] = Sampled(tuple(float(x.sum()) for x in clear), tuple(clear))
    result = guard(np.array([0]), {"uniform w3a8": np.array([1])}, lambda c: measured[int(c[0])], margin=1.0,
                   names=("agreement", "sqnr", "ce"))
    assert result.chosen == "uniform w3a8" and "within the noise" not in result.reason



def test_solve_in_python_warns_when_the_guard_measures_and_returns_a_uniform_plan(demo):
    """The command line prints the guard's note; in Python a GuardNote says it (plan.metadata holds the reason)."""
    import warnings
    from mixprec.errors import GuardNote
    _, _, _, analysis = demo
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # a mixed exact plan here; no difference can exceed this margin: a tie, uniform returned
        plan = analysis.solve({"bops": analysis.problem().uniform_cost("bops", "w4a8") * 1.6}, guard_margin=1e6)
    assert plan.metadata["guard"]["chosen"].startswith("uniform")
    said = [w for w in caught if issubclass(w.category, GuardNote)]
    assert len(said) == 1 and "guard: returned uniform" in str(said[0].message) and said[0].filename == __file__
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        analysis.solve("bops=w2a8")  # the exact plan is uniform w2a8 itself: nothing was replaced, nothing said
    assert not [w for w in caught if issubclass(w.category, GuardNote)]


def test_a_guard_holdout_without_the_local_search_is_refused(demo):
    from mixprec.errors import SpecError
    _, _, _, analysis = demo
    with pytest.raises(SpecError, match="nothing to hold them from: drop it, or use search='local'"):
        analysis.solve("bops=w4a8", guard_holdout=0.5)
    analysis.solve("bops=w4a8", guard_holdout=0.0)  # 0: nothing held apart, nothing to refuse


class Denoiser(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(),
                                        torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(),
                                        torch.nn.Conv2d(8, 1, 3, padding=1))

    def forward(self, x):
        return x - self.body(x)


def test_a_regression_with_float_targets_is_guarded_by_sqnr_and_the_targets_error():
    # closer to the float model is not always closer to the targets: the targets' mse vetoes, as ce does
    import torch.nn.functional as F
    from mixprec.apply import apply
    model = Denoiser().eval()
    gen = torch.Generator().manual_seed(1)
    clean = [torch.rand(8, 1, 12, 12, generator=gen) for _ in range(4)]
    pairs = [(c + 0.1 * torch.randn(c.shape, generator=gen), c) for c in clean]
    analysis = mixprec.analyze(model, pairs, candidates="w2a8,w4a8,w8a8", progress=False)
    plan = analysis.solve("bops=0.35x")  # a mixed plan between uniform points: measured against its rivals
    info = plan.metadata["guard"]
    assert info["divergence"] == "sqnr+mse"
    assert all(len(v) == 2 for v in info["measured"].values())
    uniform = mixprec.Plan.uniform(analysis.model_groups, "w2a8")
    with torch.no_grad():
        quantized = apply(model, uniform, pairs, progress=False)
        direct = sum(F.mse_loss(quantized(x), y, reduction="sum").item() for x, y in pairs) / sum(
            y.numel() for _, y in pairs)
    assert info["measured"]["uniform w2a8"][1] == pytest.approx(direct, rel=1e-5)
    inputs_only = mixprec.analyze(model, [x for x, _ in pairs], candidates="w2a8,w4a8,w8a8", progress=False)
    assert inputs_only.solve("bops=0.35x").metadata["guard"]["divergence"] == "sqnr"  # no targets: 1/SQNR alone


@given(st.integers(1, 4), st.sampled_from([(1,), (3,), (1, 5, 5), (2, 4)]), st.booleans())
def test_mse_samples_add_up_to_the_mean_squared_error(batch, shape, flat_target):
    from mixprec.sensitivity.divergence import mse_samples, regression_targets
    gen = torch.Generator().manual_seed(batch)
    out = torch.randn((batch, *shape), generator=gen)
    target = torch.randn(out.shape, generator=gen)
    if flat_target and shape == (1,):  # a (N, 1) output beside (N,) targets
        target = target.reshape(batch)
    assert regression_targets(target, out)
    per_sample, count = mse_samples(target, out)
    assert per_sample.shape == (batch,) and count == out.numel()
    expected = torch.nn.functional.mse_loss(out, target.reshape(out.shape))
    assert float(per_sample.sum()) / count == pytest.approx(float(expected), rel=1e-5)
    assert not regression_targets(target.long(), out)  # integer labels are classes, not targets
    assert not regression_targets(torch.randn(batch + 1, *shape), out)


def test_a_mixed_plan_the_guard_replaced_is_kept_in_the_plan(demo):
    """A margin no plan can clear: the guard measures the mixed plan, returns a uniform one and keeps the mixed
    plan's assignments (what --no-guard returns) beside its reasons."""
    _, _, _, analysis = demo
    unguarded = analysis.solve("bytes=0.4x", guard=False)
    assert len(set(unguarded.assignments.values())) > 1
    with pytest.warns(mixprec.errors.GuardNote):
        plan = analysis.solve("bytes=0.4x", guard_margin=1e9)
    guard_info = plan.metadata["guard"]
    assert guard_info["chosen"] != MIXED and guard_info["measured"][MIXED] is not None
    assert guard_info["replaced_plan"] == unguarded.assignments != plan.assignments


def test_the_guard_never_trades_a_plan_within_max_drop_for_a_uniform_one_beyond_it():
    """greedy keeps its plan within max_drop as measured; a uniform rival the guard prefers on the divergences but
    that measures beyond max_drop is no answer: the search's plan is returned, and the plan says why."""
    from mixprec.swap import QuantizedLayer
    b = get_builtin("demo-cnn")
    model, data = b.model(), b.calibration(128)

    def score(m):  # each 4-bit layer costs 8 points, each 2-bit one 10: uniform w4a8 (first/last w8a8) drops 16%
        chosen = [x.candidate for x in m.modules() if isinstance(x, QuantizedLayer)]
        return 100.0 - 10 * chosen.count("w2a8") - 8 * chosen.count("w4a8")
    analysis = mixprec.analyze(model, data, candidates="w2a8,w4a8,w8a8", evaluate=score, progress=False)
    plan = analysis.solve(None, search="greedy", max_drop="15%", guard_margin=1e9)  # a margin no plan clears
    assert plan.metadata["guard"]["chosen"] == MIXED and plan.metadata["measured"]["value"] >= 85
    assert any("beyond max_drop (15%)" in note for note in plan.metadata["notes"])
    assert not any(note.startswith("guard: returned") for note in plan.metadata["notes"])


def test_a_front_point_the_guard_replaced_keeps_the_mixed_plan_too(demo):
    """As solve's plan.json: pareto.json and the plan report --write-plan makes hold the mixed plan a point had
    before the guard put a uniform one in its place."""
    _, _, _, analysis = demo
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        front = analysis.pareto("bytes", 4, guard_margin=1e9)
    replaced = [i for i, p in enumerate(front.plans) if p.guard and p.guard["chosen"] != MIXED and p.guard["measured"]]
    assert replaced and front.extra["solved"] >= len(front.plans)
    point = front.plans[replaced[0]]
    assert point.guard["replaced_plan"] != point.assignments
    assert front.plan(replaced[0]).metadata["guard"]["replaced_plan"] == point.guard["replaced_plan"]


def test_a_divergence_that_cannot_decide_is_not_said_to_be_lower():
    """Both plans at 0 top-1 disagreement: the mixed plan wins on 1/SQNR alone, and the reason said it was lower
    by more than the margin on every divergence."""
    from mixprec.solvers.guard import Sampled, guard
    n = 64
    zero = np.zeros(n)
    mixed = Sampled((0.0, 0.5), (zero, np.full(n, 0.5 / n)))
    uniform = Sampled((0.0, 1.0), (zero, np.full(n, 1.0 / n) + np.linspace(-1e-3, 1e-3, n)))
    result = guard(np.array([0, 1]), {"uniform w4a8": np.array([0, 0])},
                   lambda c: mixed if c[1] else uniform, names=("disagreement", "1/SQNR"))
    assert result.chosen == MIXED
    assert "on 1/SQNR; on disagreement cannot tell them apart" in result.reason and "does not decide" in result.reason


class _HeadFirst(torch.nn.Module):
    """A head declared before the body (as many timm and Hugging Face models do): the first and last layers
    it runs are conv1 and fc, while its modules are listed fc, conv1, conv2, conv3."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 4)
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.conv3 = torch.nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        x = torch.relu(self.conv3(torch.relu(self.conv2(torch.relu(self.conv1(x))))))
        return self.fc(x.mean(dim=(2, 3)))


def test_the_first_last_rival_raises_the_layers_the_forward_runs_first_and_last(tmp_path):
    torch.manual_seed(0)
    model = _HeadFirst().eval()
    data = [torch.randn(8, 3, 8, 8) for _ in range(2)]
    analysis = mixprec.analyze(model, data, candidates="w2a8,w8a8", progress=False, run_dir=tmp_path / "run")
    assert analysis.table.groups[0] == "fc" and analysis.edges == ["conv1", "fc"]
    for reopened in (analysis, mixprec.Analysis.load(tmp_path / "run")):  # the order is kept in costs.json
        problem = reopened.problem()
        rivals = reopened.uniform_rivals(problem, {"bytes": problem.totals(problem.uniform_choice("w8a8"))[1]["bytes"]})
        variant = rivals["uniform w2a8, first/last w8a8"]
        assert {g: problem.candidates[j] for g, j in zip(problem.groups, variant)} == \
            {"fc": "w8a8", "conv1": "w8a8", "conv2": "w2a8", "conv3": "w2a8"}


def test_a_guard_with_no_uniform_plan_within_the_budget_says_so_in_the_plan(demo, tmp_path):
    """Two budgets that rank the candidates differently (bytes, and a latency table where only w8a8 on an inner
    group is fast) are met by mixed plans only: the guard has nothing to compare (the first/last variants are
    no faster), and plan.json still records that it ran."""
    _, _, _, analysis = demo
    problem = analysis.problem()
    table = tmp_path / "latency.csv"
    table.write_text("group,candidate,latency_ms\n" + "".join(
        f"{g},{c},{1.0 if c == 'w8a8' and g not in analysis.edges else 2.0}\n"
        for g in problem.groups for c in problem.candidates))
    budget = {"bytes": problem.uniform_cost("bytes", "w4a8"), "latency_ms": 2.0 * len(problem.groups) - 0.5}
    plan = analysis.solve(budget, cost_files=[f"latency_ms={table}"])
    assert len(set(plan.assignments.values())) > 1
    assert plan.metadata["guard"]["chosen"] == MIXED and plan.metadata["guard"]["measured"] == {}
    assert plan.metadata["guard"]["reason"].startswith("no uniform plan meets the budget")


def test_an_unlabelled_output_of_class_score_shape_gets_a_note_on_the_guards_divergence():
    """Without labels, auto cannot tell a classifier's (batch, classes) logits from other outputs and the guard
    compares by 1/SQNR alone: the note names the consensus a classifier is meant to get."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, 32), torch.nn.ReLU(), torch.nn.Linear(32, 32), torch.nn.ReLU(),
                                torch.nn.Linear(32, 5)).eval()
    data = [torch.randn(32, 12) for _ in range(2)]
    analysis = mixprec.analyze(model, data, candidates="w2a8,w8a8", progress=False)
    problem = analysis.problem()
    low, high = problem.uniform_cost("bytes", "w2a8"), problem.uniform_cost("bytes", "w8a8")
    between = low + 0.3 * (high - low)  # the last layer at w8a8 only: mixed, measured against uniform w2a8
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = analysis.solve({"bytes": between})
    assert plan.metadata["guard"]["divergence"] == "sqnr" and plan.metadata["guard"]["measured"]
    assert any("--guard-divergence consensus" in n for n in plan.metadata["notes"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        labelled = mixprec.analyze(model, [(x, torch.randint(0, 5, (32,))) for x in data], candidates="w2a8,w8a8",
                                   progress=False).solve({"bytes": between})
    assert not any("--guard-divergence consensus" in n for n in labelled.metadata.get("notes", []))
