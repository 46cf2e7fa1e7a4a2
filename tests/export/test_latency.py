"""Latency measured on ONNX Runtime CPU: every layer at every candidate, the whole model, the cost table.
Both methods: each layer's kernel inside the whole graph (default, and around an operating point), and
each layer alone."""
import csv
import json
import math
from pathlib import Path
import statistics

import pytest

pytest.importorskip("onnxruntime")

import mixprec  # noqa: E402
from mixprec.builtin import get_builtin  # noqa: E402
from mixprec.cli import main  # noqa: E402
from mixprec.export import latency  # noqa: E402
from mixprec.export.latency import MOVE_SE, profile, save_profile, time_files, time_pair  # noqa: E402
from hostile import interrupted_at  # noqa: E402


@pytest.fixture(scope="module")
def demo():
    b = get_builtin("demo-cnn")
    return b.model(), b.calibration(32)


@pytest.fixture(scope="module")
def measured(demo):
    model, data = demo
    return profile(model, data, "w8a8,w4,fp8", threads=1, repeats=3, progress=False, method="layers")


@pytest.fixture(scope="module")
def in_graph(demo):
    model, data = demo
    return profile(model, data, "w8a8,w4,fp8", threads=1, repeats=5, progress=False, checks=1)


@pytest.fixture(scope="module")
def around(demo):
    model, data = demo
    return profile(model, data, "w8a8", threads=1, repeats=5, progress=False, around="w8a8", checks=0)


def test_every_layer_is_timed_at_every_runnable_candidate(measured):
    for layer, row in measured.layers.items():
        assert set(row) == {"fp32", "w8a8", "w4", "fp8"}
        for cand in ("fp32", "w8a8", "w4"):  # less the session's own cost: a tiny layer may come out at 0
            assert math.isfinite(row[cand]) and row[cand] >= 0, (layer, cand)
        assert measured.overhead_ms[layer] > 0
        assert math.isnan(row["fp8"])  # no fp8 kernel on ONNX Runtime CPU: left out, with the reason
        assert "no ONNX Runtime CPU kernel" in measured.skipped[f"{layer}/fp8"]
    assert measured.batch_size == 32 and measured.float_model_ms > 0 and measured.rest_ms >= 0


def test_int8_layers_are_timed_as_the_integer_kernels_a_whole_graph_runs(measured):
    """Alone, a QDQ conv whose output is not quantized runs as a float conv; the profile quantizes the
    output as the next layer's input quantizer does in a whole graph, so the integer kernel is timed."""
    assert measured.ops["conv1"]["w8a8"] == "QLinearConv"
    assert measured.ops["fc"]["w8a8"] == "QGemm"
    assert measured.ops["fc"]["w4"] == "MatMulNBits"


def test_whole_model_is_timed_against_the_per_layer_sum(measured):
    assert set(measured.whole) == {"fp32", "w8a8", "w4"}  # fp8 runs nowhere: no whole-model row
    for cand, row in measured.whole.items():
        assert row["measured_ms"] > 0 and row["predicted_ms"] > 0
    plan = {name: "w8a8" for name in measured.layers}
    assert measured.whole["w8a8"]["predicted_ms"] == pytest.approx(measured.predicted_ms(plan))


def test_cost_table_feeds_the_solver(demo, measured, tmp_path):
    model, data = demo
    csv_path, json_path = save_profile(measured, tmp_path / "latency.csv")
    rows = list(csv.reader(csv_path.open()))
    assert rows[0] == ["layer", "candidate", "latency_ms"]
    assert ["*", "", repr(measured.rest_ms)] in rows
    assert not any(r[1] in ("fp8", "fp32") for r in rows[1:])  # fp8 cannot run; fp32 was not asked for
    assert json_path.is_file()
    analysis = mixprec.analyze(model, data, candidates="w8a8,w4,fp8", progress=False)
    budget = measured.predicted_ms({name: "w8a8" for name in measured.layers})
    plan = analysis.solve(budget=f"latency_ms={budget}", cost_files=[f"latency_ms={csv_path}"], guard=False)
    assert "fp8" not in plan.assignments.values()
    assert plan.metadata["predicted_costs"]["latency_ms"] <= budget * (1 + 1e-9)


def test_cli_profile(tmp_path, capsys):
    out = tmp_path / "lat.csv"
    assert main(["profile", "--model", "demo-cnn", "--candidates", "w8a8,w4a8", "--calibration-samples", "16",
                 "--repeats", "3", "--threads", "1", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "float model" in text and "QLinearConv" in text
    assert out.is_file() and out.with_suffix(".json").is_file()
    assert main(["profile", "--model", "demo-cnn", "--out", str(tmp_path / "lat.txt")]) == 2
    assert ".csv" in capsys.readouterr().err


def test_in_graph_every_layer_is_timed_at_every_runnable_candidate(in_graph):
    assert in_graph.method == "graph"
    for layer, row in in_graph.layers.items():
        assert set(row) == {"fp32", "w8a8", "w4", "fp8"}
        for cand in ("fp32", "w8a8"):
            assert math.isfinite(row[cand]) and row[cand] >= 0, (layer, cand)
        assert math.isnan(row["fp8"]) and "no ONNX Runtime CPU kernel" in in_graph.skipped[f"{layer}/fp8"]
    assert in_graph.ops["conv1"]["w8a8"] == "QLinearConv" and in_graph.ops["conv1"]["fp32"] in ("Conv", "FusedConv")
    assert in_graph.ops["fc"]["w4"] == "MatMulNBits"
    assert in_graph.ops["conv1"]["w4"] in ("Conv", "FusedConv")  # weight-only conv: dequantized to a float conv
    assert in_graph.rest_ms >= 0


def test_in_graph_table_predicts_every_uniform_plan_it_timed_and_checks_a_mixed_one(in_graph):
    assert {"fp32", "w8a8"} <= set(in_graph.whole)
    for cand, row in in_graph.whole.items():
        if any(cand in pooled for sets in in_graph.same_kernel.values() for pooled in sets):
            continue  # entered at the mean of the candidates its kernel runs (tested below)
        assert row["predicted_ms"] == pytest.approx(row["measured_ms"], rel=1e-9)
        assert in_graph.predicted_ms({n: cand for n in in_graph.layers}) == pytest.approx(row["measured_ms"])
    assert in_graph.whole["fp32"]["measured_ms"] == in_graph.float_model_ms
    (check,) = in_graph.checks
    assert check["measured_ms"] > 0 and check["predicted_ms"] == pytest.approx(
        in_graph.predicted_ms(check["assignments"]))


def test_around_an_operating_point_the_base_plan_is_predicted_and_every_move_is_timed(around):
    assert around.method == "graph around w8a8"
    base = {n: "w8a8" for n in around.layers}
    assert around.predicted_ms(base) == pytest.approx(around.whole["w8a8"]["measured_ms"], rel=1e-9)
    for layer, row in around.layers.items():
        assert math.isfinite(row["fp32"]) and row["fp32"] >= 0  # the move to float, measured in the whole graph


def test_around_every_move_is_recorded_and_entered_at_the_upper_end_of_its_timing_interval(demo, around):
    model, data = demo
    groups = mixprec.discover_groups(model, data[0])
    assert len(around.moves) == len(groups.groups)  # one move per group: w8a8 -> fp32
    for move in around.moves:
        assert move["candidate"] == "fp32" and move["se_ms"] >= 0
        assert move["entered_ms"] == pytest.approx(move["change_ms"] + MOVE_SE * move["se_ms"], rel=1e-12)
        layers = next(g.layer_names for g in groups.groups if g.name == move["group"])
        base = sum(around.layers[layer]["w8a8"] for layer in layers)
        moved = sum(around.layers[layer]["fp32"] for layer in layers)
        if all(around.layers[layer]["fp32"] > 0 for layer in layers):  # no entry clamped at 0 ms
            assert moved == pytest.approx(base + move["entered_ms"], rel=1e-9, abs=1e-12)
        # the tightest budget leaves a group at the base unless its move surely saves time
        assert (moved < base) == (move["entered_ms"] < 0) or moved == base == 0
    assert around.to_dict()["moves"] == around.moves


class _Clock:
    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now


class _Session:
    """Advances the clock by duration(run index) on each run."""

    def __init__(self, clock, duration):
        self.clock, self.duration, self.runs = clock, duration, 0

    def run(self, outputs, feed):
        self.clock.now += self.duration(self.runs)
        self.runs += 1


def test_time_pair_gives_both_medians_and_the_standard_error_of_the_paired_differences(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(latency, "time", clock)
    base = _Session(clock, lambda i: 0.010)
    # 2 runs a round (repeats 20, rounds 5) after 3 warm-up runs; the second session is 2 ms slower, and
    # 1 ms faster than that in even rounds, 1 ms slower in odd ones
    moved = _Session(clock, lambda i: 0.012 + (0.001 if ((i - 3) // 2) % 2 else -0.001))
    first, second, se = time_pair(base, moved, {}, repeats=20, rounds=5)
    rounds = (moved.runs - 3) // 2
    assert base.runs == moved.runs and rounds >= 5
    differences = [2.0 + (1.0 if k % 2 else -1.0) for k in range(rounds)]
    assert first == pytest.approx(10.0)
    assert second == pytest.approx(statistics.median([12.0 + d - 2.0 for d in differences]))
    assert se == pytest.approx(statistics.stdev(differences) / math.sqrt(rounds))


def test_time_pair_of_two_identical_sessions_has_no_error(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(latency, "time", clock)
    a, b = _Session(clock, lambda i: 0.005), _Session(clock, lambda i: 0.005)
    assert time_pair(a, b, {}, repeats=10, rounds=4) == pytest.approx((5.0, 5.0, 0.0))


def test_time_pair_takes_turns_at_going_first_in_an_even_number_of_rounds(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(latency, "time", clock)
    order = []

    class Logged(_Session):
        def run(self, outputs, feed):
            order.append(self.name)
            super().run(outputs, feed)
    a, b = Logged(clock, lambda i: 0.004), Logged(clock, lambda i: 0.006)
    a.name, b.name = "a", "b"
    time_pair(a, b, {}, repeats=20, rounds=5)
    rounds = [order[6:][i:i + 4] for i in range(0, len(order) - 6, 4)]  # after 3 warm-up runs each
    assert len(rounds) % 2 == 0 and len(rounds) >= 5
    assert [r[0] for r in rounds] == ["a", "b"] * (len(rounds) // 2)


def test_time_files_cancels_what_the_order_of_making_the_sessions_costs(monkeypatch):
    """The session made first of a pair runs 1 ms slower (what a 2-core Xeon measured, in kind): one pair
    alone would call a file 1 ms faster than itself; time_files makes the pair in both orders."""
    clock = _Clock()
    monkeypatch.setattr(latency, "time", clock)
    made = []

    def make_session(path, threads=None):
        made.append(str(path))
        first_of_pair = len(made) % 2 == 1
        own = {"a.onnx": 0.010, "b.onnx": 0.012}[Path(path).name]
        return _Session(clock, lambda i: own + (0.001 if first_of_pair else 0.0))
    import importlib
    monkeypatch.setattr(importlib.import_module("mixprec.export.ort"), "make_session", make_session)
    assert time_files("a.onnx", "a.onnx", 2, {}, repeats=8) == pytest.approx((10.5, 10.5, 0.0))
    first, second, se = time_files("a.onnx", "b.onnx", 2, {}, repeats=8)
    assert second - first == pytest.approx(2.0) and se == pytest.approx(0.0)
    assert made[-4:] == ["a.onnx", "b.onnx", "b.onnx", "a.onnx"]


def test_around_needs_a_candidate_of_the_profile(demo):
    model, data = demo
    with pytest.raises(mixprec.errors.MixprecError, match="not among the candidates"):
        profile(model, data, "w8a8", around="w4a8", progress=False)
    with pytest.raises(mixprec.errors.MixprecError, match=r"method='graph' \(--method graph\)"):
        profile(model, data, "w8a8", around="w8a8", method="layers", progress=False)


@pytest.mark.parametrize("options, said", [(["--method", "layers", "--checks", "5"], "--checks is an option of --method graph"),
                                           (["--no-whole"], "--no-whole is an option of --method layers")])
def test_profile_refuses_an_option_its_method_would_ignore(tmp_path, capsys, options, said):
    assert main(["profile", "--model", "demo-cnn", "--candidates", "w8a8", "--target", "ort-cpu", *options,
                 "--out", str(tmp_path / "lat.csv")]) == 2
    assert said in capsys.readouterr().err and not (tmp_path / "lat.csv").exists()


def tiny_lm():
    """(a one-block Llama as hf: loads it, one batch of token ids), for the language-model profiles."""
    pytest.importorskip("transformers")
    from transformers import LlamaConfig, LlamaForCausalLM
    import torch
    from mixprec.hf import CausalLM
    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=2))
    return CausalLM(lm.eval()).eval(), [torch.randint(0, 64, (2, 12))]


@pytest.mark.parametrize("method", ["graph", "layers"])
def test_a_language_model_with_its_kv_cache_and_embedding_is_profiled(method):
    model, data = tiny_lm()
    result = profile(model, data, "w8,w4g32", threads=1, repeats=3, progress=False, method=method, checks=0)
    # token ids reach the embedding alone and the whole graph (fed as a prompt on an empty cache)
    assert all(math.isfinite(result.layers["lm.model.embed_tokens"][c]) for c in ("fp32", "w8", "w4g32"))
    assert not result.skipped and math.isfinite(result.whole["w8"]["measured_ms"])


def test_a_language_model_is_timed_at_one_decoding_step_on_a_cache_of_the_length_asked(monkeypatch):
    import torch
    model, data = tiny_lm()
    feeds = []
    timed = latency.time_session
    monkeypatch.setattr(latency, "time_session", lambda session, feed, *a: feeds.append(feed) or timed(session, feed, *a))
    result = profile(model, data, "w8", threads=1, repeats=3, progress=False, checks=1, decode=20, batch_size=1)
    assert result.decode == 20 and result.to_dict()["decode"] == 20 and math.isfinite(result.whole["w8"]["measured_ms"])
    for feed in feeds:  # one token per row, at position 20, on a cache of 20 tokens per layer
        assert feed["input_ids"].shape == (1, 1) and feed["position_ids"].tolist() == [[20]]
        assert feed["attention_mask"].shape == (1, 21)
        past = [v for k, v in feed.items() if k not in ("input_ids", "position_ids", "attention_mask")]
        assert past and all(v.shape[0] == 1 and v.shape[2] == 20 for v in past)
    with pytest.raises(mixprec.errors.MixprecError, match="method='graph'"):
        profile(model, data, "w8", decode=20, method="layers", progress=False)
    cnn = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(64, 2)).eval()
    with pytest.raises(mixprec.errors.MixprecError, match="KV cache"):
        profile(cnn, [torch.randn(2, 3, 6, 6)], "w8a8", decode=20, progress=False, checks=0)


def test_a_table_whose_move_margins_add_up_far_above_a_measured_uniform_plan_says_so():
    from mixprec.export.latency import LatencyProfile
    profile = LatencyProfile("ort-cpu", 1, 2, ["w4g64", "w8"], {"a": {"w4g64": 1.0, "w8": 2.5}}, {}, 1.0, 0.0,
                             whole={"w4g64": {"predicted_ms": 1.0, "measured_ms": 1.0},
                                    "w8": {"predicted_ms": 2.5, "measured_ms": 1.2}},
                             moves=[{"group": "a", "candidate": "w8", "change_ms": 0.2, "se_ms": 0.6,
                                     "entered_ms": 1.4}])
    notes = profile.notes()
    assert len(notes) == 1 and "the table predicts uniform w8 at 2.5 ms, measured whole 1.2 ms" in notes[0]
    assert "uniform w4g64" not in notes[0] and "more --repeats" in notes[0]
    profile.whole["w8"]["measured_ms"] = 2.4  # within 25 %: nothing to say
    assert profile.notes() == []
    profile.whole["w8"]["measured_ms"] = 3.5  # far below what it measures: far from the base, moves do not add up
    assert len(profile.notes()) == 1 and "measure slower than the table says" in profile.notes()[0]
    profile.whole["w8"]["measured_ms"], profile.moves = 1.2, []  # not around a base: the sum is an estimate anyway
    assert profile.notes() == []


def test_candidates_that_run_as_one_kernel_are_entered_at_the_mean_of_their_timings():
    layers = {"a": {"fp32": 3.0, "w4a8": 1.0, "w6a8": 1.3, "w8a8": 1.6}, "b": {"fp32": 2.0, "w4a8": 0.5, "w8a8": math.nan}}
    int8 = ("QLinearConv", "int8 QDQ: u8 input (per tensor), s8 weights (per channel)")
    kernels = {"a": {"fp32": ("Conv", "float32"), "w4a8": int8, "w6a8": int8, "w8a8": int8},
               "b": {"fp32": ("Conv", "float32"), "w4a8": int8, "w8a8": int8}}
    pooled = latency.pool_same_kernels(layers, kernels)
    assert pooled == {"a": [["w4a8", "w6a8", "w8a8"]]}  # b's w8a8 was not timed: nothing to pool with
    assert layers["a"]["w4a8"] == layers["a"]["w6a8"] == layers["a"]["w8a8"] == pytest.approx(1.3)
    assert layers["a"]["fp32"] == 3.0 and layers["b"] == {"fp32": 2.0, "w4a8": 0.5, "w8a8": layers["b"]["w8a8"]}
    row = {"runtime_op": "QLinearConv", "format": "int8 QDQ: u8 input (per tensor), s8 weights (per channel, 4-bit codes)"}
    assert latency.kernel_of(row) == int8


def test_a_graph_profile_gives_codes_of_fewer_bits_in_the_same_kernel_one_latency(demo):
    model, data = demo
    result = profile(model, data, "w4a8,w8a8", threads=1, repeats=3, progress=False, checks=0)
    for layer, row in result.layers.items():
        assert row["w4a8"] == row["w8a8"], layer
        assert ["w4a8", "w8a8"] in result.same_kernel[layer]
    assert any("run as one kernel" in note for note in result.notes())


def test_random_plans_far_off_the_table_are_said_to_be_so():
    table = latency.LatencyProfile("ort-cpu", 1, 1, ["w8a8"], {"a": {"fp32": 1.0, "w8a8": 0.5}}, {"a": {}}, 1.2, 0.2,
                                   method="graph")
    table.checks = [{"assignments": {"a": "w8a8"}, "predicted_ms": 0.7, "measured_ms": 0.72}]
    assert not table.notes()
    table.checks.append({"assignments": {"a": "fp32"}, "predicted_ms": 1.2, "measured_ms": 2.3})
    (note,) = table.notes()
    assert "1 of 2 random plan(s)" in note and "more --repeats" in note


def test_uniform_graphs_are_timed_whole_in_rotated_rounds_with_sessions_made_anew(monkeypatch):
    """Each uniform graph was timed once, just after its export: the float SmolLM2 step measured 30.5 ms so, 22.6 ms
    in the benchmark's rotated rounds. Each round makes every session anew, in an order rotated by one file."""
    from mixprec.export import latency, ort
    made, timed = [], iter([3.0, 1.0, 2.0, 9.0, 1.0, 2.0, 3.0, 1.0, 2.0])
    monkeypatch.setattr(ort, "make_session", lambda path, threads: made.append(path) or path)
    monkeypatch.setattr(latency, "time_session", lambda session, feed, repeats: next(timed))
    result = latency.time_rotated(["a", "b", "c"], 1, [{}, {}, {}], rounds=3)
    assert made == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    # timed in that order: a 3, 2, 1; b 1, 9, 2 (one slow round); c 2, 1, 3: each file's median over its rounds
    assert result == [2.0, 2.0, 2.0]


def test_candidates_the_target_runs_on_no_layer_are_refused_before_any_timing(demo):
    """fp8 and bf16 have no ONNX Runtime CPU kernel: the table would hold only the float row it adds, and the
    failure would show only when solve found no entry."""
    model, data = demo
    with pytest.raises(mixprec.errors.MixprecError, match="runs none of the candidates fp8, bf16 on any layer"):
        profile(model, data, "fp8,bf16", progress=False)


def test_an_interrupted_profile_around_a_base_resumes_from_the_moves_it_timed(demo, tmp_path, monkeypatch):
    """Timing every move around a base takes hours on a real model: each is logged as it is measured, and a run
    again (after a Ctrl-C) times only the moves not logged."""
    monkeypatch.setenv("MIXPREC_CACHE", str(tmp_path))
    model, data = demo
    timed = []
    real = latency.time_files
    monkeypatch.setattr(latency, "time_files", interrupted_at(real, 2, timed))  # the second move: a Ctrl-C
    with pytest.raises(KeyboardInterrupt):
        profile(model, data, "w8a8", threads=1, repeats=3, progress=False, around="w8a8", checks=0)
    (log,) = (tmp_path / "profile").glob("around-*.jsonl")
    assert len(log.read_text().splitlines()) == 1
    first = json.loads(log.read_text().splitlines()[0])
    timed.clear()
    monkeypatch.setattr(latency, "time_files", lambda *a, **k: (timed.append(1), real(*a, **k))[1])
    resumed = profile(model, data, "w8a8", threads=1, repeats=3, progress=False, around="w8a8", checks=0)
    assert len(timed) == len(resumed.moves) - 1  # the logged move is not timed again
    assert resumed.moves[0]["change_ms"] == first["change_ms"]
    assert not list((tmp_path / "profile").iterdir())  # finished: its logs are removed


def test_an_interrupted_profile_resumes_from_the_uniform_graphs_it_timed(demo, tmp_path, monkeypatch):
    """Without --around, each uniform graph is kept with its kernel times as it is timed, and so is each mixed plan
    timed as a check: a Ctrl-C loses only the one in flight."""
    monkeypatch.setenv("MIXPREC_CACHE", str(tmp_path))
    model, data = demo
    profiled, checked = [], []
    real_nodes, real_timed = latency.node_times, latency._timed_export
    monkeypatch.setattr(latency, "node_times", interrupted_at(real_nodes, 3, profiled))  # the third uniform graph
    with pytest.raises(KeyboardInterrupt):
        profile(model, data, "w8a8,w4", threads=1, repeats=3, progress=False, checks=2)
    (folder,) = (tmp_path / "profile").glob("graph-*")
    assert len((folder / "graphs.jsonl").read_text().splitlines()) == 2 and len(list(folder.glob("*.onnx"))) == 3
    kept = {r["candidate"]: r for r in map(json.loads, (folder / "graphs.jsonl").read_text().splitlines())}
    profiled.clear()
    monkeypatch.setattr(latency, "node_times", lambda *a, **k: (profiled.append(1), real_nodes(*a, **k))[1])
    monkeypatch.setattr(latency, "_timed_export", interrupted_at(real_timed, 2, checked))  # the second check
    with pytest.raises(KeyboardInterrupt):
        profile(model, data, "w8a8,w4", threads=1, repeats=3, progress=False, checks=2)
    assert len(profiled) == 1  # the two graphs logged are not profiled again
    checked.clear()
    monkeypatch.setattr(latency, "_timed_export", lambda *a, **k: (checked.append(1), real_timed(*a, **k))[1])
    result = profile(model, data, "w8a8,w4", threads=1, repeats=3, progress=False, checks=2)
    assert len(profiled) == 1 and len(checked) == 1  # only the check not logged is timed
    assert len(result.checks) == 2 and set(result.whole) == {"fp32", "w8a8", "w4"}
    for cand, record in kept.items():  # the logged graphs' ops and kernels are the table's
        for layer, op in record["ops"].items():
            assert result.ops[layer][cand] == op and math.isfinite(result.layers[layer][cand])
    assert not list((tmp_path / "profile").iterdir())  # finished: the graphs and the log are removed


def test_an_interrupted_layers_profile_resumes_from_the_entries_it_timed(demo, tmp_path, monkeypatch):
    """--method layers times each layer at each candidate alone: each entry is logged as it is timed."""
    monkeypatch.setenv("MIXPREC_CACHE", str(tmp_path))
    model, data = demo
    calls = []
    real = latency._timed_export
    monkeypatch.setattr(latency, "_timed_export", interrupted_at(real, 4, calls))
    with pytest.raises(KeyboardInterrupt):
        profile(model, data, "w8a8,fp8", threads=1, repeats=3, progress=False, method="layers")
    (log,) = (tmp_path / "profile").glob("layers-*.jsonl")
    kept = [json.loads(line) for line in log.read_text().splitlines()]
    assert len([r for r in kept if r["skipped"] is None]) == 3
    calls.clear()
    monkeypatch.setattr(latency, "_timed_export", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    result = profile(model, data, "w8a8,fp8", threads=1, repeats=3, progress=False, method="layers")
    first = kept[0]
    assert result.layers[first["layer"]][first["candidate"]] == pytest.approx(first["ms"]) or \
        result.same_kernel.get(first["layer"])
    timed_again = sum(1 for layer in result.layers for c in ("fp32", "w8a8")) - 3
    assert len(calls) == timed_again + 2  # the rest of the entries, the float model and uniform w8a8 whole
    assert "fp8" in " ".join(result.skipped)
    assert not log.exists()
