"""The benchmark scripts call the library, and their analyses are the runs `mixprec analyze` makes
(same run.json, so a run's evaluator loads the same model and data and its cache keys still hit)."""
import ast
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("script", sorted(BENCHMARKS.glob("*.py")), ids=lambda p: p.name)
def test_benchmark_scripts_call_the_library_not_the_cli(script):
    used = imported_modules(script) & {"mixprec.cli", "mixprec.runs"}
    assert not used, f"{script.name} imports {sorted(used)}; call mixprec.analyze / Analysis instead"


def test_analyze_run_makes_the_run_the_cli_makes(tmp_path, monkeypatch):
    from mixprec.cli import main
    from mixprec.sensitivity.table import SensitivityTable
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("run", None)
    from run import analysis_arguments, analyze_run

    cli, lib = tmp_path / "cli", tmp_path / "lib"
    assert main(["analyze", "--model", "demo-cnn", "--candidates", "w4a8,w8a8", "--metric", "roundoff",
                 "--calibration-samples", "16", "--out", str(cli)]) == 0
    analyze_run(lib, analysis_arguments("demo-cnn", "w4a8,w8a8", "roundoff", "cpu", lib, 16))

    made = [json.loads((d / "run.json").read_text()) for d in (cli, lib)]
    for run in made:
        run["arguments"].pop("out")
    assert made[0] == made[1]
    assert json.loads((cli / "costs.json").read_text()) == json.loads((lib / "costs.json").read_text())
    assert SensitivityTable.load(cli).values.tolist() == SensitivityTable.load(lib).values.tolist()


def test_llm_scale_smoke_on_a_tiny_random_llama(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("llm_scale", None)
    from llm_scale import main
    out = tmp_path / "llm_scale_tiny.json"
    assert main(["--shape", "tiny", "--samples", "2", "--length", "16", "--batch", "1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["phases"]) == {"build", "groups", "analyze", "solve", "quantize"}
    analyze = report["analyze"]
    assert analyze["prefix_sharing"] == "blocks"
    assert 0 < analyze["forward_equivalents"] < analyze["naive_forward_equivalents"]
    assert report["per_block"]["params"] * report["blocks"] < report["params"]
    # the weight counts the 70B extrapolation uses are the built model's own; a tiny model is not carried over
    from llm_scale import SHAPES, block_params, extrapolate, total_params
    assert total_params(SHAPES["tiny"]) == report["params"] and block_params(SHAPES["tiny"]) == report["per_block"]["params"]
    assert report["extrapolated_70b"] is None
    assert total_params(SHAPES["8b"]) == 8_030_261_248  # Llama-3.1-8B's published count
    grown = extrapolate(SHAPES["8b"], SHAPES["8b"], report["phases"], 2, "nearest")  # onto itself: unchanged
    assert grown["analyze_seconds"] == round(report["phases"]["analyze"]["seconds"], 1)


def test_int8_divergence_compares_a_padded_tensor_at_its_offset():
    import numpy as np
    sys.path.insert(0, str(BENCHMARKS))
    from int8_divergence import _compare
    rng = np.random.default_rng(0)
    ort = rng.integers(0, 256, (2, 3, 5, 6))
    padded = np.full((2, 3, 7, 8), 127)
    padded[:, :, 1:6, 2:8] = ort  # zero-point padding: one row above, one below, two columns left
    assert _compare(padded, ort.astype(np.uint8)) == (0.0, 0, True)
    moved = ort.copy()
    moved[0, 0, 0, 0] += 3
    frac, largest, was_padded = _compare(moved, ort.astype(np.uint8))
    assert frac == 1 / ort.size and largest == 3 and not was_padded


def test_gap_bound_halves_hold_every_class_in_equal_shares_and_share_no_image():
    import torch
    sys.path.insert(0, str(BENCHMARKS))
    from gap_bound import half_mask
    labels = torch.arange(10).repeat(90)  # the evaluation split's round-robin order over the classes
    searched, held = half_mask(labels, 0), half_mask(labels, 1)
    assert not (searched & held).any() and (searched | held).all()
    for mask in (searched, held):  # every class, 45 images each (every other image would be 5 classes)
        assert torch.bincount(labels[mask], minlength=10).tolist() == [45] * 10
    shuffled = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]
    assert torch.bincount(shuffled[half_mask(shuffled, 0)], minlength=10).tolist() == [45] * 10


def test_the_nncf_target_says_by_how_much_each_lost_configuration_was_missed_once_per_configuration():
    sys.path.insert(0, str(BENCHMARKS))
    from report import _nncf_misses

    def row(label, ours, theirs):
        return {"label": label, "mixprec": {"value": ours}, "nncf": {"value": theirs},
                "mixprec_at_least_as_good": ours <= theirs}
    rows = [row("int4_sym g64 ratio 1.0, data-free (weight error)", 37.254, 37.25),
            row("int4_sym g64 ratio 1.0, data-aware (hessian_input_activation)", 37.254, 37.25),
            row("int4_sym g32 ratio 1.0, data-free (weight error)", 33.0, 36.3)]
    assert _nncf_misses(rows).startswith("; missed: int4_sym g64 ratio 1.0 37.254 against NNCF's 37.250 (+0.01 %)")
    assert _nncf_misses(rows[2:]) == ""
    codes = BENCHMARKS / "results" / "nncf_codes_smollm2.json"  # at ratio 1.0: what the code-by-code check measured
    if codes.is_file():
        said = "at ratio 1.0 both are uniform plans, with the same 4-bit codes (`nncf_codes_smollm2`)"
        assert said not in _nncf_misses(rows)  # the plan the guard returned is not known: nothing is claimed
        for x in rows:
            x["mixprec_guard"] = "uniform w4g64-minmax"
        assert said in _nncf_misses(rows, {"lm.{model.embed_tokens,lm_head}": "w8-asym-minmax"})
        assert said not in _nncf_misses(rows, {"lm.{model.embed_tokens,lm_head}": "w8-minmax"})  # another embedding
