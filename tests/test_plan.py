"""Plans: JSON round trip (hypothesis), uniform plans, and every way a plan file can be wrong."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from mixprec.errors import MixprecError, PlanError
from mixprec.groups import discover_groups
from mixprec.plan import PLAN_FORMAT, PLAN_VERSION, Plan

CANDIDATES = ["w4a8", "W8A8", "w8a16", "w16a16", "w4", "w4g128", "w2g64", "w4g128-asym", "fp8", "FP8E4M3",
              "fp8e5m2", "fp16", "bf16", "fp32", " w3g64a8 "]

names = st.text(min_size=1, max_size=12)
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**53, 2**53),
                         st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                                 st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                           max_leaves=8)


@st.composite
def plans(draw):
    group_names = draw(st.lists(names, min_size=0, max_size=6, unique=True))
    layer_names = draw(st.lists(names, min_size=len(group_names) * 2 + 2, max_size=len(group_names) * 2 + 2,
                                unique=True))
    groups = {g: layer_names[2 * i: 2 * i + draw(st.integers(1, 2))] for i, g in enumerate(group_names)}
    assignments = {g: draw(st.sampled_from(CANDIDATES)) for g in group_names}
    excluded = layer_names[len(layer_names) - draw(st.integers(0, 2)):]  # the two layers no group uses
    metadata = draw(st.dictionaries(st.text(max_size=8), json_values, max_size=4))
    return Plan(assignments, groups, excluded, metadata)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=plans())
def test_json_round_trip(plan, tmp_path):
    path = plan.save(tmp_path / "sub" / "plan.json")
    loaded = Plan.load(path)
    assert loaded.to_dict() == plan.to_dict()
    assert loaded.layer_candidates() == plan.layer_candidates()
    # Candidate names are stored canonically (lower case, fp8e4m3 -> fp8, stripped).
    for name in loaded.assignments.values():
        assert name == name.strip().lower() and name != "fp8e4m3"
    assert [p.name for p in path.parent.iterdir()] == ["plan.json"]  # no temporary file left behind


def test_saved_file_has_format_and_version(tmp_path):
    plan = Plan({"g": "w4a8"}, {"g": ["fc"]}, ["head"], {"note": "x"})
    data = json.loads(plan.save(tmp_path / "p.json").read_text())
    assert data["format"] == PLAN_FORMAT == "mixprec-plan"
    assert data["version"] == PLAN_VERSION == 1
    assert data["assignments"] == {"g": "w4a8"} and data["groups"] == {"g": ["fc"]} and data["excluded"] == ["head"]


def test_metadata_scalars_are_serialised(tmp_path):
    plan = Plan({"g": "w4"}, {"g": ["fc"]}, metadata={"loss": np.float32(0.5), "n": np.int64(7),
                                                         "t": torch.tensor(2.0), "path": tmp_path})
    loaded = Plan.load(plan.save(tmp_path / "p.json"))
    assert loaded.metadata == {"loss": 0.5, "n": 7, "t": 2.0, "path": str(tmp_path)}


@pytest.mark.parametrize("value", [np.array([1, 2]), torch.tensor([1, 2])], ids=["numpy", "torch"])
def test_metadata_arrays_are_serialised(tmp_path, value):
    plan = Plan({"g": "w4"}, {"g": ["fc"]}, metadata={"v": value})
    assert Plan.load(plan.save(tmp_path / "p.json")).metadata == {"v": [1, 2]}


def test_failed_save_leaves_no_temporary_file(tmp_path):
    plan = Plan({"g": "w4"}, {"g": ["fc"]}, metadata={"v": object()})
    with pytest.raises(TypeError, match="not JSON serialisable"):
        plan.save(tmp_path / "p.json")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- uniform plans

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(16, 8)
        self.q = nn.Linear(8, 4)
        self.k = nn.Linear(8, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        h = torch.relu(self.fc(self.conv(x).mean(1).flatten(1)))
        return self.head(self.q(h) + self.k(h))


def test_uniform_keeps_pins():
    groups = discover_groups(Net(), torch.randn(2, 3, 6, 6), pins={"fc": "W8A8", "head": "fp16"},
                             exclude=["conv"])
    plan = Plan.uniform(groups, "W4A8", {"source": "test"})
    assert plan.assignments == {"fc": "w8a8", "{q,k}": "w4a8", "head": "fp16"}
    assert plan.groups == {"fc": ["fc"], "{q,k}": ["q", "k"], "head": ["head"]}
    assert plan.excluded == ["conv"]
    assert plan.metadata == {"kind": "uniform", "candidate": "w4a8", "source": "test"}
    assert plan.layer_candidates() == {"fc": "w8a8", "q": "w4a8", "k": "w4a8", "head": "fp16"}


def test_uniform_rejects_bad_candidate():
    groups = discover_groups(Net())
    with pytest.raises(MixprecError, match="unknown candidate"):
        Plan.uniform(groups, "w4y8")  # (w4x8 is multipoint now)


# ---------------------------------------------------------------- errors

def write(tmp_path, data) -> str:
    path = tmp_path / "plan.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


GOOD = {"format": PLAN_FORMAT, "version": PLAN_VERSION, "assignments": {"g": "w4a8"}, "groups": {"g": ["fc"]}}


def test_good_file_loads(tmp_path):
    plan = Plan.load(write(tmp_path, GOOD))
    assert plan.assignments == {"g": "w4a8"} and plan.excluded == [] and plan.metadata == {}


@pytest.mark.parametrize("data,match", [
    ({**GOOD, "format": "other-plan"}, "is not a mixprec plan"),
    ({k: v for k, v in GOOD.items() if k != "format"}, "is not a mixprec plan"),
    ([GOOD], "is not a mixprec plan"),
    ({**GOOD, "version": 2}, "plan version 2; this mixprec reads version 1"),
    ({**GOOD, "version": "1"}, "plan version '1'"),
    ({k: v for k, v in GOOD.items() if k != "version"}, "plan version None"),
    ({k: v for k, v in GOOD.items() if k != "assignments"}, "is malformed"),
    ({k: v for k, v in GOOD.items() if k != "groups"}, "is malformed"),
    ({**GOOD, "groups": [["fc"]]}, "is malformed"),
    ({**GOOD, "groups": {"g": 3}}, "is malformed"),
    ({**GOOD, "metadata": None}, "is malformed"),
    ({**GOOD, "assignments": {"g": "w4a8", "h": "w8a8"}}, r"missing \[\], unknown \['h'\]"),
    ({**GOOD, "groups": {"g": ["fc"], "h": ["q"]}}, r"missing \['h'\], unknown \[\]"),
    ({**GOOD, "assignments": {"g": "w4a8", "h": "w8a8"}, "groups": {"g": ["fc"], "h": ["fc"]}},
     "layer 'fc' is in two groups: 'g' and 'h'"),
    ({**GOOD, "groups": {"g": ["fc", "fc"]}}, "layer 'fc' is in two groups"),
])
def test_bad_plan_files(tmp_path, data, match):
    path = write(tmp_path, data)
    with pytest.raises(PlanError, match=match) as info:
        Plan.load(path)
    if not match.startswith(("missing", "layer")):
        assert path in str(info.value)  # file-level errors say which file


def test_an_assignment_added_after_construction_is_refused_where_the_plan_is_used():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    plan = Plan.uniform(discover_groups(model, torch.randn(2, 4)), "w8")
    plan.assignments["typo"] = "w4"  # would otherwise be ignored, the group meant left at w8
    with pytest.raises(PlanError, match=r"unknown \['typo'\].*its groups: \['0', '2'\]"):
        plan.model_layers(model)


def test_malformed_json(tmp_path):
    with pytest.raises(PlanError, match="is not valid JSON"):
        Plan.load(write(tmp_path, '{"format": "mixprec-plan", '))


def test_missing_file(tmp_path):
    with pytest.raises(PlanError, match="plan file not found"):
        Plan.load(tmp_path / "nope.json")
    with pytest.raises(PlanError, match="plan file not found"):
        Plan.load(tmp_path)  # a directory is not a plan file


def test_unknown_candidate_in_file(tmp_path):
    with pytest.raises(MixprecError, match="unknown candidate 'w4q8'"):
        Plan.load(write(tmp_path, {**GOOD, "assignments": {"g": "w4q8"}}))


def test_constructor_checks():
    with pytest.raises(PlanError, match="do not match its groups"):
        Plan({"g": "w4a8"}, {})
    with pytest.raises(PlanError, match="in two groups"):
        Plan({"a": "w4", "b": "w8"}, {"a": ["x", "y"], "b": ["y"]})
    plan = Plan({"a": "W4G128-ASYM"}, {"a": ["x"]})
    assert plan.assignments == {"a": "w4g128-asym"}


@pytest.mark.parametrize("assignments", ["w4a8", ["abc"]])
def test_assignments_of_wrong_type_is_plan_error(tmp_path, assignments):
    with pytest.raises(PlanError, match="is malformed"):
        Plan.load(write(tmp_path, {**GOOD, "assignments": assignments}))


def test_a_hand_edited_plan_with_an_unknown_candidate_names_its_file_and_group(tmp_path):
    from mixprec.errors import PlanError
    plan = Plan({"conv1": "w4a8", "fc": "w8a8"}, {"conv1": ["conv1"], "fc": ["fc"]}, [], {})
    path = plan.save(tmp_path / "plan.json")
    text = path.read_text().replace('"w4a8"', '"w4a8x"')
    path.write_text(text)
    with pytest.raises(PlanError, match=r"plan.json: group 'conv1': unknown candidate 'w4a8x'"):
        Plan.load(path)


def test_a_plan_for_another_model_says_which_groups_are_whose():
    from mixprec.errors import SpecError
    from mixprec.groups import discover_groups
    from mixprec.pipeline import check_plan_groups
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    groups = discover_groups(model, torch.randn(2, 4))
    other = Plan({"emb": "w8a8"}, {"emb": ["emb"]}, [], {})
    with pytest.raises(SpecError, match=r"1 of the plan's groups are not this model's \(e.g. \['emb'\]\); 2 of this "
                                        r"model's groups are not in the plan"):
        check_plan_groups(other, groups)


def test_a_plan_for_the_same_layers_under_another_prefix_says_so():
    """A plan made on the network built in Python does not apply to it loaded with hf: (layers 'lm.<name>'), and
    the other way round; the error says it is a naming, not another model."""
    from torch import nn
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    wrapped = nn.Module()
    wrapped.lm = net
    bare = Plan({"0": "w8", "2": "w8"}, {"0": ["0"], "2": ["2"]})
    with pytest.raises(PlanError, match="under the prefix 'lm.'"):
        bare.model_layers(wrapped)
    prefixed = Plan({"lm.0": "w8", "lm.2": "w8"}, {"lm.0": ["lm.0"], "lm.2": ["lm.2"]})
    with pytest.raises(PlanError, match="with the prefix 'lm.'"):
        prefixed.model_layers(net)
    other = Plan({"0": "w8", "9": "w8"}, {"0": ["0"], "9": ["9"]})
    with pytest.raises(PlanError) as error:
        other.model_layers(wrapped)
    assert "prefix" not in str(error.value)


def test_recorded_costs_that_are_unknown_compare_equal_and_a_changed_plan_names_its_model():
    """A TorchScript model's BOPs are NaN, which plan.json holds as "nan": quantize crashed comparing that string;
    a plan whose costs changed says which model it records, since another model's plan is the likelier cause."""
    import warnings

    from mixprec.errors import PlanNote
    from mixprec.pipeline import check_recorded_costs
    plan = Plan({"a": "w4"}, {"a": ["a"]}, metadata={"predicted_costs": {"bytes": 100.0, "bops": "nan"},
                                                     "model": "models.py:small"})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_recorded_costs(plan, {"bytes": 100.0, "bops": float("nan")}, verbose=False)
    assert not caught and "edited_after_solve" not in plan.metadata
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_recorded_costs(plan, {"bytes": 60.0, "bops": float("nan")}, verbose=False)
    said = [str(w.message) for w in caught if issubclass(w.category, PlanNote)]
    assert said and "models.py:small" in said[0] and "bytes 100 recorded, 60 now" in said[0]


def test_a_uniform_plan_is_made_from_groups_a_plans_groups_dict_or_a_plan_and_anything_else_is_a_plan_error():
    import torch
    from torch import nn
    from mixprec.errors import PlanError
    from mixprec.groups import discover_groups
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    groups = discover_groups(model, torch.randn(4, 8), exclude=["4"])
    made = Plan.uniform(groups, "w8a8")
    assert made.excluded == ["4"] and made.assignments == {"0": "w8a8", "2": "w8a8"}
    from_dict = Plan.uniform(made.groups, "w4a8")
    assert from_dict.assignments == {"0": "w4a8", "2": "w4a8"} and from_dict.excluded == []
    from_plan = Plan.uniform(made, "w4a8")
    assert from_plan.groups == made.groups and from_plan.excluded == ["4"]
    assert from_plan.metadata["kind"] == "uniform" and from_plan.metadata["candidate"] == "w4a8"
    for bad in (["0", "2"], {"0": "0"}, None):
        with pytest.raises(PlanError, match="Plan.uniform takes the ModelGroups"):
            Plan.uniform(bad, "w8a8")
