import json

import pytest

from mixprec.budgets import parse_budgets
from mixprec.cli import main
from mixprec.errors import MixprecError


def test_budget_syntax():
    uniform = lambda kind, cand: {"w4a8": 100.0}[cand] if cand == "w4a8" else (_ for _ in ()).throw(MixprecError("no"))
    parse = lambda text: parse_budgets(text, ["bytes", "bops", "bits_per_weight"], uniform, lambda k: 1000.0)
    assert parse("bytes=2.5MB") == {"bytes": 2.5e6}
    assert parse("bytes=2MiB, bits=4.5") == {"bytes": 2 * 2**20, "bits_per_weight": 4.5}
    assert parse("bops=1.2G") == {"bops": 1.2e9}
    assert parse("bops=w4a8,bytes=0.5x") == {"bops": 100.0, "bytes": 500.0}
    for bad, message in (("bytes", "KIND=VALUE"), ("speed=3", "unknown budget kind"), ("bytes=lots", "neither"),
                         ("latency_ms=5", r"--cost latency_ms=FILE.csv"), ("byts=5", "did you mean bytes"),
                         ("bytes=1,bytes=2", "twice"), ("", "no budget")):
        with pytest.raises(MixprecError, match=message):
            parse(bad)


def test_analyze_solve_quantize_pipeline(tmp_path, capsys):
    run, plan = tmp_path / "run", tmp_path / "plan.json"
    assert main(["analyze", "--model", "demo-cnn", "--candidates", "w2a8,w4a8,w8a8", "--pin", "conv1=w8a8",
                 "--out", str(run)]) == 0
    assert main(["solve", str(run), "--budget", "bytes=0.45x", "--out", str(plan)]) == 0
    data = json.loads(plan.read_text())
    assert data["assignments"]["conv1"] == "w8a8"  # the pin holds
    assert data["metadata"]["predicted_costs"]["bytes"] <= data["metadata"]["budgets"]["bytes"]
    assert len(set(data["assignments"].values())) > 1  # a real mix at this budget
    out = tmp_path / "q"
    assert main(["quantize", "--model", "demo-cnn", "--pin", "conv1=w8a8", "--plan", str(plan), "--out", str(out)]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["costs"]["bytes"] == pytest.approx(data["metadata"]["predicted_costs"]["bytes"])
    capsys.readouterr()
    assert main(["solve", str(run), "--budget", "bytes=1KB", "--out", str(plan)]) == 2
    assert "smallest achievable is" in capsys.readouterr().err


def test_pareto_writes_non_dominated_plans_and_uniform_points(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["analyze", "--model", "demo-cnn", "--candidates", "w2a8,w4a8,w8a8", "--out", str(run)]) == 0
    assert main(["pareto", str(run), "--budget-kind", "bytes", "--points", "10", "--out", str(run)]) == 0
    data = json.loads((run / "pareto.json").read_text())
    costs = [p["costs"]["bytes"] for p in data["points"]]
    sens = [p["predicted_sensitivity"] for p in data["points"]]
    assert costs == sorted(costs) and all(a > b for a, b in zip(sens, sens[1:]))
    assert set(data["uniform"]) == {"w2a8", "w4a8", "w8a8"}
    # no uniform candidate beats the front: at its cost, the front has a plan at least as good
    for point in data["uniform"].values():
        reachable = [s for c, s in zip(costs, sens) if c <= point["costs"]["bytes"] + 1e-9]
        assert reachable and min(reachable) <= point["predicted_sensitivity"] + 1e-12
    assert main(["pareto", str(run), "--budget-kind", "speed", "--out", str(run)]) == 2


def test_a_fraction_of_a_measured_table_is_of_the_highest_precision_plan_not_the_slowest():
    import numpy as np
    from mixprec.budgets import parse_budgets
    from mixprec.solvers.problem import AllocationProblem
    # two groups; candidates fp32, w8a8, w4: the weight-only kernel is the slowest, fp32 the fastest
    S = np.array([[0.0, 1.0, 3.0], [0.0, 2.0, 5.0]])
    costs = {"bytes": np.array([[400.0, 100.0, 50.0], [800.0, 200.0, 100.0]]),
             "bops": np.array([[1024.0, 64.0, 128.0], [2048.0, 128.0, 256.0]]),
             "latency_ms": np.array([[1.0, 1.2, 2.0], [2.0, 2.5, 3.0]])}
    problem = AllocationProblem(("a", "b"), ("fp32", "w8a8", "w4"), S, costs, {"latency_ms": 0.5},
                                np.ones_like(S, dtype=bool))
    assert problem.highest_cost("latency_ms") == 0.5 + 1.0 + 2.0  # fp32 everywhere, not the w4 plan's 5.5
    assert problem.highest_cost("bytes") == 1200.0 and problem.highest_cost("bops") == 3072.0
    budgets = parse_budgets("latency_ms=0.8x", list(costs), problem.uniform_cost, problem.highest_cost)
    assert budgets["latency_ms"] == 0.8 * 3.5


@pytest.mark.parametrize("text", ["bytes=-5", "bytes=-0.5x", "bytes=0", "bytes=nan", "bytes=inf", "bytes=-5KB",
                                  "bytes=-1.5 MiB"])
def test_a_budget_that_is_not_a_positive_number_says_so(text):
    from mixprec.budgets import parse_budgets
    with pytest.raises(MixprecError, match="must be a positive finite number"):
        parse_budgets(text, ["bytes"], lambda kind, cand: 1.0, lambda kind: 100.0)
