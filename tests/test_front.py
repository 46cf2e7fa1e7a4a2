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
