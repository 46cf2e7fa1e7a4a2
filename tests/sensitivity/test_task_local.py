import numpy as np
import pytest
import torch
from torch import nn

from mixprec.apply import apply
from mixprec.candidates import parse_candidates
from mixprec.errors import MixprecError
from mixprec.groups import discover_groups
from mixprec.plan import Plan
from mixprec.quantizers import ActivationQuantizer, quantize_weight
from mixprec.sensitivity import Task
from mixprec.sensitivity.analyze import analyze
from mixprec.sensitivity.context import MeasureContext

from test_analyze import data, setup  # tests/sensitivity is on sys.path (rootdir import mode)


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 32)
        self.fc3 = nn.Linear(32, 4)

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def classifier_setup(candidates="w2a8,w4a8,w8a8,fp32"):
    model = MLP().eval()
    g = torch.Generator().manual_seed(2)
    calibration = [torch.randn(8, 16, generator=g) for _ in range(2)]
    x = torch.randn(64, 16, generator=g)
    with torch.no_grad():
        labels = model(x).argmax(dim=1)
    labels[::4] = (labels[::4] + 1) % 4  # float accuracy 0.75: a drop can go either way

    def accuracy(m):
        with torch.no_grad():
            return float((m(x).argmax(dim=1) == labels).float().mean())

    def loss(m):  # lower is better
        with torch.no_grad():
            return {"main": "loss", "loss": float(nn.functional.cross_entropy(m(x), labels)), "higher_is_better": False}

    return model, discover_groups(model, calibration[0]), parse_candidates(candidates), calibration, accuracy, loss


def only_group(model, groups, group, candidate, calibration):
    """The model with only ``group`` on ``candidate``, built by apply() (the direct computation)."""
    plan = Plan({g.name: candidate if g.name == group else "fp32" for g in groups},
                {g.name: list(g.layer_names) for g in groups})
    return apply(model, plan, calibration, progress=False)


@pytest.mark.parametrize("which", ["accuracy", "loss"])
def test_task_is_the_metric_drop_of_one_quantized_group(which):
    model, groups, cands, calibration, accuracy, loss = classifier_setup()
    evaluate = accuracy if which == "accuracy" else loss
    table = analyze(model, groups, cands, calibration, metric="task", evaluate=evaluate, progress=False)
    assert table.complete and (table.values[:, -1] == 0).all()  # fp32: no drop
    reference = evaluate(model) if which == "accuracy" else evaluate(model)["loss"]
    for group in groups:
        for cand in cands:
            result = evaluate(only_group(model, groups, group.name, cand.name, calibration))
            drop = reference - result if which == "accuracy" else result["loss"] - reference
            assert table[group.name, cand.name] == pytest.approx(drop, abs=1e-6)
    if which == "loss":
        assert (table.values[:, 0] > 0).all()  # 2-bit weights raise the loss of every layer


def test_task_evaluates_the_float_model_once_per_analysis():
    model, groups, cands, calibration, accuracy, _ = classifier_setup()
    calls = []
    ctx = MeasureContext(model, groups, cands, calibration, evaluate=lambda m: calls.append(1) or accuracy(m))
    state = Task().prepare(ctx)  # once per analysis, as analyze() does
    for g in range(len(groups)):  # one chunk per group, as analyze(chunk_size=1) does
        Task().measure(ctx, [g], None, state)
    quantized_candidates = sum(1 for c in cands if c.name != "fp32")
    assert len(calls) == 1 + len(groups) * quantized_candidates
    assert Task().metadata(state)["task_float_value"] == accuracy(model)


def test_task_without_eval_says_what_to_give():
    model, groups, cands, calibration, _, _ = classifier_setup()
    with pytest.raises(MixprecError, match="the task metric needs --eval"):
        analyze(model, groups, cands, calibration, metric="task", progress=False)


def test_local_properties_and_chunking():
    model, groups, cands = setup()
    chunked = analyze(model, groups, cands, data(), metric="local", chunk_size=1, progress=False)
    whole = analyze(model, groups, cands, data(), metric="local", chunk_size=None, progress=False)
    np.testing.assert_allclose(chunked.values, whole.values, rtol=1e-9, atol=0)
    assert chunked.metric == "local" and chunked.complete and (chunked.values >= 0).all()
    assert (chunked.values[:, -1] == 0).all()  # fp32 does no damage
    assert (chunked.values[:, 0] > chunked.values[:, 1]).all() and (chunked.values[:, 1] > chunked.values[:, 2]).all()
    assert not any(m._forward_hooks for m in model.modules())  # hooks removed


def test_local_equals_a_hand_computation_on_one_linear():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(16, 8)).eval()
    g = torch.Generator().manual_seed(4)
    batches = [torch.randn(5, 16, generator=g) for _ in range(3)]
    cands = parse_candidates("w4a8,w8a8")
    table = analyze(model, discover_groups(model, batches[0]), cands, batches, metric="local", progress=False)
    layer = model[0]
    for cand in cands:
        quantizer = ActivationQuantizer(cand.activation, "mse")
        for x in batches:
            quantizer(x)  # observe
        quantizer.finish_calibration()
        w_q = quantize_weight(layer.weight.detach(), cand.weight, "mse")
        noise = signal = 0.0
        with torch.no_grad():
            for x in batches:
                y = layer(x)
                y_q = nn.functional.linear(quantizer(x), w_q, layer.bias)
                noise += float((y_q - y).pow(2).sum())
                signal += float(y.pow(2).sum())
        assert table["0", cand.name] == pytest.approx(noise / signal, rel=1e-6)


class DataDependent(nn.Module):
    """Control flow on tensor values: torch.fx cannot trace this."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.a = nn.Linear(12, 12)
        self.b = nn.Linear(12, 12)
        self.head = nn.Linear(12, 3)

    def forward(self, x):
        x = torch.relu(self.a(x))
        if x.mean() > 0.1:
            x = x + self.b(x)
        return self.head(x)


def test_local_works_on_an_untraceable_model():
    model = DataDependent().eval()
    with pytest.raises(Exception):
        torch.fx.symbolic_trace(model)
    g = torch.Generator().manual_seed(6)
    batches = [torch.randn(6, 12, generator=g) for _ in range(2)]
    cands = parse_candidates("w2a8,w4a8,w8a8,fp32")
    table = analyze(model, discover_groups(model, batches[0]), cands, batches, metric="local", progress=False)
    assert table.complete and (table.values[:, -1] == 0).all()
    assert (table.values[:, 0] > table.values[:, 1]).all() and (table.values[:, 1] > table.values[:, 2]).all()


def test_an_evaluation_that_leaves_the_model_training_changes_neither_the_table_nor_the_model():
    """An --eval ending in model.train() (back to training, as a training loop does) left mixprec's later
    forwards in training mode: BatchNorm's statistics moved, every entry changed (w8a8 showed a drop), and so did
    the model passed in. The mode is put back after each evaluation, with a note."""
    import copy
    import warnings

    import mixprec
    from mixprec.errors import DataNote
    from mixprec import evaluation
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 4))
    with torch.no_grad():  # statistics far from the calibration batches' own
        model[1].running_mean.fill_(2.0)
        model[1].running_var.fill_(5.0)
    model.eval()
    g = torch.Generator().manual_seed(1)
    calibration = [torch.randn(8, 16, generator=g) for _ in range(2)]
    x = torch.randn(64, 16, generator=g)
    with torch.no_grad():
        labels = model(x).argmax(dim=1)

    def clean(m):
        with torch.no_grad():
            return float((m(x).argmax(dim=1) == labels).float().mean())

    def leaves_training(m):
        result = clean(m)
        m.train()
        return result
    before = copy.deepcopy(model.state_dict())
    expected = mixprec.analyze(model, calibration, "w4a8,w8a8", metric="task", evaluate=clean,
                               progress=False).table.values
    evaluation._said_mode[0] = False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = mixprec.analyze(model, calibration, "w4a8,w8a8", metric="task", evaluate=leaves_training,
                                progress=False).table.values
    assert np.array_equal(table, expected)
    assert not model.training and all(torch.equal(before[k], model.state_dict()[k]) for k in before)
    assert any(issubclass(w.category, DataNote) and "left the model in training mode" in str(w.message)
               for w in caught)
