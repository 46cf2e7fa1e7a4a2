"""Latency measured on ONNX Runtime CPU: every layer at every candidate, the whole model, the cost table."""
import csv
import math

import pytest

pytest.importorskip("onnxruntime")

import mixprec  # noqa: E402
from mixprec.builtin import get_builtin  # noqa: E402
from mixprec.cli import main  # noqa: E402
from mixprec.export.latency import profile, save_profile  # noqa: E402


@pytest.fixture(scope="module")
def demo():
    b = get_builtin("demo-cnn")
    return b.model(), b.calibration(32)


@pytest.fixture(scope="module")
def measured(demo):
    model, data = demo
    return profile(model, data, "w8a8,w4,fp8", threads=1, repeats=3, progress=False)


def test_every_layer_is_timed_at_every_runnable_candidate(measured):
    for layer, row in measured.layers.items():
        assert set(row) == {"fp32", "w8a8", "w4", "fp8"}
        for cand in ("fp32", "w8a8", "w4"):  # less the session's own cost: a tiny layer may come out at 0
            assert math.isfinite(row[cand]) and row[cand] >= 0, (layer, cand)
        assert measured.overhead_ms[layer] > 0
        assert math.isnan(row["fp8"])  # no fp8 kernel on ONNX Runtime CPU: left out, with the reason
        assert "no ONNX Runtime CPU kernel" in measured.skipped[f"{layer}/fp8"]
    assert measured.batch_size == 32 and measured.float_model_ms > 0 and measured.rest_ms >= 0


def test_int8_layers_are_timed_as_the_integer_kernels_a_whole_graph_runs(measured):
    """Alone, a QDQ conv whose output is not quantized runs as a float conv; the profile quantizes the
    output as the next layer's input quantizer does in a whole graph, so the integer kernel is timed."""
    assert measured.ops["conv1"]["w8a8"] == "QLinearConv"
    assert measured.ops["fc"]["w8a8"] == "QGemm"
    assert measured.ops["fc"]["w4"] == "MatMulNBits"


def test_whole_model_is_timed_against_the_per_layer_sum(measured):
    assert set(measured.whole) == {"fp32", "w8a8", "w4"}  # fp8 runs nowhere: no whole-model row
    for cand, row in measured.whole.items():
        assert row["measured_ms"] > 0 and row["predicted_ms"] > 0
    plan = {name: "w8a8" for name in measured.layers}
    assert measured.whole["w8a8"]["predicted_ms"] == pytest.approx(measured.predicted_ms(plan))


def test_cost_table_feeds_the_solver(demo, measured, tmp_path):
    model, data = demo
    csv_path, json_path = save_profile(measured, tmp_path / "latency.csv")
    rows = list(csv.reader(csv_path.open()))
    assert rows[0] == ["layer", "candidate", "latency_ms"]
    assert ["*", "", repr(measured.rest_ms)] in rows
    assert not any(r[1] in ("fp8", "fp32") for r in rows[1:])  # fp8 cannot run; fp32 was not asked for
    assert json_path.is_file()
    analysis = mixprec.analyze(model, data, candidates="w8a8,w4,fp8", progress=False)
    budget = measured.predicted_ms({name: "w8a8" for name in measured.layers})
    plan = analysis.solve(budget=f"latency_ms={budget}", cost_files=[f"latency_ms={csv_path}"], guard=False)
    assert "fp8" not in plan.assignments.values()
    assert plan.metadata["predicted_costs"]["latency_ms"] <= budget * (1 + 1e-9)


def test_cli_profile(tmp_path, capsys):
    out = tmp_path / "lat.csv"
    assert main(["profile", "--model", "demo-cnn", "--candidates", "w8a8,w4a8", "--calibration-samples", "16",
                 "--repeats", "3", "--threads", "1", "--no-whole", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "float model" in text and "QLinearConv" in text
    assert out.is_file() and out.with_suffix(".json").is_file()
    assert main(["profile", "--model", "demo-cnn", "--out", str(tmp_path / "lat.txt")]) == 2
    assert ".csv" in capsys.readouterr().err
