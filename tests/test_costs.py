"""Cost tables: storage bits, bytes, MACs, BOPs and bits per weight against hand counts."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from mixprec.candidates import parse_candidate
from mixprec.costs import (
    COST_KINDS,
    cost_tables,
    format_bytes,
    format_count,
    input_quantizer_bits,
    layer_bops,
    other_param_bytes,
    weight_storage_bits,
)
from mixprec.groups import Layer, ModelGroups, QuantizerGroup, discover_groups


def linear_layer(out: int, k: int, macs: int | None = None, name: str = "fc") -> Layer:
    return Layer(name, "Linear", (out, k), macs)


# ---------------------------------------------------------------- storage bits

@pytest.mark.parametrize("spec,bits", [
    ("w4g128", 64 * 300 * 4 + 64 * 3 * 16),            # ceil(300/128) = 3 groups per row, float16 scales
    ("w4g128-asym", 64 * 300 * 4 + 64 * 3 * (16 + 4)),  # + a 4-bit zero-point per group
    ("w4", 64 * 300 * 4 + 64 * 16),                     # per output channel
    ("w4-asym", 64 * 300 * 4 + 64 * (16 + 4)),
    ("w8a8", 64 * 300 * 8 + 64 * 16),                   # the input quantizer is not weight storage
    ("w2g64", 64 * 300 * 2 + 64 * 5 * 16),
    ("w3g300", 64 * 300 * 3 + 64 * 1 * 16),             # one group per row = per channel
    ("w3g1000", 64 * 300 * 3 + 64 * 1 * 16),
    ("w5g1", 64 * 300 * 5 + 64 * 300 * 16),
    ("fp8", 64 * 300 * 8 + 64 * 16),                    # FP8 per-channel float16 scales
    ("fp8e5m2", 64 * 300 * 8 + 64 * 16),
    ("fp16", 64 * 300 * 16), ("bf16", 64 * 300 * 16), ("w16a16", 64 * 300 * 16),
    ("fp32", 64 * 300 * 32),
])
def test_weight_storage_bits(spec, bits):
    assert weight_storage_bits(linear_layer(64, 300), parse_candidate(spec)) == bits


def test_conv_weight_groups_run_over_in_times_kernel():
    conv = Layer("conv", "Conv2d", (16, 8, 3, 3))  # 72 inputs per output channel
    assert weight_storage_bits(conv, parse_candidate("w4g32")) == 16 * 72 * 4 + 16 * 3 * 16
    assert weight_storage_bits(conv, parse_candidate("w6")) == 16 * 72 * 6 + 16 * 16


@pytest.mark.parametrize("spec,bits", [("w4a8", 16 + 8), ("w8a8", 24), ("w4g128a8", 24), ("w4a4", 16 + 4),
                                       ("w8a16", 0), ("w16a16", 0), ("w4", 0), ("w4g128", 0), ("fp8", 16),
                                       ("fp8e5m2", 16), ("fp16", 0), ("bf16", 0), ("fp32", 0),
                                       ("w8a8d32", 0), ("w4g64a8d64", 0)])  # dynamic: scales made at run time
def test_input_quantizer_bits(spec, bits):
    # Asymmetric integer inputs: one float16 scale + a zero-point at the input bit-width.
    assert input_quantizer_bits(parse_candidate(spec)) == bits


@settings(max_examples=200, deadline=None)
@given(bits=st.integers(2, 8), group=st.integers(1, 512), out=st.integers(1, 64), k=st.integers(1, 600),
       asym=st.booleans())
def test_grouped_costs_more_than_per_channel_exactly_when_groups_split_rows(bits, group, out, k, asym):
    """Property: bits(wBgG) - bits(wB) = out * (ceil(K/G) - 1) * (16 + zero-point bits).

    So grouped storage is >= per-channel storage, strictly greater iff G < K (a row is split
    into more than one group); for G >= K the two cost the same. Same for the bytes table.
    """
    suffix = "-asym" if asym else ""
    grouped, channel = parse_candidate(f"w{bits}g{group}{suffix}"), parse_candidate(f"w{bits}{suffix}")
    layer = linear_layer(out, k, macs=out * k)
    per_scale = 16 + (bits if asym else 0)
    diff = weight_storage_bits(layer, grouped) - weight_storage_bits(layer, channel)
    assert diff == out * (math.ceil(k / group) - 1) * per_scale
    assert (diff > 0) == (group < k)
    groups = ModelGroups((QuantizerGroup("fc", (layer,)),))
    t = cost_tables(groups, [grouped, channel])
    assert (t.tables["bytes"][0, 0] > t.tables["bytes"][0, 1]) == (group < k)
    assert t.tables["bytes"][0, 0] >= t.tables["bytes"][0, 1]
    # One more bit per weight costs exactly out * K bits more (scales unchanged).
    if bits < 8:
        wider = parse_candidate(f"w{bits + 1}g{group}{suffix}")
        extra = out * k + (out * math.ceil(k / group) if asym else 0)
        assert weight_storage_bits(layer, wider) - weight_storage_bits(layer, grouped) == extra


# ---------------------------------------------------------------- a toy model

class Toy(nn.Module):
    """conv -> grouped conv -> fc -> two linears reading the same tensor (tied by discovery)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)                           # (4, 3, 3, 3): 108 weights
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=2)        # (4, 2, 3, 3): 72 weights
        self.fc = nn.Linear(64, 16)                              # 1024 weights
        self.attn = nn.Module()
        self.attn.q = nn.Linear(16, 8)                           # 128 weights
        self.attn.k = nn.Linear(16, 8, bias=False)               # 128 weights
        self.norm = nn.LayerNorm(8)                              # 16 parameters, never quantized

    def forward(self, x):
        x = self.dw(torch.relu(self.conv(x)))
        h = torch.relu(self.fc(x.flatten(1)))
        return self.norm(self.attn.q(h) + self.attn.k(h))


EXAMPLE = torch.randn(2, 3, 6, 6)  # conv output (4, 4, 4) per sample
WEIGHTS = {"conv": 108, "dw": 72, "fc": 1024, "attn.q": 128, "attn.k": 128}
# Per sample: output elements x (in / groups) x kh x kw for convs, in x out for linears.
MACS = {"conv": 64 * 3 * 9, "dw": 64 * 2 * 9, "fc": 64 * 16, "attn.q": 16 * 8, "attn.k": 16 * 8}
OUT_CHANNELS = {"conv": 4, "dw": 4, "fc": 16, "attn.q": 8, "attn.k": 8}
ALL_WEIGHTS = sum(WEIGHTS.values())  # 1460
OTHER_BYTES = (4 + 4 + 16 + 8 + 16) * 4  # biases of conv, dw, fc, q + LayerNorm weight and bias, float32


@pytest.fixture(scope="module")
def toy():
    torch.manual_seed(0)
    model = Toy()
    return model, discover_groups(model, EXAMPLE)


def test_toy_groups_and_macs(toy):
    _, groups = toy
    assert groups.names == ["conv", "dw", "fc", "attn.{q,k}"]
    assert {l.name: l.macs for l in groups.layers} == MACS
    assert {l.name: l.params for l in groups.layers} == WEIGHTS


def test_linear_macs_count_the_sequence():
    model = nn.Sequential(nn.Linear(5, 7))
    groups = discover_groups(model, torch.randn(3, 9, 5))  # (batch, seq, in)
    assert groups.layers[0].macs == 9 * 5 * 7  # per sample: every token costs in x out


def test_conv1d_macs():
    model = nn.Sequential(nn.Conv1d(6, 4, 3, stride=2, groups=2))
    groups = discover_groups(model, torch.randn(2, 6, 11))  # output length 5
    assert groups.layers[0].macs == 4 * 5 * 3 * 3


def hand_weight_bits(name: str, spec: str) -> int:
    n, out = WEIGHTS[name], OUT_CHANNELS[name]
    per_row = n // out
    table = {
        "w4a8": n * 4 + out * 16,
        "w8a8": n * 8 + out * 16,
        "w4g16": n * 4 + out * math.ceil(per_row / 16) * 16,
        "w4g16-asym": n * 4 + out * math.ceil(per_row / 16) * (16 + 4),
        "w4": n * 4 + out * 16,
        "fp8": n * 8 + out * 16,
        "fp16": n * 16,
        "fp32": n * 32,
    }
    return table[spec]


INPUT_BITS = {"w4a8": 24, "w8a8": 24, "w4g16": 0, "w4g16-asym": 0, "w4": 0, "fp8": 16, "fp16": 0, "fp32": 0}
BOP_BITS = {"w4a8": 4 * 8, "w8a8": 8 * 8, "w4g16": 4 * 16, "w4g16-asym": 4 * 16, "w4": 4 * 16, "fp8": 8 * 8,
            "fp16": 16 * 16, "fp32": 32 * 32}
SPECS = list(INPUT_BITS)
GROUP_LAYERS = {"conv": ["conv"], "dw": ["dw"], "fc": ["fc"], "attn.{q,k}": ["attn.q", "attn.k"]}


def test_toy_tables_by_hand(toy):
    model, groups = toy
    t = cost_tables(groups, SPECS, model)
    assert t.groups == tuple(GROUP_LAYERS) and t.candidates == tuple(SPECS)
    for i, (group, layers) in enumerate(GROUP_LAYERS.items()):
        for j, spec in enumerate(SPECS):
            wbits = sum(hand_weight_bits(l, spec) for l in layers)
            assert t.tables["bytes"][i, j] == (wbits + len(layers) * INPUT_BITS[spec]) / 8, (group, spec)
            assert t.tables["bops"][i, j] == sum(MACS[l] for l in layers) * BOP_BITS[spec], (group, spec)
            assert t.tables["bits_per_weight"][i, j] == pytest.approx(wbits / ALL_WEIGHTS, rel=1e-12)
    assert t.fixed == {"bytes": OTHER_BYTES, "bops": 0.0, "bits_per_weight": 0.0}
    # fp32 bytes of the weights + the rest = the float model's parameter bytes.
    fp32 = t.uniform("bytes", "fp32")
    assert fp32 == sum(p.numel() * 4 for p in model.parameters())


def test_other_param_bytes_counts_biases_and_norms(toy):
    model, groups = toy
    assert other_param_bytes(model, groups) == OTHER_BYTES
    half = Toy().half()
    assert other_param_bytes(half, discover_groups(half)) == OTHER_BYTES / 2  # at the dtype's size


def test_uniform_bits_per_weight_is_average_storage(toy):
    model, groups = toy
    t = cost_tables(groups, SPECS, model)
    for spec in SPECS:
        total_bits = sum(hand_weight_bits(l, spec) for l in WEIGHTS)
        assert t.uniform("bits_per_weight", spec) == pytest.approx(total_bits / ALL_WEIGHTS, rel=1e-12)
    assert t.uniform("bits_per_weight", "fp32") == pytest.approx(32.0)
    assert t.uniform("bits_per_weight", "fp16") == pytest.approx(16.0)


def test_mixed_plan_total_by_hand(toy):
    model, groups = toy
    t = cost_tables(groups, SPECS, model)
    choice = {"conv": "fp16", "dw": "w4g16-asym", "fc": "w4a8", "attn.{q,k}": "fp8"}
    by_hand_bits = (108 * 16) + (72 * 4 + 4 * 2 * 20) + (1024 * 4 + 16 * 16 + 24) + 2 * (128 * 8 + 8 * 16 + 16)
    assert t.total("bytes", choice) == OTHER_BYTES + by_hand_bits / 8
    by_hand_bops = MACS["conv"] * 256 + MACS["dw"] * 64 + MACS["fc"] * 32 + (MACS["attn.q"] + MACS["attn.k"]) * 64
    assert t.total("bops", choice) == by_hand_bops
    weight_bits = by_hand_bits - 24 - 2 * 16
    assert t.total("bits_per_weight", choice) == pytest.approx(weight_bits / ALL_WEIGHTS, rel=1e-12)


def test_excluded_layers_counted_in_fixed():
    torch.manual_seed(0)
    model = Toy()
    groups = discover_groups(model, EXAMPLE, exclude=["fc"])
    assert [l.name for l in groups.excluded] == ["fc"] and "fc" not in groups.names
    t = cost_tables(groups, ["w4a8", "fp32"], model)
    assert t.fixed["bytes"] == OTHER_BYTES + 1024 * 4  # the float32 weight of fc
    assert t.fixed["bops"] == MACS["fc"] * 32 * 32
    assert t.fixed["bits_per_weight"] == pytest.approx(1024 * 32 / ALL_WEIGHTS)
    # bits_per_weight still divides by every weight, excluded ones included.
    assert t.uniform("bits_per_weight", "fp32") == pytest.approx(32.0)
    assert t.uniform("bytes", "fp32") == sum(p.numel() * 4 for p in model.parameters())
    assert t.uniform("bops", "fp32") == sum(MACS.values()) * 32 * 32


def test_untraced_groups_have_unknown_bops():
    model = Toy()
    groups = discover_groups(model)  # no example input
    t = cost_tables(groups, ["w4a8"])
    assert np.isnan(t.tables["bops"]).all()
    assert math.isnan(t.fixed["bytes"])  # no model given: the constant part is unknown
    assert not np.isnan(t.tables["bytes"]).any()
    assert math.isnan(layer_bops(groups.layers[0], parse_candidate("w4a8")))


@pytest.mark.parametrize("spec,bits", [("w4a8", 32), ("w4", 64), ("w4g128", 64), ("w8a16", 128), ("w16a16", 256),
                                       ("fp16", 256), ("fp8", 64), ("fp32", 1024), ("w2a8", 16)])
def test_layer_bops(spec, bits):
    assert layer_bops(linear_layer(8, 16, macs=1000), parse_candidate(spec)) == 1000 * bits


def test_cost_kinds_and_table_shapes(toy):
    model, groups = toy
    t = cost_tables(groups, ["w4a8", "w8a8"], model)
    assert set(t.tables) == set(COST_KINDS) == set(t.fixed)
    assert all(v.shape == (4, 2) for v in t.tables.values())
    assert (t.tables["bytes"][:, 0] < t.tables["bytes"][:, 1]).all()
    assert (t.tables["bops"][:, 0] < t.tables["bops"][:, 1]).all()


def test_formatting():
    assert format_bytes(999) == "999 B"
    assert format_bytes(1500) == "1.50 KB"
    assert format_bytes(2.5e9) == "2.50 GB"
    assert format_bytes(float("nan")) == "?"
    assert format_count(1.5e9) == "1.50G"
    assert format_count(42) == "42"
    assert format_count(float("nan")) == "?"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_float_layer_of_a_half_precision_model_is_priced_at_the_models_own_width(dtype):
    """apply keeps an fp32-planned or excluded layer of a bfloat16 model in bfloat16: priced so, and the base of
    `0.5x` budgets (the costliest plan) is the model as it is."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    model = model.to(dtype)
    x = torch.randn(4, 64, dtype=dtype)
    groups = discover_groups(model, x, exclude=["4"])
    assert {l.float_bits for l in [*groups.layers, *groups.excluded]} == {16}
    t = cost_tables(groups, ["w8a8", "fp16", "fp32"], model)
    half = t.candidates.index("fp16")
    for kind in ("bytes", "bits_per_weight", "bops"):
        assert np.array_equal(t.tables[kind][:, t.candidates.index("fp32")], t.tables[kind][:, half]), kind
    assert t.fixed["bits_per_weight"] == 16 * (32 * 10) / (64 * 64 + 64 * 32 + 32 * 10)
    assert t.fixed["bops"] == 32 * 10 * 16 * 16
    whole = float(t.tables["bytes"][:, t.candidates.index("fp32")].sum()) + t.fixed["bytes"]
    assert whole == sum(p.numel() * p.element_size() for p in model.parameters())
    single = discover_groups(model.float(), x.float(), exclude=["4"])  # float32: 32 bits, as before
    assert {l.float_bits for l in single.layers} == {32}
