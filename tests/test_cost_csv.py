import numpy as np
import pytest

from mixprec.costs import load_cost_csv
from mixprec.errors import SpecError

GROUPS = {"conv1": ["conv1"], "qkv": ["q", "k", "v"]}
CANDS = ["w4a8", "w8a8"]


def write(tmp_path, text):
    path = tmp_path / "latency.csv"
    path.write_text(text)
    return str(path)


def test_long_form_sums_layers_into_groups_and_reads_the_rest_of_the_model(tmp_path):
    path = write(tmp_path, "layer,candidate,latency_ms\nconv1,w4a8,1.0\nconv1,w8a8,2.0\n"
                           "q,w4a8,0.1\nk,w4a8,0.2\nv,w4a8,0.3\nqkv,w8a8,5\n*,,7.5\n")
    table, fixed = load_cost_csv(path, GROUPS, CANDS)
    np.testing.assert_allclose(table, [[1.0, 2.0], [0.6, 5.0]])
    assert fixed == 7.5


def test_wide_form_with_candidate_spellings_and_missing_entries(tmp_path):
    path = write(tmp_path, "layer,W8A8,w4a8\nconv1,2.0,\nq,1,0.5\nk,1,0.5\nv,1,0.5\n")
    table, fixed = load_cost_csv(path, GROUPS, CANDS)
    assert np.isnan(table[0, 0]) and table[0, 1] == 2.0  # no w4a8 entry for conv1: NaN, disallowed later
    np.testing.assert_allclose(table[1], [1.5, 3.0])
    assert fixed == 0.0


@pytest.mark.parametrize("text, message", [
    ("layer,candidate,ms\nconv9,w4a8,1\n", "unknown group"),
    ("layer,candidate,ms\nconv1,w4a8,fast\n", "not a number"),
    ("layer,candidate,ms\nconv1,w4a8,1\n", "no entry for 1 group"),
    ("layer,candidate,ms\n", "at least one row"),
    ("layer,candidate,ms\nconv1,w5z,1\n", "line 2"),
])
def test_bad_files_say_what_is_wrong(tmp_path, text, message):
    with pytest.raises(SpecError, match=message):
        load_cost_csv(write(tmp_path, text), GROUPS, CANDS)


def test_missing_file(tmp_path):
    with pytest.raises(SpecError, match="not found"):
        load_cost_csv(str(tmp_path / "nope.csv"), GROUPS, CANDS)


def test_a_long_form_header_without_its_value_column_is_named_as_such(tmp_path):
    path = write(tmp_path, "layer,candidate\nconv1,w4a8\n")
    with pytest.raises(SpecError, match="has no value column; the long form is name,candidate,value"):
        load_cost_csv(path, GROUPS, CANDS)


def test_an_entry_given_twice_with_two_costs_is_refused_and_the_same_cost_twice_is_not(tmp_path):
    path = write(tmp_path, "layer,candidate,ms\nconv1,w4a8,0.6\nq,w4a8,1\nconv1,w4a8,100\n")
    with pytest.raises(SpecError, match=r"line 4: \(conv1, w4a8\) costs 100 here and 0.6 on line 2"):
        load_cost_csv(path, GROUPS, CANDS)
    path = write(tmp_path, "layer,candidate,ms\nconv1,w4a8,0.6\nconv1,w4a8,0.6\nq,w4a8,1\nk,w4a8,1\nv,w4a8,1\n")
    table, _ = load_cost_csv(path, GROUPS, CANDS)
    assert table[0, CANDS.index("w4a8")] == 0.6


def test_groups_without_entries_are_counted_and_named(tmp_path):
    path = write(tmp_path, "layer,candidate,ms\nconv1,w4a8,0.6\n")
    with pytest.raises(SpecError, match=r"has no entry for 1 group\(s\), e.g. \['qkv'\]"):
        load_cost_csv(path, GROUPS, CANDS)


def test_a_mixed_plan_priced_on_a_profile_timed_without_around_gets_a_note(tmp_path):
    """A latency table of uniform graphs has no float/integer boundary in any entry: solve says so for a plan that
    mixes float and integer inputs, and not once the table was timed around an operating point (its moves)."""
    import json
    import warnings

    import torch
    from torch import nn

    import mixprec
    from mixprec.errors import BudgetNote
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    data = [torch.randn(16, 8) for _ in range(2)]
    analysis = mixprec.analyze(model, data, "w8a8,fp32", progress=False)
    csv = tmp_path / "lat.csv"  # only layer 2 is faster in int8: the budget makes a mixed plan
    csv.write_text("layer,candidate,latency_ms\n0,w8a8,1.0\n0,fp32,1.0\n2,w8a8,0.2\n2,fp32,1.0\n"
                   "4,w8a8,1.0\n4,fp32,1.0\n*,,0.1\n")
    profile = {"float_model_ms": 3.1, "method": "graph", "moves": []}
    for moves, noted in (([], True), ([{"group": "2"}], False)):
        (tmp_path / "lat.json").write_text(json.dumps({**profile, "moves": moves}))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            plan = analysis.solve("latency_ms=2.5", cost_files=[f"latency_ms={csv}"], guard=False)
        assert plan.assignments["2"] == "w8a8" and plan.assignments["0"] == "fp32"
        said = [w for w in caught if issubclass(w.category, BudgetNote) and "without --around" in str(w.message)]
        assert bool(said) is noted
        assert any("without --around" in n for n in plan.metadata.get("notes", [])) is noted
