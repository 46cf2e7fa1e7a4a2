"""The Python API on what users hand it: numpy calibration data, groups given together with tie/pin options,
a one-point front, pins and hand-edited plans in quantize_plan (as the command line treats them)."""
import json
import math
import os
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import mixprec
from mixprec.builtin import get_builtin
from mixprec.apply import apply
from mixprec.cli import main
from mixprec.errors import MixprecError, PlanError, PlanNote, SpecError
from mixprec.groups import discover_groups
from mixprec.plan import Plan


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.up = nn.Linear(8, 32)
        self.down = nn.Linear(32, 4)

    def forward(self, x):
        return self.down(torch.relu(self.up(x)))


def numpy_batches(n=3):
    rng = np.random.default_rng(0)
    return [rng.standard_normal((16, 8)).astype(np.float32) for _ in range(n)]


def test_numpy_calibration_batches_are_taken_as_tensors_everywhere():
    model, data = Mlp().eval(), numpy_batches()
    as_tensors = [torch.from_numpy(x) for x in data]
    analysis = mixprec.analyze(model, data, "w4a8,w8a8", progress=False)
    reference = mixprec.analyze(model, as_tensors, "w4a8,w8a8", progress=False)
    np.testing.assert_allclose(analysis.table.values, reference.table.values)
    plan = analysis.solve("bits=6")
    from_numpy = mixprec.quantize_plan(model, plan, data, analysis.model_groups, progress=False).model
    from_tensors = apply(model, plan, as_tensors, progress=False)
    x = as_tensors[0]
    assert torch.equal(from_numpy(x), from_tensors(x))
    # (inputs, labels) pairs of arrays, and an example input as an array
    pairs = [(x, np.zeros(16, dtype=np.int64)) for x in data]
    assert torch.equal(apply(model, plan, pairs, progress=False)(x), from_tensors(x))
    assert [g.name for g in discover_groups(model, data[0])] == [g.name for g in discover_groups(model, x)]


@pytest.mark.parametrize("kind", ["tensor", "ndarray"])
def test_one_array_as_the_data_is_refused_with_how_to_batch_it(kind):
    x = np.zeros((64, 8), dtype=np.float32)
    data = torch.from_numpy(x) if kind == "tensor" else x
    with pytest.raises(SpecError, match=r"data is one \w+ of shape \(64, 8\): give an iterable of batches"):
        mixprec.analyze(Mlp().eval(), data, "w4a8,w8a8", progress=False)


def test_groups_together_with_tie_or_pins_is_refused_not_half_used():
    model, data = Mlp().eval(), numpy_batches()
    groups = discover_groups(model, data[0])
    with pytest.raises(SpecError, match="give groups= or tie=, pins=, not both"):
        mixprec.analyze(model, data, "w4a8,w8a8", groups=groups, tie=["*"], pins={"up": "w8a8"}, progress=False)
    pinned = discover_groups(model, data[0], pins={"up": "w8a8"})  # the way: pins on the groups
    analysis = mixprec.analyze(model, data, "w4a8,w8a8", groups=pinned, progress=False)
    assert analysis.solve("bits=8.2").assignments == {"up": "w8a8", "down": "w4a8"}


def test_a_front_has_at_least_two_points(tmp_path, capsys):
    model, data = Mlp().eval(), numpy_batches()
    analysis = mixprec.analyze(model, data, "w4a8,w8a8", progress=False)
    with pytest.raises(SpecError, match="must be at least 2"):
        analysis.pareto("bops", 1, guard=False)
    assert len(analysis.pareto("bops", 2, guard=False).plans) >= 1
    with pytest.raises(SystemExit):
        main(["pareto", str(tmp_path), "--points", "1"])
    assert "a front has at least 2 points" in capsys.readouterr().err


def test_quantize_plan_applies_the_groups_pins_and_records_edited_costs():
    model, data = Mlp().eval(), numpy_batches()
    analysis = mixprec.analyze(model, data, "w4a8,w8a8", progress=False)
    plan = analysis.solve("bits=6")
    plan.assignments = {g: "w8a8" for g in plan.assignments}  # edited after solve: over its bits budget
    pinned = discover_groups(model, data[0], pins={"down": "w4a8"})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = mixprec.quantize_plan(model, plan, data, pinned, progress=False)
    notes = [str(w.message) for w in caught]
    assert any("pin applied: group down: w8a8 in the plan, w4a8 by its pin" in n for n in notes)
    assert result.plan.assignments == {"up": "w8a8", "down": "w4a8"}
    assert any("not those it records" in n and "exceeds the budget it records: bits_per_weight" in n for n in notes)
    assert result.plan.metadata["edited_after_solve"]
    assert result.plan.metadata["predicted_costs"]["bits_per_weight"] == pytest.approx(result.costs["bits_per_weight"])
    plain = Plan.uniform(pinned, "w8a8")  # no recorded costs: nothing to say about them
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mixprec.quantize_plan(model, plain, data, pinned, progress=False)
    assert not any("not those it records" in str(w.message) for w in caught)


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.mha = nn.MultiheadAttention(16, 2, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.mha(x, x, x)[0].mean(1))


@pytest.mark.parametrize("wrap", [False, True], ids=["attention", "DataParallel"])
def test_quantize_plan_takes_models_whose_groups_name_converted_layers(wrap):
    # nn.MultiheadAttention's projections and a DataParallel's inner model are the layers the groups name
    model = Attention().eval()
    model = nn.DataParallel(model) if wrap else model
    data = [torch.randn(8, 5, 16) for _ in range(3)]
    analysis = mixprec.analyze(model, data, "w4a8,w8a8", progress=False)
    plan = analysis.solve("bytes=w4a8", guard=False)
    for groups in (analysis.model_groups, discover_groups(model, data[0])):
        result = mixprec.quantize_plan(model, plan, data, groups, progress=False)
        assert result.costs["bytes"] == pytest.approx(plan.metadata["predicted_costs"]["bytes"])
        assert "mha.q_proj" in dict(result.model.named_modules()) or "module.mha.q_proj" in dict(
            result.model.named_modules())


def test_a_pins_own_candidate_is_for_the_pinned_groups_only(tmp_path):
    # --candidates w4a8,w8a8 --pin down=w6a8: w6a8 is measured for the pin, not offered to the other groups
    model, data = Mlp().eval(), numpy_batches()
    analysis = mixprec.analyze(model, data, "w4a8,w8a8", pins={"down": "w6a8"}, run_dir=tmp_path / "run",
                               progress=False)
    assert "w6a8" in analysis.table.candidates and analysis.pin_only == ["w6a8"]
    for loaded in (analysis, mixprec.Analysis.load(tmp_path / "run")):
        plan = loaded.solve("bits=8", guard=False)  # up at w6a8 would fit, w8a8 not; only w4a8 and w8a8 are up's
        assert plan.assignments == {"up": "w4a8", "down": "w6a8"}
        problem = loaded.problem()
        assert problem.allowed[problem.groups.index("up")].tolist() == [c != "w6a8" for c in problem.candidates]


def test_quantize_plan_names_what_groups_is_when_given_the_analysis_dict():
    model, data = Mlp().eval(), numpy_batches()
    analysis = mixprec.analyze(model, data, "w4a8,w8a8", progress=False)
    with pytest.raises(SpecError, match=r"analysis.model_groups.*got dict \(analysis.groups maps group names"):
        mixprec.quantize_plan(model, analysis.solve("bits=6"), data, analysis.groups, progress=False)


def tiny_gpt2():
    transformers = pytest.importorskip("transformers")
    from mixprec.hf import CausalLM
    config = transformers.GPT2Config(vocab_size=100, n_embd=32, n_layer=1, n_head=2, n_positions=16)
    torch.manual_seed(0)
    return CausalLM(transformers.GPT2LMHeadModel(config)).eval()


@pytest.mark.parametrize("ids, said", [
    (torch.randint(0, 100, (2, 20)), "Its sequences are 20 tokens long, and the model (GPT2Config) has 16 positions"),
    (torch.full((2, 8), 250), "Its token ids reach 250, and the model's vocabulary (GPT2Config) has 100 entries: "
                              "was the data tokenized with another model's tokenizer?")])
def test_a_language_model_failing_on_its_inputs_says_why(ids, said):
    model = tiny_gpt2()
    with pytest.raises(mixprec.errors.ModelError, match="index out of range") as caught:
        mixprec.analyze(model, [ids], "w8", progress=False)
    assert said in str(caught.value)


def test_a_perplexity_evaluation_on_windows_the_model_cannot_take_is_an_evaluation_error(tmp_path):
    from mixprec.errors import EvaluationError
    from mixprec.text_data import perplexity_evaluation

    class Bytes:  # a tokenizer of byte values: ids up to 255 for a model of 100
        def __call__(self, text, **_):
            return {"input_ids": list(text.encode()[:4000])}
    text = tmp_path / "t.txt"
    text.write_text("mixprec measures what it plans. " * 200)
    evaluate = perplexity_evaluation(f"ppl:{text}?windows=2&length=8", Bytes(), "bytes")
    with pytest.raises(EvaluationError, match="Its token ids reach .*vocabulary .* has 100 entries"):
        evaluate(tiny_gpt2())


def test_an_onnx_file_fed_ids_outside_its_table_is_a_model_error_with_a_hint(tmp_path):
    pytest.importorskip("onnxruntime")
    from mixprec.errors import ModelError
    from mixprec.export import OrtModule, export

    class Embedder(nn.Module):
        def __init__(self):
            super().__init__()
            self.table = nn.Embedding(50, 8)
            self.head = nn.Linear(8, 3)

        def forward(self, ids):
            return self.head(self.table(ids))
    model, data = Embedder().eval(), [torch.randint(0, 50, (4, 6)) for _ in range(2)]
    plan = Plan.uniform(discover_groups(model, data[0]), "w8")
    result = export(model, plan, data, out=tmp_path / "e.onnx", progress=False)
    session = OrtModule(result.path)
    session(data[0])  # in range: runs
    with pytest.raises(ModelError, match=r"ONNX Runtime could not run e.onnx on inputs \{'\w+': \(4, 6\)\}") as caught:
        session(torch.full((4, 6), 70))
    assert "tokenizer" in str(caught.value)
    with pytest.raises(ModelError, match=r"Got: 3 Expected: 2 Please fix.*\(the file takes \w+ \(\w+, \w+\)\)"):
        session(torch.randint(0, 50, (4, 6, 2)))  # every line of ONNX Runtime's message, and what the file takes


def test_a_layer_the_data_never_calls_is_a_clear_error_with_the_way_out():
    class Head(Mlp):
        def __init__(self):
            super().__init__()
            self.aux = nn.Linear(32, 4)  # a training-only head: forward never calls it

    data = numpy_batches()
    for prefix in ("auto", "none"):  # traced by torch.fx, and by full forwards (a quantizer that saw nothing)
        with pytest.raises(mixprec.errors.ModelError, match=r"aux.*never called.*--exclude NAME"):
            mixprec.analyze(Head().eval(), data, "w4a8,w8a8", prefix=prefix, progress=False)
    analysis = mixprec.analyze(Head().eval(), data, "w4a8,w8a8", exclude=["aux"], progress=False)
    assert "aux" not in analysis.groups


def test_several_outputs_are_noted_as_measured_through_one():
    class TwoHeads(Mlp):
        def __init__(self):
            super().__init__()
            self.extra = nn.Linear(32, 2)

        def forward(self, x):
            h = torch.relu(self.up(x))
            return self.down(h), self.extra(h)

    class WithLoss(Mlp):
        def forward(self, x):
            y = super().forward(x)
            return {"loss": y.pow(2).mean(), "logits": y}
    x = torch.randn(4, 8)
    notes = discover_groups(TwoHeads().eval(), x).notes
    assert any("returns 2 output tensors" in n and "only output[0] of shape (4, 4)" in n for n in notes)
    assert not any("output tensors" in n for n in discover_groups(WithLoss().eval(), x).notes)
    assert not any("output tensors" in n for n in discover_groups(Mlp().eval(), x).notes)

    class DictOfTwo(TwoHeads):
        def forward(self, x):
            logits, ink = super().forward(x)
            return {"logits": logits, "ink": ink}
    notes = discover_groups(DictOfTwo().eval(), x).notes  # a plain dict with 'logits': the others named too
    assert any("returns 2 output tensors" in n and "only output['logits'] of shape (4, 4)" in n for n in notes)


def test_kl_or_agreement_on_a_regression_output_is_refused_not_measured_as_zero():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1)).eval()
    data = [(torch.randn(16, 8), torch.randn(16, 1)) for _ in range(3)]
    with pytest.raises(SpecError, match=r"kl metric reads the output \(16, 1\) .*: a regression.*use sqnr"):
        mixprec.analyze(model, data, "w2a8,w8a8", metric="kl", progress=False)
    with pytest.raises(SpecError, match=r"kl compares class scores .* shape \(16, 1\) \(a regression\?\)"):
        mixprec.analyze(model, [x for x, _ in data], "w2a8,w8a8", metric="kl", progress=False)  # no targets
    analysis = mixprec.analyze(model, data, "w2a8,w4a8,w8a8", progress=False)
    for divergence in ("kl", "agreement"):
        with pytest.raises(SpecError, match="use sqnr"):
            analysis.solve("bits=5.5", guard_divergence=divergence)
    for divergence in ("auto", "consensus"):  # given float targets: 1/SQNR and the targets' error
        assert analysis.solve("bits=5.5", guard_divergence=divergence).metadata["guard"]["divergence"] == "sqnr+mse"


@pytest.mark.parametrize("returned, said", [
    ({"main": "mse", "mse": 0.3, "higher_is_better": "False"}, "higher_is_better='False'; it must be True or False"),
    ({"main": "mse", "mse": 0.3, "lower_is_better": True}, "the key 'lower_is_better', which mixprec does not read")])
def test_a_metric_direction_mixprec_would_misread_is_refused(returned, said):
    from mixprec.evaluation import to_eval_result
    with pytest.raises(SpecError, match=said):
        to_eval_result(returned)
    assert not to_eval_result({"main": "mse", "mse": 0.3, "higher_is_better": False}).higher_is_better
    assert not to_eval_result({"main": "mse", "mse": 0.3, "higher_is_better": np.bool_(False)}).higher_is_better


def test_an_export_of_a_forward_that_branches_on_values_says_the_path_is_fixed(tmp_path):
    pytest.importorskip("onnxruntime")
    from mixprec.export import export

    class Branching(Mlp):
        def forward(self, x):
            h = torch.relu(self.up(x))
            if h.sum() > 0:  # data-dependent: the file keeps the branch its example took
                h = h * 2
            return self.down(h)
    model, data = Branching().eval(), [torch.from_numpy(x) for x in numpy_batches()]
    plan = Plan.uniform(discover_groups(model, data[0]), "fp32")
    notes = export(model, plan, data, out=tmp_path / "b.onnx", progress=False).notes
    assert any("branches or loops on tensor values" in n for n in notes)
    plain = export(Mlp().eval(), Plan.uniform(discover_groups(Mlp().eval(), data[0]), "fp32"), data,
                   out=tmp_path / "p.onnx", progress=False).notes
    assert not any("branches or loops" in n for n in plain)


def test_a_run_reopened_with_its_model_gives_the_groups_quantize_plan_takes(tmp_path):
    """README: quantize_plan(model, plan, data, analysis.model_groups); after Analysis.load(run, model=, data=)
    model_groups was None, and quantize_plan's error asked for analysis.model_groups."""
    b = get_builtin("demo-cnn")
    model, data = b.model(), b.calibration(64)
    run = tmp_path / "run"
    first = mixprec.analyze(model, data, candidates="w4a8,w8a8", run_dir=run, progress=False)
    reopened = mixprec.Analysis.load(run, model=model, data=data)
    assert reopened.model_groups is not None
    assert [g.name for g in reopened.model_groups] == [g.name for g in first.model_groups]
    plan = reopened.solve("bytes=w4a8", guard=False)
    result = mixprec.quantize_plan(model, plan, data, reopened.model_groups)
    assert set(result.plan.assignments) == set(plan.assignments)


def test_float64_calibration_data_is_read_as_float32_and_a_dataset_gets_a_dataloader_hint():
    """numpy's default float64 failed in the Python API (the CLI's files were cast already), and a TensorDataset
    or a list of single samples got only the model's own shape error."""
    from torch.utils.data import TensorDataset
    model, data = Mlp().eval(), numpy_batches()
    as_float64 = [x.astype(np.float64) for x in data]
    reference = mixprec.analyze(model, data, "w4a8,w8a8", progress=False)
    analysis = mixprec.analyze(model, as_float64, "w4a8,w8a8", progress=False)
    np.testing.assert_allclose(analysis.table.values, reference.table.values, rtol=1e-5)
    double = Mlp().double().eval()  # a model that computes in float64 keeps its float64 data
    assert mixprec.analyze(double, as_float64, "w4a8,w8a8", progress=False).table is not None
    dataset = TensorDataset(torch.from_numpy(np.concatenate(data)))
    with pytest.raises(SpecError, match=r"TensorDataset, a Dataset.*DataLoader\(data, batch_size=32\)"):
        mixprec.analyze(model, dataset, "w4a8,w8a8", progress=False)


def test_a_list_of_single_samples_gets_a_hint_about_the_batch_axis():
    """A list of samples, each without its batch axis, failed with the model's own shape error alone."""
    from mixprec.errors import ModelError

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(2, 4, 3, padding=1)
            self.fc = nn.Linear(4 * 16, 3)

        def forward(self, x):
            return self.fc(torch.relu(self.conv(x)).flatten(1))
    samples = [torch.randn(2, 16) for _ in range(8)]  # one sample each: (channels, length)
    with pytest.raises(ModelError, match=r"one sample, without its batch axis\? Give batches: a DataLoader"):
        mixprec.analyze(Net().eval(), samples, "w4a8,w8a8", progress=False)
    assert mixprec.analyze(Net().eval(), [torch.stack(samples)], "w4a8,w8a8", progress=False).table is not None


def test_a_fractional_budget_no_plan_meets_is_told_as_the_fraction_the_model_can_reach():
    """What stays outside the candidates (biases, LayerNorms, scales) sets a floor: a new user asked bytes=0.5x of a
    small transformer and was told the smallest size in bytes only."""
    from mixprec.solvers.exact import InfeasibleBudget
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
    model = nn.Sequential(nn.Linear(8, 32), nn.TransformerEncoder(layer, 1), nn.Linear(32, 3)).eval()
    data = [torch.randn(4, 6, 8) for _ in range(2)]
    analysis = mixprec.analyze(model, data, "w4a8,w8a8", progress=False)
    problem = analysis.problem()
    floor = problem.cost("bytes", problem.cheapest("bytes")) / problem.highest_cost("bytes")
    assert 0.5 < floor < 1
    with pytest.raises(InfeasibleBudget, match=rf"bytes can go down to {math.ceil(floor * 1000) / 1000:.3f}x, and "
                                               r"0\.5x was asked"):
        analysis.solve("bytes=0.5x")
    analysis.solve(f"bytes={math.ceil(floor * 1000) / 1000}x", guard=False)  # the fraction it names is met


@pytest.mark.parametrize("search", ["greedy", "bisection"])
def test_a_measured_search_says_when_its_plans_beat_the_float_model_as_a_loss_read_upside_down_would(search):
    """An evaluation returning the mean squared error as a plain float: greedy took every group to w2a8 'within 1 %'
    and said nothing."""
    from mixprec.errors import EvaluationNote
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    data = [torch.randn(16, 16) for _ in range(4)]
    with torch.no_grad():
        targets = [model(x) for x in data]

    def mse(m):
        with torch.no_grad():
            return sum(float(((m(x) - t) ** 2).mean()) for x, t in zip(data, targets))
    analysis = mixprec.analyze(model, data, "w2a8,w4a8,w8a8", progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan = analysis.solve(search=search, evaluate=mse, max_drop="1%", guard=False)
    said = [str(w.message) for w in caught if issubclass(w.category, EvaluationNote)]
    assert len(said) == 1 and "higher_is_better" in said[0] and said[0] in plan.metadata["notes"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan = analysis.solve(search=search, evaluate=lambda m: {"main": "mse", "mse": mse(m),
                                                                 "higher_is_better": False},
                              max_drop="1%", guard=False)
    assert not [w for w in caught if issubclass(w.category, EvaluationNote)]
    assert "w2a8" not in plan.assignments.values()  # read the right way up, the 1 % drop keeps it near float


def test_weights_outside_every_quantized_layer_are_said_in_python_and_in_a_budget_they_make_unreachable(capsys,
                                                                                                       tmp_path):
    """A weight used through F.linear stays float: analyze said nothing in Python, and bytes=0.8x failed with only
    'can go down to 0.971x'."""
    from mixprec.errors import ModelNote
    from mixprec.solvers.exact import InfeasibleBudget

    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(32, 16))
            self.head = nn.Linear(32, 4)

        def forward(self, x):
            return self.head(torch.nn.functional.linear(x, self.w))
    torch.manual_seed(0)
    data = [torch.randn(8, 16) for _ in range(2)]
    with pytest.warns(ModelNote, match=r"80% of the weights are in 1 module\(s\) mixprec does not quantize"):
        analysis = mixprec.analyze(Functional().eval(), data, "w4a8,w8a8", progress=False)
    with pytest.raises(InfeasibleBudget, match=r"can go down to 0\.9\d\dx, and 0\.8x was asked; 80% of the weights"):
        analysis.solve("bytes=0.8x")
    with warnings.catch_warnings():  # a model with nothing to say warns nothing
        warnings.simplefilter("error", ModelNote)
        mixprec.analyze(Mlp().eval(), [torch.randn(4, 8)], "w4a8,w8a8", progress=False)
    # the command line prints the note once, as its own, and leaves Python's warning filters as they were
    model_file = tmp_path / "functional.py"
    model_file.write_text("import torch\nfrom torch import nn\n\n\nclass F(nn.Module):\n    def __init__(self):\n"
                          "        super().__init__()\n        self.w = nn.Parameter(torch.randn(32, 16))\n"
                          "        self.head = nn.Linear(32, 4)\n\n    def forward(self, x):\n"
                          "        return self.head(torch.nn.functional.linear(x, self.w))\n\n\n"
                          "def model():\n    return F().eval()\n\n\ndef data():\n"
                          "    return [torch.randn(8, 16) for _ in range(2)]\n")
    filters = list(warnings.filters)
    assert main(["analyze", "--model", f"{model_file}:model", "--data", f"{model_file}:data", "--candidates",
                 "w4a8,w8a8", "--out", str(tmp_path / "run")]) == 0
    said = capsys.readouterr()
    assert (said.out + said.err).count("mixprec does not quantize") == 1
    assert warnings.filters == filters


def test_a_training_mode_model_is_left_as_it_was_by_discover_groups_and_export(tmp_path):
    """Batch-norm statistics, the mode and the RNG of a model in training mode are the caller's: discover_groups and
    export look at it in eval mode and change none of them."""
    pytest.importorskip("onnxruntime")
    import warnings
    from torch import nn
    from mixprec.groups import discover_groups
    from mixprec.plan import Plan
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5), nn.Flatten(),
                          nn.Linear(4 * 6 * 6, 3)).train()
    data = [torch.randn(8, 1, 8, 8) for _ in range(2)]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    groups = discover_groups(model, data[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mixprec.export(model, Plan.uniform(groups, "w8a8"), data, out=tmp_path / "m.onnx", progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training and all(m.training for m in model.modules())
    assert torch.equal(rng, torch.get_rng_state())


def test_a_device_asked_for_never_moves_the_callers_model():
    """model.to would move the caller's own parameters (a copy sharing them too): placed_copy makes the tensors on
    the device asked, ties kept, and a device mixprec cannot run on is refused before anything moves."""
    from mixprec.streaming import placed_copy
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4)).eval()
    model[2].weight = model[0].weight  # tied
    moved = placed_copy(model, "meta")
    assert moved is not model and moved[0].weight.device.type == "meta" and moved[2].weight is moved[0].weight
    assert model[0].weight.device.type == "cpu" and model[0].weight is model[2].weight
    assert placed_copy(model, "cpu") is model  # already there: no copy
    data = [torch.randn(8, 4) for _ in range(2)]
    for device, says in (("meta", "mixprec runs on cpu, cuda or mps"), ("gpu", "is not a torch device")):
        with pytest.raises(SpecError, match=says):
            mixprec.analyze(model, data, candidates="w4a8,w8a8", device=device, progress=False)
    assert model[0].weight.device.type == "cpu"


def test_plans_measured_on_a_device_leave_the_callers_model_where_and_as_it_was():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.1), nn.ReLU(), nn.Linear(16, 4)).train()
    data = [torch.randn(16, 8) for _ in range(3)]
    analysis = mixprec.analyze(model, data, candidates="w2a8,w4a8,w8a8", progress=False)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    analysis.solve("bytes=w4a8", device=device, search="local", evaluations=3)
    assert model.training and all(m.training for m in model.modules())  # measured in eval mode, on a copy
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    if not torch.cuda.is_available():
        for call in (lambda: analysis.solve("bytes=w4a8", device="cuda"),
                     lambda: analysis.pareto("bytes", 3, device="cuda:0"),
                     lambda: mixprec.deploy_cuda(model, analysis.solve("bytes=w4a8", guard=False), data)):
            with pytest.raises(SpecError, match="device= cuda.*no CUDA device"):
                call()


def test_apply_refuses_a_solved_plan_for_a_smaller_model_and_notes_a_hand_plan_naming_a_few_layers():
    torch.manual_seed(0)
    small = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)).eval()
    big = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8), nn.ReLU(), nn.Linear(8, 4)).eval()
    data = [torch.randn(8, 16) for _ in range(2)]
    solved = mixprec.analyze(small, data, "w4a8,w8a8", progress=False).solve("bytes=0.7x", guard=False)
    with pytest.raises(PlanError, match=r"1 layer\(s\) the plan does not name, e.g. \['4'\]"):
        mixprec.apply(big, solved, data, progress=False)
    by_hand = Plan({"0": "w8a8"}, {"0": ["0"]})
    with pytest.warns(PlanNote, match="2 layer\\(s\\) of the model are not in the plan and stay float"):
        quantized = mixprec.apply(big, by_hand, data, progress=False)
    assert isinstance(quantized[2], nn.Linear) and not isinstance(quantized[0], nn.Linear)


def test_a_fully_convolutional_model_calibrated_at_two_resolutions_goes_through_every_step(tmp_path):
    """analyze took images of two sizes; apply, quantize_plan and export take them too (the file takes both sizes:
    the axes the calibration batches vary are dynamic in it, and it is compared on every batch)."""
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    data = [torch.randn(8, 1, 8, 8), torch.randn(8, 1, 16, 16), torch.randn(8, 1, 8, 8)]
    analysis = mixprec.analyze(model, data, candidates="w4a8,w8a8", progress=False)
    plan = analysis.solve("bytes=w4a8", guard=False)
    quantized = mixprec.apply(model, plan, data, progress=False)
    assert quantized(data[1]).shape == (8, 3)
    mixprec.quantize_plan(model, plan, data, analysis.model_groups, progress=False)
    result = mixprec.export(model, plan, data, out=tmp_path / "fcn.onnx", progress=False)
    assert result.agreement["calibration"] == 1.0 and not any("other sizes" in n for n in result.notes)
    assert any("inputs of shape (*, 1, ?, ?)" in n for n in result.notes)
    from mixprec.export import OrtModule
    assert OrtModule(result.path)(torch.randn(2, 1, 12, 12)).shape == (2, 3)  # a size no batch had
    with pytest.raises(mixprec.MixprecError, match="calibration batch 1"):
        mixprec.apply(model, plan, [data[0], torch.randn(8, 1, 8)], progress=False)  # another rank


def test_bad_arguments_to_the_python_api_are_mixprec_errors_that_say_what_to_give(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    data = [torch.randn(8, 4) for _ in range(2)]
    cases = [
        (lambda: mixprec.analyze(model, data, weight_range="MSE", progress=False), "weight_range must be one of"),
        (lambda: mixprec.analyze(model, data, activation_range="foo", progress=False), "activation_range must be"),
        (lambda: mixprec.analyze(model, data, prefix="xyz", progress=False), "prefix must be one of"),
        (lambda: mixprec.analyze(model.state_dict(), data, progress=False), "load_state_dict"),
        (lambda: mixprec.analyze(model, data, pins=["2=w8a8"], progress=False), "pins is a dict"),
        (lambda: mixprec.analyze(model, 5, progress=False), "iterable of batches"),
        (lambda: mixprec.analyze(model, data, candidates=3, progress=False), "candidates is a string"),
        (lambda: mixprec.apply(None, Plan({"0": "w8"}, {"0": ["0"]}), data, progress=False), "torch.nn.Module"),
    ]
    for call, says in cases:
        with pytest.raises(mixprec.MixprecError, match=says):
            call()
    # one pattern (or cost file) as a bare string is that pattern, not its characters
    one = mixprec.analyze(model, data, "w4a8,w8a8", exclude="2", tie="[02]", progress=False)
    assert [l.name for l in one.model_groups.excluded] == ["2"] and one.model_groups.names == ["0"]
    with pytest.raises(SpecError, match="cost table lat.csv not found"):
        one.solve("latency_ms=0.2", cost_files="latency_ms=lat.csv")
    analysis = mixprec.analyze(model, data, candidates=None, progress=False)  # None: the default candidates
    for call, says in [(lambda: analysis.pareto("bytes", 3.0), "whole number"),
                       (lambda: analysis.pareto("bytes", 3, evaluate=5), "evaluate is a function")]:
        with pytest.raises(mixprec.MixprecError, match=says):
            call()
    edited = analysis.solve("bytes=w4a8", guard=False)
    del edited.assignments[next(iter(edited.assignments))]
    with pytest.raises(mixprec.MixprecError, match="plan assignments do not match its groups"):
        mixprec.apply(model, edited, data, progress=False)
    front = analysis.pareto("bytes", 3)
    (tmp_path / "file").write_text("")
    with pytest.raises(mixprec.MixprecError, match="is a file"):
        analysis.report(front, tmp_path / "file")
    with pytest.raises(mixprec.MixprecError, match="is an existing file, not a directory"):
        front.save(tmp_path / "file")


def test_notes_in_python_are_warnings_of_their_own_kind_whatever_progress_says(capsys):
    """progress shows bars only: a pin quantize_plan applies and a training-mode model are PlanNote and ModelNote
    warnings, which a user can filter, and nothing is printed."""
    from mixprec.errors import ModelNote, PlanNote
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).train()
    data = [torch.randn(8, 4) for _ in range(2)]
    groups = discover_groups(model, data[0], pins={"2": "w8a8"})
    plan = Plan.uniform(groups, "w4a8")
    plan.assignments["2"] = "w4a8"
    with pytest.warns(PlanNote, match="pin applied"):
        mixprec.quantize_plan(model, plan, data, groups, progress=True)
    with pytest.warns(ModelNote, match="training mode"):
        mixprec.analyze(model, data, candidates="w4a8,w8a8", progress=False)
    assert "note:" not in capsys.readouterr().out


def test_empty_data_is_one_error_without_a_note_about_the_missing_example_before_it():
    model = nn.Sequential(nn.Linear(4, 4)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no ModelNote first
        with pytest.raises(SpecError, match="the data is empty"):
            mixprec.analyze(model, [], candidates="w4a8,w8a8", progress=False)


def test_export_compares_on_batches_of_other_token_lengths_and_image_sizes(tmp_path):
    """Token ids keep a free length in the file, and so does an image axis whose size the calibration batches (or
    the example) vary, so batches of other lengths and sizes are compared."""
    pytest.importorskip("onnxruntime")

    class IdsAndImage(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.conv, self.head = nn.Embedding(20, 4), nn.Conv2d(3, 4, 3, padding=1), nn.Linear(8, 3)

        def forward(self, ids, img):
            return self.head(torch.cat([self.emb(ids).mean(1), self.conv(img).mean((2, 3))], 1))
    torch.manual_seed(0)
    model = IdsAndImage().eval()
    data = [{"ids": torch.randint(0, 20, (4, n)), "img": torch.randn(4, 3, 8, 8)} for n in (5, 7, 9)]
    groups = discover_groups(model, data[0])
    plan = Plan.uniform(groups, "w8")
    result = mixprec.export(model, plan, data, out=tmp_path / "a.onnx", progress=False)
    assert result.agreement["calibration"] == 1.0 and not any("other sizes" in n for n in result.notes)
    images = [torch.randn(4, 3, 8, 8) for _ in range(2)]
    conv = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    other = Plan.uniform(discover_groups(conv, images[0]), "w8a8")
    # an example of another size than every calibration batch: the sizes they vary in are the file's dynamic axes
    result = mixprec.export(conv, other, images, out=tmp_path / "b.onnx", example_input=torch.randn(1, 3, 16, 16),
                            progress=False)
    assert result.sqnr_db["calibration"] > 30 and any("(*, 3, ?, ?)" in n for n in result.notes)



def test_range_methods_have_one_name_in_every_step_and_the_former_one_still_works(tmp_path):
    """weight_range/activation_range, as analyze and the command line call them, set apply's and export's
    ranges too; weight_method (the former name) gives the same model, and both names of one range disagreeing
    are an error, not a silent choice."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    data = [torch.randn(8, 4) for _ in range(2)]
    plan = Plan.uniform(discover_groups(model, data[0]), "w4a8")
    new = mixprec.apply(model, plan, data, weight_range="minmax", activation_range="minmax", progress=False)
    old = mixprec.apply(model, plan, data, weight_method="minmax", activation_method="minmax", progress=False)
    mse = mixprec.apply(model, plan, data, progress=False)
    x = torch.randn(16, 4)
    assert torch.equal(new(x), old(x))
    assert not torch.equal(new(x), mse(x))  # the name sets the range: minmax is not the default mse
    with pytest.raises(mixprec.MixprecError, match="name one range twice"):
        mixprec.apply(model, plan, data, weight_range="minmax", weight_method="mse", progress=False)
    with pytest.raises(mixprec.MixprecError, match="must be one of"):
        mixprec.apply(model, plan, data, activation_range="MSE", progress=False)
    pytest.importorskip("onnxruntime")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = mixprec.export(model, plan, data, out=tmp_path / "m.onnx", weight_range="minmax",
                                activation_range="minmax", progress=False)
    assert result.path.exists()


def test_single_samples_are_refused_and_a_dict_argument_goes_in_a_one_tuple():
    """(x_i, y_i) items with x_i of shape (8,) were taken as batches of 8 (MACs per sample 8x too small); a
    forward(self, batch) reading a dict could not be fed: its 1-tuple form found no tensor."""
    model = Mlp().eval()
    samples = [(torch.randn(8), torch.tensor(1)) for _ in range(4)]
    with pytest.raises(SpecError, match="one sample, not a batch"):
        mixprec.analyze(model, samples, "w4a8,w8a8", progress=False)

    class DictArg(nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = Mlp()

        def forward(self, batch):
            return self.mlp(batch["x"])
    wrapped = DictArg().eval()
    data = [(({"x": torch.randn(16, 8)},), torch.randint(0, 4, (16,))) for _ in range(2)]
    analysis = mixprec.analyze(wrapped, data, "w4a8,w8a8", progress=False)
    assert analysis.model_groups.layers[0].macs == 8 * 32  # per sample of the batch of 16
    assert mixprec.apply(wrapped, analysis.solve("bytes=w4a8"), data, progress=False)({"x": torch.randn(2, 8)}).shape == (2, 4)


def test_labels_of_another_length_than_their_inputs_are_an_error():
    """64 inputs and 32 labels per batch were taken, and the guard quietly dropped its labels' check."""
    model = Mlp().eval()
    data = [(torch.randn(16, 8), torch.randint(0, 4, (8,))) for _ in range(2)]
    with pytest.raises(SpecError, match="holds 16 input rows and 8 labels"):
        mixprec.analyze(model, data, "w4a8,w8a8", progress=False)


def test_an_evaluation_no_search_measures_by_is_refused_not_ignored():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    data = [torch.randn(16, 8) for _ in range(2)]
    analysis = mixprec.analyze(model, data, "w4a8,w8a8", progress=False)
    for search in ("exact", "local"):
        with pytest.raises(SpecError, match=f"search '{search}' .*measures no plan by it"):
            analysis.solve("bytes=0.8x", search, evaluate=lambda m: 1.0)
    calls = []
    result = mixprec.quantize(model, data, "bytes=0.8x", candidates="w4a8,w8a8", evaluate=lambda m: calls.append(1) or 1.0,
                              progress=False)  # the exact search, and the plan evaluated once
    assert result.evaluation is not None and len(calls) == 1


def test_a_batch_of_numbers_in_nested_lists_is_described_by_its_shape_not_row_by_row():
    from mixprec.batches import describe_shape
    batch = torch.randn(32, 1, 8, 8).tolist()
    assert describe_shape(batch) == "nested lists of float, 32 x 1 x 8 x 8 (give tensors)"
    assert isinstance(describe_shape([[1, 2], [3]]), list)  # ragged: described item by item
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3)).eval()
    with pytest.raises(mixprec.MixprecError) as raised:
        mixprec.analyze(model, [batch], candidates="w4a8,w8a8", progress=False)
    assert len(str(raised.value)) < 400 and "32 x 1 x 8 x 8" in str(raised.value)


def test_calibration_samples_of_several_sizes_are_said_as_costing_otherwise_than_the_first():
    from mixprec.errors import ModelNote
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(8, 2)).eval()
    data = [torch.randn(4, 3, n) for n in (20, 40, 20)]
    with pytest.warns(ModelNote, match=r"samples of 2 sizes \(\(3, 20\), \(3, 40\)\): MACs and BOPs are counted per "
                                       r"sample of the first batch's size"):
        mixprec.analyze(model, data, "w4a8,w8a8", progress=False)


def test_a_list_of_unbatched_samples_is_refused_not_counted_as_features():
    """list(dataset) of an unlabelled dataset: each item one sample of shape (64,), whose 64 features were taken
    as 64 samples (MACs and BOPs per sample 64x too small, and a cap on samples cut inside one)."""
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    samples = [torch.randn(64) for _ in range(8)]
    with pytest.raises(SpecError, match=r"shape \(64,\) and the model's output \(10,\): one sample without its batch"):
        mixprec.analyze(model, samples, "w4a8,w8a8", progress=False)
    batched = mixprec.analyze(model, [torch.stack(samples)], "w4a8,w8a8", progress=False)
    assert [g.macs for g in batched.model_groups] == [64 * 32, 32 * 10]


class _SequenceFirst(nn.Module):
    """torch's default RNN layout: (sequence, batch, features) in, the last step's (batch, classes) out."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.inp, self.lstm, self.fc = nn.Linear(4, 16), nn.LSTM(16, 16), nn.Linear(16, 3)

    def forward(self, x):
        h, _ = self.lstm(torch.relu(self.inp(x)))
        return self.fc(h[-1])


def test_a_sequence_first_model_is_priced_per_sample_of_its_batch_axis_with_a_note():
    """(L=12, N=32, 4) in, (N, 3) out: MACs per sample were the batch's divided by L, not by N."""
    from mixprec.errors import ModelNote
    model = _SequenceFirst().eval()
    data = [torch.randn(12, 32, 4) for _ in range(2)]
    with pytest.warns(ModelNote, match=r"sequence-first .*'lstm'.*axis 1 of the input"):
        analysis = mixprec.analyze(model, data, "w4a8,w8a8", progress=False)
    macs = {g.name: g.macs for g in analysis.model_groups}
    assert macs == {"inp": 12 * 4 * 16, "fc": 16 * 3}  # every step's input projection, one output per sequence
    with pytest.raises(SpecError, match=r"holds 12 input rows and 32 labels.*axis 1 has 32: sequence-first"):
        mixprec.analyze(model, [(x, torch.randint(0, 3, (32,))) for x in data], "w4a8,w8a8", progress=False)


def test_an_unreachable_budget_names_the_layer_that_stays_float_and_sets_its_floor():
    """An embedding whose weight the forward also uses in F.linear stays float: the bits and bytes errors named
    only the floor it sets, not the layer (weights in no quantized module were named, for bytes)."""
    from mixprec.solvers.exact import InfeasibleBudget

    class TiedOutput(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.mix = nn.Embedding(50, 32), nn.Linear(32, 32)

        def forward(self, ids):
            return nn.functional.linear(torch.tanh(self.mix(self.emb(ids))), self.emb.weight)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        analysis = mixprec.analyze(TiedOutput().eval(), [torch.randint(0, 50, (16, 12))], "w4a8,w8a8",
                                   progress=False)
    for budget in ("bits=8", "bytes=0.3x"):
        with pytest.raises(InfeasibleBudget, match=r"smallest achievable .*\(e.g. emb\) .*stay float"):
            analysis.solve(budget)


def test_one_hot_labels_are_read_as_the_classes_they_mark_with_a_note():
    """F.one_hot(y).float() labels were float targets of the output's shape: a regression, whose guard compared
    logits with 0/1 vectors by MSE."""
    from mixprec.errors import DataNote
    from mixprec.batches import as_batches
    y = torch.tensor([2, 0, 1, 2])
    with pytest.warns(DataNote, match="one-hot"):
        (item,) = as_batches([(torch.randn(4, 8), nn.functional.one_hot(y, 3).float())])
    assert torch.equal(item[1], y)
    soft = [(torch.randn(4, 8), torch.full((4, 3), 1 / 3))]  # not one-hot: left as they are
    assert as_batches(soft)[0][1].is_floating_point()


def test_items_of_three_say_how_tuples_are_read_and_a_consumed_generator_says_so():
    from mixprec.errors import ModelError
    model = nn.Sequential(nn.Linear(8, 4)).eval()
    triples = [(torch.randn(4, 8), torch.randint(0, 4, (4,)), torch.arange(4))]  # a Dataset returning its index
    with pytest.raises(ModelError, match=r"tuple of 3 or more is the model's positional inputs.*\(x, y\) for x, y, _"):
        mixprec.analyze(model, triples, "w4a8,w8a8", progress=False)
    batches = (torch.randn(4, 8) for _ in range(2))
    analysis = mixprec.analyze(model, batches, "w4a8,w8a8", progress=False)
    plan = analysis.solve("bits=6", guard=False)
    with pytest.raises(MixprecError, match="data is empty.*used up by one pass.*a list of batches"):
        apply(model, plan, batches, progress=False)  # the generator analyze read


def test_a_model_function_that_needs_an_argument_is_located_in_the_users_file(tmp_path):
    from mixprec.specs import load_model
    f = tmp_path / "spec.py"
    f.write_text("import torch\n\ndef build(path):\n    return torch.nn.Linear(2, 2)\n")
    with pytest.raises(SpecError, match=rf"\({f} line 3, build defined there\).*requires path"):
        load_model(f"{f}:build")


def test_solve_and_pareto_take_candidate_objects_as_analyze_does():
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    data = [torch.randn(32, 16) for _ in range(2)]
    cands = mixprec.parse_candidates("w4a8,w8a8")
    analysis = mixprec.analyze(model, data, candidates=cands, progress=False)
    assert set(analysis.solve("bytes=0.8x", candidates=cands, guard=False).assignments.values()) <= {"w4a8", "w8a8"}
    assert analysis.pareto("bytes", 3, candidates=cands, guard=False).candidates == "w4a8,w8a8"


def test_a_front_saved_after_its_report_keeps_the_report(tmp_path):
    """report() then save(): save removed the report it had just been written beside (as an earlier front's)."""
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    data = [torch.randn(32, 16) for _ in range(2)]
    analysis = mixprec.analyze(model, data, "w4a8,w8a8", progress=False)
    front = analysis.pareto("bytes", 3, guard=False)
    analysis.report(front, tmp_path)
    front.save(tmp_path)
    assert (tmp_path / "report.html").is_file() and mixprec.Front.load(tmp_path).to_dict() == front.to_dict()
    other = analysis.pareto("bops", 3, guard=False)
    other.save(tmp_path)  # another front: the former report is not left beside it
    assert not (tmp_path / "report.html").exists()


def test_quantize_plan_leaves_the_plan_passed_in_as_it_was():
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    data = [torch.randn(32, 16) for _ in range(2)]
    analysis = mixprec.analyze(model, data, "w4a8,w8a8", progress=False)
    plan = analysis.solve("bytes=0.8x", guard=False)
    before = json.dumps(plan.to_dict(), sort_keys=True, default=str)
    plan.assignments[next(iter(plan.assignments))] = "w8a8"  # edited after solve: quantize_plan records real costs
    edited = json.dumps(plan.to_dict(), sort_keys=True, default=str)
    result = mixprec.quantize_plan(model, plan, data, analysis.model_groups, progress=False)
    assert json.dumps(plan.to_dict(), sort_keys=True, default=str) == edited != before
    assert result.plan is not plan


def test_one_pair_not_in_a_list_is_refused_not_read_as_two_batches():
    model = nn.Sequential(nn.Linear(16, 4)).eval()
    x, y = torch.randn(8, 16), torch.randint(0, 4, (8,))
    with pytest.raises(SpecError, match=r"one tuple of two Tensors.*give \[\(x, y\)\]"):
        mixprec.analyze(model, (x, y), "w4a8,w8a8", progress=False)


def test_mixprec_threads_is_honoured_in_python(tmp_path):
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", "import mixprec, torch; print(torch.get_num_threads())"],
                         capture_output=True, text=True, env={**os.environ, "MIXPREC_THREADS": "1"}, check=True)
    assert out.stdout.strip() == "1"


def test_a_front_point_that_is_not_a_whole_number_is_a_clear_error():
    model = nn.Sequential(nn.Linear(16, 4)).eval()
    front = mixprec.analyze(model, [torch.randn(8, 16)], "w4a8,w8a8", progress=False).pareto("bytes", 2, guard=False)
    with pytest.raises(SpecError, match="a front point is a whole number"):
        front.plan("1")


def test_a_model_trained_in_place_after_its_analysis_is_refused_not_planned_with_the_former_table():
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    data = [torch.randn(32, 16) for _ in range(2)]
    analysis = mixprec.analyze(model, data, "w4a8,w8a8", progress=False)
    analysis.solve("bytes=0.8x")  # the guard measures plans beside the model: nothing of it changes
    analysis.pareto("bytes", 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    nn.functional.mse_loss(model(data[0]), torch.zeros(32, 4)).backward()
    optimizer.step()
    with pytest.raises(SpecError, match="weights changed in place since this analysis measured them"):
        analysis.solve("bytes=0.8x")


def test_quantize_plan_refuses_the_groups_of_another_model_with_the_same_layer_names():
    small, large = (nn.Sequential(nn.Linear(16, w), nn.ReLU(), nn.Linear(w, 4)).eval() for w in (32, 64))
    data = [torch.randn(8, 16)]
    plan = mixprec.analyze(small, data, "w4a8,w8a8", progress=False).solve("bytes=0.8x", guard=False)
    large_groups = mixprec.discover_groups(large, data[0])
    with pytest.raises(SpecError, match=r"the groups are not this model's: layer '0' .*\(32, 16\) here and \(64, 16\)"):
        mixprec.quantize_plan(small, plan, data, large_groups, progress=False)
