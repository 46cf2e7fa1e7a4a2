"""What a measured front tells the user beyond its plans: uniform plans above it, plans below a cheaper one."""
from mixprec.front import Front, FrontPlan


def _front(points, uniform=None, higher=True):
    def plan(cost, value):
        return FrontPlan({"bops": cost}, 1.0 / cost, {"g": "w4a8"},
                         None if value is None else {"name": "miou", "value": value, "higher_is_better": higher})
    return Front("bops", "sqnr", "exact", [plan(c, v) for c, v in points],
                 {name: plan(c, v) for name, (c, v) in (uniform or {}).items()}, {"g": ["g"]})


def test_a_front_plan_measured_worse_than_a_cheaper_one_is_named_with_the_best_cheaper_plan():
    """A new user's UNet: 88.05 mIoU at 1.38e8 BOPs, then 80.49 at 1.87e8, and neither the table nor the report
    said so."""
    front = _front([(1.0e8, 70.0), (1.38e8, 88.05), (1.87e8, 80.49), (2.5e8, 89.0), (3.0e8, None)])
    assert front.below_cheaper() == [(2, 1)]
    assert _front([(1, 1.0), (2, 2.0), (3, 3.0)]).below_cheaper() == []
    assert _front([(1, 1.0), (2, 2.0), (3, 1.5)], higher=False).below_cheaper() == [(1, 0), (2, 0)]  # lower: better
    assert _front([(1, 5.0), (1, 6.0)]).below_cheaper() == []  # equal cost: not cheaper


def test_a_uniform_plan_measured_better_than_every_front_plan_of_no_greater_cost_is_above_the_front():
    front = _front([(1, 50.0), (2, 60.0), (3, 70.0)], {"w4a8": (2, 65.0), "w8a8": (3, 69.0), "w2a8": (1, None)})
    assert front.uniform_above_front() == ["w4a8"]


def test_a_higher_is_better_number_that_improves_as_plans_get_cheaper_is_called_a_likely_loss():
    """A new user's evaluation returned the cross-entropy as a plain float, read as higher-is-better."""
    loss = _front([(1, 9.0), (2, 6.0), (3, 4.2), (4, 4.1)])
    assert loss.better_when_cheaper()
    assert not _front([(1, 9.0), (2, 6.0), (3, 4.2), (4, 4.1)], higher=False).better_when_cheaper()  # said lower
    assert not _front([(1, 50.0), (2, 60.0), (3, 70.0)]).better_when_cheaper()
    assert not _front([(1, 9.0), (2, 6.0)]).better_when_cheaper()  # two points tell nothing
    assert not _front([(1, 9.0), (2, 10.0), (3, 4.0)]).better_when_cheaper()  # the cheapest is not the best
    assert _front([(1, 9.0), (2, 6.0), (3, 4.0), (4, None)]).better_when_cheaper()  # the measured ones tell
    loss.reference = {"name": "metric", "value": 4.0, "higher_is_better": True}
    assert loss.better_when_cheaper()  # the float model scores worst of all
    loss.reference = {"name": "metric", "value": 10.0, "higher_is_better": True}
    assert not loss.better_when_cheaper()  # the float model scores best: a noisy metric, not a loss
    # an MSE returned as a plain float: the two dearest plans swap by noise, the float model scores worst of all
    mse = _front([(1, 0.0774), (2, 0.0332), (3, 0.0109), (4, 0.009094), (5, 0.009127)])
    assert not mse.better_when_cheaper()  # without the float model's figure the order alone is not monotone
    mse.reference = {"name": "metric", "value": 0.0076, "higher_is_better": True}
    assert mse.better_when_cheaper()
    mse.reference = {"name": "metric", "value": 0.0095, "higher_is_better": True}
    # the float model between the dear plans, which sit on either side of it by noise, and the cheapest plan 8x
    # "better" than it: a loss (a user's plain-float MSE: 0.1381 cheapest, 0.01299 / 0.01327 dearest, float 0.01341)
    assert mse.better_when_cheaper()
    probe = _front([(1, 0.1381), (2, 0.0410), (3, 0.0175), (4, 0.01299), (5, 0.01327)])
    probe.reference = {"name": "metric", "value": 0.01341, "higher_is_better": True}
    assert probe.better_when_cheaper()
    noisy = _front([(1, 70.5), (2, 70.2), (3, 70.0)])  # an accuracy whose cheapest plan is a little above float
    noisy.reference = {"name": "metric", "value": 70.4, "higher_is_better": True}
    assert not noisy.better_when_cheaper()  # by less than the plans differ: noise, not a loss


def test_pareto_warns_and_the_report_says_so_when_the_evaluation_reads_upside_down(tmp_path):
    import warnings

    import torch
    from torch import nn

    import mixprec
    from mixprec.errors import EvaluationNote
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    data = [torch.randn(16, 16) for _ in range(4)]
    with torch.no_grad():
        targets = [model(x) for x in data]

    def mse(m):  # a loss, returned as a plain float
        with torch.no_grad():
            return sum(float(((m(x) - t) ** 2).mean()) for x, t in zip(data, targets))
    analysis = mixprec.analyze(model, data, "w2a8,w4a8,w8a8", progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        front = analysis.pareto("bops", n_plans=4, evaluate=mse, progress=False)
    assert front.better_when_cheaper()
    assert any(issubclass(w.category, EvaluationNote) and "higher_is_better" in str(w.message) for w in caught)
    page = analysis.report(front, tmp_path).read_text()
    assert "Better when cheaper" in page
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        front = analysis.pareto("bops", n_plans=4, evaluate=lambda m: -mse(m), progress=False)
    assert not front.better_when_cheaper() and not [w for w in caught if issubclass(w.category, EvaluationNote)]


def test_a_front_measured_with_a_learned_rounding_writes_plans_that_carry_it(tmp_path):
    """report --write-plan (front.plan) keeps the rounding the front's plans were measured with, so quantize and
    export apply the plan as it was measured, as a plan from solve does."""
    import torch
    from torch import nn

    import mixprec
    from mixprec.rounding import plan_rounding
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    data = [torch.randn(16, 16) for _ in range(2)]

    def score(m):
        with torch.no_grad():
            return {"value": -sum(float(((m(x) - model(x)) ** 2).mean()) for x in data), "higher_is_better": True}
    analysis = mixprec.analyze(model, data, "w4g8,w8", progress=False)
    front = analysis.pareto("bits", n_plans=3, evaluate=score, rounding="gptq", progress=False, guard=False)
    front.save(tmp_path)
    plan = Front.load(tmp_path).plan(0)
    assert plan.metadata["rounding"] == "gptq" and plan_rounding(plan.metadata).name == "gptq"
    assert "rounding" not in analysis.pareto("bits", n_plans=3, progress=False, guard=False).plan(0).metadata


def test_report_of_a_run_directory_says_to_make_a_front_of_it_elsewhere(tmp_path):
    """It advised `mixprec pareto RUN --out RUN`, which writes the front into the run itself."""
    import pytest

    from mixprec.errors import SpecError
    from mixprec.front import Front
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text("{}")
    with pytest.raises(SpecError, match=r"is an analysis run, not a pareto directory; .*--out FRONT_DIR"):
        Front.load(tmp_path / "run")


def test_a_front_saved_over_another_leaves_none_of_the_other_fronts_report_beside_it(tmp_path):
    """Saved, the new pareto.json stands alone until its own report is written: an interruption or a failing plot
    write left the former front's report.html and plots beside it."""
    from mixprec.front import REPORT_FILES, Front
    for name in REPORT_FILES:
        (tmp_path / name).write_text("the former front's")
    Front("bytes", "sqnr", "exact", [], {}, {}).save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pareto.json"]
