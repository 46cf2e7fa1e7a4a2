"""The int32 bias rounding of integer kernels: simulated where a plan runs as an int8 graph, as the file holds it."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

from mixprec.apply import apply
from mixprec.candidates import parse_candidate
from mixprec.groups import discover_groups
from mixprec.integer_bias import BIAS_LIMIT, BiasFold, attach, bias_folds, integer_kernel, rounding_error, unrounded
from mixprec.joins import insert_join_quantizers, int8_graph
from mixprec.plan import Plan
from mixprec.quantizers import ActivationQuantizer, quantize_weight


class Block(nn.Module):
    """conv-BN-ReLU, conv-BN plus a shortcut, a conv whose BatchNorm also feeds a second reader, and a linear."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.conv3 = nn.Conv2d(8, 8, 1)
        self.bn3 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 5)
        for bn in (self.bn1, self.bn2, self.bn3):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.data.uniform_(0.5, 1.5)
            bn.bias.data.uniform_(-0.3, 0.3)
        self.bn2.weight.data[2] = -0.8

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        h = torch.relu(self.bn2(self.conv2(h)) + h)
        c = self.conv3(h)  # read by its BatchNorm and by the add: not folded
        h = self.bn3(c) + c
        return self.fc(h.mean(dim=(2, 3)))


def data(n=3, size=16):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(size, 3, 8, 8, generator=g) for _ in range(n)]


def uniform(model, batches, candidate):
    return Plan.uniform(discover_groups(model, batches[0]), candidate, {"joins": True})


def test_each_conv_folds_the_batchnorm_that_alone_reads_it():
    model = Block().eval()
    traced = insert_join_quantizers(model)
    assert bias_folds(traced) == {"conv1": "bn1", "conv2": "bn2", "conv3": None, "fc": None}
    assert bias_folds(model) == {}  # not traced: no graph to read
    training = Block().train()
    assert bias_folds(insert_join_quantizers(training))["conv1"] is None  # batch statistics are not folded


def test_an_int8_graph_rounds_its_biases_and_a_plain_simulation_does_not():
    model, batches = Block().eval(), data()
    joined = apply(model, uniform(model, batches, "w4a8"), batches, progress=False)
    plain = apply(model, uniform(model, batches, "w4a8"), batches, progress=False, joins=False)
    assert int8_graph(joined) and not int8_graph(plain)
    assert {n for n, m in joined.named_modules() if getattr(m, "integer_bias", None) is not None} == \
        {"conv1", "conv2", "conv3", "fc"}
    assert all(getattr(m, "integer_bias", None) is None for m in plain.modules())
    x = data(1, 8)[0]
    with torch.no_grad():
        rounded = joined(x)
        with unrounded(joined):
            without = joined(x)
        again = joined(x)
    assert not torch.equal(rounded, without)  # 4-bit weights: a bias step of s_x * s_w is visible
    assert torch.equal(rounded, again)  # the context restores the rounding
    assert float((rounded - without).abs().max()) < 0.05 * float(without.abs().max())


def _layer(bits_in: int, weight: torch.Tensor, bias: torch.Tensor | None, candidate: str):
    cand = parse_candidate(candidate)
    layer = nn.Conv2d(weight.shape[1], weight.shape[0], 1, bias=bias is not None)
    layer.weight.data = quantize_weight(weight, cand.weight, "minmax")
    if bias is not None:
        layer.bias.data = bias
    q = ActivationQuantizer(cand.activation, "minmax")
    q(torch.linspace(-1.0, 2.0 ** bits_in, 100))
    q.finish_calibration()
    return layer, cand, q


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2 ** 31 - 1), st.sampled_from(["w8a8", "w4a8", "w2a8", "w7a8"]), st.integers(0, 6))
def test_the_rounded_bias_is_a_whole_number_of_steps_within_half_a_step(seed, candidate, magnitude):
    """Property: factor x error + folded bias is an integer multiple of the bias scale S = s_x s_w |factor| (or
    |B| / 2^30 where that would overflow), and moves the folded bias by at most S / 2."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(6, 4, 1, 1, generator=g)
    bias = torch.randn(6, generator=g) * 10.0 ** (magnitude - 3)
    layer, cand, q = _layer(magnitude, weight, bias, candidate)
    bn = nn.BatchNorm2d(6).eval()
    bn.weight.data = torch.randn(6, generator=g) * torch.tensor([1, 1, 1, 1, 1e-9, 1e-3])
    bn.bias.data, bn.running_mean = torch.randn(6, generator=g), torch.randn(6, generator=g)
    fold = BiasFold(bn)
    error = rounding_error(layer, cand, q, fold, 4)
    factor, shift = fold.factor_shift(6, layer.weight)
    folded = factor * bias.double() + shift
    s_x = float((q.hi - q.lo) / 255)
    s_w = layer.weight.detach().reshape(6, -1).abs().amax(1).double() / 2 ** (cand.weight.bits - 1)
    step = torch.maximum((s_x * s_w * factor.abs()).float().double(), folded.abs() / BIAS_LIMIT)
    moved = error * factor
    codes = (folded + moved) / step
    assert torch.allclose(codes, torch.round(codes), atol=1e-6 * max(1.0, float(codes.abs().max())))
    assert bool((moved.abs() <= step / 2 * (1 + 1e-9) + 1e-300).all())
    assert bool((codes.abs() <= BIAS_LIMIT + 1).all())


def test_layers_without_an_int32_bias_are_left_alone():
    weight = torch.randn(4, 3, 1, 1)
    layer, cand, q = _layer(1, weight, None, "w8a8")
    assert rounding_error(layer, cand, q, BiasFold(None), 4) is None  # no bias, no BatchNorm
    layer, cand, q = _layer(1, weight, torch.ones(4), "w8a8")
    assert rounding_error(layer, cand, q, BiasFold(None), 4) is not None
    assert rounding_error(layer, parse_candidate("w4"), q, BiasFold(None), 4) is None  # float input
    linear = nn.Linear(3, 4)
    linear.weight.data = quantize_weight(linear.weight.data, cand.weight, "minmax")
    assert rounding_error(linear, cand, q, BiasFold(None), 2) is not None  # a Gemm with its bias
    assert rounding_error(linear, cand, q, BiasFold(None), 3) is None  # a MatMul and a float Add


def test_integer_kernels_are_what_the_export_writes_as_qdq():
    from mixprec.export.targets import realise
    from mixprec.profiles import PROFILES
    names = {c for cands in PROFILES.values() for c in cands} | {
        "w8a8-asym", "w4g64a8", "w8a16", "w6a6", "w4x2a8", "fp8", "w8a8d32", "w16a8", "q8_0", "w3a8", "w8-asym"}
    checked = 0
    for name in sorted(names):
        cand = parse_candidate(name)
        for kind in ("Conv2d", "Linear"):
            result = realise(cand, kind, 64)
            assert integer_kernel(cand) == (not isinstance(result, str) and result.kind == "qdq"), (name, kind)
            checked += 1
    assert checked > 40


def test_attach_needs_an_int8_graph():
    model = Block().eval()
    assert attach(model) == 0


ort = pytest.importorskip("onnxruntime")


def test_the_simulated_rounding_is_the_files_int32_bias(tmp_path):
    from onnx import load, numpy_helper
    from mixprec.export import OrtModule, export
    model, batches = Block().eval(), data()
    plan = uniform(model, batches, "w4a8")
    quantized = apply(model, plan, batches, progress=False)
    result = export(model, plan, batches, out=tmp_path / "m.onnx", quantized=quantized, progress=False)
    inits = {i.name: numpy_helper.to_array(i) for i in load(str(result.path)).graph.initializer}
    checked = 0
    for name in ("conv1", "conv2", "conv3", "fc"):
        m = quantized.get_submodule(name)
        code, scale = inits[f"{name}.bias_quantized"].astype(np.float64), inits[f"{name}.bias_scale"].astype(np.float64)
        factor, shift = m.integer_bias.factor_shift(m.layer.weight.shape[0], m.layer.weight)
        bias = m.layer.bias.detach().double() if m.layer.bias is not None else torch.zeros_like(factor)
        folded = (factor * bias + shift).numpy()
        error = rounding_error(m.layer, m.parsed, m.input_quantizer, m.integer_bias, m.layer.weight.dim()).numpy()
        assert np.abs(error * factor.numpy() + folded - code * scale).max() <= 1e-3 * scale.max()
        checked += 1
    assert checked == 4
    x = data(1, 64)[0]
    exported = OrtModule(result.path)
    with torch.no_grad():
        near = (quantized(x) - exported(x)).abs().mean()
        with unrounded(quantized):
            far = (quantized(x) - exported(x)).abs().mean()
    assert float(near) < float(far)  # the file computes what the simulation with the rounding computes


def test_an_unbatched_input_gets_the_same_rounding_per_channel():
    model, batches = Block().eval(), data()
    joined = apply(model, uniform(model, batches, "w4a8"), batches, progress=False)
    conv = joined.get_submodule("conv2")
    x = torch.randn(1, 8, 8, 8)
    with torch.no_grad():
        assert torch.allclose(conv(x)[0], conv(x[0]), atol=1e-6)  # (C, H, W) in: the error still per channel
