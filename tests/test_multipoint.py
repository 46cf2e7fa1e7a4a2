"""Multipoint quantization: parsing, the greedy residual maths, point choice by output error, exact
costs, and the candidate end to end (analysis, costs.json, solve, apply, quantize)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from mixprec.apply import apply, plan_points, quantized_layers
from mixprec.candidates import parse_candidate, parse_candidates
from mixprec.cli import main
from mixprec.costs import cost_tables, layer_bops, weight_storage_bits
from mixprec.errors import CandidateError, MixprecError
from mixprec.groups import Layer, discover_groups
from mixprec.multipoint import (choose_points, compose, greedy_terms, input_moments, measure_points,
                                multipoint_weight, output_errors)
from mixprec.plan import Plan
from mixprec.sensitivity.analyze import analyze


# ---------------------------------------------------------------- parsing

@pytest.mark.parametrize("spec,name,points,bits,group,abits", [
    ("w4x2", "w4x2", 2, 4, None, None), ("W4G128X2", "w4g128x2", 2, 4, 128, None),
    ("w4x2a8", "w4x2a8", 2, 4, None, 8), ("w3x4a8-asym", "w3x4a8-asym", 4, 3, None, 8),
    ("w4x1a8", "w4a8", 1, 4, None, 8), ("w8a8", "w8a8", 1, 8, None, 8)])
def test_parse_multipoint(spec, name, points, bits, group, abits):
    c = parse_candidate(spec)
    assert (c.name, c.points, c.weight.bits, c.weight.group_size) == (name, points, bits, group)
    assert c.multipoint == (points > 1)
    assert (c.activation.bits if c.activation else None) == abits
    assert parse_candidate(c.name) == c  # the canonical name parses back to the same candidate


@pytest.mark.parametrize("spec,message", [("w4x0", "1..8"), ("w4x9", "1..8"), ("w16x2", "w16 means float16"),
                                          ("w4a8x2", "unknown candidate")])
def test_parse_multipoint_errors(spec, message):
    with pytest.raises(CandidateError, match=message):
        parse_candidate(spec)


def test_multipoint_is_its_own_candidate_but_x1_is_the_plain_one():
    assert len(parse_candidates("w4a8,w4x2a8,w4x3a8")) == 3
    with pytest.raises(CandidateError, match="duplicate"):
        parse_candidates("w4a8,w4x1a8")


# ---------------------------------------------------------------- the greedy residual maths

@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 6), cols=st.integers(1, 24), bits=st.integers(2, 6), points=st.integers(2, 5),
       group=st.sampled_from([None, 1, 4, 7]), asym=st.booleans(), method=st.sampled_from(["minmax", "mse"]),
       seed=st.integers(0, 2 ** 16))
def test_residual_never_grows_element_by_element(rows, cols, bits, points, group, asym, method, seed):
    # nearest rounding onto a grid holding 0 is never farther than 0: |r_k| <= |r_{k-1}| everywhere
    spec = f"w{bits}" + (f"g{group}" if group else "") + f"x{points}" + ("-asym" if asym else "")
    w = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)) * 10 ** (seed % 5 - 2)
    terms = greedy_terms(w, parse_candidate(spec), method)
    residuals = torch.cat([w.unsqueeze(0), w.unsqueeze(0) - terms.cumsum(0)])
    growth = residuals[1:].abs() - residuals[:-1].abs()
    assert float(growth.max()) <= 1e-5 * float(w.abs().max())
    # so the weight error and any output error e^T H e with a diagonal H >= 0 never grow with points
    h = torch.diag(torch.rand(cols, generator=torch.Generator().manual_seed(seed + 1))).unsqueeze(0)
    errors = output_errors(residuals, h)
    assert bool((errors[1:] <= errors[:-1] * (1 + 1e-5) + 1e-12).all())


@pytest.mark.parametrize("bits", [2, 3])
def test_exact_when_points_reach_the_row_length_on_a_tiny_grid(bits):
    # minmax: each point puts the residual's largest element exactly on the grid, and exact elements
    # stay exact, so n points reproduce a row of n integers exactly (integers: no float rounding)
    w = torch.tensor([[5.0, 3.0, 1.0, -7.0], [2.0, 0.0, -2.0, 9.0]])
    cand = parse_candidate(f"w{bits}x4")
    terms = greedy_terms(w, cand, "minmax")
    assert torch.equal(terms.sum(0), w)
    assert not torch.equal(terms[0], w)  # one point is not enough


def test_compose_uses_each_rows_own_number_of_points():
    terms = torch.tensor([[[1.0, 1.0], [2.0, 2.0]], [[0.5, 0.5], [0.25, 0.25]], [[0.1, 0.1], [0.1, 0.1]]])
    out = compose(terms, torch.tensor([3, 1]))
    assert torch.allclose(out, torch.tensor([[1.6, 1.6], [2.0, 2.0]]))


# ---------------------------------------------------------------- point choice by output error

def _synthetic():
    rows = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.1]])
    return rows, torch.stack([0.5 * rows, 0.4 * rows])  # residuals 0.5 * rows, then 0.1 * rows


def test_points_follow_the_output_error_not_the_weight_error():
    rows, terms = _synthetic()  # rows 0 and 1 have the same weight error
    assert choose_points(terms, rows, torch.diag(torch.tensor([10.0, 1.0])).unsqueeze(0)).tolist() == [2, 1, 1]
    assert choose_points(terms, rows, torch.diag(torch.tensor([1.0, 10.0])).unsqueeze(0)).tolist() == [1, 2, 1]
    # an input that never varies carries no output error: nobody gets a point for it
    assert choose_points(terms, rows, torch.zeros(1, 2, 2)).tolist() == [1, 1, 1]


def test_a_point_that_does_not_lower_the_output_error_is_not_added():
    rows, terms = _synthetic()
    terms[1] = 0
    assert choose_points(terms, rows, torch.diag(torch.tensor([10.0, 1.0])).unsqueeze(0)).tolist() == [1, 1, 1]


def test_output_errors_match_the_layer_output_on_calibration_data():
    torch.manual_seed(0)
    layer = nn.Conv2d(4, 6, 3, padding=1, groups=2, bias=False)
    data = [torch.randn(3, 4, 5, 5) for _ in range(2)]
    model = nn.Sequential(layer).eval()
    h = input_moments(model, ["0"], data)["0"]
    assert h.shape == (2, 18, 18)
    noise = torch.randn_like(layer.weight) * 0.01
    noisy = nn.Conv2d(4, 6, 3, padding=1, groups=2, bias=False)
    noisy.weight.data = layer.weight.data + noise
    with torch.no_grad():
        diff = torch.cat([(noisy(x) - layer(x)) for x in data])  # (N, 6, 5, 5)
    per_channel = diff.pow(2).sum((0, 2, 3)) / (diff.shape[0] * 25)  # E over patches of (e^T x)^2
    assert torch.allclose(output_errors(noise.reshape(6, -1), h), per_channel, rtol=1e-4)


# ---------------------------------------------------------------- costs

def test_costs_exact_on_a_hand_checkable_layer():
    fc = Layer("fc", "Linear", (4, 10), macs=40)
    pts = "1211"  # 5 points in all
    assert weight_storage_bits(fc, parse_candidate("w4x2"), pts) == 5 * (10 * 4 + 16) + 4 * 1
    assert weight_storage_bits(fc, parse_candidate("w4x2-asym"), pts) == 5 * (10 * 4 + 16 + 4) + 4
    # groups of 4 inputs: 3 scales per point and channel (the last group is short)
    assert weight_storage_bits(fc, parse_candidate("w4g4x2"), pts) == 5 * (10 * 4 + 3 * 16) + 4
    # up to 3 points: a 2-bit count per channel
    assert weight_storage_bits(fc, parse_candidate("w4x3"), "1311") == 6 * (10 * 4 + 16) + 4 * 2
    # one point everywhere costs the plain candidate plus the counts
    assert (weight_storage_bits(fc, parse_candidate("w4x2"), "1111")
            == weight_storage_bits(fc, parse_candidate("w4")) + 4)
    # BOPs: every channel's 10 MACs once per point, 4-bit weights, 8-bit inputs
    assert layer_bops(fc, parse_candidate("w4x2a8"), pts) == 5 * 10 * 4 * 8
    with pytest.raises(CandidateError, match="mixprec analyze"):
        weight_storage_bits(fc, parse_candidate("w4x2"))
    with pytest.raises(CandidateError, match="do not fit"):
        weight_storage_bits(fc, parse_candidate("w4x2"), "1311")


def test_cost_tables_without_counts_refuse_to_guess():
    model = nn.Sequential(nn.Linear(10, 4), nn.ReLU(), nn.Linear(4, 3)).eval()
    groups = discover_groups(model, torch.randn(2, 10))
    costs = cost_tables(groups, ["w4", "w4x2"], model)
    assert costs.uniform("bytes", "w4") > 0
    with pytest.raises(CandidateError, match="mixprec analyze"):
        costs.uniform("bytes", "w4x2")
    with pytest.raises(CandidateError):
        costs.to_dict()
    points = {"w4x2": {"0": "1211", "2": "222"}}
    costs = cost_tables(groups, ["w4", "w4x2"], model, points=points)
    extra_bits = 1 * (10 * 4 + 16) + 3 * (4 * 4 + 16) + 4 + 3  # the extra points, plus the counts
    assert costs.uniform("bytes", "w4x2") == pytest.approx(costs.uniform("bytes", "w4") + extra_bits / 8)


# ---------------------------------------------------------------- end to end

def small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=2),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval()


def batches(n=3):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(8, 3, 8, 8, generator=g) for _ in range(n)]


def test_apply_builds_the_multipoint_weights_from_the_stored_or_measured_points():
    model, data = small_cnn(), batches()
    groups = discover_groups(model, data[0])
    plan = Plan.uniform(groups, "w3x2a8")
    points = plan_points(model, plan, data)
    assert set(points) == {"0", "2", "6"} and all(set(p) <= {"1", "2"} for p in points.values())
    assert any("2" in p for p in points.values())
    q = apply(model, plan, data, progress=False)
    for name, layer in quantized_layers(q).items():
        expected = multipoint_weight(model.get_submodule(name).weight, parse_candidate("w3x2a8"), points[name])
        assert torch.equal(layer.layer.weight, expected)
    # stored points win over the data: all-1 counts give the plain 3-bit weights
    ones = {name: "1" * len(p) for name, p in points.items()}
    plain = apply(model, Plan.uniform(groups, "w3a8"), data, progress=False)
    stored = apply(model, Plan(plan.assignments, plan.groups, metadata={"points": ones}), data, progress=False)
    for name in points:
        assert torch.equal(quantized_layers(stored)[name].layer.weight, quantized_layers(plain)[name].layer.weight)
    # multipoint lowers the output error of the model
    x = data[0]
    with torch.no_grad():
        assert (q(x) - model(x)).pow(2).mean() < (plain(x) - model(x)).pow(2).mean()


def test_apply_without_points_or_data_says_what_to_do():
    model = small_cnn()
    plan = Plan.uniform(discover_groups(model, batches(1)[0]), "w4x2")
    with pytest.raises(MixprecError, match="calibration data"):
        apply(model, plan, None, progress=False)
    with pytest.raises(MixprecError, match="nearest"):
        apply(model, plan, batches(), rounding="gptq", progress=False)


def test_sensitivity_analysis_measures_multipoint_with_the_given_points():
    model, data = small_cnn(), batches()
    groups = discover_groups(model, data[0])
    cands = parse_candidates("w3a8,w3x2a8,w8a8")
    table = analyze(model, groups, cands, data, metric="sqnr", progress=False)
    assert np.isfinite(table.values).all()
    # the extra points lower the damage of every group, never below 8 bits
    assert (table.values[:, 1] <= table.values[:, 0]).all() and (table.values[:, 2] < table.values[:, 1]).all()
    # given all-1 counts, multipoint is the plain candidate exactly
    ones = {"w3x2a8": {l.name: "1" * l.weight_shape[0] for l in groups.layers}}
    same = analyze(model, groups, cands, data, metric="sqnr", progress=False, points=ones)
    assert np.allclose(same.values[:, 1], same.values[:, 0])


def test_measured_points_are_deterministic():
    model, data = small_cnn(), batches()
    cand = parse_candidate("w2x3")
    layers = {"0": [cand], "6": [cand, parse_candidate("w4")]}
    assert measure_points(model, layers, data) == measure_points(model, layers, data)
    assert set(measure_points(model, layers, data)["w2x3"]) == {"0", "6"}


def test_demo_model_analyze_solve_quantize(tmp_path, capsys):
    """The built-in demo CNN: costs.json records the counts, solve puts them in the plan, quantize
    applies them, and the bytes quantize reports are the ones the solver saw."""
    run = tmp_path / "run"
    assert main(["analyze", "--model", "demo-cnn", "--candidates", "w4a8,w4x2a8,w8a8", "--metric", "roundoff",
                 "--calibration-samples", "64", "--out", str(run)]) == 0
    assert "channels with 2 points" in capsys.readouterr().out
    saved = json.loads((run / "costs.json").read_text())
    assert set(saved["points"]) == {"w4x2a8"}
    plan_path = tmp_path / "plan.json"
    assert main(["solve", str(run), "--budget", "bytes=w4x2a8", "--candidates", "w4a8,w4x2a8",
                 "--out", str(plan_path)]) == 0
    plan = json.loads(plan_path.read_text())
    multi = [g for g, c in plan["assignments"].items() if c == "w4x2a8"]
    assert multi and set(plan["metadata"]["points"]) == {l for g in multi for l in plan["groups"][g]}
    assert main(["quantize", "--model", "demo-cnn", "--plan", str(plan_path), "--calibration-samples", "64",
                 "--out", str(tmp_path / "q")]) == 0
    result = json.loads((tmp_path / "q" / "result.json").read_text())
    assert result["costs"]["bytes"] == pytest.approx(plan["metadata"]["predicted_costs"]["bytes"])
    assert result["metric"] > 90
    # the standalone quantizer: every group on w4x2a8
    assert main(["quantize", "--model", "demo-cnn", "--uniform", "w4x2a8", "--calibration-samples", "64",
                 "--out", str(tmp_path / "u")]) == 0
    uniform = json.loads((tmp_path / "u" / "result.json").read_text())
    saved_plan = json.loads((tmp_path / "u" / "plan.json").read_text())
    assert set(saved_plan["metadata"]["points"]) == {"conv1", "conv2", "conv3", "fc"}
    assert uniform["costs"]["bytes"] == pytest.approx(saved["costs"]["fixed"]["bytes"] + sum(
        row[saved["costs"]["candidates"].index("w4x2a8")] for row in saved["costs"]["tables"]["bytes"]))


def test_a_transposed_conv_takes_one_point_per_row_as_an_embedding_does():
    """Its input has no column form for the output error that picks the points: one point, not a failed analysis."""
    import mixprec
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.ConvTranspose2d(4, 2, 2, stride=2),
                          nn.ReLU(), nn.Conv2d(2, 1, 3, padding=1)).eval()
    data = [torch.randn(8, 1, 8, 8) for _ in range(2)]
    analysis = mixprec.analyze(model, data, candidates="w4a8,w4x2a8", progress=False)
    assert set(analysis.point_counts["w4x2a8"]["2"]) == {"1"}
    up = analysis.table.groups.index("2")
    assert analysis.table.values[up][0] == pytest.approx(analysis.table.values[up][1])
