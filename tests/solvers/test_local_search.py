"""The measured local search: within every budget, never worse (measured) than its best start."""
import numpy as np
from hypothesis import given, settings, strategies as st

from mixprec.solvers import SOLVERS, AllocationProblem, Goal
from mixprec.solvers.local_search import local_search, moves


def problem_of(seed: int, groups: int = 5, cands: int = 3) -> tuple[AllocationProblem, np.ndarray]:
    rng = np.random.default_rng(seed)
    cost = np.sort(rng.uniform(1, 10, (groups, cands)), axis=1)
    S = np.sort(rng.uniform(0, 5, (groups, cands)), axis=1)[:, ::-1].copy()  # dearer = less sensitive
    names = tuple(f"g{i}" for i in range(groups)), tuple(f"c{j}" for j in range(cands))
    truth = S * rng.uniform(0.3, 3.0, S.shape)  # the measured loss the table only approximates
    return AllocationProblem(*names, S, {"bytes": cost}, {}, np.ones_like(S, dtype=bool)), truth


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.3, 0.9))
def test_local_search_meets_the_budget_and_never_measures_worse_than_its_starts(seed, fraction):
    problem, truth = problem_of(seed)
    rows = np.arange(len(problem.groups))
    measure = lambda choice: float(truth[rows, choice].sum())  # noqa: E731
    low, high = problem.cost("bytes", problem.cheapest("bytes")), problem.cost("bytes", problem.highest("bytes"))
    budget = low + fraction * (high - low)
    goal = Goal({"bytes": budget}, measure=measure)
    exact = SOLVERS["exact"](problem, goal).choice
    result = local_search(problem, goal, starts=[exact], evaluations=30)
    assert problem.cost("bytes", result.choice) <= budget * (1 + 1e-12)
    assert result.measured_loss == measure(result.choice) <= measure(exact)
    assert result.evaluations <= 30


def test_moves_stay_within_the_budget_and_include_paired_moves():
    problem, _ = problem_of(3)
    choice = problem.cheapest("bytes")
    budget = problem.cost("bytes", choice) + 2.0  # room for the cheapest single moves up
    proposed = moves(problem, {"bytes": budget}, choice)
    assert proposed and all(problem.cost("bytes", new) <= budget + 1e-9 for _, new in proposed)
    assert [d for d, _ in proposed] == sorted(d for d, _ in proposed)
    mid = problem.uniform_choice("c1")
    paired = [new for _, new in moves(problem, {"bytes": problem.cost("bytes", mid)}, mid)
              if (new != mid).sum() == 2]
    assert paired, "a move up that does not fit is offered with a move down that pays for it"


def test_cli_local_search_decides_on_calibration_data(tmp_path):
    import json

    from mixprec.cli import main
    run, plan = tmp_path / "run", tmp_path / "plan.json"
    assert main(["analyze", "--model", "demo-cnn", "--candidates", "w2a8,w4a8,w8a8", "--calibration-samples", "64",
                 "--out", str(run)]) == 0
    assert main(["solve", str(run), "--budget", "bops=w4a8", "--search", "local", "--evaluations", "12",
                 "--out", str(plan)]) == 0
    meta = json.loads(plan.read_text())["metadata"]
    assert meta["predicted_costs"]["bops"] <= meta["budgets"]["bops"] * (1 + 1e-12)
    assert 1 <= meta["evaluations"] <= 12
    assert (run / "divergences.jsonl").is_file() and not (run / "evaluations.jsonl").exists()  # no eval split used
    assert meta["trace"][-1]["role"] == "stop" and meta["trace"][-1]["reason"]
    # a time budget in seconds; one that is neither seconds nor a multiple of the analysis time is refused
    assert main(["solve", str(run), "--budget", "bops=w4a8", "--search", "local", "--time-budget", "0.01s",
                 "--out", str(tmp_path / "quick.json")]) == 0
    quick = json.loads((tmp_path / "quick.json").read_text())["metadata"]
    assert quick["evaluations"] <= 3 + 8  # the starts, then the first chunk of moves whatever the time
    assert quick["trace"][-1]["role"] == "stop" and "local search:" in quick["trace"][-1]["note"]
    assert main(["solve", str(run), "--budget", "bops=w4a8", "--search", "local", "--time-budget", "soon",
                 "--out", str(tmp_path / "bad.json")]) != 0
    assert not (tmp_path / "bad.json").exists()


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 10_000))
def test_a_noisy_screen_changes_which_moves_are_measured_never_the_guarantees(seed):
    problem, truth = problem_of(seed, groups=6)
    rows = np.arange(len(problem.groups))
    noise = np.random.default_rng(seed + 1).normal(0, 0.5, truth.shape)
    measure = lambda choice: float(truth[rows, choice].sum())  # noqa: E731
    screen = lambda choice: float((truth + noise)[rows, choice].sum())  # noqa: E731
    mid = problem.uniform_choice("c1")
    goal = Goal({"bytes": problem.cost("bytes", mid)}, measure=measure)
    result = local_search(problem, goal, starts=[mid], evaluations=20, screen=screen, survivors=2)
    assert problem.cost("bytes", result.choice) <= goal.budgets["bytes"] * (1 + 1e-12)
    assert result.measured_loss <= measure(mid) and result.evaluations <= 20


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from(["best", "first"]))
def test_both_acceptance_rules_keep_the_guarantees(seed, accept):
    problem, truth = problem_of(seed, groups=6)
    rows = np.arange(len(problem.groups))
    measure = lambda choice: float(truth[rows, choice].sum())  # noqa: E731
    mid = problem.uniform_choice("c1")
    goal = Goal({"bytes": problem.cost("bytes", mid)}, measure=measure)
    result = local_search(problem, goal, starts=[mid], evaluations=25, accept=accept)
    assert problem.cost("bytes", result.choice) <= goal.budgets["bytes"] * (1 + 1e-12)
    assert result.measured_loss == measure(result.choice) <= measure(mid) and result.evaluations <= 25
    accepted = [s["loss"] for s in result.trace if s["role"] == "accepted"]
    assert accepted == sorted(accepted, reverse=True) and len(set(accepted)) == len(accepted)  # each strictly better


def test_first_improvement_takes_the_first_better_move_of_a_round():
    problem, truth = problem_of(7, groups=6)
    rows = np.arange(len(problem.groups))
    measure = lambda choice: float(truth[rows, choice].sum())  # noqa: E731
    mid = problem.uniform_choice("c1")
    goal = Goal({"bytes": problem.cost("bytes", mid)}, measure=measure)
    result = local_search(problem, goal, starts=[mid], evaluations=40, accept="first")
    steps = result.trace
    for i, step in enumerate(steps):
        if step["role"] == "accepted":  # the move measured just before it is the one taken
            assert steps[i - 1]["role"] == "move" and steps[i - 1]["loss"] == step["loss"]


def test_the_time_budget_stops_the_search_and_says_so():
    import time

    problem, truth = problem_of(11, groups=8, cands=4)
    rows = np.arange(len(problem.groups))

    def slow(choice):
        time.sleep(0.05)
        return float(truth[rows, choice].sum())
    mid = problem.uniform_choice("c1")
    goal = Goal({"bytes": problem.cost("bytes", mid)}, measure=slow)
    result = local_search(problem, goal, starts=[mid], evaluations=200, seconds=0.12, moves_per_round=2)
    assert result.evaluations <= 4  # the start, then moves until 0.12 s have gone (the first 2 in any case)
    assert "time budget" in result.trace[-1]["reason"]
    assert result.measured_loss <= slow(mid)


def test_bad_search_settings_are_clear_errors():
    import pytest

    from mixprec.errors import MixprecError
    problem, truth = problem_of(1)
    goal = Goal({"bytes": problem.cost("bytes", problem.uniform_choice("c1"))}, measure=lambda c: 0.0)
    with pytest.raises(MixprecError, match="accept"):
        local_search(problem, goal, accept="random")
    with pytest.raises(MixprecError, match="seconds"):
        local_search(problem, goal, seconds=0)


def test_a_plan_that_measures_nan_is_never_taken_and_its_trace_entry_is_json():
    import json
    import math

    problem, truth = problem_of(7)
    rows = np.arange(len(problem.groups))
    start = problem.uniform_choice("c1")
    broken = {tuple(int(c) for c in new) for _, new in moves(problem, {"bytes": problem.cost("bytes", start)}, start)}

    def measure(choice):  # every move from the start is a broken model (NaN); the start itself is fine
        return math.nan if tuple(int(c) for c in choice) in broken else float(truth[rows, choice].sum())
    goal = Goal({"bytes": problem.cost("bytes", start)}, measure=measure)
    result = local_search(problem, goal, starts=[start], evaluations=20)
    assert np.array_equal(result.choice, start) and math.isfinite(result.measured_loss)
    measured = [step for step in result.trace if step["role"] == "move"]
    assert measured and all(step["loss"] is None for step in measured)  # inf in the search, None in JSON
    json.dumps(result.trace, allow_nan=False)


def test_guard_holdout_judges_the_local_plan_on_batches_the_search_never_measured(tmp_path, capsys):
    import json

    import pytest

    from mixprec import Analysis
    from mixprec.cli import main
    from mixprec.errors import SpecError
    run, plan = tmp_path / "run", tmp_path / "plan.json"
    assert main(["analyze", "--model", "demo-cnn", "--candidates", "w2a8,w4a8,w8a8", "--calibration-samples", "128",
                 "--out", str(run)]) == 0
    assert main(["solve", str(run), "--budget", "bops=w4a8", "--search", "local", "--evaluations", "6",
                 "--guard-holdout", "0.5", "--out", str(plan)]) == 0
    meta = json.loads(plan.read_text())["metadata"]
    batches = Analysis.load(run).table.metadata["calibration_batches"]
    held = round(batches * 0.5)
    assert meta["guard"]["data"].startswith(f"calibration batches {batches - held + 1}-{batches} of {batches}")
    assert f"(batches 1-{batches - held}; the guard decides on the others)" in capsys.readouterr().out
    analysis = Analysis.load(run)
    assert analysis._held_apart(True, 0.5) == ((0, batches - held), (batches - held, batches))
    assert analysis._held_apart(True, 0.01) == ((0, batches - 1), (batches - 1, batches))  # at least one batch
    assert analysis._held_apart(False, 0.5) == analysis._held_apart(True, 0) == (None, None)
    with pytest.raises(SpecError, match="guard_holdout"):
        Analysis.load(run).solve("bops=w4a8", search="local", guard_holdout=1.0, evaluations=2)


def test_options_the_chosen_search_would_ignore_are_refused(tmp_path, capsys):
    # a user who forgot --search local would believe a measured search ran
    import pytest

    from mixprec import Analysis
    from mixprec.cli import main
    run, plan = tmp_path / "run", tmp_path / "plan.json"
    assert main(["analyze", "--model", "demo-cnn", "--candidates", "w4a8,w8a8", "--calibration-samples", "64",
                 "--out", str(run)]) == 0
    solve = ["solve", str(run), "--budget", "bops=w4a8", "--out", str(plan)]
    for extra, said in ((["--time-budget", "5s"], "--time-budget is an option of --search local"),
                        (["--evaluations", "3"], "--evaluations is an option of --search local"),
                        (["--rounds", "3"], "--rounds is an option of --search refine"),
                        (["--low", "w4a8"], "--low is an option of --search greedy or bisection"),
                        (["--qem", "1.5"], "--qem is an option of --search mixquant"),
                        (["--max-drop", "1%"], "max_drop (--max-drop) is the measured drop"),
                        (["--no-guard", "--guard-margin", "2"], "--guard-margin sets how the guard decides")):
        assert main([*solve, *extra]) != 0, extra
        assert said in capsys.readouterr().err
        assert not plan.exists()
    from mixprec.errors import SpecError
    with pytest.raises(SpecError, match="search 'exact' measures no plan"):
        Analysis.load(run).solve("bops=w4a8", max_drop="1%")
    assert main([*solve, "--search", "local", "--evaluations", "2", "--time-budget", "30s"]) == 0  # its own options
