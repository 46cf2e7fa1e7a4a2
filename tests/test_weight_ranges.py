"""weight_range="auto": each open candidate becomes its -mse or -minmax variant, whichever uniform plan
measures the lower output divergence on the calibration data; the choice is kept with the run."""
import json

import pytest
import torch

import mixprec
import mixprec.weight_ranges as weight_ranges
from mixprec.apply import apply
from mixprec.batches import split_item
from mixprec.builtin import get_builtin
from mixprec.candidates import parse_candidate, parse_candidates
from mixprec.cli import main
from mixprec.errors import CandidateError, SpecError
from mixprec.groups import discover_groups
from mixprec.plan import Plan
from mixprec.quantizers import quantize_weight
from mixprec.sensitivity.divergence import OutputDivergence


@pytest.fixture(scope="module")
def demo():
    b = get_builtin("demo-cnn")
    return b.model(), b.calibration(64)


def test_suffix_fixes_the_range_whatever_the_caller_says():
    w = torch.randn(8, 64) * torch.linspace(0.1, 3, 64)
    fixed = parse_candidate("w3g32-minmax")
    assert fixed.name == "w3g32-minmax" and fixed.weight.range_method == "minmax"
    assert parse_candidate("W4A8-asym-MSE").name == "w4a8-asym-mse"
    plain = parse_candidate("w3g32")
    assert torch.equal(quantize_weight(w, fixed.weight, "mse"), quantize_weight(w, plain.weight, "minmax"))
    assert not torch.equal(quantize_weight(w, fixed.weight, "mse"), quantize_weight(w, plain.weight, "mse"))
    for bad in ("w16-minmax", "w4-percentile", "w4-minmax-asym"):
        with pytest.raises(CandidateError):
            parse_candidate(bad)


def test_choice_is_the_variant_that_measures_lower(demo, tmp_path):
    model, data = demo
    groups = discover_groups(model, split_item(data[0])[0])
    cands = parse_candidates("w2a8,w3a8-mse,w8a8,fp16")
    resolved, choices = weight_ranges.choose_weight_ranges(model, groups, cands, data, progress=False,
                                                           run_path=tmp_path, key={"k": 1})
    assert [c.candidate for c in choices] == ["w2a8", "w8a8"]  # w3a8-mse is fixed, fp16 has no integer range
    divergence = OutputDivergence(model, data, kind="auto-smooth")
    for choice in choices:
        for method, value in choice.divergences.items():
            plan = Plan.uniform(groups, f"{choice.candidate}-{method}")
            assert value == pytest.approx(divergence.measure(apply(model, plan, data, progress=False)), rel=1e-6)
        best = min(choice.divergences, key=choice.divergences.get)
        assert choice.chosen == f"{choice.candidate}-{best}"
    assert [c.name for c in resolved][1:] == ["w3a8-mse", choices[1].chosen, "fp16"]
    assert resolved[0].name == choices[0].chosen

    def fail(*args, **kwargs):
        raise AssertionError("measured again")
    original = weight_ranges.applied_beside
    weight_ranges.applied_beside = fail
    try:  # kept with the run: read back, not measured
        again, _ = weight_ranges.choose_weight_ranges(model, groups, cands, data, progress=False,
                                                      run_path=tmp_path, key={"k": 1})
        assert [c.name for c in again] == [c.name for c in resolved]
        with pytest.raises(AssertionError, match="measured again"):  # another key: measured
            weight_ranges.choose_weight_ranges(model, groups, cands, data, progress=False, run_path=tmp_path,
                                               key={"k": 2})
    finally:
        weight_ranges.applied_beside = original


def test_analyze_auto_names_the_range_in_the_table_and_the_plan(demo):
    model, data = demo
    analysis = mixprec.analyze(model, data, candidates="w2a8,w4a8,w8a8", weight_range="auto", progress=False)
    assert all(c.endswith(("-mse", "-minmax")) for c in analysis.table.candidates)
    plan = analysis.solve(budget="bops=w4a8")
    assert set(plan.assignments.values()) <= set(analysis.table.candidates)
    # --candidates without the suffix name the run's variants, as budgets do
    restricted = analysis.solve(budget="bops=w8a8", candidates="w2a8,w8a8", guard=False)
    assert {c.split("-")[0] for c in restricted.assignments.values()} <= {"w2a8", "w8a8"}
    with pytest.raises(SpecError, match="calibration data"):
        mixprec.analyze(model, [], candidates="w4a8", metric="roundoff", weight_range="auto", progress=False)


def test_cli_auto_resumes_and_solves(tmp_path, capsys):
    run = tmp_path / "run"
    common = ["--model", "demo-cnn", "--candidates", "w2a8,w8a8", "--calibration-samples", "64"]
    assert main(["analyze", *common, "--weight-range", "auto", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "weight range of w2a8:" in out
    saved = json.loads((run / "weight_ranges.json").read_text())
    assert [c["candidate"] for c in saved["choices"]] == ["w2a8", "w8a8"]
    assert main(["analyze", "--resume", str(run)]) == 0
    plan = tmp_path / "plan.json"
    assert main(["solve", str(run), "--budget", "bops=w2a8", "--out", str(plan)]) == 0
    chosen = {c["chosen"] for c in saved["choices"]}
    assert set(json.loads(plan.read_text())["assignments"].values()) <= chosen
