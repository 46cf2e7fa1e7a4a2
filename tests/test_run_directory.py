"""The run directory: what survives a kill or a torn line, what is refused and leaves the run as it
was, one writer at a time, and no code run because a run directory names it."""
import copy
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

from mixprec.cli import main
from mixprec.errors import RunError, SpecError
from mixprec.groups import discover_groups
from mixprec.candidates import parse_candidates
from mixprec.run_directory import RunDirectory
from mixprec.sensitivity.analyze import analyze

from hostile import error_line, user_files


def tiny():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4)).eval()
    data = [torch.randn(4, 6) for _ in range(2)]
    return model, discover_groups(model, data[0]), parse_candidates("w4a8,w8a8"), data


def snapshot(directory):
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_next_append_after_a_torn_line_starts_a_new_line(tmp_path):
    run = RunDirectory(tmp_path)
    run.append_entries({("a", "w4a8"): 0.5})
    log = tmp_path / "entries.rank0.jsonl"
    log.write_bytes(log.read_bytes() + b'{"group": "b", "cand')  # killed mid-write
    run.append_entries({("c", "w4a8"): 0.25})
    assert run.entries() == {("a", "w4a8"): 0.5, ("c", "w4a8"): 0.25} and run.rejected == 1


@pytest.mark.parametrize("value", ["NaN", "-Infinity", "Infinity", "-0.5", "true", '"nan"', '"0.5"', "null"])
def test_invalid_entries_are_not_done(tmp_path, value):
    (tmp_path / "entries.rank0.jsonl").write_text(f'{{"group": "a", "candidate": "w4a8", "value": {value}}}\n'
                                                  '{"group": "a", "candidate": "w8a8", "value": "inf"}\n')
    run = RunDirectory(tmp_path)
    assert run.entries() == {("a", "w8a8"): math.inf} and run.rejected == 1


def test_negative_entries_are_kept_where_the_metric_allows_them(tmp_path):
    (tmp_path / "entries.rank0.jsonl").write_text('{"group": "a", "candidate": "w4a8", "value": -0.5}\n')
    assert RunDirectory(tmp_path).entries(minimum=None) == {("a", "w4a8"): -0.5}
    assert RunDirectory(tmp_path).entries(minimum=0.0) == {}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=60), st.text(max_size=60).map(str.encode),
                          st.fixed_dictionaries({"group": st.text(max_size=3), "candidate": st.text(max_size=3),
                                                 "value": st.one_of(st.floats(), st.text(max_size=4), st.none())}
                                                ).map(lambda d: json.dumps(d).encode())), max_size=8))
def test_any_bytes_in_an_entries_log_read_as_valid_entries_or_nothing(tmp_path_factory, lines):
    directory = tmp_path_factory.mktemp("run")
    (directory / "entries.rank0.jsonl").write_bytes(b"\n".join(lines))
    run = RunDirectory(directory)
    for (group, candidate), value in run.entries().items():
        assert isinstance(group, str) and isinstance(candidate, str)
        assert value == math.inf or (math.isfinite(value) and value >= 0)
    run.append_entries({("g", "w4a8"): 1.0})  # and an append after any of it is read back
    assert run.entries()[("g", "w4a8")] == 1.0


def test_a_torn_log_resumes_to_the_same_table(tmp_path):
    model, groups, cands, data = tiny()
    fresh = analyze(model, groups, cands, data, metric="sqnr", run_dir=tmp_path / "fresh", chunk_size=1,
                    progress=False)
    log = tmp_path / "fresh" / "entries.rank0.jsonl"
    lines = log.read_bytes().splitlines(keepends=True)
    log.write_bytes(b"".join(lines[:2]) + lines[2][:15])  # killed while writing the third entry
    resumed = analyze(model, groups, cands, data, metric="sqnr", run_dir=tmp_path / "fresh", chunk_size=1,
                      progress=False)
    assert resumed.values.tolist() == fresh.values.tolist()
    assert [json.loads(l) for l in log.read_bytes().splitlines()[:2]] == [json.loads(l) for l in lines[:2]]
    assert len(RunDirectory(tmp_path / "fresh").entries()) == 4


def test_a_resumed_analysis_records_the_time_of_every_session(tmp_path):
    """The local search's default time budget is the analysis's time: a resume that measured little (or only
    rewrote the table) must not record its own few milliseconds as the analysis's."""
    model, groups, cands, data = tiny()
    fresh = analyze(model, groups, cands, data, metric="sqnr", run_dir=tmp_path, chunk_size=1, progress=False)
    run = RunDirectory(tmp_path)
    assert abs(run.measured_seconds() - fresh.metadata["seconds"]) < 0.05 + 0.1 * fresh.metadata["seconds"]
    log = tmp_path / "seconds.rank0.jsonl"
    log.write_text("".join('{"seconds": 30.0}\n' for _ in log.read_text().splitlines()) + '{"seco')  # + a torn line
    (tmp_path / "sensitivity.json").unlink()  # the table rewritten from the entries, nothing measured
    resumed = analyze(model, groups, cands, data, metric="sqnr", run_dir=tmp_path, chunk_size=1, progress=False)
    assert resumed.metadata["measured_chunks"] == 0 and resumed.metadata["seconds"] == 60.0  # two chunks of 30 s
    assert RunDirectory(tmp_path).read_table().metadata["seconds"] == 60.0


def test_a_refused_analysis_leaves_the_run_as_it_was(tmp_path):
    model, groups, cands, data = tiny()
    analyze(model, groups, cands, data, metric="sqnr", run_dir=tmp_path, progress=False)
    before = snapshot(tmp_path)
    with pytest.raises(RunError, match="settings differ: candidates"):
        analyze(model, groups, cands[:1], data, metric="sqnr", run_dir=tmp_path, progress=False)
    with pytest.raises(RunError, match="made with other data"):
        analyze(model, groups, cands, data[:1], metric="sqnr", run_dir=tmp_path, progress=False)
    assert snapshot(tmp_path) == before


def test_a_second_writer_is_refused_at_once(tmp_path):
    model, groups, cands, data = tiny()
    with RunDirectory(tmp_path).lock():
        with pytest.raises(RunError, match="being written by another mixprec process"):
            analyze(model, groups, cands, data, metric="sqnr", run_dir=tmp_path, progress=False)
        assert list(tmp_path.iterdir()) == []
    analyze(model, groups, cands, data, metric="sqnr", run_dir=tmp_path, progress=False)  # released: works


def test_a_reader_of_a_run_being_measured_is_told_to_wait_not_to_resume_it(tmp_path):
    model, groups, cands, data = tiny()
    analyze(model, groups, cands, data, metric="sqnr", run_dir=tmp_path, progress=False)
    (tmp_path / "sensitivity.json").unlink()  # as while an analyze is still measuring
    with RunDirectory(tmp_path).lock():
        with pytest.raises(RunError, match="is being measured by another mixprec process .* wait for it"):
            RunDirectory(tmp_path).read_table()
    with pytest.raises(SpecError, match="has no sensitivity.json .*analyze --resume"):
        RunDirectory(tmp_path).read_table()


def test_damaged_run_files_are_one_line(tmp_path, capsys):
    model, groups, cands, data = tiny()
    analyze(model, groups, cands, data, metric="sqnr", run_dir=tmp_path, progress=False)
    (tmp_path / "sensitivity.json").write_bytes(b"\x80\x81 not json")
    assert main(["solve", str(tmp_path), "--budget", "bytes=1x", "--out", str(tmp_path / "p.json")]) == 2
    assert "sensitivity.json is damaged" in error_line(capsys)


@pytest.fixture
def user_run(tmp_path, monkeypatch):
    """A run of user.py:model on data.npz; importing user.py afterwards leaves tmp_path/marker."""
    user_files(tmp_path)
    run = tmp_path / "run"
    spec = str(tmp_path / "user.py") + ":model"
    assert main(["analyze", "--model", spec, "--data", str(tmp_path / "data.npz"), "--out", str(run)]) == 0
    monkeypatch.setenv("MIXPREC_TEST_MARKER", str(tmp_path / "marker"))
    return run, spec, tmp_path


@pytest.mark.parametrize("argv", [["analyze", "--resume", "RUN"],
                                  ["solve", "RUN", "--budget", "bytes=0.5x", "--search", "greedy", "--eval",
                                   "EVAL", "--out", "OUT/plan.json"],
                                  ["pareto", "RUN", "--points", "3", "--no-guard", "--eval", "EVAL", "--out", "OUT"]])
def test_a_run_directory_never_runs_code_that_is_not_named(user_run, capsys, argv):
    run, spec, tmp = user_run
    argv = [a.replace("RUN", str(run)).replace("OUT", str(tmp)).replace("EVAL", str(tmp / "user.py") + ":evaluate")
            for a in argv]
    if argv[0] == "analyze":
        assert main(argv) == 2
    else:  # --eval names the evaluation, the model stays the run's
        assert main(argv) == 2
    assert f"names --model {spec}, which is code" in error_line(capsys) and not (tmp / "marker").exists()
    assert main(argv + ["--model", spec]) == 0  # named again: it runs (and the fingerprint matched)
    assert (tmp / "marker").exists()


def test_trust_run_says_what_it_runs_and_a_renamed_model_must_match(user_run, capsys):
    run, spec, tmp = user_run
    assert main(["analyze", "--resume", str(run), "--trust-run"]) == 0
    assert f"--trust-run: --model {spec}, as" in capsys.readouterr().out
    (tmp / "other.py").write_text((tmp / "user.py").read_text().replace("manual_seed(0)", "manual_seed(5)"))
    assert main(["analyze", "--resume", str(run), "--model", str(tmp / "other.py") + ":model"]) == 2
    assert "made with other model" in error_line(capsys)


def test_the_solve_guard_is_skipped_with_a_note_rather_than_running_the_runs_code(user_run, capsys):
    run, spec, tmp = user_run
    assert main(["solve", str(run), "--budget", "bytes=1200", "--out", str(tmp / "plan.json")]) == 0
    out = capsys.readouterr().out
    assert "guard skipped" in out and f"names --model {spec}, which is code" in out and not (tmp / "marker").exists()
    assert f"(in Python: Analysis.load(run, {{'model': {spec!r}}})" in out  # what a Python user does instead
    import json
    skipped = json.loads((tmp / "plan.json").read_text())["metadata"]["guard"]  # the plan says it was never guarded
    assert list(skipped) == ["skipped"] and skipped["skipped"].startswith("guard skipped")
    assert main(["solve", str(run), "--budget", "bytes=1200", "--model", spec, "--out", str(tmp / "plan.json")]) == 0
    assert "guard (" in capsys.readouterr().out and (tmp / "marker").exists()


def test_resume_refuses_options_it_would_ignore(user_run, capsys):
    run, spec, tmp = user_run
    before = snapshot(run)
    assert main(["analyze", "--resume", str(run), "--model", spec, "--candidates", "w4a8", "--metric", "kl"]) == 2
    line = error_line(capsys)
    assert "--candidates w4a8 (the run has w4a8,w8a8,w8a16)" in line and "--metric kl (the run has sqnr)" in line
    assert snapshot(run) == before


def test_progress_moves_inside_a_chunk(tmp_path, monkeypatch):
    import mixprec.sensitivity.analyze as measuring
    updates = []

    class Bar:
        def __init__(self, *args, **kwargs):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n):
            updates.append(n)
    monkeypatch.setattr(measuring, "tqdm", Bar)
    model, groups, cands, data = tiny()
    analyze(model, groups, cands, data, metric="sqnr", run_dir=tmp_path, chunk_size=len(groups), progress=True)
    entries = len(groups) * len(cands)
    # one chunk holds every entry: the bar moves in whole entries inside it, half of them after the first of the
    # 2 calibration batches
    from itertools import accumulate
    assert sum(updates) == entries and len(updates) > 1 and entries // 2 in list(accumulate(updates))


def test_thread_count_is_chosen_and_said(monkeypatch):
    from mixprec.threads import available_cpus, choose_threads
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("MIXPREC_THREADS", "1")
        assert choose_threads() == (1, "MIXPREC_THREADS=1") and torch.get_num_threads() == 1
        monkeypatch.delenv("MIXPREC_THREADS")
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        threads, why = choose_threads()
        assert threads == available_cpus()[0] == torch.get_num_threads() and "MIXPREC_THREADS" in why
        assert "ignored" not in why
        monkeypatch.setenv("MIXPREC_THREADS", "abc")  # a typo is said, and the default used
        threads, why = choose_threads()
        assert threads == available_cpus()[0] and "MIXPREC_THREADS='abc' ignored" in why
    finally:
        torch.set_num_threads(before)


def test_multipoint_points_are_not_measured_for_a_run_that_will_be_refused(tmp_path, monkeypatch):
    import mixprec
    import mixprec.multipoint as multipoint
    model, _, _, data = tiny()
    mixprec.analyze(model, data, "w4a8,w8a8", run_dir=tmp_path, progress=False)
    before = snapshot(tmp_path)
    other = copy.deepcopy(model)
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    monkeypatch.setattr(multipoint, "measure_points",
                        lambda *a, **k: pytest.fail("points measured before the run was checked"))
    with pytest.raises(RunError, match="made with other model"):
        mixprec.analyze(other, data, "w4x2a8,w8a8", run_dir=tmp_path, progress=False)
    assert snapshot(tmp_path) == before


def test_resume_refuses_an_option_typed_at_its_default_that_differs_from_the_run(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["analyze", "--model", "demo-cnn", "--candidates", "w4a8,w8a8", "--metric", "roundoff",
                 "--out", str(run)]) == 0
    capsys.readouterr()
    before = snapshot(run)
    assert main(["analyze", "--resume", str(run), "--metric", "sqnr"]) == 2  # sqnr is the default metric
    assert "--metric sqnr (the run has roundoff)" in error_line(capsys)
    assert snapshot(run) == before
    assert main(["analyze", "--resume", str(run), "--metric", "roundoff"]) == 0  # the run's own: fine


def test_a_run_measured_on_an_earlier_grid_is_refused(tmp_path):
    """Sensitivities measured with the former symmetric grid (no "grid" in the settings) are not reused."""
    import mixprec
    from mixprec.builtin import get_builtin
    from mixprec.errors import SpecError
    b = get_builtin("demo-cnn")
    run = tmp_path / "run"
    mixprec.analyze(b.model(), b.calibration(32), candidates="w4a8,w8a8", metric="roundoff", run_dir=run,
                    progress=False)
    mixprec.Analysis.load(run)  # this grid: fine
    saved = json.loads((run / "run.json").read_text())
    del saved["fingerprint"]["settings"]["grid"]
    (run / "run.json").write_text(json.dumps(saved))
    with pytest.raises(SpecError, match="earlier integer grid"):
        mixprec.Analysis.load(run)


def test_a_run_measured_before_a_simulated_setting_existed_says_what_it_lacks(tmp_path):
    run = RunDirectory(tmp_path)
    run.claim({"model": "m", "data": "d", "settings": {"metric": "sqnr", "joins": True}})
    run.append_entries({("fc", "w8a8"): 0.5})  # measured: a run to keep
    with pytest.raises(RunError, match="settings differ: integer_bias; it was measured before mixprec simulated "
                                       "the int8 kernels' int32 bias rounding"):
        run.claim({"model": "m", "data": "d", "settings": {"metric": "sqnr", "joins": True, "integer_bias": 1}})


def test_a_run_of_another_model_is_not_said_to_have_the_same_weights(tmp_path):
    run = RunDirectory(tmp_path)
    run.claim({"model": "m", "data": "d", "structure": "s", "settings": {"metric": "sqnr"}})
    run.append_entries({("fc", "w8a8"): 0.5})
    with pytest.raises(RunError) as other:
        run.claim({"model": "m2", "data": "d", "structure": "s2", "settings": {"metric": "sqnr"}})
    assert "'m' there, 'm2' now" in str(other.value) and "weights are the same" not in str(other.value)
    with pytest.raises(RunError, match="the weights are the same"):  # same weights, other code
        run.claim({"model": "m", "data": "d", "structure": "s2", "settings": {"metric": "sqnr"}})


def test_a_run_of_a_model_in_memory_reopens_with_it_and_guards_as_the_analysis_did(tmp_path):
    import mixprec
    from mixprec.errors import SpecError
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    data = [torch.randn(16, 12) for _ in range(4)]
    analysis = mixprec.analyze(model, data, "w2a8,w4a8,w8a8", metric="sqnr", run_dir=tmp_path / "run", progress=False)
    made = analysis.solve(budget="bytes=0.6x")
    reopened = mixprec.Analysis.load(tmp_path / "run")  # no model: the guard is skipped, and says so
    with pytest.warns(mixprec.errors.GuardSkipped, match="guard skipped"):
        assert list(reopened.solve(budget="bytes=0.6x").metadata["guard"]) == ["skipped"]  # recorded as not run
    again = mixprec.Analysis.load(tmp_path / "run", model=model, data=data)
    plan = again.solve(budget="bytes=0.6x")
    assert plan.assignments == made.assignments and plan.metadata["guard"] == made.metadata["guard"]
    other = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    with pytest.raises(RunError, match="model loaded now differs"):
        mixprec.Analysis.load(tmp_path / "run", model=other, data=data)
    with pytest.raises(RunError, match="calibration data"):
        mixprec.Analysis.load(tmp_path / "run", model=model, data=data[:2])
    with pytest.raises(SpecError, match="model= needs data="):
        mixprec.Analysis.load(tmp_path / "run", model=model)


def test_a_run_that_stopped_before_measuring_anything_is_started_anew_with_other_settings(tmp_path):
    """An analyze refused after it claimed the directory (a metric that does not fit the output) leaves only
    run.json: the corrected command takes the directory over, and a run with entries is still refused."""
    run = RunDirectory(tmp_path / "run")
    run.claim({"model": "m", "data": "d", "settings": {"metric": "kl"}})
    run.claim({"model": "m", "data": "d", "settings": {"metric": "sqnr"}})
    assert run.fingerprint()["settings"] == {"metric": "sqnr"}
    run.append_entries({("fc", "w8a8"): 0.5})
    with pytest.raises(RunError, match="settings differ: metric"):
        run.claim({"model": "m", "data": "d", "settings": {"metric": "kl"}})


@pytest.mark.parametrize("edit", [float("nan"), -1.0, -math.inf])
def test_a_table_edited_to_hold_what_no_analysis_writes_is_refused_with_the_way_back(tmp_path, edit):
    model, groups, cands, data = tiny()
    analyze(model, groups, cands, data, metric="sqnr", run_dir=tmp_path, progress=False)
    saved = json.loads((tmp_path / "sensitivity.json").read_text())
    saved["values"][0][0] = edit
    (tmp_path / "sensitivity.json").write_text(json.dumps(saved))
    with pytest.raises(RunError, match=r"cannot be measured values.*analyze --resume"):
        RunDirectory(tmp_path).read_table()
    analyze(model, groups, cands, data, metric="sqnr", run_dir=tmp_path, progress=False)  # the resume writes it again
    assert np.isfinite(RunDirectory(tmp_path).read_table().values).all()


def test_a_table_value_edited_to_another_valid_number_is_refused_against_its_entries_log(tmp_path):
    model, groups, cands, data = tiny()
    analyze(model, groups, cands, data, metric="sqnr", run_dir=tmp_path, progress=False)
    saved = json.loads((tmp_path / "sensitivity.json").read_text())
    measured = saved["values"][0][0]
    saved["values"][0][0] = 0.0  # a value a measurement could give: only the log tells it was not
    (tmp_path / "sensitivity.json").write_text(json.dumps(saved))
    with pytest.raises(RunError, match=r"holds 0.0 for .* logged as .*the table edited\?.*analyze --resume"):
        RunDirectory(tmp_path).read_table()
    analyze(model, groups, cands, data, metric="sqnr", run_dir=tmp_path, progress=False)  # the resume writes it again
    assert RunDirectory(tmp_path).read_table().values[0, 0] == measured


def test_a_metric_whose_entries_may_be_negative_keeps_them(tmp_path):
    from mixprec.sensitivity.table import SensitivityTable
    SensitivityTable(["a"], ["w4a8"], np.array([[-0.5]]), "task").save(tmp_path)
    assert RunDirectory(tmp_path).read_table().values[0, 0] == -0.5


@pytest.mark.parametrize("value", [-4.99e9, float("inf"), float("-inf")])
def test_a_cost_edited_to_be_negative_or_infinite_is_refused_with_the_resume_that_rebuilds_it(tmp_path, value):
    # solve would otherwise call any budget met (bytes -5e9 within a budget of 1000)
    import json
    from mixprec.analysis import Analysis
    from mixprec.errors import SpecError
    import mixprec
    model, _, _, data = tiny()
    mixprec.analyze(model, data, "w4a8,w8a8", run_dir=tmp_path, progress=False)
    saved = json.loads((tmp_path / "costs.json").read_text())
    saved["costs"]["tables"]["bytes"][0][0] = value
    with_checksum = dict(saved)
    del saved["checksum"]  # as a run written before costs.json had one: its values are still checked
    (tmp_path / "costs.json").write_text(json.dumps(saved))
    group, cand = saved["costs"]["groups"][0], saved["costs"]["candidates"][0]
    with pytest.raises(SpecError, match=rf"costs.json is damaged .*bytes of group '{group}' at {cand} is .*a cost is a "
                                        r"finite number >= 0.*analyze --resume"):
        Analysis.load(tmp_path)
    (tmp_path / "costs.json").write_text(json.dumps(with_checksum))
    with pytest.raises(SpecError, match=r"costs.json is not as the analysis wrote it .*analyze --resume"):
        Analysis.load(tmp_path)


def test_a_cost_edited_to_another_valid_number_is_refused_by_the_files_checksum(tmp_path):
    import json
    import mixprec
    from mixprec.analysis import Analysis
    model, _, _, data = tiny()
    mixprec.analyze(model, data, "w4a8,w8a8", run_dir=tmp_path, progress=False)
    written = (tmp_path / "costs.json").read_text()
    saved = json.loads(written)
    saved["costs"]["tables"]["bops"][0][1] = 1.0  # a cost a model could have: solve would take it
    (tmp_path / "costs.json").write_text(json.dumps(saved))
    with pytest.raises(RunError, match=r"costs.json is not as the analysis wrote it .*--cost KIND=FILE.csv"):
        Analysis.load(tmp_path)
    mixprec.analyze(model, data, "w4a8,w8a8", run_dir=tmp_path, progress=False)  # the resume writes it again
    assert json.loads((tmp_path / "costs.json").read_text()) == json.loads(written)
    assert "checksum" not in Analysis.load(tmp_path).saved()  # written again with its own, not a copy


def test_costs_of_a_torchscript_model_unknown_bops_and_all_read_back_as_written(tmp_path):
    """A TorchScript model's MACs are not traced: its BOPs are NaN, written "nan"; the checksum is of the file as
    written, so the run is read back (it was refused as edited, and its resume wrote the same file again)."""
    import json
    import math
    import mixprec
    from mixprec.analysis import Analysis
    model, _, _, data = tiny()
    scripted = torch.jit.trace(model, data[0])
    mixprec.analyze(scripted, data, "w4,w8", metric="roundoff", run_dir=tmp_path, progress=False)
    assert "nan" in json.dumps(json.loads((tmp_path / "costs.json").read_text())["costs"]["tables"]["bops"])
    loaded = Analysis.load(tmp_path)
    assert all(math.isnan(float(v)) for row in loaded.saved()["costs"]["tables"]["bops"] for v in row)
    plan = loaded.solve({"bits_per_weight": 7}, guard=False)
    assert set(plan.assignments.values()) <= {"w4", "w8"}
    with pytest.raises(SpecError, match="no bops costs .*TorchScript.*budget bytes or bits_per_weight"):
        loaded.solve("bops=0.5x", guard=False)  # it read "bops <= nan asked, the smallest achievable is nan"
    with pytest.raises(SpecError, match="no bops costs"):
        loaded.pareto("bops", 4)


def test_a_damaged_or_missing_costs_or_table_file_points_to_the_resume_that_rebuilds_it(tmp_path):
    from mixprec.errors import SpecError
    model, groups, cands, data = tiny()
    analyze(model, groups, cands, data, metric="sqnr", run_dir=tmp_path, progress=False)
    run = RunDirectory(tmp_path)
    (tmp_path / "costs.json").write_text('{"bytes": {"a')  # truncated
    with pytest.raises(RunError, match=r"costs.json is damaged.*analyze --resume .*measured entries are kept"):
        run.read_costs()
    (tmp_path / "costs.json").unlink()
    with pytest.raises(SpecError, match=r"costs.json is missing; `mixprec analyze --resume"):
        run.read_costs()
    (tmp_path / "sensitivity.json").unlink()
    with pytest.raises(SpecError, match=r"has no sensitivity.json .*analyze --resume .*\(4 entries logged are kept\)"):
        run.read_table()
    with pytest.raises(SpecError, match="is not an analysis run"):  # a folder that is no run at all
        RunDirectory(tmp_path / "elsewhere").read_table()


def test_data_in_another_order_is_refused_with_what_to_do_about_shuffling(tmp_path):
    import mixprec
    from torch import nn
    from mixprec.errors import RunError
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    data = [torch.randn(8, 4) for _ in range(3)]
    mixprec.analyze(model, data, candidates="w4a8,w8a8", run_dir=tmp_path / "run", progress=False)
    with pytest.raises(RunError, match="shuffle=True") as error:
        mixprec.Analysis.load(tmp_path / "run", model=model, data=data[::-1])
    assert "Analysis.load(run, model=..., data=...)" in str(error.value)
    with pytest.raises(RunError, match="fixed order"):
        mixprec.analyze(model, data[::-1], candidates="w4a8,w8a8", run_dir=tmp_path / "run", progress=False)


MODELS = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


class Fixed(Net):  # the same weights, another forward: a bug fixed
    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


def net():
    return Net()


def fixed():
    return Fixed()


def data():
    torch.manual_seed(1)
    return [torch.randn(8, 4) for _ in range(2)]
'''


def test_a_run_of_a_model_whose_forward_changed_is_refused_and_the_same_model_again_is_not(tmp_path, capsys):
    """The weights alone fingerprinted the model: a forward fixed after the analysis reused the old table."""
    from mixprec.cli import main
    (tmp_path / "models.py").write_text(MODELS)
    spec = str(tmp_path / "models.py")
    common = ["--data", f"{spec}:data", "--candidates", "w4a8,w8a8", "--out", str(tmp_path / "run")]
    assert main(["analyze", "--model", f"{spec}:net", *common]) == 0
    assert main(["analyze", "--model", f"{spec}:net", *common]) == 0  # the same code, imported anew: the same run
    capsys.readouterr()
    assert main(["analyze", "--model", f"{spec}:fixed", *common]) != 0
    assert "other model code" in capsys.readouterr().err


def test_a_run_analysed_on_a_device_this_machine_lacks_measures_plans_on_the_cpu_with_a_note():
    """A run made with --device cuda and solved on a machine without CUDA ended in an internal AssertionError."""
    import warnings

    from mixprec.analysis import _recorded_device
    from mixprec.errors import TargetNote
    assert _recorded_device(None) == "cpu" and _recorded_device("cpu") == "cpu"
    if not torch.cuda.is_available():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert _recorded_device("cuda") == "cpu"
        assert any(issubclass(w.category, TargetNote) and "analysed on cuda" in str(w.message) for w in caught)
