"""Transposed and 3-D convolutions are quantizer groups: priced, quantized, rounded, exported."""
import pytest
import torch
from torch import nn

from mixprec.apply import apply
from mixprec.groups import discover_groups
from mixprec.plan import Plan
from mixprec.rounding import round_weights
from mixprec.swap import nearest_weight
from mixprec.candidates import parse_candidate


class Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.enc = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.up1d = nn.ConvTranspose1d(4, 2, 3, stride=2, padding=1)
        self.head = nn.Conv2d(4, 3, 1)

    def forward(self, x):
        h = self.up(torch.relu(self.enc(x)))
        side = self.up1d(h.mean(2))  # (N, 2, 2W - 1)
        return self.head(torch.relu(h)), side


def data(n=3):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(4, 3, 8, 8, generator=g) for _ in range(n)]


def test_transposed_convolutions_are_groups_with_their_macs():
    groups = discover_groups(Decoder().eval(), data()[0])
    layers = {l.name: l for l in groups.layers}
    assert layers["up"].kind == "ConvTranspose2d" and layers["up1d"].kind == "ConvTranspose1d"
    # every input element costs (out / groups) x kernel MACs: 8 x 4 x 4 inputs, 4 x 2 x 2 each
    assert layers["up"].macs == 8 * 4 * 4 * 4 * 2 * 2
    assert layers["up1d"].macs == 4 * 8 * 2 * 3
    assert not any("ConvTranspose" in n for n in groups.notes)


def test_a_transposed_convolution_is_quantized_per_channel_of_its_weight():
    model, batches = Decoder().eval(), data()
    groups = discover_groups(model, batches[0])
    plan = Plan.uniform(groups, "fp32")
    plan.assignments["up"] = "w2a8"
    quantized = apply(model, plan, batches, progress=False)
    w = quantized.get_submodule("up").layer.weight.detach()
    assert all(len(torch.unique(w[i])) <= 4 for i in range(w.shape[0]))  # 2-bit codes per weight-axis-0 channel
    with torch.no_grad():
        assert not torch.allclose(quantized(batches[0])[0], model(batches[0])[0], atol=1e-4)


def test_gptq_rounds_a_transposed_convolution_to_nearest_and_the_rest_by_gptq():
    model, batches = Decoder().eval(), data()
    plan = Plan.uniform(discover_groups(model, batches[0]), "w3a8")
    rounded = round_weights(model, plan, batches, "gptq", progress=False)
    c = parse_candidate("w3a8")
    assert torch.equal(rounded["up"], nearest_weight(model.up.weight, c, "mse"))
    assert not torch.equal(rounded["enc"], nearest_weight(model.enc.weight, c, "mse"))


def test_export_writes_a_weight_only_transposed_convolution_and_refuses_integer_inputs(tmp_path):
    pytest.importorskip("onnxruntime")
    from mixprec.errors import CandidateError, MixprecError
    from mixprec.export import OrtModule, export
    model, batches = Decoder().eval(), data()
    groups = discover_groups(model, batches[0])
    plan = Plan.uniform(groups, "fp32")
    plan.assignments["up"], plan.assignments["up1d"] = "w4", "w8"
    result = export(model, plan, batches, out=tmp_path / "dec.onnx", progress=False)
    rows = {r["layer"]: r for r in result.layers}
    assert rows["up"]["op_written"] == "ConvTranspose" and "dequantized for a float ConvTranspose" in rows["up"]["format"]
    assert not rows["up"]["low_precision"]  # a float kernel by design, reported so
    simulated = apply(model, plan, batches, progress=False)
    with torch.no_grad():
        want = simulated(batches[1])
    got = OrtModule(result.path)(batches[1])
    for a, b in zip(got, want):
        assert float((a - b).abs().max()) < 1e-5 * float(b.abs().max()) + 1e-6
    plan.assignments["up"] = "w8a8"
    with pytest.raises((CandidateError, MixprecError), match="up .*integer inputs on a transposed convolution"):
        export(model, plan, batches, out=tmp_path / "dec2.onnx", progress=False)


class Video(nn.Module):
    """Conv3d-BatchNorm3d-ReLU and a residual Conv3d: a video or volume model's layers."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.c1 = nn.Conv3d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm3d(8)
        self.c2 = nn.Conv3d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        h = torch.relu(self.bn(self.c1(x)))
        return self.fc((torch.relu(self.c2(h)) + h).mean((2, 3, 4)))


def test_a_conv3d_is_a_group_gptq_rounds_to_nearest_and_ort_runs_as_an_integer_kernel(tmp_path):
    model = Video().eval()
    g = torch.Generator().manual_seed(3)
    batches = [torch.randn(2, 3, 4, 6, 6, generator=g) for _ in range(3)]
    groups = discover_groups(model, batches[0])
    assert {l.name: l.macs for l in groups.layers}["c1"] == 8 * 4 * 6 * 6 * 3 * 27
    plan = Plan.uniform(groups, "w4a8")
    rounded = round_weights(model, plan, batches, "gptq", progress=False)
    assert torch.equal(rounded["c1"], nearest_weight(model.c1.weight, parse_candidate("w4a8"), "mse"))
    pytest.importorskip("onnxruntime")
    from mixprec.export import OrtModule, export
    result = export(model, plan, batches, out=tmp_path / "video.onnx", progress=False)
    assert {r["layer"]: r["runtime_op"] for r in result.layers}["c2"] == "QLinearConv"
    simulated = apply(model, plan, batches, progress=False, joins=True)
    with torch.no_grad():
        want = simulated(batches[1])
    assert float((OrtModule(result.path)(batches[1]) - want).abs().max()) < 1e-4 * float(want.abs().max())
