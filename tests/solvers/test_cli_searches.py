"""solve --search, pareto --eval / --method / --cost, report and the demo, end to end on demo-cnn."""
import json

import pytest

from mixprec.cli import main

CANDS = "w2a8,w4a8,w8a8"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = tmp_path_factory.mktemp("alloc") / "run"
    assert main(["analyze", "--model", "demo-cnn", "--candidates", CANDS, "--out", str(path)]) == 0
    return path


def evaluations(run):
    log = run / "evaluations.jsonl"
    return len(log.read_text().splitlines()) if log.is_file() else 0


def latency_csv(run, tmp_path):
    groups = json.loads((run / "costs.json").read_text())["groups"]
    lines = ["layer,candidate,latency_ms"]
    for layers in groups.values():
        for layer in layers:
            for cand, ms in (("w2a8", 0.4), ("w4a8", 0.5), ("w8a8", 1.0)):
                lines.append(f"{layer},{cand},{ms}")
    lines.append("*,,2.0")
    path = tmp_path / "latency.csv"
    path.write_text("\n".join(lines) + "\n")
    return path, len(groups)


def test_latency_table_as_a_budget(run, tmp_path):
    csv, groups = latency_csv(run, tmp_path)
    plan = tmp_path / "plan.json"
    assert main(["solve", str(run), "--cost", f"latency_ms={csv}", "--budget", "latency_ms=w4a8",
                 "--out", str(plan)]) == 0
    meta = json.loads(plan.read_text())["metadata"]
    assert meta["budgets"]["latency_ms"] == pytest.approx(2.0 + 0.5 * groups)
    assert meta["predicted_costs"]["latency_ms"] <= meta["budgets"]["latency_ms"] + 1e-9
    # several budgets at once, one of them custom
    assert main(["solve", str(run), "--cost", f"latency_ms={csv}", "--budget", "latency_ms=0.8x,bytes=w4a8",
                 "--out", str(plan)]) == 0
    meta = json.loads(plan.read_text())["metadata"]
    assert set(meta["budgets"]) == {"latency_ms", "bytes"}
    assert main(["solve", str(run), "--cost", "latency_ms", "--budget", "bytes=w4a8", "--out", str(plan)]) == 2


def test_a_uniform_budget_the_latency_table_lacks_is_refused_not_read_as_the_rest_of_the_model(run, tmp_path, capsys):
    csv, _ = latency_csv(run, tmp_path)
    csv.write_text("\n".join(l for l in csv.read_text().splitlines() if ",w8a8," not in l) + "\n")
    plan = tmp_path / "plan.json"
    assert main(["solve", str(run), "--cost", f"latency_ms={csv}", "--budget", "latency_ms=w8a8",
                 "--out", str(plan)]) == 2
    err = capsys.readouterr().err
    assert "latency_ms table has no w8a8 entry" in err and "0.8x" in err and not plan.exists()
    assert main(["solve", str(run), "--cost", f"latency_ms={csv}", "--budget", "latency_ms=w4a8",
                 "--out", str(plan)]) == 0


def test_pareto_with_evaluation_report_and_cache(run, tmp_path, capsys):
    out = tmp_path / "front"
    assert main(["pareto", str(run), "--budget-kind", "bytes", "--points", "6", "--eval", "--out", str(out)]) == 0
    data = json.loads((out / "pareto.json").read_text())
    assert data["reference"]["name"] == "top1" and data["reference"]["value"] > 90
    assert all(p["measured"] is not None for p in data["points"])
    assert all(u["measured"] is not None for u in data["uniform"].values())
    for name in ("pareto.png", "heatmap.png", "report.html"):
        assert (out / name).stat().st_size > 1000
    count = evaluations(run)
    plans = {tuple(sorted(p["assignments"].items())) for p in data["points"]}
    plans |= {tuple(sorted((g, cand) for g in data["groups"])) for cand in data["uniform"]}
    assert count == 1 + len(plans)  # the float model and each distinct plan, once
    capsys.readouterr()
    assert main(["pareto", str(run), "--budget-kind", "bytes", "--points", "6", "--eval", "--out", str(out)]) == 0
    assert evaluations(run) == count + 1  # every plan came from the log, after the float model's check
    assert main(["report", str(out), "--select", "0"]) == 0
    html = (out / "report.html").read_text()
    first = data["points"][0]["assignments"]
    assert all(group in html for group in first)
    assert main(["report", str(out), "--select", "99"]) == 2


def test_lagrangian_front_from_the_command_line(run, tmp_path):
    out = tmp_path / "fast"
    assert main(["pareto", str(run), "--budget-kind", "bops", "--points", "8", "--method", "lagrangian",
                 "--out", str(out)]) == 0
    data = json.loads((out / "pareto.json").read_text())
    sens = [p["predicted_sensitivity"] for p in data["points"]]
    assert data["method"] == "lagrangian" and all(a > b for a, b in zip(sens, sens[1:]))


@pytest.mark.parametrize("argv", [
    ["--search", "greedy-pareto", "--budget", "bops=w4a8"],
    ["--search", "mixquant", "--budget", "bytes=w4a8"],
    ["--search", "refine", "--budget", "bops=w4a8", "--rounds", "2"],
])
def test_searches_meet_their_budget(run, tmp_path, argv):
    plan = tmp_path / "plan.json"
    assert main(["solve", str(run), *argv, "--out", str(plan)]) == 0
    meta = json.loads(plan.read_text())["metadata"]
    assert meta["search"] == argv[1]
    for kind, budget in meta["budgets"].items():
        assert meta["predicted_costs"][kind] <= budget * (1 + 1e-12)
    if argv[1] == "refine":
        assert meta["evaluations"] >= 1 and meta["measured"]["name"] == "top1"
    else:
        assert meta["evaluations"] == 0 and meta["measured"] is None


@pytest.mark.parametrize("search", ["greedy", "bisection", "greedy-pareto"])
def test_measured_searches_keep_the_drop_within_the_bound(run, tmp_path, search):
    plan = tmp_path / "plan.json"
    assert main(["solve", str(run), "--search", search, "--max-drop", "2", "--kind", "bops", "--out", str(plan)]) == 0
    meta = json.loads(plan.read_text())["metadata"]
    reference = json.loads((run / "evaluations.jsonl").read_text().splitlines()[0])
    assert reference["plan"] == "float model"
    assert meta["measured"]["value"] >= reference["result"]["value"] - 2 - 1e-9
    assert meta["evaluations"] >= 1


def test_a_plan_over_its_budget_is_one_note_not_a_python_warning(run, tmp_path, capsys, recwarn):
    plan = tmp_path / "plan.json"
    assert main(["solve", str(run), "--search", "greedy", "--max-drop", "0.0001", "--budget", "bops=0.3x",
                 "--no-guard", "--out", str(plan)]) == 0  # stops at the drop, long before the budget
    captured = capsys.readouterr()
    assert captured.out.count("this plan exceeds the budget") == 1
    assert not [w for w in recwarn if "exceeds the budget" in str(w.message)]  # printed as a note only


def test_search_argument_errors(run, tmp_path, capsys):
    plan = str(tmp_path / "plan.json")
    for argv, message in ((["--search", "exact"], "needs --budget"),
                          (["--search", "mixquant"], "needs --budget"),
                          (["--search", "greedy-pareto", "--budget", "bops=w4a8,bytes=w4a8"], "one budget"),
                          (["--search", "greedy", "--max-drop", "lots"], "--max-drop")):
        capsys.readouterr()
        assert main(["solve", str(run), *argv, "--out", plan]) == 2
        assert message in capsys.readouterr().err


def test_demo_runs_the_whole_pipeline(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--candidates", "w2a8,w8a8", "--points", "4"]) == 0
    out = capsys.readouterr().out
    assert "report: " in out and (tmp_path / "report.html").is_file()
    data = json.loads((tmp_path / "pareto.json").read_text())
    assert data["reference"] is not None and all(p["measured"] for p in data["points"])
    # the run names its model: a solve of it later loads the model and runs the guard (it was skipped, with a note)
    assert json.loads((tmp_path / "run" / "run.json").read_text())["arguments"]["model"] == "demo-cnn"
    assert main(["solve", str(tmp_path / "run"), "--budget", "bops=0.5x", "--out", str(tmp_path / "p.json")]) == 0
    assert "guard skipped" not in capsys.readouterr().out
    assert "guard" in json.loads((tmp_path / "p.json").read_text())["metadata"]


def test_a_budget_that_does_not_bind_gives_the_least_sensitive_plan_with_a_note(run, tmp_path, capsys):
    plan = tmp_path / "plan.json"
    capsys.readouterr()
    assert main(["solve", str(run), "--budget", "bytes=1.01x", "--out", str(plan)]) == 0
    out = capsys.readouterr().out
    assert "does not bind" in out
    assert "--search local" not in out  # nothing to search for: no plan is better
    table = json.loads((run / "sensitivity.json").read_text())
    assignments = json.loads(plan.read_text())["assignments"]
    for group, row in zip(table["groups"], table["values"]):
        assert assignments[group] == table["candidates"][min(range(len(row)), key=lambda j: row[j])]


def test_reconstruction_aware_refine_measures_each_plan_after_brecq(tmp_path, capsys):
    run = tmp_path / "run"  # min-max ranges and few samples: a BRECQ evaluation in seconds
    assert main(["analyze", "--model", "demo-cnn", "--candidates", "w2a8,w8a8", "--calibration-samples", "64",
                 "--weight-range", "minmax", "--activation-range", "minmax", "--out", str(run)]) == 0
    plan = tmp_path / "plan.json"
    before = evaluations(run)
    assert main(["solve", str(run), "--search", "refine", "--budget", "bops=0.5x", "--rounds", "1", "--probes", "1",
                 "--rounding", "brecq", "--rounding-iterations", "5", "--out", str(plan)]) == 0
    meta = json.loads(plan.read_text())["metadata"]
    entries = [json.loads(line) for line in (run / "evaluations.jsonl").read_text().splitlines()[before:]]
    # nearest's float-model entry is reused only if its key is the same: a rounding is part of the key
    assert len(entries) == meta["evaluations"] + 1 and entries[0]["plan"] == "float model"
    assert list((run / "rounding").glob("brecq-*.pt"))  # each plan's reconstruction resumes from here
    capsys.readouterr()
    assert main(["solve", str(run), "--budget", "bops=0.5x", "--rounding", "brecq", "--no-guard",
                 "--out", str(plan)]) == 2
    assert "measures none" in capsys.readouterr().err
    assert main(["pareto", str(run), "--rounding", "brecq", "--out", str(tmp_path)]) == 2
    assert "add --eval" in capsys.readouterr().err
    assert main(["solve", str(run), "--search", "refine", "--budget", "bops=0.5x", "--rounding", "gptq",
                 "--rounding-iterations", "5", "--out", str(plan)]) == 2
    assert "--rounding-iterations is an option of --rounding adaround and --rounding brecq" in capsys.readouterr().err


def test_a_search_keeps_only_the_newest_rounding_checkpoints(tmp_path):
    # each measured plan's GPTQ weights are a copy of the model's: a search of dozens of plans of an LLM would
    # fill the disk; the results are in evaluations.jsonl
    from mixprec.plan_evaluation import KEPT_CHECKPOINTS
    run = tmp_path / "run"
    assert main(["analyze", "--model", "demo-cnn", "--candidates", "w2a8,w4a8,w8a8", "--calibration-samples", "64",
                 "--weight-range", "minmax", "--activation-range", "minmax", "--out", str(run)]) == 0
    plan = tmp_path / "plan.json"
    assert main(["solve", str(run), "--search", "local", "--budget", "bops=0.5x", "--evaluations", "6",
                 "--rounding", "gptq", "--out", str(plan)]) == 0
    logged = [json.loads(line) for line in (run / "divergences.jsonl").read_text().splitlines()]  # the guard and search
    assert sum(entry["plan"] != "float model" for entry in logged) > KEPT_CHECKPOINTS
    assert 1 <= len(list((run / "rounding").glob("gptq-*.pt"))) <= KEPT_CHECKPOINTS


def test_an_unreachable_budget_says_what_the_cost_table_lacks(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["analyze", "--model", "demo-cnn", "--candidates", "w4a8,w8a8", "--calibration-samples", "64",
                 "--out", str(run)]) == 0
    groups = json.loads((run / "sensitivity.json").read_text())["groups"]
    table = tmp_path / "lat.csv"  # only w8a8 is timed: w4a8 is never chosen, so a tight budget cannot be met
    rows = ["group,candidate,latency_ms"] + [f"{g},w8a8,1.0" for g in groups]
    table.write_text("\n".join(rows) + "\n")
    capsys.readouterr()
    assert main(["solve", str(run), "--cost", f"latency_ms={table}", "--budget", "latency_ms=0.5x", "--no-guard",
                 "--out", str(tmp_path / "plan.json")]) == 2
    err = capsys.readouterr().err
    assert "no plan meets the budget" in err and "has no latency_ms for" in err


@pytest.mark.parametrize("option", [["--search", "greedy", "--max-drop", "abc"], ["--search", "greedy", "--max-drop=-1%"],
                                    ["--search", "local", "--budget", "bops=0.5x", "--time-budget", "5min"]])
def test_a_bad_search_option_is_refused_before_anything_is_measured(run, tmp_path, capsys, option, monkeypatch):
    from mixprec.plan_evaluation import PlanEvaluator

    def never(*a, **k):
        raise AssertionError("measured before the option was checked")
    monkeypatch.setattr(PlanEvaluator, "measure", never)
    monkeypatch.setattr(PlanEvaluator, "reference", never)
    capsys.readouterr()
    assert main(["solve", str(run), *option, "--out", str(tmp_path / "plan.json")]) == 2
    err = capsys.readouterr().err
    assert ("--max-drop" if any("max-drop" in o for o in option) else "--time-budget") in err


def test_a_latency_fraction_is_of_the_float_model_the_profile_measured(tmp_path):
    # an --around table can predict the float plan far from what the float model measured: 0.99x was 65 % of it
    from mixprec import Analysis
    run = tmp_path / "run"
    assert main(["analyze", "--model", "demo-cnn", "--candidates", "w4a8,fp32", "--calibration-samples", "64",
                 "--out", str(run)]) == 0
    groups = json.loads((run / "sensitivity.json").read_text())["groups"]
    table = tmp_path / "lat.csv"
    rows = ["group,candidate,latency_ms"] + [f"{g},w4a8,1.0" for g in groups] + [f"{g},fp32,2.0" for g in groups]
    table.write_text("\n".join(rows) + "\n")
    analysis = Analysis.load(run)
    problem = analysis.problem(cost_files=[f"latency_ms={table}"])
    assert analysis.budgets("latency_ms=0.5x", problem)["latency_ms"] == pytest.approx(len(groups))  # the table's
    (tmp_path / "lat.json").write_text(json.dumps({"float_model_ms": 12.0}))  # what profile wrote beside it
    problem = analysis.problem(cost_files=[f"latency_ms={table}"])
    assert analysis.budgets("latency_ms=0.5x", problem)["latency_ms"] == pytest.approx(6.0)  # the measured one's
    (tmp_path / "lat.json").write_text("not json")
    problem = analysis.problem(cost_files=[f"latency_ms={table}"])
    assert analysis.budgets("latency_ms=0.5x", problem)["latency_ms"] == pytest.approx(len(groups))


def _demo_run(tmp_path, candidates: str, *extra: str):
    """A demo-cnn analysis of ``candidates`` on 32 calibration images (``extra``: more analyze options), reopened."""
    from mixprec import Analysis
    run = tmp_path / "run"
    assert main(["analyze", "--model", "demo-cnn", "--candidates", candidates, *extra, "--calibration-samples", "32",
                 "--out", str(run)]) == 0
    return Analysis.load(run)


def test_a_budget_dict_takes_numbers_of_any_kind(tmp_path):
    """A budget computed from cost arrays is a numpy float64 (repr 'np.float64(4437.0)' under numpy 2)."""
    import numpy as np
    import torch
    analysis = _demo_run(tmp_path, "w4a8,w8a8")
    problem = analysis.problem()
    value = problem.uniform_cost("bytes", "w4a8") * 1.25
    for number in (value, np.float64(value), np.float32(value), torch.tensor(value, dtype=torch.float64)):
        assert analysis.budgets({"bytes": number}, problem)["bytes"] == pytest.approx(value, rel=1e-6)
    assert analysis.budgets({"bytes": np.int64(int(value))}, problem)["bytes"] == int(value)
    assert analysis.budgets({"bytes": "w4a8"}, problem)["bytes"] == problem.uniform_cost("bytes", "w4a8")


def test_a_pin_holds_whatever_candidates_says_and_an_emptied_group_is_explained(tmp_path, capsys):
    from mixprec.errors import SpecError
    analysis = _demo_run(tmp_path, "w2a8,w4a8", "--pin", "conv1=w6a8")
    plan = analysis.solve("bytes=w4a8", candidates="w2a8", guard=False)  # w6a8 left out: conv1 keeps its pin
    assert plan.assignments["conv1"] == "w6a8" and set(plan.assignments.values()) == {"w6a8", "w2a8"}
    with pytest.raises(SpecError, match=r"have no candidate left: --candidates w6a8 \(w6a8 was measured only for "
                                        r"the groups a --pin names\) leaves them none; this run's candidates for "
                                        r"every group: w2a8, w4a8"):
        analysis.problem(candidates="w6a8")


def test_a_budget_names_a_candidate_as_the_candidate_grammar_reads_it(tmp_path):
    """--candidates W4A8 and --pin conv1=W8A8 are read; so is bops=W4A8 (and fp8e4m3 for fp8)."""
    analysis = _demo_run(tmp_path, "w4a8,w8a8,fp8")
    problem = analysis.problem()
    assert analysis.budgets("bops=W4A8", problem) == analysis.budgets("bops=w4a8", problem)
    assert analysis.budgets("bytes=FP8E4M3", problem) == {"bytes": problem.uniform_cost("bytes", "fp8")}


def test_a_budget_that_does_not_bind_says_among_what_the_plan_is_least_sensitive(tmp_path):
    analysis = _demo_run(tmp_path, "w2a8,w4a8,w8a8")
    everything = analysis.solve("bytes=1GB", guard=False)
    assert "the least-sensitive plan overall" in everything.metadata["notes"][0]
    restricted = analysis.solve("bytes=1GB", candidates="w2a8,w4a8", guard=False)
    assert set(restricted.assignments.values()) == {"w4a8"}
    assert "the least-sensitive plan that the pins, --candidates and cost tables allow" in \
        restricted.metadata["notes"][0]


def test_a_model_named_to_solve_is_checked_against_the_run_even_where_nothing_is_measured(tmp_path, capsys):
    """The guard had no rival to measure: another model's --model/--data were taken without a look and echoed in
    the quantize hint."""
    (tmp_path / "nets.py").write_text(
        "import torch\n"
        "def a():\n    torch.manual_seed(0)\n    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), "
        "torch.nn.Linear(8, 3)).eval()\n"
        "def b():\n    torch.manual_seed(1)\n    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), "
        "torch.nn.Linear(8, 3)).eval()\n"
        "def data():\n    g = torch.Generator().manual_seed(0)\n    return [torch.randn(16, 6, generator=g)]\n")
    run = tmp_path / "run"
    assert main(["analyze", "--model", f"{tmp_path}/nets.py:a", "--data", f"{tmp_path}/nets.py:data", "--candidates",
                 "w4a8,w8a8", "--out", str(run)]) == 0
    capsys.readouterr()
    solve = ["solve", str(run), "--budget", "bytes=1x", "--no-guard", "--data", f"{tmp_path}/nets.py:data",
             "--out", str(tmp_path / "p.json")]
    assert main([*solve, "--model", f"{tmp_path}/nets.py:b"]) == 2
    assert "differs from what" in capsys.readouterr().err and not (tmp_path / "p.json").exists()
    assert main([*solve, "--model", f"{tmp_path}/nets.py:a"]) == 0
