import contextlib
import json

import pytest

from mixprec.cli import build_parser, main


def test_help_everywhere(capsys):
    for argv in ([], ["inspect"], ["quantize"], ["demo"]):
        with pytest.raises(SystemExit) as exc:
            main(argv + ["--help"])
        assert exc.value.code == 0
        assert "usage: mixprec" in capsys.readouterr().out


def test_inspect_lists_groups_and_uniform_costs(capsys, tmp_path):
    out = tmp_path / "inspect.json"
    assert main(["inspect", "--model", "demo-cnn", "--profile", "mobile-npu", "--pin", "conv1=w8a8",
                 "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "4 quantized layers in 4 groups" in text and "w4a8" in text and "w8a8" in text
    data = json.loads(out.read_text())
    assert [g["name"] for g in data["groups"]] == ["conv1", "conv2", "conv3", "fc"]
    assert data["groups"][0]["pinned"] == "w8a8"
    costs = data["uniform_costs"]
    assert costs["w4a8"]["bytes"] < costs["w8a8"]["bytes"] < costs["w16a16"]["bytes"]
    assert costs["w8a16"]["bops"] == pytest.approx(2 * costs["w8a8"]["bops"], rel=0.01)


def test_inspect_prices_uniform_candidates_with_the_pins_kept_as_solve_does(capsys, tmp_path):
    """--pin fc=w6a8 (a candidate not listed): each uniform row is fc at w6a8, the rest on the row's candidate."""
    from mixprec.builtin import get_builtin
    from mixprec.costs import cost_tables
    from mixprec.groups import discover_groups
    out = tmp_path / "inspect.json"
    assert main(["inspect", "--model", "demo-cnn", "--candidates", "w2a8,w8a8", "--pin", "fc=w6a8",
                 "--json", str(out)]) == 0
    data = json.loads(out.read_text())["uniform_costs"]
    b = get_builtin("demo-cnn")
    groups = discover_groups(b.model(), b.example_input())
    costs = cost_tables(groups, ["w2a8", "w6a8", "w8a8"], b.model())
    for cand in ("w2a8", "w8a8"):
        plan = {g.name: "w6a8" if g.name == "fc" else cand for g in groups}
        for kind in ("bytes", "bops", "bits_per_weight"):
            assert data[cand][kind] == pytest.approx(costs.total(kind, plan))
            assert data[cand][kind] != pytest.approx(costs.uniform(kind, cand))


def test_quantize_writes_model_plan_and_result(capsys, tmp_path):
    out = tmp_path / "q"
    assert main(["quantize", "--model", "demo-cnn", "--uniform", "w8a8", "--out", str(out)]) == 0
    result = json.loads((out / "result.json").read_text())
    assert 90 < result["metric"] <= 100
    assert set(result["costs"]) == {"bytes", "bops", "bits_per_weight"}
    assert result["costs"]["bits_per_weight"] == pytest.approx(8.08, abs=0.01)
    assert (out / "model.pt").is_file()
    plan_path = out / "plan.json"
    # the written plan applies again and gives the same metric
    out2 = tmp_path / "q2"
    assert main(["quantize", "--model", "demo-cnn", "--plan", str(plan_path), "--out", str(out2)]) == 0
    assert json.loads((out2 / "result.json").read_text())["metric"] == result["metric"]


def test_bad_input_is_a_one_line_error(capsys, tmp_path):
    assert main(["quantize", "--model", "demo-cnn", "--uniform", "w9x", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown candidate 'w9x'" in err and "w4g128" in err and "Traceback" not in err
    assert main(["quantize", "--model", "demo-cnn", "--out", str(tmp_path)]) == 2
    assert "exactly one of --plan" in capsys.readouterr().err
    assert main(["inspect", "--model", "nope.py:model"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["inspect", "--model", "demo-cnn", "--pin", "conv1"]) == 2
    assert "PATTERN=CANDIDATE" in capsys.readouterr().err


def test_parser_has_the_documented_commands():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert {"inspect", "quantize", "demo"} <= set(commands)


def test_gpu_out_of_memory_is_one_line_with_what_to_do(monkeypatch, capsys):
    import torch
    import mixprec.cli as cli

    def oom(args):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    monkeypatch.setattr(cli, "cmd_inspect", oom)
    assert cli.main(["inspect", "--model", "demo-cnn"]) == 2
    err = capsys.readouterr().err
    assert "the GPU ran out of memory (CUDA out of memory. Tried to allocate 2.00 GiB)" in err
    assert "--calibration-samples" in err and "torchrun" in err and "Traceback" not in err


def test_demo_refuses_an_out_that_is_a_file_before_any_work(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    assert main(["demo", "--out", str(afile)]) == 2
    captured = capsys.readouterr()
    assert "is an existing file, not a directory" in captured.err and "analyz" not in captured.out.lower()
    assert afile.read_text() == "keep me"


@pytest.mark.parametrize("command", ["inspect", "analyze", "profile"])
def test_candidates_and_a_profile_together_are_refused(command, capsys):
    # a profile is its own list of candidates: --candidates beside it was silently ignored
    with pytest.raises(SystemExit) as exit_:
        main([command, "--model", "demo-cnn", "--candidates", "w4,w8", "--profile", "ort-cpu"])
    assert exit_.value.code == 2
    assert "--profile: not allowed with argument --candidates" in capsys.readouterr().err


def test_a_plan_edited_after_solve_is_quantized_with_a_note_and_its_real_costs(tmp_path, capsys):
    run, plan_path = tmp_path / "run", tmp_path / "plan.json"
    assert main(["analyze", "--model", "demo-cnn", "--candidates", "w2a8,w8a8", "--calibration-samples", "64",
                 "--out", str(run)]) == 0
    assert main(["solve", str(run), "--budget", "bops=0.5x", "--no-guard", "--out", str(plan_path)]) == 0
    plan = json.loads(plan_path.read_text())
    plan["assignments"] = {g: "w8a8" for g in plan["assignments"]}  # every group up: over the budget
    plan_path.write_text(json.dumps(plan))
    capsys.readouterr()
    out = tmp_path / "q"
    assert main(["quantize", "--model", "demo-cnn", "--plan", str(plan_path), "--calibration-samples", "64",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "not those it records" in printed and "exceeds the budget it records: bops" in printed
    written = json.loads((out / "plan.json").read_text())["metadata"]
    result = json.loads((out / "result.json").read_text())
    assert written["edited_after_solve"] and written["predicted_costs"]["bops"] == result["costs"]["bops"]


def test_a_front_point_is_written_as_a_plan_that_quantize_takes(tmp_path, capsys):
    run, front = tmp_path / "run", tmp_path / "front"
    assert main(["analyze", "--model", "demo-cnn", "--candidates", "w2a8,w8a8", "--calibration-samples", "64",
                 "--out", str(run)]) == 0
    assert main(["pareto", str(run), "--budget-kind", "bops", "--points", "4", "--no-guard", "--out", str(front)]) == 0
    points = json.loads((front / "pareto.json").read_text())["points"]
    capsys.readouterr()
    assert main(["report", str(front), "--write-plan", str(tmp_path / "p.json")]) != 0
    assert "--write-plan needs --select N" in capsys.readouterr().err
    assert main(["report", str(front), "--select", "1", "--write-plan", str(tmp_path / "p.json")]) == 0
    plan = json.loads((tmp_path / "p.json").read_text())
    assert plan["assignments"] == points[1]["assignments"] and plan["metadata"]["front_point"] == 1
    capsys.readouterr()
    assert main(["quantize", "--model", "demo-cnn", "--plan", str(tmp_path / "p.json"), "--calibration-samples", "64",
                 "--out", str(tmp_path / "q")]) == 0
    result = json.loads((tmp_path / "q" / "result.json").read_text())
    assert result["costs"]["bops"] == pytest.approx(points[1]["costs"]["bops"])
    assert "not those it records" not in capsys.readouterr().out
    for select in ("9", "-1"):  # refused before the plan is written
        assert main(["report", str(front), "--select", select, "--write-plan", str(tmp_path / "x.json")]) != 0
        assert f"--select {select} is out of range: the front has" in capsys.readouterr().err
        assert not (tmp_path / "x.json").exists()


def test_report_names_the_run_a_moved_front_points_to(tmp_path, capsys):
    run, front = tmp_path / "run", tmp_path / "front"
    assert main(["analyze", "--model", "demo-cnn", "--candidates", "w2a8,w8a8", "--calibration-samples", "64",
                 "--out", str(run)]) == 0
    assert main(["pareto", str(run), "--budget-kind", "bops", "--points", "3", "--no-guard", "--out", str(front)]) == 0
    run.rename(tmp_path / "moved")
    capsys.readouterr()
    assert main(["report", str(front)]) != 0
    assert f"names the run {str(run)!r}: give --run DIR where that run is now" in capsys.readouterr().err
    # the plan is pareto.json's own: written although the report cannot be
    assert main(["report", str(front), "--select", "0", "--write-plan", str(tmp_path / "p.json")]) != 0
    assert (tmp_path / "p.json").is_file() and "wrote" in capsys.readouterr().out
    assert main(["report", str(front), "--run", str(tmp_path / "moved")]) == 0


def test_task_metric_without_eval_is_refused_before_the_run_directory_is_written(tmp_path, capsys):
    from mixprec.cli import main
    (tmp_path / "net.py").write_text("import torch\ndef build():\n    return torch.nn.Linear(4, 2)\n"
                                     "def data():\n    return [torch.randn(8, 4)]\n")
    run = tmp_path / "run"
    assert main(["analyze", "--model", str(tmp_path / "net.py") + ":build", "--data", str(tmp_path / "net.py") + ":data",
                 "--candidates", "w8a8", "--metric", "task", "--out", str(run)]) != 0
    assert "give --eval file.py:evaluate" in capsys.readouterr().err and not run.exists()
    # a built-in model measures with its own evaluation
    assert main(["analyze", "--model", "demo-cnn", "--calibration-samples", "32", "--candidates", "w4a8,w8a8",
                 "--metric", "task", "--out", str(run)]) == 0
    assert "--metric task measures with demo-cnn's own evaluation" in capsys.readouterr().out


def test_an_unknown_budget_kind_lists_the_short_names_too():
    import pytest

    from mixprec.budgets import parse_budgets
    from mixprec.errors import MixprecError
    with pytest.raises(MixprecError, match=r"kinds here: bytes, bits_per_weight \(also bits = bits_per_weight, "
                                            r"size = bytes, bpw = bits_per_weight\)"):
        parse_budgets("foo=1", ["bytes", "bits_per_weight"], lambda kind, cand: 0.0, lambda kind: 0.0)


def test_an_interrupted_analysis_says_how_to_resume(tmp_path, monkeypatch, capsys):
    from mixprec import cli

    def stop(args, rank):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "_analyze", stop)
    run = tmp_path / "run"
    assert cli.main(["analyze", "--model", "demo-cnn", "--candidates", "w8a8", "--out", str(run)]) == 130
    assert "nothing was measured yet: run the same command again" in capsys.readouterr().err  # no run to resume
    from mixprec.run_directory import RunDirectory
    monkeypatch.setattr(RunDirectory, "exists", property(lambda self: True))
    monkeypatch.setattr(RunDirectory, "entries", lambda self, key: [])
    assert cli.main(["analyze", "--model", "demo-cnn", "--candidates", "w8a8", "--out", str(run)]) == 130
    err = capsys.readouterr().err
    assert "no entry was written yet (entries are written a chunk of groups (an eighth of them) at a time, so those " \
        f"of the chunk in progress are measured again): mixprec analyze --resume {run} continues" in err
    assert "Hessian" not in err
    assert cli.main(["analyze", "--model", "demo-cnn", "--candidates", "w8a8", "--metric", "hessian", "--out",
                     str(run)]) == 130
    assert "continues (from the last calibration batch whose Hessian traces were finished)" in capsys.readouterr().err
    monkeypatch.setattr(RunDirectory, "entries", lambda self, key: [{}] * 3)
    assert cli.main(["analyze", "--model", "demo-cnn", "--candidates", "w8a8", "--out", str(run)]) == 130
    err = capsys.readouterr().err
    assert "3 measured entries are kept (entries are written a chunk" in err
    assert f"measured again): mixprec analyze --resume {run} continues" in err


def test_an_interrupted_quantize_says_what_it_kept_and_only_what_it_kept(tmp_path, monkeypatch, capsys):
    from mixprec import cli
    monkeypatch.setenv("MIXPREC_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "q"
    (tmp_path / "ev.py").write_text("def f(model):\n    raise KeyboardInterrupt\n")  # a Ctrl-C while it evaluates
    assert cli.main(["quantize", "--model", "demo-cnn", "--uniform", "w8a8", "--eval", f"{tmp_path / 'ev.py'}:f",
                     "--out", str(out)]) == 130
    assert f"{out / 'model.pt'}, plan.json and result.json were written before the evaluation" in \
        capsys.readouterr().err

    def stop(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "quantize_plan", stop)  # interrupted before any rounding was kept
    assert cli.main(["quantize", "--model", "demo-cnn", "--uniform", "w8a8", "--rounding", "gptq",
                     "--out", str(tmp_path / "q2")]) == 130
    assert "no gptq rounding was kept yet" in capsys.readouterr().err
    import os
    earlier = tmp_path / "cache" / "rounding" / "gptq-0123.pt"  # an earlier run's, which this one resumes from
    earlier.parent.mkdir(parents=True, exist_ok=True)
    earlier.write_bytes(b"")
    os.utime(earlier, (cli._STARTED - 60, cli._STARTED - 60))
    assert cli.main(["quantize", "--model", "demo-cnn", "--uniform", "w8a8", "--rounding", "gptq",
                     "--out", str(tmp_path / "q3")]) == 130
    assert "added no gptq checkpoint, and those written before are kept" in capsys.readouterr().err


def test_pareto_says_why_it_has_fewer_plans_than_points_and_lists_them_cheapest_first(tmp_path, capsys):
    import json

    from mixprec.cli import main
    run = tmp_path / "run"
    assert main(["analyze", "--model", "demo-cnn", "--calibration-samples", "32", "--candidates", "w4a8,w8a8",
                 "--out", str(run)]) == 0
    assert main(["pareto", str(run), "--budget-kind", "bops", "--points", "30", "--out", str(tmp_path / "front")]) == 0
    out = capsys.readouterr().out
    plans = json.loads((tmp_path / "front" / "pareto.json").read_text())["points"]
    assert len(plans) < 30 and "note: 30 evenly spaced budgets and the costs of the uniform candidates gave " in out
    costs = [p["costs"]["bops"] for p in plans]
    assert costs == sorted(costs)


def test_every_command_that_reads_the_model_says_which_weights_stay_float(tmp_path, capsys):
    from mixprec.cli import main
    (tmp_path / "net.py").write_text(
        "import torch\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.fc = torch.nn.Linear(8, 8)\n"
        "        self.proj = torch.nn.Parameter(torch.randn(8, 8))\n"
        "    def forward(self, x):\n"
        "        return torch.nn.functional.linear(torch.relu(self.fc(x)), self.proj)\n"
        "def build():\n    return Net().eval()\n"
        "def data():\n    return [torch.randn(8, 8)]\n")
    spec = str(tmp_path / "net.py")
    assert main(["quantize", "--model", spec + ":build", "--data", spec + ":data", "--uniform", "w8a8",
                 "--out", str(tmp_path / "q")]) == 0
    assert "they stay float" in capsys.readouterr().out


def test_a_mistyped_model_name_is_said_as_such_not_as_missing_data(tmp_path, monkeypatch, capsys):
    from mixprec.cli import main
    monkeypatch.chdir(tmp_path)
    for command in (["quantize", "--uniform", "w4a8", "--out", "q"], ["analyze", "--out", "run"]):
        assert main([command[0], "--model", "resnet2O", *command[1:]]) != 0
        err = capsys.readouterr().err
        assert "--model 'resnet2O' is not a built-in name" in err and "--data is required" not in err


def test_a_mistyped_candidate_is_refused_before_the_model_loads(tmp_path, monkeypatch, capsys):
    from mixprec import cli

    def never(args, notes=True):
        raise AssertionError("the model was loaded")
    monkeypatch.setattr(cli, "_setup", never)
    assert cli.main(["analyze", "--model", "demo-cnn", "--candidates", "w4a8,w99a8", "--out", str(tmp_path / "r")]) == 2
    assert "w99a8" in capsys.readouterr().err
    assert cli.main(["analyze", "--model", "demo-cnn", "--metric", "sqrn", "--out", str(tmp_path / "r")]) == 2
    assert "unknown sensitivity metric 'sqrn'" in capsys.readouterr().err


def test_an_option_argparse_refuses_is_one_error_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["analyze", "--model", "demo-cnn", "--calibration-samples", "0", "--out", "run"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "mixprec: error: argument --calibration-samples: must be at least 1, got 0 (see: mixprec analyze --help)"]


def test_solve_says_how_to_apply_the_plan_with_the_data_a_model_of_ones_own_needs(tmp_path, capsys):
    """The hint after solve ran as printed: `mixprec quantize --model M.py:build --plan P --out DIR` without --data
    is an error for a model that is not built-in."""
    from mixprec.cli import main
    spec = tmp_path / "mine.py"
    spec.write_text("import torch\nfrom torch import nn\n"
                    "def build():\n    torch.manual_seed(0)\n"
                    "    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))\n"
                    "def calibration():\n    torch.manual_seed(1)\n    return [torch.randn(32, 6) for _ in range(2)]\n")
    run, plan = tmp_path / "run", tmp_path / "plan.json"
    assert main(["analyze", "--model", f"{spec}:build", "--data", f"{spec}:calibration", "--candidates", "w4a8,w8a8",
                 "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["solve", str(run), "--budget", "bytes=w4a8", "--no-guard", "--out", str(plan)]) == 0
    hint = capsys.readouterr().out.split("apply it with: ")[1].strip()
    assert f"--data {spec}:calibration" in hint
    out = tmp_path / "q"
    assert main(hint.replace("DIR", str(out)).split()[1:]) == 0
    assert (out / "plan.json").is_file()


def test_solve_with_another_model_fails_before_the_guard_says_anything(tmp_path, capsys):
    """The model given again is checked against the run's fingerprint before the guard announces its plans."""
    spec = tmp_path / "mine.py"
    spec.write_text("import torch\nfrom torch import nn\n"
                    "def build(width=16):\n    torch.manual_seed(0)\n"
                    "    return nn.Sequential(nn.Linear(6, width), nn.ReLU(), nn.Linear(width, 64), nn.ReLU(),\n"
                    "                         nn.Linear(64, 3)).eval()\n"
                    "def other():\n    return build(12)\n"
                    "def calibration():\n    torch.manual_seed(1)\n    return [torch.randn(32, 6) for _ in range(2)]\n")
    run = tmp_path / "run"
    assert main(["analyze", "--model", f"{spec}:build", "--data", f"{spec}:calibration", "--candidates", "w2a8,w4a8,w8a8",
                 "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["solve", str(run), "--budget", "bytes=0.7x", "--model", f"{spec}:other", "--data",
                 f"{spec}:calibration", "--out", str(tmp_path / "plan.json")]) == 2
    out, err = capsys.readouterr()
    assert "differs from what" in err and "guard" not in out + err
    assert not (tmp_path / "plan.json").exists()


def test_the_quantize_hint_is_quoted_for_a_shell_and_names_the_plans_rounding():
    """A data spec with '&' pasted unquoted sends the command to the background; a GPTQ plan applied without
    --rounding gptq deploys other weights than were measured."""
    import shlex
    from argparse import Namespace
    from types import SimpleNamespace

    from mixprec.cli import _quantize_hint
    from mixprec.plan import Plan
    analysis = SimpleNamespace(run=None, model_name=None)
    args = Namespace(model="hf:my model", data="text:corpus.txt?windows=2&length=32", out="plan.json")
    plan = Plan({"fc": "w4g32"}, {"fc": ["fc"]},
                metadata={"rounding": "gptq", "rounding_options": {"act_order": False, "static_groups": True}})
    assert shlex.split(_quantize_hint(analysis, args, plan)) == [
        "mixprec", "quantize", "--model", "hf:my model", "--data", "text:corpus.txt?windows=2&length=32",
        "--rounding", "gptq", "--no-act-order", "--static-groups", "--plan", "plan.json", "--out", "DIR"]
    plain = Plan({"fc": "w4g32"}, {"fc": ["fc"]})
    assert "--rounding" not in _quantize_hint(analysis, args, plain)


@pytest.mark.parametrize("value", ["4.5MB", "4.5KiB", "4.5B", "4k"])
def test_bits_per_weight_take_no_unit(value):
    from mixprec.budgets import parse_budgets
    from mixprec.errors import MixprecError
    with pytest.raises(MixprecError, match="bits per weight is a plain number"):
        parse_budgets(f"bits={value}", ["bytes", "bits_per_weight"], lambda kind, cand: 0.0, lambda kind: 1.0)
    assert parse_budgets("bytes=4.5KiB", ["bytes"], lambda kind, cand: 0.0, lambda kind: 1.0) == {"bytes": 4608.0}
    assert parse_budgets("bits=4.5", ["bits_per_weight"], lambda kind, cand: 0.0, lambda kind: 1.0) == \
        {"bits_per_weight": 4.5}


@pytest.mark.parametrize("text, hint", [("bytes=2.5XB", "units K, M, G, T and KiB"),
                                        ("bits=4.5;bytes=30KB", "separated by commas")])
def test_a_malformed_budget_value_lists_the_units_and_the_separator(text, hint):
    from mixprec.budgets import parse_budgets
    from mixprec.errors import MixprecError

    def no_candidate(kind, cand):
        raise MixprecError(f"{cand} is not one of the candidates here")
    with pytest.raises(MixprecError, match=hint):
        parse_budgets(text, ["bytes", "bits_per_weight"], no_candidate, lambda kind: 1.0)


def test_analyze_takes_gptqs_static_groups_and_records_them(tmp_path, capsys):
    from mixprec.cli import main
    run = tmp_path / "run"
    assert main(["analyze", "--model", "demo-cnn", "--candidates", "w4g16a8,w8a8", "--rounding", "gptq",
                 "--static-groups", "--calibration-samples", "32", "--out", str(run)]) == 0
    meta = json.loads((run / "sensitivity.json").read_text())["metadata"]
    assert meta["rounding"]["name"] == "gptq" and meta["rounding"]["static_groups"] is True
    capsys.readouterr()
    assert main(["analyze", "--model", "demo-cnn", "--candidates", "w8a8", "--static-groups",
                 "--out", str(tmp_path / "other")]) == 2
    assert "--static-groups is an option of --rounding gptq" in capsys.readouterr().err


def test_the_resume_hint_of_an_interrupted_analysis_names_the_code_the_run_needs(tmp_path, monkeypatch, capsys):
    from mixprec import cli
    spec = tmp_path / "mine.py"
    spec.write_text("import torch\n"
                    "def build():\n    torch.manual_seed(0)\n    return torch.nn.Sequential(torch.nn.Linear(4, 8), "
                    "torch.nn.ReLU(), torch.nn.Linear(8, 3))\n"
                    "def data():\n    torch.manual_seed(1)\n    return [torch.randn(8, 4) for _ in range(2)]\n")
    run = tmp_path / "run"
    assert cli.main(["analyze", "--model", f"{spec}:build", "--data", f"{spec}:data", "--candidates", "w8a8,w4a8",
                     "--out", str(run)]) == 0

    def stop(args, rank):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "_analyze", stop)
    capsys.readouterr()
    assert cli.main(["analyze", "--resume", str(run), "--model", f"{spec}:build", "--data", f"{spec}:data"]) == 130
    assert (f"measured again): mixprec analyze --resume {run} --model {spec}:build --data {spec}:data continues"
            in capsys.readouterr().err)


def test_a_missing_plan_file_is_said_before_the_model_loads(tmp_path, monkeypatch, capsys):
    import mixprec.cli as cli
    monkeypatch.setattr(cli, "_setup", lambda args: pytest.fail("the model was loaded before --plan was read"))
    missing = str(tmp_path / "typo.json")
    assert cli.main(["quantize", "--model", "demo-cnn", "--plan", missing, "--out", str(tmp_path / "q")]) == 2
    assert "plan file not found" in capsys.readouterr().err
    assert cli.main(["export", "--model", "demo-cnn", "--plan", missing, "--out", str(tmp_path / "m.onnx")]) == 2
    assert "plan file not found" in capsys.readouterr().err


def test_pareto_on_an_around_run_says_its_predictions_hold_near_the_base(tmp_path, capsys, monkeypatch):
    from mixprec import cli
    from mixprec.analysis import Analysis
    run = tmp_path / "run"
    assert cli.main(["analyze", "--model", "demo-cnn", "--candidates", "w2a8,w4a8,w8a8", "--around", "w4a8",
                     "--calibration-samples", "32", "--out", str(run)]) == 0

    def stop(self, *args, **kwargs):
        raise KeyboardInterrupt  # the note comes before the front is solved
    monkeypatch.setattr(Analysis, "pareto", stop)
    capsys.readouterr()
    assert cli.main(["pareto", str(run), "--budget-kind", "bops", "--points", "3", "--out", str(tmp_path / "p")]) == 130
    assert "measured each group moved alone from uniform w4a8 (--around)" in capsys.readouterr().out


def test_figures_in_a_note_get_the_digits_that_tell_them_apart():
    from mixprec.cli import _distinct
    assert _distinct(80.1, 79.2) == ("80.1", "79.2")
    worse, better = _distinct(11.77621, 11.77601)
    assert worse != better and float(worse) > float(better)
    assert _distinct(1.0, 1.0) == ("1", "1")  # equal stays equal, at most 10 digits


def test_the_quantize_hint_repeats_the_runs_tie_exclude_and_pin_options(tmp_path, capsys):
    """quantize discovers the groups again: without the run's --exclude the printed command refused the plan."""
    from mixprec.cli import main
    run, plan = tmp_path / "run", tmp_path / "plan.json"
    assert main(["analyze", "--model", "demo-cnn", "--candidates", "w4a8,w8a8", "--exclude", "fc",
                 "--calibration-samples", "64", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["solve", str(run), "--budget", "bytes=0.8x", "--no-guard", "--out", str(plan)]) == 0
    hint = capsys.readouterr().out.split("apply it with: ")[1].strip()
    assert "--exclude fc" in hint
    out = tmp_path / "q"
    assert main(hint.replace("DIR", str(out)).split()[1:] + ["--calibration-samples", "64"]) == 0


def test_a_front_keeps_its_cost_table_by_an_absolute_path_for_report_run_elsewhere(tmp_path, monkeypatch, capsys):
    import json
    from mixprec.cli import main
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir(), elsewhere.mkdir()
    monkeypatch.chdir(work)
    assert main(["analyze", "--model", "demo-cnn", "--calibration-samples", "32", "--candidates", "w4a8,w8a8",
                 "--out", "run"]) == 0
    groups = json.loads((work / "run" / "sensitivity.json").read_text())["groups"]
    rows = ["group,candidate,latency_ms"] + [f"{g},{c},{t}" for g in groups for c, t in (("w4a8", 1.0), ("w8a8", 2.0))]
    (work / "lat.csv").write_text("\n".join(rows) + "\n")
    assert main(["pareto", "run", "--budget-kind", "latency_ms", "--cost", "latency_ms=lat.csv", "--points", "3",
                 "--no-guard", "--out", "front"]) == 0
    recorded = json.loads((work / "front" / "pareto.json").read_text())["cost_files"]
    assert recorded == [f"latency_ms={work / 'lat.csv'}"]
    monkeypatch.chdir(elsewhere)
    assert main(["report", str(work / "front")]) == 0
    (work / "lat.csv").unlink()
    capsys.readouterr()
    assert main(["report", str(work / "front")]) == 2
    assert "pareto.json names the cost table(s)" in capsys.readouterr().err


def test_output_piped_to_a_reader_that_closes_it_ends_quietly(monkeypatch, capsys):
    # `mixprec pareto ... | head` printed "mixprec: error: Broken pipe" and exited 2
    from mixprec import cli

    def closed(args):
        raise BrokenPipeError(32, "Broken pipe")
    monkeypatch.setattr(cli, "cmd_inspect", closed)
    monkeypatch.setattr("os.dup2", lambda *a: None)  # stdout stays pytest's
    assert cli.main(["inspect", "--model", "demo-cnn"]) == 141
    assert "error" not in capsys.readouterr().err


@pytest.mark.parametrize("argv, says", [
    (["analyze", "--model", "demo-cnn", "--around-divergence", "kl", "--out", "{tmp}/run"], "add --around CAND"),
    (["analyze", "--model", "demo-cnn", "--metric", "around", "--out", "{tmp}/run"], "give it as --around CAND"),
    (["solve", "{run}", "--budget", "bops=w4a8", "--kind", "bytes", "--out", "{tmp}/p.json"], "drop --kind"),
    (["solve", "{run}", "--budget", "bops=w4a8", "--path-search", "binary", "--out", "{tmp}/p.json"],
     "--path-search is an option of --search greedy-pareto"),
    (["pareto", "{run}", "--budget-kind", "bops", "--no-guard", "--guard-margin", "3", "--out", "{tmp}/front"],
     "--no-guard turns the guard off"),
    (["profile", "--model", "demo-cnn", "--candidates", "w8a8,fp32", "--target", "ort-cpu", "--checks", "-1",
      "--out", "{tmp}/l.csv"], "--checks: must be at least 0"),
    (["export", "--model", "demo-cnn", "--uniform", "w8a8", "--target", "ort-cpu", "--threads", "0",
      "--out", "{tmp}/m.onnx"], "--threads: must be at least 1"),
])
def test_an_option_that_would_be_ignored_or_is_out_of_range_is_refused(argv, says, tmp_path, capsys):
    run = tmp_path / "given-run"
    if "{run}" in argv:
        assert main(["analyze", "--model", "demo-cnn", "--candidates", "w4a8,w8a8", "--calibration-samples", "64",
                     "--out", str(run)]) == 0
    capsys.readouterr()
    argv = [a.replace("{tmp}", str(tmp_path)).replace("{run}", str(run)) for a in argv]
    with pytest.raises(SystemExit) if "must be at least" in says else contextlib.nullcontext() as exc:
        code = main(argv)
    assert (exc.value.code if exc is not None else code) == 2
    assert says in capsys.readouterr().err
    assert not any((tmp_path / name).exists() for name in ("run", "p.json", "front", "l.csv", "m.onnx"))


def test_solve_refuses_an_eval_its_search_would_not_use_and_says_what_to_drop(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["analyze", "--model", "demo-cnn", "--candidates", "w4a8,w8a8", "--calibration-samples", "64",
                 "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["solve", str(run), "--budget", "bops=w4a8", "--eval", "demo-cnn", "--out", str(tmp_path / "p.json")]) == 2
    assert "--eval is what a measured search measures plans with" in capsys.readouterr().err
    assert main(["solve", str(run), "--budget", "bops=w4a8", "--search", "local", "--guard-holdout", "0.25",
                 "--no-guard", "--out", str(tmp_path / "p.json")]) == 2
    err = capsys.readouterr().err
    assert "keep the guard" in err and "use search='local'" not in err
    assert not (tmp_path / "p.json").exists()


def test_a_repeated_budget_is_every_budget_and_a_repeated_budget_kind_is_an_error(capsys):
    """--budget bytes=70KB --budget bits=3 held only bits=3 (the last), and the plan broke the bytes budget."""
    from mixprec.cli import build_parser
    parser = build_parser()
    args = parser.parse_args(["solve", "run", "--budget", "bytes=70KB", "--budget", "bits=3"])
    assert args.budget == "bytes=70KB,bits=3"
    assert parser.parse_args(["solve", "run", "--budget", "bops=w4a8"]).budget == "bops=w4a8"
    assert parser.parse_args(["pareto", "run", "--budget-kind", "bytes"]).budget_kind == "bytes"
    assert parser.parse_args(["pareto", "run"]).budget_kind == "bops"
    with pytest.raises(SystemExit):
        parser.parse_args(["pareto", "run", "--budget-kind", "bytes", "--budget-kind", "bops"])
    assert "--budget-kind is given more than once" in capsys.readouterr().err


def test_quantize_of_a_plan_made_with_run_options_not_given_names_them(tmp_path, capsys):
    """The plan's groups came from --exclude/--tie options of its run: the refusal only asked whether it was made
    with other options."""
    run, plan = tmp_path / "run", tmp_path / "plan.json"
    assert main(["analyze", "--model", "demo-cnn", "--calibration-samples", "32", "--candidates", "w4a8,w8a8",
                 "--exclude", "fc", "--out", str(run)]) == 0
    assert main(["solve", str(run), "--budget", "bytes=0.9x", "--no-guard", "--out", str(plan)]) == 0
    capsys.readouterr()
    assert main(["quantize", "--model", "demo-cnn", "--calibration-samples", "32", "--plan", str(plan),
                 "--out", str(tmp_path / "q")]) == 2
    assert "was analysed with --exclude fc, which this command line does not give: add them" in capsys.readouterr().err
    assert main(["quantize", "--model", "demo-cnn", "--calibration-samples", "32", "--plan", str(plan), "--exclude",
                 "fc", "--out", str(tmp_path / "q")]) == 0


def test_a_leading_tilde_in_a_path_argument_is_the_home_directory(monkeypatch):
    from mixprec.cli import _home
    monkeypatch.setenv("HOME", "/home/user")
    assert _home("~/m.py:model") == "/home/user/m.py:model"
    assert _home("hf:~/SmolLM2") == "hf:/home/user/SmolLM2" and _home("ppl:~/w.txt?windows=4") == \
        "ppl:/home/user/w.txt?windows=4"
    assert _home("latency_ms=~/lat.csv") == "latency_ms=/home/user/lat.csv"
    assert _home("bytes=2MB") == "bytes=2MB" and _home("a~b") == "a~b" and _home(3) == 3


def test_the_quiet_interrupt_handler_of_the_start_is_replaced_by_the_previous_one_when_the_command_runs(monkeypatch,
                                                                                                          capsys):
    import signal
    from mixprec import _startup
    from mixprec.cli import main
    previous = signal.getsignal(signal.SIGINT)
    monkeypatch.setattr(_startup, "_replaced", [previous])
    signal.signal(signal.SIGINT, _startup._interrupted)  # as the import of the mixprec command installs it
    try:
        assert main([]) == 2  # no command: the help
    finally:
        installed = signal.getsignal(signal.SIGINT)
        signal.signal(signal.SIGINT, previous)
    assert installed is previous and _startup._replaced == []


def test_inspect_json_to_standard_output_keeps_the_tables_on_standard_error(capsys):
    import json
    from mixprec.cli import main
    assert main(["inspect", "--model", "demo-cnn", "--candidates", "w8a8,w4a8", "--json", "-"]) == 0
    out, err = capsys.readouterr()
    found = json.loads(out)  # nothing else on stdout
    assert list(found["uniform_costs"]) == ["w8a8", "w4a8"] and "cost of each uniform candidate" in err


def test_more_torchrun_processes_than_gpus_is_a_clear_error(monkeypatch):
    """Two processes on a machine of one GPU: the second took cuda:1 and failed with CUDA's 'invalid device
    ordinal' as an internal error."""
    import torch
    from mixprec.cli import _init_distributed
    from mixprec.errors import SpecError
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    with pytest.raises(SpecError, match="local rank 1 has no GPU of its own; give --nproc_per_node 1"):
        _init_distributed()


def test_an_edited_pareto_json_is_refused_before_anything_is_written_from_it(tmp_path, capsys):
    import json
    run, front = tmp_path / "run", tmp_path / "front"
    assert main(["analyze", "--model", "demo-cnn", "--calibration-samples", "32", "--candidates", "w4a8,w8a8",
                 "--out", str(run)]) == 0
    assert main(["pareto", str(run), "--points", "4", "--no-guard", "--out", str(front)]) == 0
    saved = json.loads((front / "pareto.json").read_text())
    for edit, message in ((lambda p: p["points"][1]["costs"].update(bops=-5), "is no cost"),
                          (lambda p: p["points"][1]["costs"].update(bops="nan"), "is no cost"),
                          (lambda p: p["points"][1].update(predicted_sensitivity="nan"), "is not a number")):
        edited = json.loads(json.dumps(saved))
        edit(edited)
        (front / "pareto.json").write_text(json.dumps(edited))
        capsys.readouterr()
        assert main(["report", str(front), "--select", "1", "--write-plan", str(tmp_path / "p.json")]) == 2
        assert message in capsys.readouterr().err and not (tmp_path / "p.json").exists()
    edited = json.loads(json.dumps(saved))
    point = edited["points"][0]["assignments"]
    point[next(iter(point))] = "w8a8" if point[next(iter(point))] == "w4a8" else "w4a8"  # its costs stay
    (front / "pareto.json").write_text(json.dumps(edited))
    capsys.readouterr()
    assert main(["report", str(front), "--select", "0", "--write-plan", str(tmp_path / "p.json")]) == 2
    assert "the point was edited" in capsys.readouterr().err and not (tmp_path / "p.json").exists()
    point[next(iter(point))] = "w3a8"  # a candidate the run never measured
    (front / "pareto.json").write_text(json.dumps(edited))
    assert main(["report", str(front), "--select", "0", "--write-plan", str(tmp_path / "p.json")]) == 2
    assert "names candidate(s) w3a8, which the run did not measure" in capsys.readouterr().err
    assert not (tmp_path / "p.json").exists()
