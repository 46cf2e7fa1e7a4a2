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
    ("layer,candidate,ms\nconv1,w4a8,1\n", "no entry for group"),
    ("layer,candidate,ms\n", "at least one row"),
    ("layer,candidate,ms\nconv1,w5z,1\n", "line 2"),
])
def test_bad_files_say_what_is_wrong(tmp_path, text, message):
    with pytest.raises(SpecError, match=message):
        load_cost_csv(write(tmp_path, text), GROUPS, CANDS)


def test_missing_file(tmp_path):
    with pytest.raises(SpecError, match="not found"):
        load_cost_csv(str(tmp_path / "nope.csv"), GROUPS, CANDS)
