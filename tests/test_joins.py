"""Join quantizers: where they go in the traced graph, their calibration with the layers, shared ranges."""
import pytest
import torch
from torch import nn

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(autouse=True)
def no_grad():
    with torch.no_grad():
        yield

from mixprec.apply import apply
from mixprec.errors import ModelError
from mixprec.groups import discover_groups
from mixprec.joins import JoinQuantizer, insert_join_quantizers, join_quantizers, layers_reading_joins
from mixprec.plan import Plan
from mixprec.swap import quantized_layers


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.shortcut = nn.Identity()
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        y = torch.relu(self.bn(self.conv(x)) + self.shortcut(x))
        y = y + 1.0  # a constant: not a join
        return self.head(y.mean(dim=(2, 3)))


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 4, 3, padding=1)
        self.after = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.after(torch.cat([self.a(x), self.b(x)], dim=1))


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:
            return self.fc(x) + x
        return self.fc(x)


def data(shape, n=2, size=8):
    g = torch.Generator().manual_seed(3)
    return [torch.randn(size, *shape, generator=g) for _ in range(n)]


def uniform(model, batches, candidate, **metadata):
    return Plan.uniform(discover_groups(model, batches[0]), candidate, metadata)


def test_a_residual_add_gets_quantizers_on_both_inputs_and_after_its_relu():
    gm = insert_join_quantizers(Residual().eval())
    wheres = sorted(q.where for q in join_quantizers(gm).values())
    assert len(wheres) == 3 and [w.rsplit(".", 1)[1] for w in wheres] == ["in0", "in1", "out"]
    nodes = {n.name: n for n in gm.graph.nodes}
    add = next(n for n in nodes.values() if n.op == "call_function" and n.args and any(
        isinstance(a, torch.fx.Node) and a.op == "call_module" and "in0" in a.target for a in n.args))
    assert all(isinstance(gm.get_submodule(a.target), JoinQuantizer) for a in add.args)
    relu = next(iter(add.users))
    assert isinstance(gm.get_submodule(next(iter(relu.users)).target), JoinQuantizer)  # the ReLU's output


def test_a_concatenation_gets_quantizers_and_module_names_are_kept():
    gm = insert_join_quantizers(Concat().eval())
    assert len(join_quantizers(gm)) == 3
    assert {"a", "b", "after"} <= {n for n, _ in gm.named_modules()}


class TwoJoins(nn.Module):
    """One tensor (an in-place ReLU's) read by a concatenation and by an add, as a U-Net's skip is."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.fuse = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        h = self.a(x).relu_()
        return self.fuse(torch.cat([self.b(h), h], dim=1)) + h


def test_a_tensor_two_joins_read_gets_one_quantizer():
    """Two quantizers of one tensor (one per join) left the conv before it without one output quantization, so
    ONNX Runtime ran it in float; calibrated on the same tensor, they had the same range anyway."""
    gm = insert_join_quantizers(TwoJoins().eval())
    relu = next(n for n in gm.graph.nodes if n.op == "call_method" and n.target == "relu_")
    readers = [u for u in relu.users if u.op == "call_module" and isinstance(gm.get_submodule(u.target), JoinQuantizer)]
    assert len(readers) == 1 and len(readers[0].users) == 2  # the concatenation and the add read the one quantizer


def test_layers_reading_a_joined_tensor_share_its_range_and_results_are_unchanged_by_sharing():
    model, batches = Residual().eval(), data((3, 6, 6))
    q = apply(model, uniform(model, batches, "w8a8"), batches, progress=False, joins=True)
    shared = layers_reading_joins(q)
    assert shared == {"conv": shared["conv"]} and shared["conv"].endswith("in1")  # conv reads the shortcut's tensor
    layer, join = quantized_layers(q)["conv"].input_quantizer, q.get_submodule(shared["conv"])
    assert float(layer.lo) == float(join.lo) and float(layer.hi) == float(join.hi)
    # quantizing an already quantized tensor on the same grid changes nothing
    x = batches[0]
    once = join(x)
    assert torch.equal(layer(once), once)


def test_joins_change_the_output_and_follow_the_plan_metadata():
    model, batches = Residual().eval(), data((3, 6, 6))
    x = batches[0]
    plain = apply(model, uniform(model, batches, "w8a8"), batches, progress=False)
    joined = apply(model, uniform(model, batches, "w8a8", joins=True), batches, progress=False)
    assert not join_quantizers(plain) and len(join_quantizers(joined)) == 3
    assert not torch.equal(plain(x), joined(x))
    assert float((plain(x) - joined(x)).abs().max()) < 0.1 * float(plain(x).abs().max())


def test_a_model_fx_cannot_trace_is_a_clear_error():
    model, batches = DataDependent().eval(), data((4,))
    with pytest.raises(ModelError, match="torch.fx"):
        apply(model, uniform(model, batches, "w8a8"), batches, progress=False, joins=True)


class Rotary(nn.Module):
    """A position table sliced by the input's length in forward, as rotary embeddings are."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
        self.register_buffer("table", torch.randn(16, 4), persistent=False)

    def forward(self, x):  # (batch, tokens, 4)
        h = self.a(x) * self.table[: x.shape[1]]
        return self.b(h + x)


def test_a_buffer_sliced_by_the_input_length_traces_and_its_add_is_joined():
    model, batches = Rotary().eval(), data((6, 4))
    quantized = apply(model, uniform(model, batches, "w8a8"), batches, progress=False, joins=True)
    assert join_quantizers(quantized)
    shorter = torch.randn(2, 3, 4)  # another length slices the table anew
    assert quantized(shorter).shape == (2, 3, 4)
    assert torch.allclose(quantized(shorter), model(shorter), atol=0.1)


class MetaNamed(nn.Module):
    """A submodule named ``meta``, the name of fx.GraphModule's own dict."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(7)
        self.meta, self.head = nn.Sequential(nn.Linear(4, 4)), nn.Linear(4, 4)

    def forward(self, x):
        return self.head(self.meta(x) + x)


def test_a_submodule_named_as_a_graph_module_attribute_is_named_in_the_error(tmp_path):
    model, batches = MetaNamed().eval(), data((4,))
    with pytest.raises(ModelError, match=r"the submodule 'meta' has the name of an attribute of torch.fx's "
                                         r"GraphModule: rename it \(e.g. self.meta_net\)"):
        apply(model, uniform(model, batches, "w8a8"), batches, progress=False, joins=True)
    from mixprec.sensitivity.forked import ForkedForward, NotTraceable
    with pytest.raises(NotTraceable, match=r"rename it \(e.g. self.meta_net\) to have it traced"):
        ForkedForward(model)


class BufferBranch(nn.Module):
    """A forward that branches on a buffer's value: traced with its buffers as constants."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(6)
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
        self.register_buffer("scale_inputs", torch.tensor(True))

    def forward(self, x):
        if self.scale_inputs:
            x = 0.5 * x
        return self.b(self.a(x) + x)


def test_a_forward_that_branches_on_a_buffer_still_traces():
    model, batches = BufferBranch().eval(), data((4,))
    quantized = apply(model, uniform(model, batches, "w8a8"), batches, progress=False, joins=True)
    assert join_quantizers(quantized)
    assert torch.allclose(quantized(batches[0]), model(batches[0]), atol=0.1)


def test_joins_default_to_what_the_target_runs():
    from mixprec.joins import default_joins
    model = Residual().eval()
    assert default_joins(model, "ort-cpu", ["w4a8", "w8a8"])[0]  # int8 QDQ layers on a target with an int8 graph
    assert not default_joins(model, "ort-cpu", ["w4g32", "w8a8d32"])[0]  # weight-only and dynamic inputs: no QDQ
    assert default_joins(model, None, ["w8a8"]) == (False, None)  # no target: simulation as the layers compute
    assert not default_joins(model, "gguf", ["q8_0"])[0]
    joins, note = default_joins(DataDependent().eval(), "ort-cpu", ["w8a8"])
    assert not joins and "torch.fx" in note


def test_an_analysis_for_ort_cpu_measures_with_joins_unless_told_not_to():
    import mixprec
    model, batches = Residual().eval(), data((3, 6, 6))
    assert mixprec.analyze(model, batches, "w4a8,w8a8", target="ort-cpu", progress=False).joins
    assert not mixprec.analyze(model, batches, "w4a8,w8a8", target="ort-cpu", joins=False, progress=False).joins
    assert not mixprec.analyze(model, batches, "w4a8,w8a8", progress=False).joins
    result = mixprec.quantize(model, batches, "bytes=w4a8", candidates="w4a8,w8a8", target="ort-cpu", progress=False)
    assert result.plan.metadata.get("joins") and join_quantizers(result.model)


def test_joins_need_calibration_data():
    model, batches = Residual().eval(), data((3, 6, 6))
    with pytest.raises(Exception, match="calibrat"):
        apply(model, uniform(model, batches, "w8"), None, progress=False, joins=True)


RESIDUAL_PY = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        y = torch.relu(self.bn(self.conv(x)) + x)
        return self.head(y.mean(dim=(2, 3)))


def model():
    return Net().eval()
'''


def test_cli_analyze_with_joins_makes_plans_that_export_integer_adds(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    import json

    import numpy as np

    from mixprec.cli import main

    (tmp_path / "user.py").write_text(RESIDUAL_PY)
    g = torch.Generator().manual_seed(1)
    np.savez(tmp_path / "data.npz", inputs=torch.randn(16, 1, 8, 8, generator=g).numpy())
    spec = ["--model", f"{tmp_path / 'user.py'}:model", "--data", str(tmp_path / "data.npz")]
    assert main(["analyze", *spec, "--candidates", "w4a8,w7a8", "--joins", "--out", str(tmp_path / "run")]) == 0
    table = json.loads((tmp_path / "run" / "sensitivity.json").read_text())
    assert table["metadata"]["joins"] is True and table["metadata"]["integer_bias"] == 1
    from mixprec.analysis import Analysis
    assert not any("int32 bias" in n for n in Analysis.load(tmp_path / "run").problem().notes)
    assert main(["solve", str(tmp_path / "run"), "--budget", "bits=6", *spec, "--out", str(tmp_path / "plan.json")]) == 0
    assert json.loads((tmp_path / "plan.json").read_text())["metadata"]["joins"] is True
    out = tmp_path / "model.onnx"
    assert main(["export", *spec, "--plan", str(tmp_path / "plan.json"), "--target", "ort-cpu", "--out", str(out)]) == 0
    report = json.loads(out.with_name("model.report.json").read_text())
    assert [j["runtime_op"] for j in report["joins"]] == ["QLinearAdd"]
    assert all(layer["low_precision"] for layer in report["layers"])
    del table["metadata"]["integer_bias"]  # a run measured before the int32 bias rounding was simulated
    (tmp_path / "run" / "sensitivity.json").write_text(json.dumps(table))
    notes = Analysis.load(tmp_path / "run").problem().notes
    assert any("before mixprec simulated the int8 kernels' int32 bias rounding" in n for n in notes)


def test_a_saved_model_with_joins_reloads_onto_apply_without_calibration(tmp_path):
    model, batches = Residual().eval(), data((3, 6, 6))
    plan = uniform(model, batches, "w8a8", joins=True)
    quantized = apply(model, plan, batches, progress=False)
    torch.save(quantized.state_dict(), tmp_path / "model.pt")
    assert any(k.startswith("mixprec_joins.") for k in quantized.state_dict())
    rebuilt = apply(model, plan, batches, progress=False, calibrate=False)
    rebuilt.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    x = batches[1]
    assert torch.equal(rebuilt(x), quantized(x))


class ConvThenPool(nn.Module):
    """Convs whose outputs go on to a pooling (after BatchNorm and ReLU6), to another conv, and out."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(4)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 8, 1)
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.ReLU6()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)
        self.side = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        h = torch.clamp(self.stem(x), 0, 6)  # read by a conv alone: the conv's input quantizer is enough
        pooled = self.pool(self.act(self.bn(self.head(h))))
        return self.fc(pooled.flatten(1)), self.side(h)  # side's output is a model output


def test_a_conv_whose_output_no_quantizer_reads_gets_one_after_what_it_fuses():
    """ONNX Runtime runs a conv in integers only with a quantized output: the head conv (read by a pooling)
    gets a quantizer after its BatchNorm and ReLU6; the stem (read by convs) and side (an output) do not."""
    gm = insert_join_quantizers(ConvThenPool().eval())
    quantizers = join_quantizers(gm)
    assert sorted(q.where for q in quantizers.values()) == ["head.out"]
    pool = next(n for n in gm.graph.nodes if n.op == "call_module" and n.target == "pool")
    source = pool.args[0]
    assert isinstance(gm.get_submodule(source.target), JoinQuantizer)
    assert source.args[0].target == "act"  # after the ReLU6, which the integer conv takes in
    model, batches = ConvThenPool().eval(), data((3, 6, 6))
    p = uniform(model, batches, "w8a8")
    joined, plain = apply(model, p, batches, progress=False, joins=True), apply(model, p, batches, progress=False)
    a, b = joined(batches[0])[0], plain(batches[0])[0]
    assert not torch.equal(a, b) and float((a - b).abs().max()) < 0.05 * float(b.abs().max())


def test_a_conv_before_a_layer_the_plan_leaves_in_float_gets_an_output_quantizer():
    """Mixed int8/float plans: the conv before a float layer keeps an integer kernel only with its output
    quantized, so apply puts a join quantizer there; before an integer layer it needs none."""
    model, batches = ConvThenPool().eval(), data((3, 6, 6))
    groups = discover_groups(model, batches[0])
    mixed = Plan.uniform(groups, "w8a8", {"joins": True})
    mixed.assignments["{head,side}"] = "fp32"  # both read stem's output (after its clamp): in float
    quantized = apply(model, mixed, batches, progress=False)
    assert sorted(q.where for q in join_quantizers(quantized).values()) == ["stem.out"]  # head: float, none
    every = apply(model, uniform(model, batches, "w8a8", joins=True), batches, progress=False)
    assert sorted(q.where for q in join_quantizers(every).values()) == ["head.out"]
    gm = insert_join_quantizers(ConvThenPool().eval())  # no plan (an analysis): every layer counts as integer
    assert sorted(q.where for q in join_quantizers(gm).values()) == ["head.out"]


def test_optional_arguments_the_data_leaves_out_are_traced_as_none():
    from mixprec.joins import graph_module

    class Masked(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x, mask=None):
            h = self.a(x)
            if mask is not None:  # data-dependent on the argument's presence, as attention masks are
                h = h * mask
            return self.b(h + x)

    model, x, mask = Masked().eval(), torch.randn(3, 4), (torch.rand(3, 4) > 0.5).float()
    plain = graph_module(model, x)  # the data gives x alone: mask is traced as None
    with torch.no_grad():
        assert torch.equal(plain(x), model(x))
    with pytest.raises(AssertionError, match="mask has been specialized"):
        plain(x, mask)
    masked = graph_module(model, (x, mask))  # the data gives the mask: traced as a tensor
    with torch.no_grad():
        assert torch.equal(masked(x, mask), model(x, mask))
    quantized = apply(model, Plan.uniform(discover_groups(model, x), "w8a8"), [x, x], progress=False, joins=True)
    with torch.no_grad():
        assert torch.allclose(quantized(x), model(x), atol=0.1)


class FloatResiduals(nn.Module):
    """A transformer-like stack: residual adds between Linear layers, each followed by a LayerNorm."""
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.c, self.head = (nn.Linear(8, 8) for _ in range(4))
        self.ln = nn.LayerNorm(8)

    def forward(self, x):
        h = self.ln(x + self.a(x))
        h = h + self.b(torch.relu(h))
        return self.head(self.ln(h + self.c(h)))


def test_a_join_among_float_layers_stays_float_and_one_beside_an_integer_layer_is_quantized():
    """An add whose layers a plan leaves float enables no integer kernel: a quantizer there would only cost accuracy
    and time (a QLinearAdd between float layers), so only the adds an integer layer writes or reads are joined."""
    model, data = FloatResiduals().eval(), [torch.randn(16, 8) for _ in range(2)]
    groups = discover_groups(model, data[0])

    def joined(integer):
        plan = Plan.uniform(groups, "fp32")
        plan.assignments = {g: ("w8a8" if g in integer else "fp32") for g in plan.assignments}
        return sorted(n.split(".")[-1] for n in join_quantizers(apply(model, plan, data, joins=True, progress=False)))
    assert joined({"head"}) == []  # the head reads a LayerNorm, not a join
    assert joined({"b", "head"}) == ["add_1_in0", "add_1_in1", "add_1_out"]  # b writes (through nothing) add_1's input
    assert len(joined({"a", "b", "c", "head"})) == 8  # every add of an all-integer plan, as before
    assert len(join_quantizers(insert_join_quantizers(model))) == 8  # an analysis, before any plan: every add


def test_a_plan_measured_on_an_analysis_with_joins_is_the_model_apply_makes_of_it():
    """The analysis measures with joins at every join, calibrated through the float model; its plans (the guard's,
    the front's) were measured on that model, not on the one apply and export make of the plan (its joins where
    the plan has integer layers, calibrated with them): a front's figures were not its plans' (4 of 6 on digits)."""
    import mixprec
    model = Residual().eval()
    batches = data((3, 8, 8), n=4)
    x = data((3, 8, 8), n=1, size=32)[0]

    def score(m):
        with torch.no_grad():
            return float(m(x).sum())
    analysis = mixprec.analyze(model, batches, "w4a8,w8a8,fp32", target="ort-cpu", progress=False)
    assert analysis.joins
    for assignments in ({g: "w4a8" for g in analysis.groups},
                        {g: "fp32" if i == 1 else "w8a8" for i, g in enumerate(analysis.groups)}):
        measured = analysis.evaluator(score).measure(assignments).value
        plan = analysis.plan(assignments)
        assert measured == pytest.approx(score(apply(model, plan, batches, progress=False)), rel=1e-6)
