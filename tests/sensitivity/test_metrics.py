import dataclasses
import json

import numpy as np
import pytest

import mixprec
from mixprec.errors import MixprecError
from mixprec.sensitivity import (DEFAULT_METRIC, Around, KL, METRICS, SQNR, Fisher, Hessian, Local, Metric, Roundoff, Task,
                                 metric_config)
from mixprec.sensitivity.analyze import analyze

from test_analyze import data, setup  # tests/sensitivity is on sys.path (rootdir import mode)


def test_registry_names_order_and_flags():
    assert list(METRICS) == ["roundoff", "sqnr", "kl", "task", "local", "hessian", "fisher", "around"]
    assert DEFAULT_METRIC == "sqnr" and metric_config() == SQNR()
    assert METRICS == {"roundoff": Roundoff, "sqnr": SQNR, "kl": KL, "task": Task, "local": Local,
                       "hessian": Hessian, "fisher": Fisher, "around": Around}
    for name, cls in METRICS.items():
        config = metric_config(name)
        assert isinstance(config, Metric) and type(config) is cls and config.name == name
        assert config.needs_data == (name != "roundoff")
        assert config.needs_grad == (name in ("hessian", "fisher"))
        assert not config.needs_labels
        assert config.changed_options() == {}
    assert mixprec.metric_config is metric_config and mixprec.sensitivity.Hessian is Hessian


def test_options_default_to_the_former_constants_and_are_frozen():
    assert Hessian() == Hessian(samples=16, seed=0) and Fisher() == Fisher(seed=0)
    assert metric_config("hessian", samples=4) == Hessian(samples=4)
    assert metric_config(Hessian(samples=4), seed=3) == Hessian(samples=4, seed=3)
    assert Hessian(samples=4).changed_options() == {"samples": 4}
    with pytest.raises(dataclasses.FrozenInstanceError):
        Hessian().samples = 4


def test_bad_metric_or_option_is_a_clear_error():
    with pytest.raises(MixprecError, match="unknown sensitivity metric 'nope'; metrics: roundoff, sqnr, kl, task, "
                                           "local, hessian, fisher"):
        metric_config("nope")
    with pytest.raises(MixprecError, match="a sensitivity metric is a name .* or a config"):
        metric_config(Hessian)  # the class, not a config
    with pytest.raises(MixprecError, match=r"unknown option 'sample' of the hessian metric; its options \(with "
                                           r"defaults\): samples=16, seed=0"):
        metric_config("hessian", sample=4)
    with pytest.raises(MixprecError, match="unknown option 'samples' of the sqnr metric; its options .*: none"):
        metric_config("sqnr", samples=4)
    for bad in (0, -1, 1.5, True, "16"):
        with pytest.raises(MixprecError, match=rf"option samples={bad!r} must be an integer >= 1; "
                                               r"e.g. Hessian\(samples=16\)"):
            Hessian(samples=bad)
    with pytest.raises(MixprecError, match=r"option seed=-1 must be an integer in \[0, "):
        metric_config("fisher", seed=-1)
    model, groups, cands = setup()
    with pytest.raises(MixprecError, match="unknown option 'sample' of the hessian metric"):
        analyze(model, groups, cands, data(), metric=metric_config("hessian", sample=4), progress=False)


@pytest.mark.parametrize("name", ["roundoff", "sqnr", "hessian", "fisher"])
def test_a_name_and_its_config_give_the_same_table(name):
    model, groups, cands = setup()
    by_name = analyze(model, groups, cands, data(), metric=name, progress=False)
    by_config = analyze(model, groups, cands, data(), metric=METRICS[name](), progress=False)
    assert by_config.metric == by_name.metric == name
    assert np.array_equal(by_name.values, by_config.values, equal_nan=True)


def test_fingerprint_records_only_changed_options(tmp_path):
    model, groups, cands = setup()
    analyze(model, groups, cands, data(), metric="hessian", run_dir=tmp_path, progress=False)
    settings = json.loads((tmp_path / "run.json").read_text())["fingerprint"]["settings"]
    assert settings["metric"] == "hessian" and "metric_options" not in settings
    # the same run directory resumes with the default config: nothing left to measure
    resumed = analyze(model, groups, cands, data(), metric=Hessian(), run_dir=tmp_path, progress=False)
    assert resumed.complete and resumed.metadata["measured_chunks"] == 0
    with pytest.raises(MixprecError, match="settings differ"):
        analyze(model, groups, cands, data(), metric=Hessian(samples=4), run_dir=tmp_path, progress=False)
    other = tmp_path / "four"
    analyze(model, groups, cands, data(), metric=Hessian(samples=4), run_dir=other, progress=False)
    settings = json.loads((other / "run.json").read_text())["fingerprint"]["settings"]
    assert settings["metric"] == "hessian" and settings["metric_options"] == {"samples": 4}


def test_task_prepares_only_when_there_is_work(tmp_path):
    model, groups, cands = setup()
    calls = []

    def evaluate(m):
        calls.append(1)
        return 1.0

    first = analyze(model, groups, cands, data(), metric="task", evaluate=evaluate, run_dir=tmp_path, progress=False)
    assert first.metadata["task_float_value"] == 1.0
    calls.clear()
    resumed = analyze(model, groups, cands, data(), metric=Task(), evaluate=evaluate, run_dir=tmp_path, progress=False)
    assert calls == [] and "task_float_value" not in resumed.metadata
    assert resumed.values.tolist() == first.values.tolist()


def test_a_trust_report_row_without_a_correlation_says_undefined_and_why():
    import math

    from mixprec.sensitivity.trust import format_report
    text = format_report([{"metric": "sqnr", "spearman": math.nan, "seconds": 1.0},
                          {"metric": "kl", "spearman": 0.5, "seconds": 2.0}])
    assert "nan" not in text and "undefined" in text and "0.500" in text
    assert text.splitlines()[1].startswith("kl")  # a defined correlation ranks first


def test_a_trust_report_of_an_around_table_says_its_drops_are_measured_from_float():
    from mixprec.sensitivity.trust import format_report
    text = format_report([{"metric": "around", "spearman": 0.2, "seconds": 1.0},
                          {"metric": "task", "spearman": 1.0, "seconds": 2.0}])
    assert "moves from the base plan" in text
    assert "moves from the base plan" not in format_report([{"metric": "sqnr", "spearman": 0.5, "seconds": 1.0}])


def test_an_sqnr_entry_is_the_applied_plan_of_that_group_alone_on_large_activations():
    """Batches of more than 16,384 activation values per layer: the table's input ranges come from as many
    samples as apply's, so each entry is exactly 1/SQNR of the plan with only that group quantized."""
    import torch
    from torch import nn
    from mixprec import Plan, apply
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(8 * 16 * 16, 10)).eval()
    data = [torch.randn(32, 3, 16, 16) * (1 + i) for i in range(2)]  # 65,536+ values a batch at conv2's input
    analysis = mixprec.analyze(model, data, candidates="w8a8", progress=False)
    with torch.no_grad():
        ref = [model(x) for x in data]
    float_plan = {g: "fp32" for g in analysis.table.groups}
    for g in analysis.table.groups:
        q = apply(model, Plan({**float_plan, g: "w8a8"}, analysis.groups), data, progress=False)
        with torch.no_grad():
            err = sum(float(((q(x) - y) ** 2).sum()) for x, y in zip(data, ref))
        assert analysis.table[g, "w8a8"] == pytest.approx(err / sum(float((y ** 2).sum()) for y in ref), rel=1e-5)
