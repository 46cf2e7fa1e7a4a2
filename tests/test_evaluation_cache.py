"""Measured plans are cached on disk by what measured them: an edited evaluation measures anew."""
import mixprec
from mixprec.builtin import get_builtin
from mixprec.specs import spec_source_hash


def test_a_file_spec_is_keyed_by_its_content(tmp_path):
    f = tmp_path / "ev.py"
    f.write_text("def score(model):\n    return 1.0\n")
    first = spec_source_hash(f"{f}:score")
    assert first is not None and first == spec_source_hash(f"{f}:other")  # the file, whatever the function
    f.write_text("def score(model):\n    return 2.0\n")
    assert spec_source_hash(f"{f}:score") != first
    for spec in ("demo-cnn", "ppl:wiki.txt", "package.module:function", f"{tmp_path}/missing.py:score", None):
        assert spec_source_hash(spec) is None


def test_a_file_spec_is_keyed_by_the_helpers_beside_it_that_it_imports(tmp_path):
    """ev.py calls helper.score and lib.metrics.top1 (a package beside it): editing either changes the key; an
    installed package (numpy) and a file it does not import do not."""
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "__init__.py").write_text("")
    (tmp_path / "lib" / "metrics.py").write_text("def top1(model):\n    return 1.0\n")
    (tmp_path / "helper.py").write_text("from lib.metrics import top1\ndef score(model):\n    return top1(model)\n")
    (tmp_path / "unrelated.py").write_text("x = 1\n")
    f = tmp_path / "ev.py"
    f.write_text("import numpy\nimport helper\ndef score(model):\n    return helper.score(model)\n")
    first = spec_source_hash(f"{f}:score")
    (tmp_path / "unrelated.py").write_text("x = 2\n")
    assert spec_source_hash(f"{f}:score") == first
    (tmp_path / "lib" / "metrics.py").write_text("def top1(model):\n    return 0.01\n")
    second = spec_source_hash(f"{f}:score")
    assert second != first
    (tmp_path / "helper.py").write_text("from lib.metrics import top1\ndef score(model):\n    return 2 * top1(model)\n")
    assert spec_source_hash(f"{f}:score") not in (first, second)


def test_an_edited_evaluation_function_is_measured_again_not_read_from_the_run(tmp_path):
    b = get_builtin("demo-cnn")
    model, data = b.model(), b.calibration(64)
    run = tmp_path / "run"
    analysis = mixprec.analyze(model, data, candidates="w4a8,w8a8", run_dir=run, progress=False)
    plan = {g: "w4a8" for g in analysis.groups}

    def score(model):  # noqa: ARG001
        return 1.0
    assert analysis.evaluator(score).measure(plan).value == 1.0
    assert analysis.evaluator(score).measure(plan).value == 1.0  # the same function: from the run's log

    def score(model):  # noqa: ARG001, F811 (the same name, edited)
        return 2.0
    assert analysis.evaluator(score).measure(plan).value == 2.0


def test_an_edited_evaluation_file_is_measured_again(tmp_path):
    b = get_builtin("demo-cnn")
    model, data = b.model(), b.calibration(64)
    run = tmp_path / "run"
    mixprec.analyze(model, data, candidates="w4a8,w8a8", run_dir=run, progress=False)
    f = tmp_path / "ev.py"
    f.write_text("def score(model):\n    return 1.0\n")
    reopened = mixprec.Analysis.load(run, model=model, data=data)
    plan = {g: "w4a8" for g in reopened.groups}
    spec = f"{f}:score"
    assert reopened.evaluator(spec).measure(plan).value == 1.0
    f.write_text("def score(model):\n    return 2.0\n")
    assert mixprec.Analysis.load(run, model=model, data=data).evaluator(spec).measure(plan).value == 2.0


def test_a_function_in_memory_measures_a_run_that_names_its_model(tmp_path):
    """A run reopened from its directory (the model named by the run, none in memory) takes a Python function as
    its evaluation, as a model in memory does; an edited one measures anew."""
    from mixprec.cli import main
    run = tmp_path / "run"
    assert main(["analyze", "--model", "demo-cnn", "--candidates", "w4a8,w8a8", "--calibration-samples", "64",
                 "--out", str(run)]) == 0
    reopened = mixprec.Analysis.load(run)
    plan = {g: "w4a8" for g in reopened.groups}
    seen = []

    def score(model):
        seen.append(sum(p.numel() for p in model.parameters()))
        return 3.0
    assert reopened.evaluator(score).measure(plan).value == 3.0
    assert seen and seen[0] > 0  # called with the run's model

    def score(model):  # noqa: ARG001, F811 (the same name, edited)
        return 4.0
    assert mixprec.Analysis.load(run).evaluator(score).measure(plan).value == 4.0



def _factory(value):
    def score(model):  # noqa: ARG001
        return value
    return score


def test_closures_of_one_factory_are_measured_each_with_its_own_values(tmp_path):
    """Two closures of one factory share their name and source; keyed by those alone, the second was served the
    first one's logged figures."""
    b = get_builtin("demo-cnn")
    model, data = b.model(), b.calibration(64)
    analysis = mixprec.analyze(model, data, candidates="w4a8,w8a8", run_dir=tmp_path / "run", progress=False)
    plan = {g: "w4a8" for g in analysis.groups}
    assert analysis.evaluator(_factory(1.0)).measure(plan).value == 1.0
    assert analysis.evaluator(_factory(2.0)).measure(plan).value == 2.0
    reopened = mixprec.Analysis.load(tmp_path / "run", model=model, data=data)
    assert reopened.evaluator(_factory(1.0)).cached(plan).value == 1.0  # the same values: read from the log
    assert reopened.evaluator(_factory(3.0)).cached(plan) is None


def test_a_function_fingerprint_follows_its_code_and_every_bound_value():
    import functools

    import numpy as np
    import torch

    from mixprec.fingerprint import fingerprint, key

    same = fingerprint(_factory(1.0))
    assert same is not None and same == fingerprint(_factory(1.0))
    values = [2.0, "1.0", (1.0,), {"a": 1.0}, torch.arange(4.0), torch.arange(4.0) + 1, np.arange(4.0),
              [torch.zeros(2), 1], None, torch.device("cpu"), torch.float16, len, np, functools]
    prints = [fingerprint(_factory(v)) for v in values]
    assert None not in prints and len(set(prints + [same])) == len(values) + 1
    assert fingerprint(_factory(torch.arange(4.0))) == fingerprint(_factory(torch.arange(4.0).clone()))

    def scaled(model, factor=1.0):  # noqa: ARG001
        return factor
    assert fingerprint(functools.partial(scaled, factor=2.0)) != fingerprint(functools.partial(scaled, factor=3.0))

    def other_default(model, factor=2.0):  # noqa: ARG001
        return factor
    other_default.__qualname__ = scaled.__qualname__  # the same name: only the source and defaults differ
    assert fingerprint(other_default) != fingerprint(scaled)

    def recursive(model, depth=0):
        return depth if depth > 2 else recursive(model, depth + 1)
    assert fingerprint(recursive) == fingerprint(recursive)  # a closure over itself ends

    class Loader:  # an object of the user's class: no content to hash
        pass
    loader = Loader()
    bound = _factory(loader)
    assert fingerprint(bound) is None
    assert key(bound) == key(bound) and key(bound).startswith("process-")  # while it lives, in this process
    assert key(_factory(Loader())) != key(bound)

    class Evaluator:  # a bound method is made anew at each access: one key while its object lives
        def top1(self, model):  # noqa: ARG002
            return 1.0

        def top5(self, model):  # noqa: ARG002
            return 2.0
    ev = Evaluator()
    assert key(ev.top1) == key(ev.top1) != key(ev.top5) and key(Evaluator().top1) != key(ev.top1)


def test_a_task_table_measured_by_another_closure_of_one_factory_is_refused_not_reused(tmp_path):
    import pytest

    from mixprec.errors import RunError
    b = get_builtin("demo-cnn")
    model, data = b.model(), b.calibration(32)
    run = tmp_path / "run"
    mixprec.analyze(model, data, candidates="w4a8,w8a8", metric="task", evaluate=_factory(1.0), run_dir=run,
                    progress=False)
    again = mixprec.analyze(model, data, candidates="w4a8,w8a8", metric="task", evaluate=_factory(1.0), run_dir=run,
                            progress=False)  # the same values: the run's entries
    assert again.table is not None
    with pytest.raises(RunError, match="eval_source"):
        mixprec.analyze(model, data, candidates="w4a8,w8a8", metric="task", evaluate=_factory(2.0), run_dir=run,
                        progress=False)


def test_a_logged_measurement_no_measurement_gives_is_measured_again(tmp_path):
    """NaN in the metrics' log, a negative divergence or share in the guard's: not measurements (an edited or
    damaged line), so they are measured again, never trusted (a -1 made the guard return the mixed plan)."""
    from mixprec.plan_evaluation import PlanEvaluator
    from mixprec.run_directory import RunDirectory
    run = RunDirectory(tmp_path / "run")
    (tmp_path / "run").mkdir()
    groups = {"a": ["a"]}

    def logged(log_name, value, details=None):
        evaluator = PlanEvaluator(lambda: None, groups, [], {}, run, log_name=log_name)
        key = evaluator._key({"a": "w4"})
        run.append_evaluation({"key": key, "result": {"name": "m", "value": value, "higher_is_better": False,
                                                      "details": details or {}}}, log_name)
        fresh = PlanEvaluator(lambda: None, groups, [], {}, run, log_name=log_name)
        found = fresh.cached({"a": "w4"}) is not None
        run.log_path(log_name).unlink()
        return found

    assert logged("evaluations", 0.5) and logged("evaluations", float("inf")) and not logged("evaluations", "nan")
    assert logged("evaluations", -1.0)  # a metric of the user's may be negative
    shares = {"samples": {"agreement": [0.25, 0.25], "sqnr": [0.1, 0.2]}, "sqnr": 0.3}
    assert logged("divergences", 0.5, shares)
    assert not logged("divergences", -1.0, shares)
    assert not logged("divergences", 0.5, {**shares, "sqnr": -1.0})
    assert not logged("divergences", 0.5, {**shares, "samples": {"agreement": [-1.0, 0.25]}})


SPLIT = {"offset": 0.0}  # a global an evaluation reads (a split picked from the command line, say)


def _split_score(model):
    return sum(float(p.abs().sum()) for p in model.parameters()) + SPLIT["offset"]


def test_an_evaluation_changed_where_its_key_cannot_see_is_measured_again_with_a_note(tmp_path):
    """A global the evaluation reads (or the data file it loads) is not in its key: the float model, evaluated again
    before the log serves a plan, gives another figure, and every logged plan is measured again."""
    import warnings

    import pytest
    from mixprec.errors import DataNote
    b = get_builtin("demo-cnn")
    model, data = b.model(), b.calibration(64)
    analysis = mixprec.analyze(model, data, candidates="w4a8,w8a8", run_dir=tmp_path / "run", progress=False)
    plan = {g: "w4a8" for g in analysis.groups}
    first = analysis.evaluator(_split_score).measure(plan).value
    from mixprec import plan_evaluation
    plan_evaluation._MEASURED_NOW.clear()  # as a later command would start: no float model evaluated by it yet
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataNote)  # unchanged: served from the log, no note
        assert mixprec.Analysis.load(tmp_path / "run", model=model, data=data).evaluator(
            _split_score).measure(plan).value == first
    reference = analysis.evaluator(_split_score).reference().value
    SPLIT["offset"] = 100.0
    plan_evaluation._MEASURED_NOW.clear()
    try:
        with pytest.warns(DataNote, match="evaluates to .* measured again"):  # asked first for the float figure
            evaluator = mixprec.Analysis.load(tmp_path / "run", model=model, data=data).evaluator(_split_score)
            assert evaluator.reference().value == pytest.approx(reference + 100.0)
        again = evaluator.measure(plan).value
    finally:
        SPLIT["offset"] = 0.0
    assert again == pytest.approx(first + 100.0)


def test_a_changed_model_named_again_is_refused_even_where_every_plan_is_logged(tmp_path):
    """--model spec.py:build loading retrained weights: a command whose plans are all logged was served the former
    model's figures, the check against the run's fingerprint made only where something was measured."""
    from mixprec.cli import main
    (tmp_path / "scale.txt").write_text("1.0")
    spec = tmp_path / "spec.py"
    spec.write_text(
        "import pathlib, torch\nfrom torch import nn\n"
        "HERE = pathlib.Path(__file__).parent\n"
        "def build():\n"
        "    torch.manual_seed(0)\n"
        "    m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()\n"
        "    with torch.no_grad():\n"
        "        m[0].weight.mul_(float((HERE / 'scale.txt').read_text()))\n"
        "    return m\n"
        "def calib():\n"
        "    g = torch.Generator().manual_seed(1)\n"
        "    return [torch.randn(16, 8, generator=g) for _ in range(2)]\n"
        "def score(model):\n"
        "    with torch.no_grad():\n"
        "        return float(model(calib()[0]).sum())\n")
    run, specs = tmp_path / "run", ["--model", f"{spec}:build", "--data", f"{spec}:calib"]
    assert main(["analyze", *specs, "--candidates", "w4a8,w8a8", "--eval", f"{spec}:score", "--out", str(run)]) == 0
    pareto = ["pareto", str(run), *specs, "--eval", f"{spec}:score", "--points", "3", "--out", str(tmp_path / "front")]
    assert main(pareto) == 0
    assert main(pareto) == 0  # the same model: every plan from the log
    (tmp_path / "scale.txt").write_text("1.5")  # retrained
    assert main(pareto) == 2


def test_a_second_pareto_in_one_process_sees_an_evaluation_changed_between_the_calls(tmp_path):
    """A notebook: the data an evaluation reads changes between two pareto calls on one run_dir; the second was
    served the first one's figures (the float model was checked once per process)."""
    import pytest
    b = get_builtin("demo-cnn")
    model, data = b.model(), b.calibration(64)
    analysis = mixprec.analyze(model, data, candidates="w4a8,w8a8", run_dir=tmp_path / "run", progress=False)
    first = analysis.pareto("bops", 3, evaluate=_split_score, guard=False, progress=False)
    SPLIT["offset"] = 50.0
    try:
        with pytest.warns(Warning, match="measured again"):
            second = analysis.pareto("bops", 3, evaluate=_split_score, guard=False, progress=False)
    finally:
        SPLIT["offset"] = 0.0
    assert second.reference["value"] == pytest.approx(first.reference["value"] + 50.0)
    assert [p.measured["value"] for p in second.plans] == pytest.approx(
        [p.measured["value"] + 50.0 for p in first.plans])
