"""Broken and hostile input: one `mixprec: error:` line (the traceback only with --debug), never a
silent wrong result; property tests for the parsers of plans, cost CSVs and data files."""
import json
import math
import os
import pickle

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from mixprec.cli import main
from mixprec.costs import load_cost_csv
from mixprec.errors import MixprecError, PlanError, SpecError
from mixprec.evaluation import to_eval_result
from mixprec.plan import Plan
from mixprec.specs import load_data

from hostile import error_line, user_files


@pytest.fixture
def user(tmp_path):
    user_files(tmp_path)
    return tmp_path


def quantize(user, *extra, out="q"):
    return main(["quantize", "--model", str(user / "user.py") + ":model", "--data", str(user / "data.npz"),
                 "--out", str(user / out), *extra])


class Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def write_bad_data(user, kind):
    path = user / ("bad.pt" if kind in ("pickle", "torn pt") else "bad.npz")
    if kind == "not a zip":
        path.write_bytes(b"hello, not an archive")
    elif kind == "object array":
        np.savez(path, inputs=np.array([object(), 1], dtype=object))
    elif kind == "string array":
        np.savez(path, inputs=np.array(["a", "b"]))
    elif kind == "pickle":
        torch.save(Evil(), path)
    elif kind == "torn pt":
        torch.save(torch.ones(4, 1, 8, 8), path)
        path.write_bytes(path.read_bytes()[:40])
    return path


@pytest.mark.parametrize("kind, says", [("not a zip", "not a .npz archive"), ("object array", "pickled"),
                                        ("string array", "dtype <U1"), ("pickle", "never unpickles"),
                                        ("torn pt", "not a file torch.save wrote")])
def test_broken_data_files_are_one_line(user, capsys, kind, says, monkeypatch):
    monkeypatch.chdir(user)
    path = write_bad_data(user, kind)
    assert main(["inspect", "--model", str(user / "user.py") + ":model", "--data", str(path)]) == 2
    assert says in error_line(capsys) and not (user / "PWNED").exists()


def test_binary_plan_and_cost_table_are_one_line(user, capsys):
    (user / "plan.json").write_bytes(bytes(range(256)))
    assert quantize(user, "--plan", str(user / "plan.json")) == 2
    assert "not valid JSON" in error_line(capsys)
    with pytest.raises(SpecError, match="not a text CSV"):
        (user / "c.csv").write_bytes(b"\xff\xfe\x00latency")
        load_cost_csv(str(user / "c.csv"), {"a": ["a"]}, ["w4a8"])


def test_a_failing_evaluation_names_the_users_line_and_keeps_the_model(user, capsys):
    assert quantize(user, "--uniform", "w8a8", "--eval", str(user / "user.py") + ":evaluate_raises") == 2
    line = error_line(capsys)
    assert "raised ValueError: the user's evaluation broke" in line and "user.py line" in line
    assert "evaluate_raises" in line and "the quantized model was written" in line
    assert (user / "q" / "model.pt").is_file() and json.loads((user / "q" / "result.json").read_text())["metric"] is None
    for fn, says in (("evaluate_text", "str"), ("evaluate_exits", "the evaluation called exit(3)")):
        assert quantize(user, "--uniform", "w8a8", "--eval", str(user / "user.py") + ":" + fn, out=fn) == 2
        line = error_line(capsys)
        assert says in line and "the quantized model was written" in line and (user / fn / "model.pt").is_file()


def test_a_nan_evaluation_is_refused_and_result_json_stays_valid(user, capsys):
    assert quantize(user, "--uniform", "w8a8", "--eval", str(user / "user.py") + ":evaluate_nan") == 2
    assert "returned nan" in error_line(capsys)
    json.loads((user / "q" / "result.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    with pytest.raises(MixprecError):
        to_eval_result(float("inf"))  # infinitely good accuracy
    assert to_eval_result({"main": "ppl", "ppl": math.inf, "higher_is_better": False}).value == math.inf


def test_silent_wrong_results_are_refused(user, capsys):
    assert quantize(user, "--uniform", "w4a8", "--exclude", "*") == 2
    assert "nothing is left to quantize" in error_line(capsys)
    assert main(["analyze", "--model", str(user / "user.py") + ":model", "--data", str(user / "user.py") + ":nan_data",
                 "--out", str(user / "run")]) == 2
    assert "batch 1 (0-based) has 1 NaN or infinite" in error_line(capsys) and not (user / "run").exists()
    for argv in (["--calibration-samples", "-60"], ["--calibration-samples", "0"]):
        with pytest.raises(SystemExit):
            quantize(user, "--uniform", "w8a8", *argv)
        assert "must be at least 1" in capsys.readouterr().err
    with pytest.raises(SpecError, match="at least 1"):
        load_data(str(user / "data.npz"), limit=-60)


def test_a_pin_given_with_a_plan_is_applied(user, capsys):
    assert quantize(user, "--uniform", "w8a8") == 0
    assert quantize(user, "--plan", str(user / "q" / "plan.json"), "--pin", "0=w4a8", out="q2") == 0
    assert "pin applied: group 0: w8a8 in the plan, w4a8 by its pin" in capsys.readouterr().out
    assert json.loads((user / "q2" / "plan.json").read_text())["assignments"]["0"] == "w4a8"


def test_negative_costs_and_zero_points_are_refused(user, capsys, tmp_path):
    csv = tmp_path / "lat.csv"
    csv.write_text("layer,candidate,latency_ms\n0,w4a8,-1.5\n")
    with pytest.raises(SpecError, match="line 2.*finite numbers >= 0"):
        load_cost_csv(str(csv), {"0": ["0"]}, ["w4a8"])
    with pytest.raises(SystemExit):
        main(["pareto", str(tmp_path), "--points", "0"])
    assert "must be at least 1" in capsys.readouterr().err


def test_torchscript_analyze_is_one_line_and_roundoff_runs(user, capsys):
    import sys
    sys.path.insert(0, str(user))
    try:
        import user as user_module
    finally:
        sys.path.remove(str(user))
    torch.jit.save(torch.jit.script(user_module.model()), str(user / "ts.pt"))
    args = ["analyze", "--model", str(user / "ts.pt"), "--data", str(user / "data.npz"), "--candidates", "w4,w8"]
    assert main(args + ["--out", str(user / "r1")]) == 2
    assert "TorchScript model cannot be swapped" in error_line(capsys)
    assert main(args + ["--metric", "roundoff", "--out", str(user / "r2")]) == 0
    capsys.readouterr()
    assert main(["inspect", "--model", str(user / "ts.pt"), "--data", str(user / "data.npz"), "--candidates",
                 "w8a8,w8"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.startswith("w8")}
    assert "(not for TorchScript)" in rows["w8a8"] and "TorchScript" not in rows["w8"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a torch without CUDA")
def test_a_device_torch_cannot_use_is_one_line(user, capsys):
    assert quantize(user, "--uniform", "w8a8", "--device", "cuda") == 2
    assert "no CUDA device" in error_line(capsys)
    assert quantize(user, "--uniform", "w8a8", "--device", "tpu9") == 2
    assert "not a torch device" in error_line(capsys)


def test_truncated_pareto_json_is_one_line_and_debug_shows_the_traceback(tmp_path, capsys):
    (tmp_path / "pareto.json").write_text('{"kind": "bops", "points": [{"costs": ')
    assert main(["report", str(tmp_path)]) == 2
    assert "truncated" in error_line(capsys)
    with pytest.raises(SpecError):
        main(["report", str(tmp_path), "--debug"])


def test_an_unexpected_fault_is_one_line_naming_debug(monkeypatch, capsys):
    import mixprec.cli as cli
    monkeypatch.setattr(cli, "cmd_inspect", lambda args: {}["boom"])
    assert main(["inspect", "--model", "demo-cnn"]) == 2
    line = error_line(capsys)
    assert "internal error KeyError" in line and "rerun with --debug" in line
    with pytest.raises(KeyError):
        main(["--debug", "inspect", "--model", "demo-cnn"])


# ---- property tests of the parsers ---------------------------------------------------------------

json_values = st.recursive(st.none() | st.booleans() | st.floats() | st.text(max_size=5),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                       max_size=3), max_leaves=12)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.binary(max_size=80), json_values.map(lambda v: json.dumps(v).encode()),
                 st.fixed_dictionaries({"format": st.just("mixprec-plan"), "version": st.just(1),
                                        "assignments": json_values, "groups": json_values,
                                        "excluded": json_values}).map(lambda v: json.dumps(v).encode())))
def test_any_plan_file_loads_or_is_a_plan_error(tmp_path, content):
    path = tmp_path / "plan.json"
    path.write_bytes(content)
    try:
        plan = Plan.load(path)
    except MixprecError:
        return
    assert all(isinstance(c, str) for c in plan.assignments.values())


cells = st.one_of(st.sampled_from(["0", "1", "*", "w4a8", "w8a8", "w9", "-1", "nan", "inf", "1e400", "2.5", ""]),
                  st.text(max_size=4))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(cells, min_size=1, max_size=4), max_size=5), st.booleans())
def test_any_cost_csv_gives_finite_non_negative_costs_or_a_spec_error(tmp_path, rows, long_form):
    header = ["layer", "candidate", "latency_ms"] if long_form else ["layer", "w4a8", "w8a8"]
    (tmp_path / "c.csv").write_text("\n".join(",".join(r) for r in [header, *rows]))
    try:
        table, fixed = load_cost_csv(str(tmp_path / "c.csv"), {"0": ["0"], "1": ["1"]}, ["w4a8", "w8a8"])
    except SpecError:
        return
    known = table[~np.isnan(table)]
    assert np.isfinite(known).all() and (known >= 0).all() and math.isfinite(fixed) and fixed >= 0


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=200), st.sampled_from(["d.npz", "d.pt"]), st.booleans())
def test_any_data_file_loads_as_batches_or_is_a_spec_error(tmp_path, content, name, zipped):
    path = tmp_path / name
    if zipped:  # a real archive with arbitrary member bytes gets further into the readers
        import zipfile
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("inputs.npy" if name.endswith(".npz") else "archive/data.pkl", content)
    else:
        path.write_bytes(content)
    try:
        batches = load_data(str(path))
    except SpecError:
        return
    assert isinstance(batches, list)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from([np.float32, np.float64, np.int64, np.uint8, np.bool_]),
       st.lists(st.integers(0, 3), min_size=1, max_size=3))
def test_numeric_npz_arrays_load(tmp_path, dtype, shape):
    np.savez(tmp_path / "d.npz", inputs=np.zeros(shape, dtype=dtype))
    batches = load_data(str(tmp_path / "d.npz"))
    assert sum(len(b) for b in batches) == shape[0]


@pytest.mark.parametrize("candidates,metric", [("w4a8,w8a8", "sqnr"), ("w4,w8", "sqnr"), ("w4,w8", "fisher")])
def test_a_model_that_fails_on_a_later_calibration_batch_is_named_by_analyze(tmp_path, capsys, candidates, metric):
    # the first batch passes the early checks; the failure on batch 2 is the user's model or data, not mixprec's
    code = tmp_path / "flaky.py"
    code.write_text("import torch\nfrom torch import nn\n"
                    "class Flaky(nn.Module):\n"
                    "    def __init__(self):\n"
                    "        super().__init__(); torch.manual_seed(0); self.a = nn.Linear(64, 10)\n"
                    "    def forward(self, x):\n"
                    "        if x.shape[0] == 5:\n"
                    "            raise ValueError('batch of 5 not supported')\n"
                    "        return self.a(x.flatten(1))\n"
                    "def build():\n    return Flaky()\n"
                    "def data():\n    g = torch.Generator().manual_seed(0)\n"
                    "    return [(torch.randn(n, 64, generator=g), torch.randint(0, 10, (n,), generator=g))"
                    " for n in (8, 8, 5)]\n")
    assert main(["analyze", "--model", f"{code}:build", "--data", f"{code}:data", "--candidates", candidates,
                 "--metric", metric, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "calibration batch 2 of shape (5, 64)" in err and "batch of 5 not supported" in err
    assert "internal error" not in err


@pytest.mark.parametrize("suffix", [".npz", ".pt"])
def test_a_data_file_with_fewer_labels_than_inputs_is_refused_when_read(tmp_path, suffix):
    path = tmp_path / f"data{suffix}"
    if suffix == ".npz":
        np.savez(path, inputs=np.zeros((16, 4), np.float32), labels=np.zeros(3, np.int64))
    else:
        torch.save({"inputs": torch.zeros(16, 4), "labels": torch.zeros(3, dtype=torch.long)}, path)
    with pytest.raises(SpecError, match="16 inputs and 3 labels"):
        load_data(str(path))


@pytest.mark.parametrize("command", ["inspect", "analyze"])
def test_data_without_samples_is_one_clear_error_for_every_command(user, capsys, command):
    np.savez(user / "empty.npz", inputs=np.zeros((0, 1, 8, 8), dtype=np.float32))
    extra = ["--candidates", "w8a8", "--out", str(user / "run")] if command == "analyze" else []
    assert main([command, "--model", str(user / "user.py") + ":model", "--data", str(user / "empty.npz"),
                 *extra]) != 0
    assert "empty.npz holds no samples: give at least one batch" in error_line(capsys)
