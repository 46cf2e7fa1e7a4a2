"""Rounding-aware measurement: each candidate measured with the weights GPTQ makes of it."""
import json

import pytest
import torch

import mixprec
from mixprec.batches import split_item
from mixprec.builtin import get_builtin
from mixprec.candidates import parse_candidate
from mixprec.cli import main
from mixprec.errors import MixprecError
from mixprec.rounding import round_weights
from mixprec.sensitivity import Around
from mixprec.sensitivity.context import MeasureContext

CANDIDATES = "w2,w4,w8"


@pytest.fixture(scope="module")
def demo():
    b = get_builtin("demo-cnn")
    model, data = b.model(), b.calibration(128)
    return model, data


def test_first_layer_weight_is_what_gptq_makes_of_it(demo):
    """The first layer reads the model input, so sequential GPTQ (apply's) sees exactly the float inputs
    the measurement rounds from: the measured weight must equal the applied one."""
    model, data = demo
    groups = mixprec.discover_groups(model, split_item(data[0])[0])
    first = groups.layers[0].name
    ctx = MeasureContext(model, groups, [parse_candidate("w2")], data, rounding=mixprec.GPTQ())
    plan = mixprec.Plan.uniform(groups, "w2")
    applied = round_weights(model, plan, data, "gptq", progress=False)[first]
    assert torch.equal(ctx.quantized_weight(first, parse_candidate("w2")), applied)
    nearest = MeasureContext(model, groups, [parse_candidate("w2")], data).quantized_weight(first, parse_candidate("w2"))
    assert not torch.equal(nearest, applied)


def test_gptq_table_is_lower_and_recorded(demo):
    model, data = demo
    nearest = mixprec.analyze(model, data, candidates=CANDIDATES, progress=False)
    gptq = mixprec.analyze(model, data, candidates=CANDIDATES, progress=False, rounding="gptq")
    assert gptq.table.metadata["rounding"] == {"name": "gptq", **mixprec.GPTQ().options()}
    assert "rounding" not in nearest.table.metadata
    assert gptq.rounding.name == "gptq" and nearest.rounding.name == "nearest"
    low = gptq.table.candidates.index("w2")
    # GPTQ minimises each layer's output error: at 2 bits the damage it leaves is lower in total
    assert gptq.table.values[:, low].sum() < nearest.table.values[:, low].sum()
    assert (gptq.table.values[:, gptq.table.candidates.index("w8")] < 1e-3).all()


def test_solve_guards_with_the_analysis_rounding(demo):
    model, data = demo
    analysis = mixprec.analyze(model, data, candidates=CANDIDATES, progress=False, rounding="gptq")
    plan = analysis.solve(budget="bits=3")
    assert plan.metadata["rounding"] == "gptq"
    assert "guard" in plan.metadata
    checker = next(iter(analysis._checkers.values()))
    assert checker.rounding.name == "gptq"  # the guard measured its plans with GPTQ too
    plain = mixprec.analyze(model, data, candidates=CANDIDATES, progress=False).solve(budget="bits=3")
    assert "rounding" not in plain.metadata


def test_a_plan_records_its_rounding_options_and_quantize_says_when_they_differ(demo, tmp_path, capsys):
    model, data = demo
    analysis = mixprec.analyze(model, data, candidates=CANDIDATES, progress=False,
                               rounding=mixprec.GPTQ(act_order=True, static_groups=True))
    plan = analysis.solve(budget="bits=3")
    assert plan.metadata["rounding"] == "gptq"
    assert plan.metadata["rounding_options"] == {**mixprec.GPTQ().options(), "act_order": True, "static_groups": True}
    path = plan.save(tmp_path / "plan.json")
    assert main(["quantize", "--model", "demo-cnn", "--plan", str(path), "--rounding", "gptq",
                 "--out", str(tmp_path / "q")]) == 0
    assert "--rounding gptq --static-groups to deploy what was measured" in capsys.readouterr().out  # act-order: default
    assert main(["quantize", "--model", "demo-cnn", "--plan", str(path), "--rounding", "gptq", "--act-order",
                 "--static-groups", "--out", str(tmp_path / "q2")]) == 0
    assert "to deploy what was measured" not in capsys.readouterr().out


def test_around_with_rounding(demo):
    model, data = demo
    analysis = mixprec.analyze(model, data, candidates=CANDIDATES, metric=Around("w4", "kl"), progress=False,
                               rounding="gptq", activation_range="minmax")
    table = analysis.table
    assert (table.values[:, table.candidates.index("w4")] == 0).all()
    assert (table.values[:, table.candidates.index("w2")] > 0).all()
    assert table.metadata["rounding"] == {"name": "gptq", **mixprec.GPTQ().options()}


def test_blockwise_rounding_is_refused(demo):
    model, data = demo
    with pytest.raises(MixprecError, match="brecq"):
        mixprec.analyze(model, data, candidates=CANDIDATES, progress=False, rounding="brecq")


def test_cli_rounding_is_part_of_the_run(tmp_path, capsys):
    run = tmp_path / "run"
    common = ["--model", "demo-cnn", "--candidates", CANDIDATES, "--calibration-samples", "64"]
    assert main(["analyze", *common, "--rounding", "gptq", "--out", str(run)]) == 0
    assert json.loads((run / "sensitivity.json").read_text())["metadata"]["rounding"] == {"name": "gptq", **mixprec.GPTQ().options()}
    assert main(["analyze", "--resume", str(run)]) == 0  # the rounding comes back with the run
    capsys.readouterr()
    assert main(["analyze", *common, "--out", str(run)]) != 0  # measured with nearest rounding: another run
    assert "settings differ: rounding" in capsys.readouterr().err
    plan = tmp_path / "plan.json"
    assert main(["solve", str(run), "--budget", "bits=3", "--out", str(plan)]) == 0
    assert json.loads(plan.read_text())["metadata"]["rounding"] == "gptq"
    capsys.readouterr()
    assert main(["quantize", "--model", "demo-cnn", "--plan", str(plan), "--calibration-samples", "64",
                 "--out", str(tmp_path / "q")]) == 0
    # applied with the rounding it was chosen with, as export does, and the user is told how to choose otherwise
    assert "chosen with gptq-rounded weights: applied with gptq" in capsys.readouterr().out
    assert json.loads((tmp_path / "q" / "result.json").read_text())["rounding"] == "gptq"
    assert main(["quantize", "--model", "demo-cnn", "--plan", str(plan), "--calibration-samples", "64",
                 "--rounding", "nearest", "--out", str(tmp_path / "n")]) == 0
    assert "add --rounding gptq" in capsys.readouterr().out  # applied with nearest: the user is told


def test_a_run_or_plan_of_an_older_mixprec_keeps_the_gptq_it_was_measured_with(demo, tmp_path, capsys):
    """Records once named only the options that differed from the defaults of the time: GPTQ without act-order
    was recorded as {"name": "gptq"}, and must not be read as today's default (act-order)."""
    from mixprec.rounding import recorded_rounding
    assert recorded_rounding("gptq", None).act_order is False
    assert recorded_rounding("gptq", mixprec.GPTQ().options()).act_order is True
    model, data = demo
    analysis = mixprec.analyze(model, data, candidates=CANDIDATES, progress=False, rounding="gptq")
    analysis.table.metadata["rounding"] = {"name": "gptq"}  # as an older mixprec wrote it
    assert analysis.rounding.act_order is False
    plan = analysis.solve(budget="bits=3")
    plan.metadata.pop("rounding_options")
    path = plan.save(tmp_path / "old.json")
    assert main(["quantize", "--model", "demo-cnn", "--plan", str(path), "--rounding", "gptq",
                 "--out", str(tmp_path / "q")]) == 0
    assert "--rounding gptq --no-act-order to deploy what was measured" in capsys.readouterr().out


def test_an_adaround_run_resumes_and_solves(tmp_path, capsys):
    """AdaRound's options hold a tuple (beta), a list once in run.json: the run resumes as the same settings and its
    guard measures with the same rounding (a list in a config was unhashable)."""
    run = tmp_path / "run"
    common = ["--model", "demo-cnn", "--candidates", "w2a8,w8a8", "--calibration-samples", "32"]
    assert main(["analyze", *common, "--rounding", "adaround", "--out", str(run)]) == 0
    assert main(["analyze", "--resume", str(run)]) == 0
    assert main(["solve", str(run), "--budget", "bytes=0.6x", "--out", str(tmp_path / "plan.json")]) == 0
    assert json.loads((tmp_path / "plan.json").read_text())["metadata"]["rounding"] == "adaround"
    assert mixprec.rounding_config("adaround", beta=[20, 2]) == mixprec.rounding_config("adaround", beta=(20, 2))


def test_gptq_aware_analysis_rounds_a_transposed_conv_by_nearest_and_refuses_multipoint():
    """As apply does: GPTQ has no Hessian for a ConvTranspose's input, so its entries are nearest-rounded (not an
    error); multipoint candidates, which no learned rounding builds, are refused before any measurement."""
    from torch import nn
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.ConvTranspose2d(4, 2, 2, stride=2),
                          nn.ReLU(), nn.Conv2d(2, 1, 3, padding=1)).eval()
    data = [torch.randn(8, 1, 8, 8) for _ in range(2)]
    aware = mixprec.analyze(model, data, candidates="w2a8,w4a8", rounding="gptq", progress=False).table
    plain = mixprec.analyze(model, data, candidates="w2a8,w4a8", progress=False).table
    up = aware.groups.index("2")
    assert aware.values[up].tolist() == pytest.approx(plain.values[up].tolist())  # nearest for the transposed conv
    assert aware.values[0][0] != pytest.approx(plain.values[0][0])  # GPTQ for the first conv
    with pytest.raises(MixprecError, match="does not build multipoint weights"):
        mixprec.analyze(model, data, candidates="w2a8,w2x2a8", rounding="gptq", progress=False)


def test_a_weight_space_metric_with_a_learned_rounding_is_said_to_be_blind_to_it():
    from torch import nn
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    data = [torch.randn(8, 6) for _ in range(2)]
    with pytest.warns(UserWarning, match="an output metric"):
        mixprec.analyze(model, data, candidates="w2a8,w8a8", metric="roundoff", rounding="gptq", progress=False)


def test_the_trust_report_of_a_gptq_aware_table_measures_gptqs_drops(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["analyze", "--model", "demo-cnn", "--candidates", "w2a8,w8a8", "--calibration-samples", "64",
                 "--rounding", "gptq", "--eval", "demo-cnn", "--out", str(run)]) == 0
    assert "Spearman" in capsys.readouterr().out
    truth = json.loads((run / "task" / "sensitivity.json").read_text())
    assert truth["metadata"]["rounding"]["name"] == "gptq"
