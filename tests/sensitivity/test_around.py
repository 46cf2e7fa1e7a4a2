"""The around metric: each group moved alone from a base plan, the change of the output divergence."""
import pytest

import mixprec
from mixprec.builtin import get_builtin
from mixprec.cli import main
from mixprec.errors import MixprecError
from mixprec.sensitivity import Around, metric_config
from mixprec.sensitivity.divergence import OutputDivergence


@pytest.fixture(scope="module")
def demo():
    b = get_builtin("demo-cnn")
    model, data = b.model(), b.calibration(128)
    analysis = mixprec.analyze(model, data, candidates="w2a8,w4a8,w8a8", metric=Around("w4a8", "kl"),
                               activation_range="minmax", progress=False)  # min/max: no sampled range search
    return model, data, analysis


def test_base_entries_are_zero_and_moves_have_the_expected_sign(demo):
    _, _, analysis = demo
    table = analysis.table
    base, low, high = (table.candidates.index(c) for c in ("w4a8", "w2a8", "w8a8"))
    assert (table.values[:, base] == 0).all()
    assert (table.values[:, low] > 0).all()  # 2 bits hurt, in context as alone
    assert table.metadata["around"] == "w4a8" and table.metadata["divergence"] == "kl"
    assert table.metadata["base_divergence"] > 0


def test_last_group_entry_equals_the_measured_plan(demo):
    """Nothing runs after the last group, so moving it changes no other layer's calibration: its entry is
    exactly D(plan) - D(base) with the plan built and calibrated by apply."""
    model, data, analysis = demo
    table = analysis.table
    last = table.groups[-1]
    divergence = OutputDivergence(model, data, "kl")
    base = mixprec.Plan(dict.fromkeys(table.groups, "w4a8"), analysis.groups)
    d_base = divergence.measure(mixprec.apply(model, base, data, activation_method="minmax", progress=False))
    for cand in ("w2a8", "w8a8"):
        moved = mixprec.Plan({**base.assignments, last: cand}, analysis.groups)
        d = divergence.measure(mixprec.apply(model, moved, data, activation_method="minmax", progress=False))
        assert table[last, cand] == pytest.approx(d - d_base, rel=1e-5, abs=1e-9)


def test_options_are_checked():
    with pytest.raises(MixprecError, match="base"):
        Around(base="w99")
    with pytest.raises(MixprecError, match="divergence"):
        metric_config("around", divergence="l1")


def test_cli_around(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["analyze", "--model", "demo-cnn", "--candidates", "w2a8,w4a8,w8a8", "--around", "w4a8",
                 "--calibration-samples", "64", "--out", str(run)]) == 0
    assert "around sensitivity" in capsys.readouterr().out
    plan = tmp_path / "plan.json"
    assert main(["solve", str(run), "--budget", "bops=w4a8", "--out", str(plan)]) == 0
    assert main(["analyze", "--resume", str(run)]) == 0  # the around settings come back with the run


def test_cli_around_with_another_metric_is_an_error_naming_the_divergence_option(tmp_path, capsys):
    assert main(["analyze", "--model", "demo-cnn", "--candidates", "w4a8,w8a8", "--around", "w4a8",
                 "--metric", "kl", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "--metric kl would be ignored" in err and "--around-divergence kl" in err
    assert not (tmp_path / "run").exists()


def test_the_command_line_measures_a_built_in_classifier_around_a_plan_by_kl(tmp_path):
    """auto: KL for a built-in classifier's logits, although its calibration images come without labels."""
    import json
    from mixprec.cli import main
    assert main(["analyze", "--model", "demo-cnn", "--candidates", "w4a8,w8a8", "--around", "w4a8",
                 "--calibration-samples", "32", "--out", str(tmp_path / "run")]) == 0
    assert json.loads((tmp_path / "run" / "sensitivity.json").read_text())["metadata"]["divergence"] == "kl"


def test_a_run_around_a_base_refuses_other_pins(tmp_path, capsys):
    """The base plan keeps the pins, so a pin changes every entry: the run directory must not serve the table
    measured around another base."""
    run = tmp_path / "run"
    args = ["analyze", "--model", "demo-cnn", "--candidates", "w2a8,w4a8,w8a8", "--around", "w4a8",
            "--calibration-samples", "32", "--out", str(run)]
    assert main(args) == 0
    capsys.readouterr()
    assert main([*args, "--pin", "conv2=w2a8"]) == 2
    assert "settings differ: pins" in capsys.readouterr().err
