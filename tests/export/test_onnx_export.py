"""Export to ONNX Runtime CPU: what is written is what was simulated, and the report tells what runs."""
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(autouse=True)
def no_grad():
    with torch.no_grad():  # scoped to each test: the rest of the suite needs autograd
        yield

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from onnx import numpy_helper  # noqa: E402

from mixprec.apply import apply  # noqa: E402
from mixprec.errors import CandidateError, ModelError, PlanError  # noqa: E402
from mixprec.export import OrtModule, cpu_has_vnni, export, report_path  # noqa: E402
from mixprec.groups import discover_groups  # noqa: E402
from mixprec.plan import Plan  # noqa: E402
from mixprec.candidates import parse_candidate  # noqa: E402
from mixprec.export.onnx_graph import BIAS_LIMIT, fit_bias  # noqa: E402
from hypothesis import given, settings, strategies as st  # noqa: E402

# 8-bit weights where exported and simulated outputs must agree: ORT's u8 x s8 kernels saturate on CPUs
# without VNNI, where a plan for them takes 7-bit weights (profile ort-cpu-avx2)
W8 = "w8a8" if cpu_has_vnni() else "w7a8"


class BnCnn(nn.Module):
    """conv-BN-ReLU twice, a residual add, pooling and a linear: the shapes of a small ResNet."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 10)
        for bn in (self.bn1, self.bn2):  # non-trivial statistics, one negative scale
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.data.uniform_(0.5, 1.5)
            bn.bias.data.uniform_(-0.2, 0.2)
        self.bn1.weight.data[3] = -0.7

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))  # read by conv2 alone
        h = torch.relu(self.bn2(self.conv2(h)) + x.mean(dim=1, keepdim=True))
        return self.fc(h.mean(dim=(2, 3)))


class Mlp(nn.Module):
    """Linear layers on 2-D and 3-D inputs (Gemm and MatMul in ONNX), with inputs not a multiple of 32."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.up = nn.Linear(80, 64)
        self.down = nn.Linear(64, 48, bias=False)
        self.head = nn.Linear(48, 7)

    def forward(self, x):
        return self.head(torch.relu(self.down(torch.relu(self.up(x)))))


class SamePadCnn(nn.Module):
    """A conv whose output is zero-padded before a stride-2 conv: the "same" padding of TF-ported models
    (EfficientNet-Lite's Conv2dStaticSamePadding), then a conv reading the padded tensor."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.expand = nn.Conv2d(3, 16, 1)
        self.pad = nn.ZeroPad2d((0, 1, 0, 1))
        self.down = nn.Conv2d(16, 16, 3, stride=2)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        h = torch.clamp(self.expand(x), 0, 6)  # ReLU6, as EfficientNet-Lite
        h = torch.relu(self.down(self.pad(h)))
        return self.fc(h.mean(dim=(2, 3)))


def batches(shape, n=3, size=16):
    g = torch.Generator().manual_seed(2)
    return [torch.randn(size, *shape, generator=g) for _ in range(n)]


def plan(model, data, assignments):
    groups = discover_groups(model, data[0])
    p = Plan.uniform(groups, "fp32")
    for layer, cand in assignments.items():
        p.assignments[layer] = cand
    return p


def initializers(path):
    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


def test_int8_cnn_matches_simulation_and_folds_batchnorm(tmp_path):
    model, data = BnCnn().eval(), batches((3, 8, 8))
    p = plan(model, data, {"conv1": "w7a8", "conv2": "w7a8", "fc": "w7a8"})
    result = export(model, p, data, out=tmp_path / "cnn.onnx", progress=False)
    simulated = apply(model, p, data, progress=False, joins=True)  # the export adds join quantizers
    exported = OrtModule(result.path)
    x = batches((3, 8, 8), n=1, size=64)[0]
    a, b = simulated(x), exported(x)
    assert float((a - b).abs().max()) < 1e-2 * float(a.abs().max())
    assert float((a.argmax(1) == b.argmax(1)).float().mean()) >= 0.98
    assert result.agreement["calibration"] >= 0.98
    rows = {r["layer"]: r for r in result.layers}
    assert rows["conv1"]["batchnorm_folded"] and rows["conv2"]["batchnorm_folded"]
    # conv1's output goes through a ReLU into conv2's input quantizer: ORT fuses an integer conv
    assert rows["conv1"]["runtime_op"] == "QLinearConv" and rows["conv1"]["low_precision"]
    assert rows["fc"]["low_precision"]  # QGemm with a float output
    ops = {n.op_type for n in onnx.load(str(result.path)).graph.node}
    assert "BatchNormalization" not in ops and {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_a_zero_pad_before_an_int8_conv_goes_into_the_conv(tmp_path):
    """A zero Pad before a Conv becomes the Conv's own padding (an integer conv pads with the zero-point, which
    is 0.0 exactly): both convs run as integer kernels with nothing float between them, and the output is
    the simulated one."""
    model, data = SamePadCnn().eval(), batches((3, 9, 9))
    p = plan(model, data, {"expand": "w7a8", "down": "w7a8", "fc": "w7a8"})
    result = export(model, p, data, out=tmp_path / "pad.onnx", progress=False)
    rows = {r["layer"]: r for r in result.layers}
    assert rows["expand"]["runtime_op"] == "QLinearConv" and rows["expand"]["low_precision"]
    assert rows["down"]["runtime_op"] == "QLinearConv" and rows["down"]["low_precision"]
    graph = onnx.load(str(result.path)).graph
    assert not [n for n in graph.node if n.op_type in ("Pad", "Shape", "ConstantOfShape")]  # folded, and its
    down = next(n for n in graph.node if n.name == rows["down"]["node"])  # shape arithmetic removed
    pads = next(list(a.ints) for a in down.attribute if a.name == "pads")
    assert pads == [0, 0, 1, 1]  # (top, left, bottom, right) of ZeroPad2d((0, 1, 0, 1))
    # the export adds join quantizers: one on down's output, which a mean reads (an integer conv needs it)
    simulated, exported = apply(model, p, data, progress=False, joins=True), OrtModule(result.path)
    x = batches((3, 9, 9), n=1, size=64)[0]
    a, b = simulated(x), exported(x)
    assert float((a - b).abs().max()) < 1e-2 * float(a.abs().max())
    assert float((a.argmax(1) == b.argmax(1)).float().mean()) >= 0.98


def test_an_int8_conv_before_a_float_conv_still_runs_as_an_integer_kernel(tmp_path):
    """A mixed plan leaves ``down`` in float: ``expand`` gets its output quantized (a join quantizer, in the
    simulation too), so ONNX Runtime still runs it in integers; the output is the simulated one."""
    model, data = SamePadCnn().eval(), batches((3, 9, 9))
    p = plan(model, data, {"expand": "w7a8", "down": "fp32", "fc": "w7a8"})
    result = export(model, p, data, out=tmp_path / "mixed.onnx", progress=False)
    rows = {r["layer"]: r for r in result.layers}
    assert rows["expand"]["runtime_op"] == "QLinearConv" and rows["expand"]["low_precision"]
    assert not rows["down"]["low_precision"]
    simulated, exported = apply(model, p, data, progress=False, joins=True), OrtModule(result.path)
    x = batches((3, 9, 9), n=1, size=64)[0]
    a, b = simulated(x), exported(x)
    assert float((a - b).abs().max()) < 1e-2 * float(a.abs().max())


class PaddedFeatures(nn.Module):
    """A zero pad of the feature axis before a linear layer: not a Conv, so the Pad stays."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(4)
        self.up = nn.Linear(12, 15)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        return self.head(torch.nn.functional.pad(torch.relu(self.up(x)), (0, 1)))


def test_a_zero_pad_that_cannot_go_into_a_conv_is_quantized_on_both_sides(tmp_path):
    """Quantizing commutes with padding by zero, so the Q -> DQ pair is also put before a Pad that stays: the
    layer before it becomes an integer kernel, and the output is the simulated one."""
    model, data = PaddedFeatures().eval(), batches((12,))
    p = plan(model, data, {"up": "w7a8", "head": "w7a8"})
    result = export(model, p, data, out=tmp_path / "pad.onnx", progress=False)
    graph = onnx.load(str(result.path)).graph
    pad = next(n for n in graph.node if n.op_type == "Pad")
    producer = next(n for n in graph.node if pad.input[0] in n.output)
    assert producer.op_type == "DequantizeLinear"  # the pair before the Pad
    consumer = next(n for n in graph.node if pad.output[0] in n.input)
    assert consumer.op_type == "QuantizeLinear"  # and the layer's own pair after it
    simulated, exported = apply(model, p, data, progress=False), OrtModule(result.path)
    x = batches((12,), n=1, size=64)[0]
    a, b = simulated(x), exported(x)
    assert float((a - b).abs().max()) < 1e-2 * float(a.abs().max())


def test_written_codes_are_the_simulated_weights(tmp_path):
    model, data = BnCnn().eval(), batches((3, 8, 8))
    p = plan(model, data, {"conv1": "w7a8", "conv2": "w4a8", "fc": "w8a8"})
    result = export(model, p, data, out=tmp_path / "cnn.onnx", progress=False)
    simulated = apply(model, p, data, progress=False)
    inits = initializers(result.path)
    fc_w = inits["fc.weight_quantized"].astype(np.float64) * inits["fc.weight_scale"][:, None]
    assert np.allclose(fc_w, simulated.fc.layer.weight.detach().numpy(), rtol=0, atol=1e-7)
    codes = inits["conv2.weight_quantized"]
    assert codes.dtype == np.int8 and codes.min() >= -8 and codes.max() <= 7  # 4-bit codes in int8
    # BatchNorm folded: the codes stay, each channel's scale is multiplied by gamma / sqrt(var + eps)
    bn = model.bn1
    factor = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().numpy()
    w = simulated.conv1.layer.weight.detach().numpy().reshape(16, -1)
    folded = inits["conv1.weight_quantized"].reshape(16, -1) * inits["conv1.weight_scale"][:, None]
    assert np.allclose(folded, w * factor[:, None], rtol=1e-5, atol=1e-7)


def test_a_channel_a_batchnorm_silences_keeps_its_bias_in_int32(tmp_path):
    """A BatchNorm gain of 1e-9 folds to a weight scale of about 1e-11: the channel's bias (its whole output)
    would overflow int32 at input scale x weight scale. It must not be clipped to almost nothing."""
    model, data = BnCnn().eval(), batches((3, 8, 8))
    model.bn2.weight.data[5], model.bn2.bias.data[5] = 1e-9, 0.8
    p = plan(model, data, {"conv1": "w7a8", "conv2": "w7a8", "fc": "w7a8"})
    result = export(model, p, data, out=tmp_path / "cnn.onnx", progress=False)
    rows = {r["layer"]: r for r in result.layers}
    assert rows["conv2"]["bias_refit_channels"] == 1 and "bias_refit_channels" not in rows["conv1"]
    assert any("1 channel(s) of 1 layer(s) (e.g. conv2)" in note for note in result.notes)
    inits = initializers(result.path)
    bias = inits["conv2.bias_quantized"].astype(np.float64) * inits["conv2.bias_scale"]
    bn = model.bn2
    factor = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().double().numpy()
    folded = (model.conv2.bias.detach().double().numpy() - bn.running_mean.double().numpy()) * factor \
        + bn.bias.detach().double().numpy()
    assert abs(bias[5] - folded[5]) < 1e-6 and abs(folded[5] - 0.8) < 1e-3
    assert np.abs(inits["conv2.bias_quantized"]).max() <= 2 ** 30
    simulated, exported = apply(model, p, data, progress=False, joins=True), OrtModule(result.path)
    x = batches((3, 8, 8), n=1, size=64)[0]
    a, b = simulated(x), exported(x)
    assert float((a - b).abs().max()) < 1e-2 * float(a.abs().max())


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2 ** 31 - 1), st.integers(2, 8))
def test_fit_bias_keeps_every_int32_bias_in_range_and_moves_weights_by_at_most_half_a_step(seed, bits):
    rng = np.random.default_rng(seed)
    fmt = parse_candidate(f"w{bits}a8").weight
    out, k = 6, 5
    channel = rng.uniform(1e-3, 1e-1, out) * rng.choice([-1, 1], out)
    tiny = rng.random(out) < 0.5
    channel[tiny] = rng.uniform(1e-13, 1e-10, int(tiny.sum())) * rng.choice([-1, 1], int(tiny.sum()))
    codes = rng.integers(fmt.qmin, fmt.qmax + 1, (out, k))
    scales = np.repeat(channel[:, None], k, axis=1)
    bias, input_scale = rng.uniform(-3, 3, out), float(rng.uniform(1e-3, 1e-1))
    new_codes, new_scales, refit = fit_bias(codes, scales, bias, input_scale, fmt)
    need = np.abs(bias) / (input_scale * np.abs(new_scales[:, 0]))
    assert need.max() <= BIAS_LIMIT * (1 + 1e-9)
    moved = np.flatnonzero(new_scales[:, 0] != channel)
    assert refit == moved.size and set(moved) <= set(np.flatnonzero(tiny))
    assert np.all(np.sign(new_scales[:, 0]) == np.sign(channel))
    assert new_codes.min() >= fmt.qmin and new_codes.max() <= fmt.qmax
    weights_before, weights_after = codes * scales, new_codes * new_scales
    step = np.abs(new_scales)
    assert np.all(np.abs(weights_after - weights_before) <= step / 2 * (1 + 1e-9))


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2 ** 31 - 1), st.sampled_from(["w8a8", "w4a8", "w4g32", "w3g16", "w8g64", "w2g8"]),
       st.integers(1, 5), st.integers(1, 100))
def test_layer_codes_keep_one_scale_per_group_and_give_back_every_element_exactly(seed, name, rows, k):
    from mixprec.export.onnx_graph import layer_codes
    from mixprec.export.targets import Realisation
    from mixprec.quantizers import quantize_weight, weight_qparams
    w = torch.randn(rows, k, generator=torch.Generator().manual_seed(seed))
    cand = parse_candidate(name)
    codes = layer_codes("l", w, quantize_weight(w, cand.weight, "mse"), cand, Realisation("qdq"), None, "mse")
    scale, zero_point = weight_qparams(w, cand.weight, "mse")
    groups = -(-k // codes.group_size)
    assert codes.codes.dtype == np.int16 and codes.group_scales.shape == (rows, groups)
    assert np.array_equal(codes.scales, scale.numpy()) and np.array_equal(codes.zero_points, zero_point.numpy())
    back = (codes.codes - codes.zero_points) * codes.scales.astype(np.float64)
    assert np.allclose(back, quantize_weight(w, cand.weight, "mse").numpy(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["w4g16", "w8a8", "w3g16-asym", "w8"])
def test_layer_codes_made_a_few_rows_at_a_time_are_those_made_whole(name, monkeypatch):
    from mixprec.export import onnx_graph
    from mixprec.export.targets import Realisation
    from mixprec.quantizers import quantize_weight
    w = torch.randn(37, 50, generator=torch.Generator().manual_seed(3))
    cand = parse_candidate(name)
    sim = quantize_weight(w, cand.weight, "mse")
    whole = onnx_graph.layer_codes("l", w, sim, cand, Realisation("qdq"), None, "mse")
    from mixprec import quantizers
    monkeypatch.setattr(quantizers, "CHUNK_VALUES", 120)  # two rows at a time
    rows = onnx_graph.layer_codes("l", w, sim, cand, Realisation("qdq"), None, "mse")
    assert np.array_equal(whole.codes, rows.codes) and np.array_equal(whole.group_scales, rows.group_scales)
    assert np.array_equal(whole.group_zero_points, rows.group_zero_points) and whole.group_size == rows.group_size


def test_fit_bias_gives_a_zero_scale_channel_a_usable_scale():
    fmt = parse_candidate("w8a8").weight
    codes, scales = np.zeros((2, 3), dtype=np.int64), np.array([[0.0] * 3, [0.02] * 3])
    new_codes, new_scales, refit = fit_bias(codes, scales, np.array([0.0, 0.1]), 0.05, fmt)
    assert refit == 1 and new_scales[0, 0] == 1.0 and not new_codes[0].any() and new_scales[1, 0] == 0.02


def test_join_quantizers_make_the_layer_before_a_residual_add_an_integer_kernel(tmp_path):
    model, data = BnCnn().eval(), batches((3, 8, 8))
    p = plan(model, data, {"conv1": "w7a8", "conv2": "w7a8", "fc": "fp32"})
    result = export(model, p, data, out=tmp_path / "cnn.onnx", progress=False)
    rows = {r["layer"]: r for r in result.layers}
    assert rows["conv2"]["runtime_op"] == "QLinearConv" and not result.fallbacks
    assert [j["runtime_op"] for j in result.joins] == ["QLinearAdd"]
    assert any("1 of the 1 residual add" in n for n in result.notes)
    assert json.loads(report_path(result.path).read_text())["joins"][0]["low_precision"]
    simulated = apply(model, p, data, progress=False, joins=True)
    x = batches((3, 8, 8), n=1, size=64)[0]
    a, b = simulated(x), OrtModule(result.path)(x)
    assert float((a - b).abs().max()) < 1e-2 * float(a.abs().max())
    # one Q -> DQ pair on the residual tensor however many read it
    graph = onnx.load(str(result.path)).graph
    quantized = [n.input[0] for n in graph.node if n.op_type == "QuantizeLinear"]
    assert len(quantized) == len(set(quantized))


def test_the_join_note_is_given_where_a_join_quantizer_is_added_and_only_there(tmp_path):
    # SamePadCnn has no residual add, but its last conv's output goes to a mean: the int8 graph quantizes it there
    model, data = SamePadCnn().eval(), batches((3, 9, 9))
    p = plan(model, data, {"expand": "w8a8", "down": "w8a8", "fc": "w8a8"})
    result = export(model, p, data, out=tmp_path / "cnn.onnx", progress=False)
    assert not result.joins and any("join quantizers are added" in n for n in result.notes)
    mlp, mlp_data = Mlp().eval(), batches((80,))
    p = plan(mlp, mlp_data, {"up": "w8a8", "down": "w8a8", "head": "w8a8"})
    result = export(mlp, p, mlp_data, out=tmp_path / "mlp.onnx", progress=False)
    assert not any("join quantizers are added" in n for n in result.notes)


def test_float_fallback_is_reported_not_silent(tmp_path):
    model, data = BnCnn().eval(), batches((3, 8, 8))
    p = plan(model, data, {"conv1": "w7a8", "conv2": "w7a8", "fc": "fp32"})
    result = export(model, p, data, out=tmp_path / "cnn.onnx", progress=False, joins=False)
    rows = {r["layer"]: r for r in result.layers}
    # without join quantizers conv2's output goes to a float residual add: no integer kernel
    assert not rows["conv2"]["low_precision"] and "float fallback" in rows["conv2"]["note"]
    assert [r["layer"] for r in result.fallbacks] == ["conv2"]
    assert any("run in float" in n for n in result.notes)
    assert rows["fc"]["format"] == "float32" and rows["fc"]["note"] == "float, as planned"
    saved = json.loads(report_path(result.path).read_text())
    assert {r["layer"]: r["low_precision"] for r in saved["layers"]} == {"conv1": True, "conv2": False, "fc": False}


def _dequantize_nbits(inits, name, n, k, bits, block):
    packed, scales = inits[f"{name}.weight_packed"], inits[f"{name}.weight_scales"].reshape(n, -1)
    blocks = scales.shape[1]
    if bits == 4:
        codes = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(n, blocks, block)
    else:
        codes = packed.reshape(n, blocks, block)
    zp = inits.get(f"{name}.weight_zero_points")
    if zp is None:
        zeros = np.full((n, blocks), 2 ** (bits - 1))
    elif bits == 4:
        zeros = np.stack([zp & 0x0F, zp >> 4], axis=-1).reshape(n, -1)[:, :blocks]
    else:
        zeros = zp.reshape(n, blocks)
    w = (codes.astype(np.float64) - zeros[:, :, None]) * scales[:, :, None]
    return w.reshape(n, blocks * block)[:, :k]


@pytest.mark.parametrize("cands,bits,blocks", [
    ({"up": "w4g32", "down": "w8", "head": "w4g16-asym"}, {"up": 4, "down": 8, "head": 4}, {"up": 32, "head": 16}),
    ({"up": "w3g48", "down": "w4", "head": "w6g32"}, {"up": 4, "down": 4, "head": 8}, {"up": 16, "head": 32}),
])
def test_matmulnbits_dequantizes_exactly_to_the_simulated_weights(tmp_path, cands, bits, blocks):
    model, data = Mlp().eval(), batches((5, 80))  # 3-D input: MatMul; 2-D would be Gemm
    p = plan(model, data, cands)
    result = export(model, p, data, out=tmp_path / "mlp.onnx", accuracy_level=0, progress=False)
    simulated = apply(model, p, data, progress=False)
    inits = initializers(result.path)
    for name in ("up", "down", "head"):
        layer = getattr(simulated, name).layer
        n, k = layer.weight.shape
        node = next(x for x in onnx.load(str(result.path)).graph.node if x.op_type == "MatMulNBits"
                    and x.input[1] == f"{name}.weight_packed")
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["bits"] == bits[name] and attrs["K"] == k and attrs["N"] == n
        if name in blocks:
            assert attrs["block_size"] == blocks[name]
        w = _dequantize_nbits(inits, name, n, k, attrs["bits"], attrs["block_size"])
        assert np.allclose(w, layer.weight.detach().numpy(), rtol=0, atol=1e-6)
    assert all(r["runtime_op"] == "MatMulNBits" and r["low_precision"] for r in result.layers)
    x = batches((5, 80), n=1)[0]
    assert torch.allclose(OrtModule(result.path)(x), simulated(x), atol=1e-4)  # accuracy_level 0: float inputs


def test_int8_linear_on_3d_inputs(tmp_path):
    model, data = Mlp().eval(), batches((5, 80))
    p = plan(model, data, {"up": "w7a8", "down": "w7a8", "head": "fp16"})
    result = export(model, p, data, out=tmp_path / "mlp.onnx", progress=False)
    x = batches((5, 80), n=1)[0]
    simulated = apply(model, p, data, progress=False)
    assert torch.allclose(OrtModule(result.path)(x), simulated(x), atol=2e-3)
    rows = {r["layer"]: r for r in result.layers}
    assert rows["up"]["low_precision"]  # through a ReLU into down's input quantizer
    assert not rows["down"]["low_precision"]  # into a float16 layer: no output quantizer, float MatMul
    assert not rows["head"]["low_precision"] and "float16" in rows["head"]["format"]


def test_candidates_the_target_cannot_run_are_listed(tmp_path):
    model, data = BnCnn().eval(), batches((3, 8, 8))
    p = plan(model, data, {"conv1": "fp8", "conv2": "w4g32a8", "fc": "w8a8"})
    with pytest.raises(CandidateError) as exc:
        export(model, p, data, out=tmp_path / "x.onnx", progress=False)
    message = str(exc.value)
    assert "2 layer(s)" in message and "conv1 (Conv2d, fp8)" in message and "conv2 (Conv2d, w4g32a8)" in message
    assert "ort-cpu runs:" in message and "w<B>a8" in message
    assert not list(tmp_path.iterdir())  # refused before anything is written


def test_reduce_range_needs_seven_bit_weights(tmp_path):
    model, data = BnCnn().eval(), batches((3, 8, 8))
    p = plan(model, data, {"conv1": "w8a8", "conv2": "w7a8", "fc": "w7a8"})
    with pytest.raises(CandidateError, match="conv1 .*w7a8"):
        export(model, p, data, out=tmp_path / "x.onnx", reduce_range=True, progress=False)


def test_plan_for_another_model_is_refused(tmp_path):
    data = batches((5, 80))
    p = plan(Mlp().eval(), data, {"up": "w8a8"})
    with pytest.raises(PlanError, match="another model"):
        export(BnCnn().eval(), p, batches((3, 8, 8)), out=tmp_path / "x.onnx", progress=False)


def test_a_plan_for_a_smaller_model_of_the_same_layers_is_refused_and_a_hand_plan_says_what_stays_float(tmp_path):
    import warnings
    from mixprec.groups import discover_groups
    torch.manual_seed(0)
    small = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4)).eval()
    big = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 4)).eval()
    data = batches((4, 8))
    solved = Plan.uniform(discover_groups(small, data[0]), "w8a8")  # names "0" and "2", both layers of big
    with pytest.raises(PlanError, match=r"1 layer\(s\) the plan does not name, e.g. \['4'\].*another model"):
        export(big, solved, data, out=tmp_path / "x.onnx", progress=False)
    assert not (tmp_path / "x.onnx").exists()
    by_hand = Plan({"first": "w8a8"}, {"first": ["0"]})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export(big, by_hand, data, out=tmp_path / "y.onnx", progress=False)
    assert any("2 layer(s) of the model are not in the plan and stay float" in str(w.message) for w in caught)


def test_weights_off_the_grid_are_refused(tmp_path):
    model, data = BnCnn().eval(), batches((3, 8, 8))
    p = plan(model, data, {"conv1": "w7a8"})
    quantized = apply(model, p, data, progress=False)
    with torch.no_grad():
        quantized.conv1.layer.weight.add_(1e-3)
    with pytest.raises(ModelError, match="not on the grid"):
        export(model, p, data, out=tmp_path / "x.onnx", quantized=quantized, progress=False)


def test_a_model_quantized_by_another_plan_is_refused(tmp_path):
    """Quantized at w8a8 everywhere, exported for a plan that keeps fc float: the file would be neither plan, and
    its "simulated" metric the other plan's."""
    model, data = BnCnn().eval(), batches((3, 8, 8))
    p = plan(model, data, {"conv1": "w8a8", "conv2": "w8a8", "fc": "fp32"})
    other = apply(model, plan(model, data, {"conv1": "w8a8", "conv2": "w8a8", "fc": "w8a8"}), data, progress=False)
    with pytest.raises(PlanError, match="holds layer 'fc' at w8a8, the plan at fp32 .* made from another plan"):
        export(model, p, data, out=tmp_path / "x.onnx", quantized=other, progress=False)


def test_evaluation_of_both_models_and_atomic_files(tmp_path):
    model, data = BnCnn().eval(), batches((3, 8, 8))
    p = plan(model, data, {"conv1": "w7a8", "conv2": "w7a8", "fc": "w7a8"})
    images = batches((3, 8, 8), n=2, size=32)
    labels = [model(x).argmax(1) for x in images]

    def evaluate(m):  # a user's function: reads the device from the parameters, as many do
        device = next(m.parameters()).device
        correct = sum(int((m(x.to(device)).argmax(1) == y).sum()) for x, y in zip(images, labels))
        return {"main": "top1", "top1": 100 * correct / 64}

    result = export(model, p, data, out=tmp_path / "cnn.onnx", evaluate=evaluate, progress=False)
    assert result.simulated.name == "top1" and abs(result.simulated.value - result.exported.value) <= 100 / 64 * 2
    assert result.agreement["evaluation"] >= 0.95
    assert sorted(f.name for f in tmp_path.iterdir()) == ["cnn.onnx", "cnn.report.json"]
    saved = json.loads((tmp_path / "cnn.report.json").read_text())
    assert saved["exported"]["value"] == result.exported.value and saved["size_bytes"] == result.path.stat().st_size


def test_agreement_on_the_evaluation_data_needs_the_same_inputs_in_both_calls(tmp_path):
    """A shuffled loader, or one that reads fewer samples on its second call, gives the two models other inputs:
    comparing their predictions call by call measured a false 19 % agreement, or crashed on the sizes."""
    model, data = BnCnn().eval(), batches((3, 8, 8))
    p = plan(model, data, {"conv1": "w7a8", "conv2": "w7a8", "fc": "w7a8"})
    images = batches((3, 8, 8), n=4, size=16)
    calls = []

    def shuffled(m):  # each call draws its own order
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(len(calls)))
        calls.append(1)
        return float(sum(int(m(images[i]).argmax(1).sum()) for i in order))

    def fewer(m):  # the second call reads half the samples
        calls.append(1)
        return float(sum(int(m(x).argmax(1).sum()) for x in images[: 4 // len(calls)]))

    for evaluate in (shuffled, fewer):
        calls.clear()
        result = export(model, p, data, out=tmp_path / f"{evaluate.__name__}.onnx", evaluate=evaluate, progress=False)
        assert "evaluation" not in result.agreement and result.noise() is None
        assert any("gave the simulated and the exported model different inputs" in n for n in result.notes)
    result = export(model, p, data, out=tmp_path / "fixed.onnx", progress=False,
                    evaluate=lambda m: float(sum(int(m(x).argmax(1).sum()) for x in images)))
    assert result.agreement["evaluation"] > 0.9 and result.outputs["evaluation"] == 64


def test_a_gap_beyond_the_noise_is_flagged_for_an_accuracy_given_as_a_fraction():
    from mixprec.evaluation import EvalResult
    from mixprec.export import ExportResult, _gap_note
    for scale in (1.0, 0.01):
        result = ExportResult(Path("m.onnx"), "ort-cpu", [], 0, EvalResult("accuracy", 90 * scale),
                              EvalResult("accuracy", 42 * scale), {"evaluation": 0.52}, {"evaluation": 100})
        assert _gap_note(result, False) is not None
        result.exported = EvalResult("accuracy", 89.9 * scale)  # within the noise
        assert _gap_note(result, False) is None


def test_an_evaluation_that_restores_the_mode_it_found_leaves_the_quantized_model_in_eval_mode(tmp_path):
    """export wraps the simulated model to record its predictions; an evaluation that sets eval() and then
    restores the mode it found must restore the model's mode, not the wrapper's (a BatchNorm in training mode
    would compute with batch statistics from then on)."""
    model, data = BnCnn().eval(), batches((3, 8, 8))
    p = plan(model, data, {"conv1": "w7a8", "conv2": "w7a8", "fc": "w7a8"})
    quantized = apply(model, p, data, progress=False, joins=True).eval()
    x = batches((3, 8, 8), n=1, size=8)[0]
    before = quantized(x).detach()

    def evaluate(m):
        was_training = m.training
        m.eval()
        with torch.no_grad():
            value = float(m(x).sum())
        m.train(was_training)
        return value

    export(model, p, data, out=tmp_path / "cnn.onnx", quantized=quantized, evaluate=evaluate, progress=False)
    assert not quantized.training and not any(m.training for m in quantized.modules())
    assert torch.equal(quantized(x).detach(), before)


def test_ort_module_reports_a_broken_file(tmp_path):
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"not an onnx file")
    with pytest.raises(ModelError, match="ONNX Runtime cannot load"):
        OrtModule(path)


def test_a_file_with_an_op_ort_lacks_is_reported_with_the_node(tmp_path):
    from onnx import TensorProto, helper
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    relu = helper.make_node("Relu", ["x"], ["h"], name="fine")
    fancy = helper.make_node("FancyOp", ["h"], ["y"], name="layer3/fancy", domain="com.example")
    graph = helper.make_graph([relu, fancy], "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                      helper.make_opsetid("com.example", 1)]), tmp_path / "f.onnx")
    with pytest.raises(ModelError, match=r"FancyOp.*\(node 'layer3/fancy', op com.example:FancyOp\)"):
        OrtModule(tmp_path / "f.onnx")


def test_export_is_a_pipeline_verb():
    import mixprec
    import mixprec.export.latency as latency  # the package's modules import by their dotted names
    assert callable(mixprec.export) and "export" in mixprec.__all__ and mixprec.export.export is export
    assert mixprec.export.check_target is not None and latency.profile is mixprec.profile_latency


def test_an_analysis_for_a_target_never_chooses_what_the_target_cannot_run(tmp_path):
    from mixprec.analysis import Analysis, analyze

    model, data = BnCnn().eval(), batches((3, 8, 8))
    analysis = analyze(model, data, "w4g16,w7a8", "roundoff", tmp_path / "run", target="ort-cpu", progress=False)
    # grouped weights on a conv: the ort-cpu target refuses them; on the Linear layer they are MatMulNBits
    assert analysis.refused == {"conv1": ["w4g16"], "conv2": ["w4g16"]}
    for budget in ("bits=7.1", "bits=8"):  # 7.07 is the least the target allows
        plan = analysis.solve(budget, guard=False)
        assert plan.assignments["conv1"] == "w7a8" and plan.assignments["conv2"] == "w7a8"
        export(model, plan, data, out=tmp_path / "m.onnx", progress=False)  # the target takes it
    reloaded = Analysis.load(tmp_path / "run")
    assert reloaded.target == "ort-cpu" and reloaded.refused == analysis.refused
    assert any("cannot run 2" in n for n in reloaded.problem().notes)


class Tokens(nn.Module):
    """An embedding and a head, and a layer whose output is thrown away (an encoder's unused pooler)."""

    def __init__(self, dim: int = 32):
        super().__init__()
        self.embed, self.head, self.pooler = nn.Embedding(50, dim), nn.Linear(dim, 10), nn.Linear(dim, dim)

    def forward(self, ids):
        h = self.embed(ids)
        self.pooler(h[:, 0])  # computed, never returned: torch leaves it out of the ONNX graph
        return self.head(h)


@pytest.mark.parametrize("embed, dim, kind", [("w8", 32, "s8 rows (per row, 8-bit"),
                                              ("w4g16", 32, "s8 rows (4-bit codes in groups of 16"),
                                              ("w8-asym", 32, "u8 rows (per row"),
                                              ("w4g16", 24, "float32 rows holding the simulated 4-bit")])
def test_an_embedding_is_written_as_its_rows_and_an_unused_layer_is_left_out(tmp_path, embed, dim, kind):
    import onnx
    from onnx import numpy_helper

    torch.manual_seed(0)
    model = Tokens(dim).eval()
    data = [torch.randint(0, 50, (4, 6)) for _ in range(2)] + [torch.randint(0, 50, (2, 9))]  # other lengths too
    p = plan(model, data[:2], {"embed": embed, "head": "w8", "pooler": "w8"})
    result = export(model, p, data[:2], out=tmp_path / "tokens.onnx", accuracy_level=0, progress=False)
    rows = {r["layer"]: r for r in result.layers}
    assert kind in rows["embed"]["format"] and rows["embed"]["runtime_op"] == "Gather"
    assert rows["pooler"]["absent"] and "not in the exported graph" in rows["pooler"]["note"]
    whole = dim % 16 == 0 or embed != "w4g16"
    # integer rows are low precision (each lookup dequantizes its own rows); partial groups are float, and said
    assert [r["layer"] for r in result.fallbacks] == ([] if whole else ["embed"])
    assert rows["embed"]["note"].startswith("integer rows in the file" if whole else "float by design: float32 rows")
    tables = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(result.path)).graph.initializer}
    if whole:  # no float copy of the table is left in the file
        assert tables["embed.weight_quantized"].dtype in (np.int8, np.uint8) and "embed.weight" not in tables
    simulated = apply(model, p, data, progress=False)
    for ids in data:
        torch.testing.assert_close(OrtModule(result.path)(ids), simulated(ids), rtol=0, atol=1e-5)


class TiedLM(nn.Module):
    """An embedding whose weight the output layer reads too (tied, as in GPT-2 and SmolLM2)."""

    def __init__(self):
        super().__init__()
        self.embed, self.mix = nn.Embedding(40, 32), nn.Linear(32, 32)
        self.out = nn.Linear(32, 40, bias=False)
        self.out.weight = self.embed.weight

    def forward(self, ids):
        return self.out(torch.relu(self.mix(self.embed(ids))))


def test_a_tied_embedding_and_output_layer_each_take_their_own_reader_of_the_weight(tmp_path):
    torch.manual_seed(0)
    model = TiedLM().eval()
    data = [torch.randint(0, 40, (4, 6)) for _ in range(2)]
    groups = discover_groups(model, data[0])
    tied = next(g.name for g in groups.groups if len(g.layers) == 2)  # one group: one tensor, one format
    p = plan(model, data, {tied: "w8", "mix": "w4g16"})
    assert p.layer_candidates() == {"embed": "w8", "out": "w8", "mix": "w4g16"}
    result = export(model, p, data, out=tmp_path / "tied.onnx", accuracy_level=0, progress=False)
    rows = {r["layer"]: r for r in result.layers}
    assert rows["embed"]["runtime_op"] == "Gather" and rows["out"]["runtime_op"] == "MatMulNBits"
    simulated = apply(model, p, data, progress=False)
    torch.testing.assert_close(OrtModule(result.path)(data[0]), simulated(data[0]), rtol=0, atol=1e-5)
    # kept float, the output layer reads the tied weight through a Transpose: its runtime op is still found
    floated = export(model, plan(model, data, {tied: "fp32", "mix": "w4g16"}), data, out=tmp_path / "float.onnx",
                     accuracy_level=0, progress=False)
    assert {r["layer"]: r["runtime_op"] for r in floated.layers} == {"embed": "Gather", "out": "MatMul",
                                                                     "mix": "MatMulNBits"}


class Unexportable(nn.Module):
    """A model with an op the ONNX exporter has no symbolic for (aten::logcumsumexp at opset 17)."""

    def __init__(self):
        super().__init__()
        self.l = nn.Linear(8, 8)

    def forward(self, x):
        return torch.logcumsumexp(self.l(x), dim=-1)


def test_a_failed_torch_export_is_one_line_and_its_graph_goes_to_a_log_file(capfd):
    from mixprec.export.onnx_graph import export_float

    with pytest.raises(ModelError, match="aten::logcumsumexp") as info:
        export_float(Unexportable(), torch.randn(2, 8))
    printed = capfd.readouterr()
    assert "Torch IR graph" not in printed.out + printed.err  # not hundreds of lines on the terminal
    log = Path(str(info.value).split("failed on: ")[1].rstrip(")"))
    assert "aten::logcumsumexp" in log.read_text()  # kept for whoever wants the graph
    log.unlink()



class TwoLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(256, 192), nn.Linear(192, 96)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


@pytest.mark.parametrize("a, b", [("w8a8d32", "w4g64a8d64"), ("w4a8d64", "w8a8d16")])
def test_dynamic_block_inputs_are_simulated_as_matmulnbits_computes_them(tmp_path, a, b):
    """MatMulNBits at accuracy_level 4 quantizes each row's blocks of inputs to int8: candidates a8d<N> say so,
    and the exported file computes what the simulation does, whatever accuracy_level the export is given."""
    torch.manual_seed(0)
    model = TwoLinear().eval()
    data = [torch.randn(8, 256) * 3 for _ in range(2)]
    p = plan(model, data, {"a": a, "b": b})
    simulated = apply(model, p, data, progress=False)
    for level in (0, 4):
        result = export(model, p, data, out=tmp_path / "m.onnx", accuracy_level=level, progress=False)
        assert all("accuracy_level 4" in r["format"] for r in result.layers)
        assert not any("simulated float inputs" in n for n in result.notes)
        assert all(r["runtime_op"] == "MatMulNBits" for r in result.layers)
        torch.testing.assert_close(OrtModule(result.path)(data[1]), simulated(data[1]), rtol=0, atol=2e-5)


def test_weight_only_layers_at_accuracy_level_4_are_said_to_differ_from_the_simulation(tmp_path):
    torch.manual_seed(0)
    model = TwoLinear().eval()
    data = [torch.randn(8, 256) for _ in range(2)]
    p = plan(model, data, {"a": "w8", "b": "w4g64"})
    noted = export(model, p, data, out=tmp_path / "m.onnx", accuracy_level=4, progress=False).notes
    assert any("2 weight-only layer(s)" in n and "w8a8d32" in n for n in noted)
    exact = export(model, p, data, out=tmp_path / "m.onnx", accuracy_level=0, progress=False).notes
    assert not any("simulated float inputs" in n for n in exact)


class Encoder(nn.Module):
    """Keyword inputs, as a Hugging Face encoder takes them: forward's order is not the tokenizer's dict order."""

    def __init__(self):
        super().__init__()
        self.embed, self.types, self.head = nn.Embedding(50, 16), nn.Embedding(2, 16), nn.Linear(16, 8)

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        h = self.embed(input_ids) + (0 if token_type_ids is None else self.types(token_type_ids))
        mask = attention_mask.unsqueeze(-1).float()
        return self.head((h * mask).sum(1) / mask.sum(1))


def _tokens(batch: int, length: int) -> dict:
    ids = torch.randint(1, 50, (batch, length))
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[0, length // 2:] = 0  # a padded row: a mask read as token types (or the reverse) changes the output
    # the dict in a tokenizer's order (input_ids, token_type_ids, attention_mask), not forward's
    return {"input_ids": ids, "token_type_ids": (torch.arange(length) % 2).expand(batch, length).clone(),
            "attention_mask": mask}


@pytest.mark.parametrize("cand", ["fp32", W8])
def test_dict_inputs_are_named_in_the_order_forward_takes_them(tmp_path, cand):
    torch.manual_seed(0)
    model = Encoder().eval()
    data = [_tokens(4, 7), _tokens(3, 5)]
    p = Plan.uniform(discover_groups(model, data[0]), cand)
    joins = cand != "fp32"  # the int8 graph's embedding sum on an 8-bit grid: simulated alike
    result = export(model, p, data, out=tmp_path / "encoder.onnx", progress=False, joins=joins)
    exported = OrtModule(result.path)
    assert exported.input_names == ["input_ids", "attention_mask", "token_type_ids"]
    simulated = apply(model, p, data, progress=False, joins=joins)
    for x in data:
        torch.testing.assert_close(exported(**x), simulated(**x), rtol=0, atol=1e-4)


class WithIds(nn.Module):
    """Takes a batch's ids (strings) and a flag beside its tensors, in a dict or positionally."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.fc = nn.Linear(6, 3)

    def forward(self, x, ids=None, scale: float = 1.0, bias=None):
        out = self.fc(x) * scale
        return out if bias is None else out + bias


@pytest.mark.parametrize("form", ["dict", "tuple"])
def test_inputs_that_are_not_tensors_are_constants_of_the_file_and_ignored_when_given(tmp_path, form):
    model = WithIds().eval()
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(4, 6, generator=g) for _ in range(2)]
    bias = torch.randn(4, 3, generator=g)
    ids = [f"item{i}" for i in range(4)]
    if form == "dict":
        data = [{"ids": ids, "x": x, "scale": 2.0, "bias": bias} for x in xs]
    else:
        data = [(x, ids, 2.0, bias) for x in xs]
    p = Plan.uniform(discover_groups(model, data[0]), W8)
    result = export(model, p, data, out=tmp_path / "ids.onnx", progress=False)
    exported = OrtModule(result.path)
    assert exported.input_names == ["x", "bias"]  # forward's names, from a dict or by position
    assert any("are not tensors" in n and ("'ids', 'scale'" if form == "dict" else "[1, 2]") in n
               for n in result.notes)
    simulated = apply(model, p, data, progress=False, joins=True)  # the add of the bias runs as an integer kernel
    for item in data:
        if form == "dict":
            torch.testing.assert_close(exported(**item), simulated(**item), rtol=0, atol=1e-4)
        else:
            torch.testing.assert_close(exported(*item), simulated(*item), rtol=0, atol=1e-4)
    # the flag is the example's: 2.0 is in the file
    torch.testing.assert_close(exported(xs[0], bias) if form == "tuple" else exported(x=xs[0], bias=bias),
                               simulated(xs[0], None, 2.0, bias), rtol=0, atol=1e-4)


def test_a_dict_input_forward_does_not_name_is_a_clear_error(tmp_path):
    model = Encoder().eval()
    data = [{**_tokens(2, 4), "labels": torch.zeros(2, dtype=torch.long)}]
    with pytest.raises(ModelError, match=r"'labels'.*does not name"):
        export(model, Plan.uniform(discover_groups(model, {k: v for k, v in data[0].items() if k != "labels"}), "fp32"),
               data, out=tmp_path / "encoder.onnx", progress=False)


def test_a_transformer_encoder_exports_its_attention_projections_as_integer_kernels(tmp_path):
    from test_attention import TinyViT, tokens
    model, data = TinyViT().eval(), tokens()
    p = Plan.uniform(discover_groups(model, data[0]), W8)
    assert "encoder.layers.0.self_attn.{q_proj,k_proj,v_proj}" in p.assignments  # nn.MultiheadAttention, explicit
    result = export(model, p, data, out=tmp_path / "vit.onnx", progress=False)
    assert result.joins and all(j["low_precision"] for j in result.joins)  # it traces: its residual adds are int8
    assert any("inputs of shape (*, 6, 4)" in n for n in result.notes)  # its sequence length is fixed
    simulated = apply(model, p, data, progress=False, joins=True)  # the model the export simulated
    x = tokens(n=1, size=32)[0]
    a, b = simulated(x), OrtModule(result.path)(x)
    # the integer kernels round a few values to the neighbouring code (through a softmax, one output moved ~1.5 %
    # of the largest): the outputs agree to a fraction of a per cent on average, and no value is far off
    assert float((a - b).abs().mean()) < 1e-3 * float(a.abs().max())
    assert float((a - b).abs().max()) < 2e-2 * float(a.abs().max())
    rows = {r["layer"]: r for r in result.layers}
    for layer in ("q_proj", "k_proj", "v_proj", "out_proj"):
        assert rows[f"encoder.layers.1.self_attn.{layer}"]["low_precision"], rows[f"encoder.layers.1.self_attn.{layer}"]


class TwoHeads(nn.Module):
    """Returns a dict holding a tensor and a tuple: the exported file gives them back in that structure."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(4)
        self.body = nn.Linear(6, 12)
        self.head = nn.Linear(12, 3)

    def forward(self, x):
        h = torch.relu(self.body(x))
        return {"logits": self.head(h), "extra": (h, h.sum(0))}


def test_top1_is_taken_on_a_class_axis_only():
    from mixprec.export import top1
    assert top1(torch.tensor([[0.1, 0.9], [2.0, 1.0]])).tolist() == [1, 0]  # (batch, classes)
    assert top1(torch.zeros(2, 5, 7)).shape == (2, 5)  # (batch, tokens, vocabulary)
    seg = torch.zeros(1, 3, 2, 2)
    seg[0, 2, 1, 0] = 1.0  # (batch, classes, height, width): the class axis is 1
    assert top1(seg).tolist() == [[[0, 0], [2, 0]]]
    assert top1(torch.zeros(8)) is None and top1(torch.zeros(8, 1)) is None  # a regression's outputs
    assert top1(torch.zeros(2, 1, 4, 4)) is None  # an image of one channel
    assert top1(torch.zeros(2, 3, dtype=torch.long)) is None
    # an output that reproduces a float input's channels is a signal or a picture, not classes
    assert top1(torch.zeros(2, 8, 16), torch.zeros(2, 8, 16)) is None  # a 1-D autoencoder
    assert top1(torch.zeros(2, 3, 8, 8), {"image": torch.zeros(2, 3, 4, 4)}) is None  # RGB in, RGB out (upscaled)
    assert top1(torch.zeros(2, 21, 4, 4), torch.zeros(2, 3, 4, 4)).shape == (2, 4, 4)  # segmentation
    assert top1(torch.zeros(2, 50, 30), torch.zeros(2, 50, 80)).shape == (2, 50)  # frame classes from features
    assert top1(torch.zeros(2, 5, 7), torch.zeros(2, 5, dtype=torch.long)).shape == (2, 5)  # tokens in
    assert top1(torch.zeros(2, 10), torch.zeros(2, 10)).shape == (2,)  # (batch, classes): as many features


class Regressor(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(4)
        self.body, self.out = nn.Linear(6, 16), nn.Linear(16, 1)

    def forward(self, x):
        return self.out(torch.relu(self.body(x))).squeeze(-1)


class Pixels(nn.Module):
    """uint8 images, scaled inside forward."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(9)
        self.conv, self.fc = nn.Conv2d(3, 8, 3), nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x.float() / 255)).mean((2, 3)))


def test_an_integer_image_keeps_its_shape_and_says_so(tmp_path):
    model = Pixels().eval()
    g = torch.Generator().manual_seed(1)
    data = [torch.randint(0, 256, (4, 3, 10, 10), generator=g, dtype=torch.uint8) for _ in range(2)]
    result = export(model, plan(model, data, {"conv": W8, "fc": W8}), data, out=tmp_path / "u8.onnx",
                    progress=False)
    assert any("inputs of shape (*, 3, 10, 10)" in n for n in result.notes)  # not a token axis: fixed, and said
    assert OrtModule(result.path)(data[0][:1]).shape == (1, 4)  # another batch size runs


class WithLoss(nn.Module):
    """A Hugging Face-style forward: optional labels, a loss when they are given."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(10)
        self.fc = nn.Linear(6, 3)

    def forward(self, features, labels=None):
        logits = self.fc(features)
        if labels is None:
            return {"logits": logits}
        return {"loss": nn.functional.cross_entropy(logits, labels), "logits": logits}


def test_labels_in_training_batches_are_left_out_of_the_file(tmp_path):
    model = WithLoss().eval()
    g = torch.Generator().manual_seed(2)
    data = [{"features": torch.randn(8, 6, generator=g), "labels": torch.randint(0, 3, (8,), generator=g)}
            for _ in range(2)]
    result = export(model, plan(model, data, {"fc": W8}), data, out=tmp_path / "loss.onnx", progress=False)
    assert any("leaves out the input(s) ['labels']" in n for n in result.notes)
    exported = OrtModule(result.path)
    assert exported.input_names == ["features"]
    out = exported(**data[0])  # the batch as the user's evaluation gives it: its labels are ignored
    assert list(out) == ["logits"] and result.agreement["calibration"] == 1.0

    def accuracy(m):  # a user's evaluation, passing the labels in as its batches carry them
        return float((m(**data[1])["logits"].argmax(-1) == data[1]["labels"]).float().mean())
    result = export(model, plan(model, data, {"fc": W8}), data, out=tmp_path / "loss2.onnx", progress=False,
                    evaluate=accuracy)
    assert result.simulated.value == result.exported.value


def test_the_se_example_exports_as_simulated_with_its_residual_add_in_integers(tmp_path):
    import importlib.util
    path = Path(__file__).resolve().parents[2] / "examples" / "se_digits.py"
    spec = importlib.util.spec_from_file_location("example_se_digits", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)  # untrained: the structure is what is checked
    model, data = module.SENet().eval(), batches((1, 8, 8), n=2)
    p = Plan.uniform(discover_groups(model, data[0]), W8)
    result = export(model, p, data, out=tmp_path / "se.onnx", progress=False)
    assert len(result.joins) == 1 and result.joins[0]["low_precision"]  # the block's add
    simulated = apply(model, p, data, progress=False, joins=True)
    assert result.sqnr_db["calibration"] > 30
    assert (OrtModule(result.path)(data[0]).argmax(1) == simulated(data[0]).argmax(1)).float().mean() > 0.9


def test_a_regression_is_compared_by_the_sqnr_of_its_outputs_not_by_top1(tmp_path):
    model, data = Regressor().eval(), batches((6,))
    result = export(model, plan(model, data, {"body": W8, "out": W8}), data, out=tmp_path / "r.onnx",
                    progress=False)
    assert "calibration" not in result.agreement  # the argmax over a batch of scalars would mean nothing
    assert 30 < result.sqnr_db["calibration"] < float("inf")  # int8 kernels, not bit-exact, but close
    wide = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4)).eval()  # 4 targets a sample: an argmax
    pairs = [(x, torch.randn(len(x), 4)) for x in data]  # is no prediction beside float targets of its shape
    result = export(wide, plan(wide, data, {"0": W8, "2": W8}), pairs, out=tmp_path / "w.onnx", progress=False,
                    evaluate=lambda m: float(sum(((m(x) - y) ** 2).mean() for x, y in pairs)))
    assert result.agreement == {} and result.noise() is None and result.sqnr_db["calibration"] > 30
    assert any("a regression" in n and "SQNR alone" in n for n in result.notes)
    classifier, cdata = Mlp().eval(), batches((80,))
    result = export(classifier, plan(classifier, cdata, {"up": W8}), cdata, out=tmp_path / "c.onnx", progress=False)
    assert result.agreement["calibration"] > 0.9 and result.sqnr_db["calibration"] > 30
    assert json.loads(report_path(result.path).read_text())["sqnr_db"]["calibration"] > 30


class RmsMlp(nn.Module):
    """nn.RMSNorm (aten::rms_norm, which torch's exporter cannot write at opset 17) and F.rms_norm without a
    weight or an eps."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(6)
        self.up, self.norm, self.down = nn.Linear(12, 16), nn.RMSNorm(16, eps=1e-5), nn.Linear(16, 3)
        with torch.no_grad():
            self.norm.weight.uniform_(0.5, 1.5)

    def forward(self, x):
        return self.down(nn.functional.rms_norm(self.norm(self.up(x)), (16,)))


def test_rms_norm_exports_as_the_ops_it_computes(tmp_path):
    model, data = RmsMlp().eval(), batches((12,))
    p = plan(model, data, {"up": "w8", "down": "w8"})
    result = export(model, p, data, out=tmp_path / "rms.onnx", progress=False, accuracy_level=0)  # float inputs
    simulated = apply(model, p, data, progress=False)
    assert torch.allclose(OrtModule(result.path)(data[0]), simulated(data[0]), atol=1e-4)


def test_a_complex_tensor_is_refused_with_a_hint(tmp_path):
    class Complex(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return torch.view_as_real(torch.view_as_complex(self.fc(x).reshape(-1, 2, 2))).reshape(-1, 4)

    model, data = Complex().eval(), batches((4,))
    with pytest.raises(ModelError, match="no complex numbers"):
        export(model, plan(model, data, {"fc": "w8"}), data, out=tmp_path / "c.onnx", progress=False)


class Seq2Seq(nn.Module):
    """An encoder-decoder's shapes: two token inputs of their own lengths, one table held by three layers of
    which one is never called (T5's ``shared``), positions from a cumulative sum of a mask (Whisper's), and
    torch.diff (transformers' packed-sequence check)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(7)
        self.shared = nn.Embedding(50, 16)
        self.encoder_embed, self.decoder_embed = nn.Embedding(50, 16), nn.Embedding(50, 16)
        self.encoder_embed.weight = self.decoder_embed.weight = self.shared.weight
        self.mix = nn.Linear(16, 16)

    def forward(self, input_ids, decoder_input_ids):
        memory = self.encoder_embed(input_ids).mean(1, keepdim=True)
        positions = (decoder_input_ids != 0).cumsum(-1)  # a cumulative sum of booleans
        steps = torch.diff(decoder_input_ids, dim=-1, prepend=decoder_input_ids[:, :1])
        h = self.decoder_embed(decoder_input_ids) + 0.01 * positions[..., None] + 0.001 * steps[..., None]
        return self.mix(h + memory)


def test_an_encoder_decoder_exports_with_two_lengths_and_a_table_held_thrice(tmp_path):
    model = Seq2Seq().eval()
    g = torch.Generator().manual_seed(8)
    data = [{"input_ids": torch.randint(0, 50, (4, 12), generator=g),
             "decoder_input_ids": torch.randint(0, 50, (4, 6), generator=g)} for _ in range(2)]
    p = Plan.uniform(discover_groups(model, data[0]), "w8")  # the three holders of the table: one group
    p.assignments["mix"] = W8
    result = export(model, p, data, out=tmp_path / "s2s.onnx", progress=False)
    assert {r["layer"]: r.get("absent", False) for r in result.layers} == {
        "shared": True, "encoder_embed": False, "decoder_embed": False, "mix": False}
    # added by default, as the int8 layer needs them, only at the add mix reads (the two before it are among float
    # layers: the embeddings are weight-only); simulated with them below
    assert [j["node"] for j in result.joins] == ["/Add_2"]
    simulated = apply(model, p, data, progress=False, joins=True)
    other = {"input_ids": torch.randint(0, 50, (3, 9), generator=g),  # other lengths, each its own
             "decoder_input_ids": torch.randint(0, 50, (3, 4), generator=g)}
    assert torch.allclose(OrtModule(result.path)(**other), simulated(**other), atol=1e-4)


def test_a_data_parallel_model_exports_as_the_module_it_wraps(tmp_path):
    model, data = Mlp().eval(), batches((80,))
    wrapped = nn.DataParallel(model)  # torch's exporter refuses the wrapper itself
    p = plan(wrapped, data, {"up": W8, "down": "w4a8"})
    assert set(p.assignments) == {"up", "down", "head"}
    # with one GPU, nn.DataParallel moves the model onto it: the model is traced there, with its input
    result = export(wrapped, p, data, out=tmp_path / "dp.onnx", progress=False)
    simulated = apply(wrapped, p, data, progress=False)
    place = next(simulated.parameters()).device
    assert torch.allclose(OrtModule(result.path)(data[0]), simulated(data[0].to(place)).cpu(), atol=1e-4)


def test_several_outputs_come_back_in_the_structure_the_model_returned(tmp_path):
    model, data = TwoHeads().eval(), batches((6,))
    p = plan(model, data, {"body": W8, "head": W8})
    result = export(model, p, data, out=tmp_path / "heads.onnx", progress=False)
    simulated = apply(model, p, data, progress=False)
    x = batches((6,), n=1, size=5)[0]  # another batch size: the batch axis of each output is dynamic
    got, want = OrtModule(result.path)(x), simulated(x)
    assert list(got) == ["logits", "extra"] and isinstance(got["extra"], tuple)
    # the file's own outputs are named by their keys, for a runtime that reads them without mixprec
    assert [o.name for o in onnx.load(result.path).graph.output] == ["logits", "extra.0", "extra.1"]
    assert got["logits"].shape == (5, 3) and got["extra"][0].shape == (5, 12) and got["extra"][1].shape == (12,)
    # within a step of the output's grid: a code at a rounding tie may go either way in the integer kernels
    assert torch.allclose(got["logits"], want["logits"], atol=1e-2)
    assert torch.allclose(got["extra"][1], want["extra"][1], atol=1e-3)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_model_exports_as_float32_around_its_integer_kernels(tmp_path, dtype):
    model = Mlp().eval().to(dtype)
    data = [x.to(dtype) for x in batches((80,))]
    p = plan(model, data, {"up": W8, "down": "w4a8", "head": W8})
    result = export(model, p, data, out=tmp_path / "half.onnx", progress=False)
    assert any("float32 around its integer" in n for n in result.notes)
    simulated = apply(model, p, data, progress=False)
    x = data[0]
    got, want = OrtModule(result.path)(x), simulated(x).float()  # the file takes the model's own input
    assert got.dtype == torch.float32
    assert float((got - want).abs().max()) < 0.03 * float(want.abs().max())
    codes = initializers(result.path)
    up = simulated.get_submodule("up")
    weights = [v for k, v in codes.items() if k.startswith("up.weight") and v.dtype == np.int8]
    assert weights and weights[0].shape == tuple(up.layer.weight.shape)  # the 8-bit codes, read back from bf16
    assert all(r["low_precision"] for r in result.layers)


class Siamese(nn.Module):
    """One encoder (conv, conv, linear) called on both inputs, and one linear called twice on 3-D inputs."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.encoder = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                                     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 8))
        self.mix = nn.Linear(8, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, a, b):
        h = torch.stack([self.encoder(a), self.encoder(b)], 1)  # (N, 2, 8)
        return self.head(torch.relu(self.mix(torch.relu(self.mix(h)))).mean(1))


def test_a_layer_the_model_calls_twice_is_written_at_every_call(tmp_path):
    model = Siamese().eval()
    g = torch.Generator().manual_seed(6)
    pairs = [(torch.randn(4, 1, 6, 6, generator=g), torch.randn(4, 1, 6, 6, generator=g)) for _ in range(3)]
    data = [(pair, torch.zeros(4)) for pair in pairs]  # a 2-tuple item is (inputs, labels)
    p = Plan.uniform(discover_groups(model, pairs[0]), W8)
    result = export(model, p, data, out=tmp_path / "siamese.onnx", progress=False)
    rows = {r["layer"]: r for r in result.layers}
    assert rows["encoder.0"]["calls"] == 2 and rows["mix"]["calls"] == 2 and "calls" not in rows["head"]
    assert len(set(rows["mix"]["runtime_nodes"])) == 2  # each call's kernel found (profile times them all)
    assert all(r["low_precision"] for r in result.layers)
    simulated = apply(model, p, data, progress=False, joins=bool(result.joins))
    with torch.no_grad():
        want = simulated(*pairs[1])
    got = OrtModule(result.path)(*pairs[1])
    assert float((got - want).abs().max()) < 1e-2 * float(want.abs().max())


class TransposedUse(nn.Module):
    """A classifier whose encoder weight also decodes, read as a tensor: F.linear(h, enc.weight.t())."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(8)
        self.enc, self.head = nn.Linear(16, 16), nn.Linear(16, 3)

    def forward(self, x):
        h = torch.relu(self.enc(x))
        return self.head(h), nn.functional.linear(h, self.enc.weight.t())


def test_a_weight_also_read_as_a_tensor_is_refused_not_written_as_a_second_call(tmp_path):
    model = TransposedUse().eval()
    data = [torch.randn(8, 16, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    groups = discover_groups(model, data[0])  # the groups leave enc float: its weight is read outside its call
    assert [layer.name for layer in groups.excluded] == ["enc"]
    by_hand = Plan({"enc": W8, "head": W8}, {"enc": ["enc"], "head": ["head"]})  # a plan that quantizes it anyway
    with pytest.raises(ModelError, match=r"layer 'enc': its weight is read by 2 nodes.*calls the layer 1 time"):
        export(model, by_hand, data, out=tmp_path / "t.onnx", progress=False)
    assert not (tmp_path / "t.onnx").exists()
    kept = Plan.uniform(groups, W8)  # the layer left float: its weight is written as it is
    result = export(model, kept, data, out=tmp_path / "kept.onnx", progress=False)
    with torch.no_grad():
        want = model(data[1])[1]
    got = OrtModule(result.path)(data[1])[1]
    assert float((got - want).abs().max()) < 1e-4 * float(want.abs().max())


class KeywordsOnly(nn.Module):
    """forward(**feats): the inputs only by the names the batches give them."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(8, 4), nn.Linear(8, 4)

    def forward(self, **feats):
        return self.a(feats["left"]) + self.b(feats["right"])


def test_a_forward_that_takes_only_keyword_arguments_analyses_and_exports(tmp_path):
    from mixprec import analyze
    model = KeywordsOnly().eval()
    g = torch.Generator().manual_seed(0)
    data = [{"left": torch.randn(16, 8, generator=g), "right": torch.randn(16, 8, generator=g)} for _ in range(2)]
    analysis = analyze(model, data, "w4a8,w8a8", "sqnr", progress=False)  # the fx forks bind **feats
    assert analysis.table.values.shape == (2, 2) and np.isfinite(analysis.table.values).all()
    plan = Plan.uniform(discover_groups(model, data[0]), W8)
    result = export(model, plan, data, target="ort-cpu", out=tmp_path / "kw.onnx", progress=False)
    simulated = apply(model, plan, data, progress=False, joins=True)
    exported = OrtModule(result.path)
    with torch.no_grad():
        for batch in data:
            assert torch.allclose(exported(**batch), simulated(**batch), atol=1e-5)


class WithNoneOutput(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc, self.aux = nn.Linear(8, 4), nn.Linear(8, 2)

    def forward(self, x):
        return {"logits": self.fc(x), "aux": None, "nested": [self.aux(x), {"deep": x.sum(1)}]}


def test_a_dict_output_comes_back_from_the_file_with_its_none_values(tmp_path):
    model = WithNoneOutput().eval()
    data = [torch.randn(16, 8, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    plan = Plan.uniform(discover_groups(model, data[0]), W8)
    result = export(model, plan, data, target="ort-cpu", out=tmp_path / "none.onnx", progress=False)
    out, simulated = OrtModule(result.path)(data[0]), apply(model, plan, data, progress=False)(data[0])
    assert list(out) == ["logits", "aux", "nested"] and out["aux"] is None
    assert torch.allclose(out["logits"], simulated["logits"], atol=2e-3)  # the int8 kernel's rounding
    assert torch.allclose(out["nested"][1]["deep"], simulated["nested"][1]["deep"], atol=1e-5)


def test_a_failing_evaluation_leaves_the_file_with_its_report(tmp_path, capsys):
    model = WithNoneOutput().eval()
    data = [torch.randn(16, 8, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    plan = Plan.uniform(discover_groups(model, data[0]), W8)

    def broken(m):
        raise ValueError("the user's evaluation fails")
    with pytest.raises(Exception, match="the user's evaluation fails"):
        export(model, plan, data, target="ort-cpu", out=tmp_path / "m.onnx", evaluate=broken, progress=False)
    assert (tmp_path / "m.onnx").exists() and report_path(tmp_path / "m.onnx").exists()
    assert "the comparison with the simulation stopped" in capsys.readouterr().out


def test_an_export_interrupted_after_its_file_never_leaves_the_former_files_report(tmp_path, monkeypatch):
    """Ctrl-C while the new file is compared with the simulation: the report beside it is the new file's."""
    import sys
    exporting = sys.modules["mixprec.export"]  # the package (the name mixprec.export is its function)
    model = WithNoneOutput().eval()
    data = [torch.randn(16, 8, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    groups = discover_groups(model, data[0])
    out = tmp_path / "m.onnx"
    export(model, Plan.uniform(groups, "w4"), data, target="ort-cpu", out=out, progress=False)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(exporting, "agreement", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export(model, Plan.uniform(groups, W8), data, target="ort-cpu", out=out, progress=False)
    written = json.loads(report_path(out).read_text())
    assert {row["candidate"] for row in written["layers"]} == {W8}


def test_an_exported_metric_beyond_rounding_noise_of_the_simulated_is_said_plainly(tmp_path):
    from mixprec.evaluation import EvalResult
    from mixprec.export import ExportResult, _gap_note

    def result(simulated, exported, agreement):
        return ExportResult(tmp_path / "m.onnx", "ort-cpu", [], 0, EvalResult("top1", simulated),
                            EvalResult("top1", exported), {"evaluation": agreement}, {"evaluation": 600})
    far = result(76.21, 71.52, 0.8978)  # 61 of 600 differ: noise at most 1.30 points; the gap is 4.69
    note = _gap_note(far, saturating=True)
    assert note and "-4.69 from the simulated 76.21" in note and "w7a8" in note and "ort-cpu-avx2" in note
    assert "saturation" not in _gap_note(far, saturating=False)
    assert "branches or loops on tensor values" in _gap_note(far, saturating=False, branching=True)
    assert _gap_note(result(76.21, 75.71, 0.99), saturating=True) is None  # 0.50 within twice the noise (2 x 0.41)
    assert _gap_note(result(76.21, 76.21, 1.0), saturating=True) is None
    # every prediction the same, the figures apart: the evaluation function's doing, not the file's (seen: an
    # evaluation comparing with a reference model built anew, unseeded, on each call gave 100 against 0)
    same = _gap_note(result(100.0, 0.0, 1.0), saturating=True)
    assert same and "same prediction on all 600" in same and "evaluation function" in same
    assert "saturation" not in same


@dataclasses.dataclass
class HeadsOut:
    """A user's own output class (not a Hugging Face ModelOutput): what the evaluation reads as ``out.logits``."""
    logits: torch.Tensor
    aux: torch.Tensor
    extra: tuple = ()
    missing: torch.Tensor | None = None


@dataclasses.dataclass(frozen=True)
class InnerOut:
    hidden: torch.Tensor
    pooled: torch.Tensor = dataclasses.field(init=False, default=None)  # set after construction

    def __post_init__(self):
        object.__setattr__(self, "pooled", self.hidden.mean(1))


class DataclassHeads(nn.Module):
    """Returns a @dataclass holding tensors, a tuple with a nested (frozen) dataclass, and a None."""

    def __init__(self, inner: bool = True):
        super().__init__()
        torch.manual_seed(4)
        self.body = nn.Linear(6, 12)
        self.head = nn.Linear(12, 3)
        self.aux = nn.Linear(12, 1)
        self.inner = inner

    def forward(self, x):
        h = torch.relu(self.body(x))
        return HeadsOut(self.head(h), self.aux(h), extra=(InnerOut(h) if self.inner else h, h.sum(0)))


def test_a_dataclass_output_exports_and_comes_back_as_that_dataclass(tmp_path):
    model, data = DataclassHeads(inner=False).eval(), batches((6,))
    p = plan(model, data, {"body": W8, "{head,aux}": W8})
    result = export(model, p, data, out=tmp_path / "dc.onnx", progress=False)
    simulated = apply(model, p, data, progress=False)
    x = batches((6,), n=1, size=5)[0]  # another batch size: the batch axis of each output is dynamic
    got, want = OrtModule(result.path)(x), simulated(x)
    assert type(got) is HeadsOut and got.missing is None
    assert got.logits.shape == (5, 3) and got.aux.shape == (5, 1)
    assert got.extra[0].shape == (5, 12) and got.extra[1].shape == (12,)
    # the user's evaluation reads out.logits as it does on the simulated model: within a step of the output grid
    torch.testing.assert_close(got.logits, want.logits, rtol=0, atol=1e-2)
    torch.testing.assert_close(got.aux, want.aux, rtol=0, atol=1e-2)
    torch.testing.assert_close(got.extra[1], want.extra[1], rtol=0, atol=1e-2)
    assert result.agreement["calibration"] > 0.9  # export's own checks read the dataclass's logits


def test_a_nested_dataclass_with_a_field_set_after_construction_comes_back_as_itself(tmp_path):
    # joins off: torch.fx (which places them) rebuilds a dataclass output with its init=False fields as arguments
    model, data = DataclassHeads().eval(), batches((6,))
    p = plan(model, data, {"body": W8, "{head,aux}": W8})
    result = export(model, p, data, out=tmp_path / "dc.onnx", progress=False, joins=False)
    got, want = OrtModule(result.path)(data[0]), apply(model, p, data, progress=False, joins=False)(data[0])
    assert type(got) is HeadsOut and type(got.extra[0]) is InnerOut
    torch.testing.assert_close(got.extra[0].pooled, want.extra[0].pooled, rtol=0, atol=1e-3)  # set after construction
    torch.testing.assert_close(got.extra[0].hidden, want.extra[0].hidden, rtol=0, atol=1e-3)
    torch.testing.assert_close(got.logits, want.logits, rtol=0, atol=1e-2)


def test_a_dataclass_output_whose_class_cannot_be_found_comes_back_as_a_dict_with_a_warning(tmp_path, monkeypatch):
    model, data = DataclassHeads(inner=False).eval(), batches((6,))
    p = plan(model, data, {"body": W8, "{head,aux}": W8})
    result = export(model, p, data, out=tmp_path / "dc.onnx", progress=False)
    from mixprec.export import ort as ort_module
    monkeypatch.setattr(ort_module, "_find_class", lambda name, file, fields: (None, "its module is not loaded"))
    exported = OrtModule(result.path)
    with pytest.warns(UserWarning, match=r"dataclass HeadsOut .*its module is not loaded.*dict of its fields"):
        got = exported(data[0])
    assert isinstance(got, dict) and got.logits.shape == (16, 3) and got["aux"].shape == (16, 1)
    assert got.missing is None and got.extra[1].shape == (12,)


class Opaque:
    def __init__(self, logits):
        self.logits = logits


class OpaqueOut(nn.Module):
    def __init__(self, wrap):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(6, 3)
        self.wrap = wrap

    def forward(self, x):
        return self.wrap(self.fc(x))


@pytest.mark.parametrize("wrap, named", [
    (Opaque, r"its output is a .*Opaque"),
    (lambda t: {"logits": t, "count": 3}, r"its output\['count'\] \(in a dict\) is an int"),
    (lambda t: HeadsOut(t, t, extra=(t, "label")), r"its output.extra\[1\] \(in a HeadsOut\) is a str"),
])
def test_an_output_an_onnx_file_cannot_hold_is_a_clear_error_before_torch_exports(tmp_path, monkeypatch, wrap, named):
    from mixprec.export import onnx_graph as graph
    model, data = OpaqueOut(wrap).eval(), batches((6,))
    p = plan(model, data, {"fc": W8})

    def not_reached(*args, **kwargs):
        raise AssertionError("torch.onnx.export ran")
    monkeypatch.setattr(graph, "_export", not_reached)
    import sys
    monkeypatch.setattr(sys.modules["mixprec.apply"], "apply", not_reached)  # before any calibration, too
    with pytest.raises(ModelError, match=named) as caught:
        export(model, p, data, out=tmp_path / "bad.onnx", progress=False)
    assert "dataclasses" in str(caught.value) and "dicts" in str(caught.value)
    with pytest.raises(ModelError, match=named):  # the check the export makes, on the float model
        graph.check_model_output(model, data[0])


@pytest.mark.parametrize("batch_first", [False, True, "transposed"])
def test_a_sequence_first_model_is_told_its_file_fixes_the_batch(tmp_path, batch_first):
    """nn.MultiheadAttention's default layout reads (length, batch, features): axis 0 of the file, the one left
    dynamic, is then the sequence, and the batch is fixed at the example's. A model that transposes its
    batch-first input for such a module itself is not told so: its file's axis 0 is the batch."""
    class Attend(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn, self.head = nn.MultiheadAttention(16, 2, batch_first=batch_first is True), nn.Linear(16, 3)

        def forward(self, x):
            if batch_first == "transposed":
                x = x.transpose(0, 1)
                return self.head(self.attn(x, x, x, need_weights=False)[0].transpose(0, 1))
            return self.head(self.attn(x, x, x, need_weights=False)[0])

    torch.manual_seed(0)
    model = Attend().eval()
    data = [torch.randn(5, 4, 16) for _ in range(2)]
    groups = discover_groups(model, data[0])
    result = export(model, Plan.uniform(groups, "w8"), data, out=tmp_path / "a.onnx", progress=False)
    said = [n for n in result.notes if "sequence-first" in n]
    assert bool(said) == (batch_first is False)
    if said:
        assert "'attn'" in said[0] and "batch (axis 1) is fixed" in said[0]


class WithDefaults(nn.Module):
    """forward's defaulted parameters: torch's exporter would make each an input of the file."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(8, 4)

    def forward(self, x, temperature: float = 2.0, mask=None):
        out = self.fc(x) / temperature
        return out if mask is None else out * mask


class KeywordsWithDefaults(WithDefaults):
    def forward(self, *, image, temperature=2.0):
        return self.fc(image) / temperature


@pytest.mark.parametrize("form", ["tensor", "tuple", "dict"])
def test_defaulted_parameters_the_example_does_not_give_are_constants_not_inputs(tmp_path, form):
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(16, 8, generator=g) for _ in range(2)]
    model = (KeywordsWithDefaults() if form == "dict" else WithDefaults()).eval()
    data = {"tensor": xs, "tuple": [(x,) for x in xs], "dict": [{"image": x} for x in xs]}[form]
    plan = Plan.uniform(discover_groups(model, data[0]), W8)
    result = export(model, plan, data, target="ort-cpu", out=tmp_path / "defaults.onnx", progress=False)
    import onnx
    inputs = [i.name for i in onnx.load(str(result.path)).graph.input]
    assert len(inputs) == 1, inputs  # no temperature (float64) or mask input
    exported, simulated = OrtModule(result.path), apply(model, plan, data, progress=False, joins=True)
    call = {"tensor": lambda m, b: m(b), "tuple": lambda m, b: m(*b), "dict": lambda m, b: m(**b)}[form]
    with torch.no_grad():
        for batch in data:  # the default divides: a file that ignored it would be twice too large
            assert torch.allclose(call(exported, batch), call(simulated, batch), atol=2e-3)


def test_a_recurrent_state_input_keeps_its_batch_axis_dynamic(tmp_path):
    """nn.GRU's state is (layers, batch, hidden): its axis 1, not 0, is the batch, so the file runs other batches."""
    class Stateful(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.inp, self.rnn, self.head = nn.Linear(6, 8), nn.GRU(8, 8, batch_first=True), nn.Linear(8, 3)

        def forward(self, x, h0):
            out, h = self.rnn(self.inp(x), h0)
            return self.head(out)

    model = Stateful().eval()
    g = torch.Generator().manual_seed(0)
    data = [((torch.randn(4, 5, 6, generator=g), torch.zeros(1, 4, 8)), torch.zeros(4, dtype=torch.long))
            for _ in range(2)]  # (inputs, labels) pairs
    plan = Plan.uniform(discover_groups(model, data[0][0]), W8)
    result = export(model, plan, data, target="ort-cpu", out=tmp_path / "gru.onnx", progress=False)
    import onnx
    shapes = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
              for i in onnx.load(str(result.path)).graph.input}
    assert shapes["h0"] == [1, "batch", 8] and shapes["x"] == ["batch", 5, 6]
    assert any("(1, *, 8)" in n for n in result.notes)
    x, h0 = torch.randn(7, 5, 6, generator=g), torch.zeros(1, 7, 8)  # another batch size
    simulated = apply(model, plan, data, progress=False, joins=True)
    with torch.no_grad():
        assert torch.allclose(OrtModule(result.path)(x, h0), simulated(x, h0), atol=2e-3)


def test_a_float16_input_layer_the_runtime_fuses_into_matmulnbits_is_said_and_a_session_setting_undoes_it(tmp_path):
    import onnxruntime as ort
    model, data = Mlp().eval(), batches((5, 80))
    result = export(model, plan(model, data, {"up": "w8a16", "down": "w8a16", "head": "w8a16"}), data,
                    out=tmp_path / "x.onnx", progress=False)
    fused = [row for row in result.layers if row.get("runtime_op") == "MatMulNBits"]
    said = [n for n in result.notes if "fuses the DequantizeLinear + MatMul" in n]
    assert bool(fused) == bool(said)  # said exactly when this ONNX Runtime fuses them
    if fused:  # and the session setting the note names keeps float inputs
        options = ort.SessionOptions()
        options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
        options.optimized_model_filepath = str(tmp_path / "opt.onnx")
        ort.InferenceSession(str(tmp_path / "x.onnx"), options, providers=["CPUExecutionProvider"])
        levels = [a.i for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node if n.op_type == "MatMulNBits"
                  for a in n.attribute if a.name == "accuracy_level"]
        assert levels and set(levels) == {0}


def test_a_file_far_larger_than_the_plans_bytes_says_why(tmp_path):
    # 4-bit weight-only conv codes are stored (and read by the kernels) as int8: the file is not the plan's bytes
    import mixprec
    model, data = BnCnn().eval(), batches((3, 8, 8))
    solved = mixprec.analyze(model, data, "w4,w8", progress=False).solve("bytes=w4", guard=False)
    result = export(model, solved, data, out=tmp_path / "x.onnx", progress=False)
    planned = solved.metadata["predicted_costs"]["bytes"]
    said = [n for n in result.notes if n.startswith("the file holds")]
    assert result.size_bytes > 1.25 * planned and len(said) == 1
    assert f"{result.size_bytes:,} bytes, {result.size_bytes / planned:.2f}x the plan's bytes cost" in said[0]
    assert "keep their codes in 8-bit storage" in said[0]


def test_a_float_conv_onnx_runtime_quantizes_itself_is_reported_as_such(tmp_path):
    """Between int8 convs, a conv the plan keeps float reads a dequantized input and feeds a quantized one:
    ONNX Runtime's WeightBiasQuantization gives it per-tensor int8 weights (a QLinearConv). The report says so,
    not "float, as planned", and a session without that optimizer runs it float, as simulated."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 64, 4)).eval()
    data = batches((3, 8, 8))
    p = plan(model, data, {"0": W8, "2": "fp32", "4": W8, "7": W8})
    result = export(model, p, data, out=tmp_path / "m.onnx", progress=False)
    row = {r["layer"]: r for r in result.layers}["2"]
    assert row["runtime_op"] == "QLinearConv" and row["low_precision"] and row["quantized_by_runtime"]
    assert "ONNX Runtime quantizes it itself" in row["note"] and "WeightBiasQuantization" in row["note"]
    assert any("WeightBiasQuantization" in n and "(2)" in n for n in result.notes)
    x = batches((3, 8, 8), n=1, size=32)[0]
    simulated = apply(model, p, data, progress=False, joins=True)(x).numpy()
    options = ort.SessionOptions()
    kept = ort.InferenceSession(str(result.path), options, providers=["CPUExecutionProvider"],
                                disabled_optimizers=["WeightBiasQuantization"])
    rewritten = ort.InferenceSession(str(result.path), options, providers=["CPUExecutionProvider"])
    name = kept.get_inputs()[0].name
    err_kept = np.abs(kept.run(None, {name: x.numpy()})[0] - simulated).max()
    err_rewritten = np.abs(rewritten.run(None, {name: x.numpy()})[0] - simulated).max()
    assert err_kept < err_rewritten


def test_export_takes_the_path_of_a_plan_as_apply_does_and_shows_its_own_signature(tmp_path):
    import inspect
    import mixprec
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    data = batches((6,))
    Plan.uniform(discover_groups(model, data[0]), W8).save(tmp_path / "plan.json")
    result = mixprec.export(model, str(tmp_path / "plan.json"), data, out=tmp_path / "m.onnx", progress=False)
    assert {r["candidate"] for r in result.layers} == {W8}
    assert list(inspect.signature(mixprec.export).parameters)[:3] == ["model", "plan", "data"]


class ConvTwice(nn.Module):
    """A conv called twice: its first call feeds a ReLU into itself (integer), its second is the model's output."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem, self.c = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        return self.c(torch.relu(self.c(torch.relu(self.stem(x)))))


def test_a_layer_called_twice_with_one_call_in_float_is_reported_by_that_call(tmp_path):
    """The op shown and the note are those of the call that falls back, not of the first call (which ran integer
    while the row said 'low precision: no' beside 'QLinearConv')."""
    model = ConvTwice().eval()
    data = [torch.randn(4, 1, 6, 6) for _ in range(2)]
    p = Plan.uniform(discover_groups(model, data[0]), W8)
    result = export(model, p, data, out=tmp_path / "twice.onnx", progress=False)
    row = {r["layer"]: r for r in result.layers}["c"]
    assert row["runtime_ops"][0] == "QLinearConv" and row["runtime_ops"][1] != "QLinearConv"
    assert not row["low_precision"] and row["runtime_op"] == row["runtime_ops"][1]
    assert row["fallback_calls"] == [1] and row["note"].startswith("call(s) 2 of 2")


def test_an_interrupted_export_leaves_no_log_behind():
    """torch's output during the export goes to a temporary log, kept only to name in a failure's error: a Ctrl-C
    left it in the temporary folder."""
    from mixprec.export.onnx_graph import _output_to_file
    with pytest.raises(KeyboardInterrupt):
        with _output_to_file() as log:
            raise KeyboardInterrupt
    assert not Path(log).exists()


def test_a_quantized_embedding_with_max_norm_is_refused_before_export_saying_how_to_plan_it(tmp_path):
    class Renormed(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.emb, self.fc = nn.Embedding(40, 16, max_norm=1.0), nn.Linear(16, 4)

        def forward(self, ids):
            return self.fc(self.emb(ids).mean(1))

    model = Renormed().eval()
    data = [torch.randint(0, 40, (4, 6)) for _ in range(2)]
    with pytest.raises(ModelError, match="layer 'emb' is an nn.Embedding with max_norm.*--pin emb=fp32"):
        export(model, plan(model, data, {"emb": "w8a8", "fc": W8}), data, out=tmp_path / "r.onnx", progress=False)
    result = export(model, plan(model, data, {"emb": "fp32", "fc": W8}), data, out=tmp_path / "r.onnx",
                    progress=False)
    assert any("max_norm" in n for n in result.notes)


def test_a_bilinear_layer_kept_float_exports_as_an_einsum_that_computes_it(tmp_path):
    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.a, self.bil, self.head = nn.Linear(10, 8), nn.Bilinear(8, 6, 5), nn.Linear(5, 3)

        def forward(self, x, y):
            return self.head(torch.relu(self.bil(torch.relu(self.a(x)), y)))

    model = Pair().eval()
    pairs = [(torch.randn(4, 10), torch.randn(4, 6)) for _ in range(2)]
    data = [(pair, torch.zeros(4)) for pair in pairs]  # a 2-tuple item is (inputs, labels)
    result = export(model, plan(model, [pairs[0]], {"a": W8, "head": W8}), data, out=tmp_path / "pair.onnx",
                    progress=False)
    assert "Einsum" in {n.op_type for n in onnx.load(result.path).graph.node}
    assert result.sqnr_db["calibration"] > 60


def test_an_export_with_a_learned_rounding_keeps_its_rounding_where_asked(tmp_path):
    """mixprec export passes its cache's rounding folder: an interrupted GPTQ there resumes, as quantize's does
    (the note at a Ctrl-C said so, and nothing was kept)."""
    model, data = BnCnn().eval(), batches((3, 8, 8))
    p = plan(model, data, {"conv1": "w8a8", "conv2": "w8a8", "fc": "w8a8"})
    export(model, p, data, out=tmp_path / "g.onnx", rounding="gptq", rounding_checkpoint=tmp_path / "rounding",
           progress=False)
    assert len(list((tmp_path / "rounding").glob("gptq-*.pt"))) == 1
