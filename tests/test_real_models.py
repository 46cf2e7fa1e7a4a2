"""Group discovery, ties and apply on the real built-in models (skipped where data or packages are missing)."""
import pytest
import torch

from conftest import load_builtin_or_skip
from mixprec.apply import apply, quantized_layers
from mixprec.costs import cost_tables
from mixprec.groups import discover_groups
from mixprec.plan import Plan


def test_resnet20_groups_macs_and_costs():
    builtin, model = load_builtin_or_skip("resnet20")
    groups = discover_groups(model, builtin.example_input())
    assert len(groups) == 20 and all(len(g.layers) == 1 for g in groups)  # option-A shortcuts have no conv
    assert groups.groups[0].layer_names == ("conv1",) and groups.groups[-1].layers[0].kind == "Linear"
    assert sum(g.macs for g in groups) == pytest.approx(40.55e6, rel=1e-3)  # the usual 41M MACs of ResNet-20
    costs = cost_tables(groups, ["w8a8", "w4a8"], model)
    weights = sum(g.params for g in groups)
    assert costs.uniform("bits_per_weight", "w4a8") == pytest.approx(4 + 16 * sum(l.weight_shape[0] for l in groups.layers) / weights)


def test_efficientnet_lite0_groups():
    builtin, model = load_builtin_or_skip("efficientnet-lite0")
    groups = discover_groups(model, builtin.example_input())
    kinds = [l.kind for l in groups.layers]
    assert len(groups) == 50 and kinds.count("Linear") == 1
    depthwise = [l for l in groups.layers if l.weight_shape[1] == 1]
    assert len(depthwise) == 16  # one depthwise conv per MBConv block
    assert 3.8e8 < sum(g.macs for g in groups) < 4.1e8


def test_minilm_ties_query_key_value():
    builtin, model = load_builtin_or_skip("minilm")
    groups = discover_groups(model, builtin.example_input())
    tied = [g for g in groups if len(g.layers) > 1]
    assert len(tied) == 6
    for i, g in enumerate(tied):
        assert {n.rsplit(".", 1)[1] for n in g.layer_names} == {"query", "key", "value"}
        assert g.tied_by == "shared input" and f"layer.{i}." in g.name
    # the attention output, FFN in and FFN out of every layer are single groups
    assert sum(1 for g in groups if len(g.layers) == 1 and ".encoder.layer." in g.name) == 18


@pytest.mark.parametrize("name,candidate,limit,max_drop", [
    ("resnet20", "w8a8", 500, 1.5),
    ("efficientnet-lite0", "w8a8", 50, 6.0),
    ("minilm", "w8a8", 200, 2.0),
])
def test_apply_w8a8_on_real_models_stays_close_to_float(name, candidate, limit, max_drop):
    builtin, model = load_builtin_or_skip(name)
    groups = discover_groups(model, builtin.example_input())
    before = {k: v.clone() for k, v in list(model.state_dict().items())[:5]}
    quantized = apply(model, Plan.uniform(groups, candidate), builtin.calibration(64), progress=False)
    assert len(quantized_layers(quantized)) == len(groups.layers)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    fp32 = builtin.evaluate(model, limit=limit).value
    q = builtin.evaluate(quantized, limit=limit).value
    assert fp32 - q < max_drop
    # and 2-bit weights really damage it: the quantization is not a no-op
    crushed = apply(model, Plan.uniform(groups, "w2a8"), builtin.calibration(64), progress=False)
    assert builtin.evaluate(crushed, limit=limit).value < q - max_drop


def test_apply_on_smollm2_weight_only():
    builtin, model = load_builtin_or_skip("smollm2")
    groups = discover_groups(model, builtin.example_input())
    # per layer {q,k,v}, o, {gate,up}, down; plus the embedding table with the lm_head that shares its weight
    assert len(groups) == 30 * 4 + 1
    assert groups["lm.{model.embed_tokens,lm_head}"].tied_by == "shared weight"
    assert sum(len(g.layers) > 1 for g in groups) == 61
    fp32 = builtin.evaluate(model, limit=1).value
    w8 = builtin.evaluate(apply(model, Plan.uniform(groups, "w8"), None, progress=False), limit=1).value
    w2 = builtin.evaluate(apply(model, Plan.uniform(groups, "w2g64"), None, progress=False), limit=1).value
    assert abs(w8 - fp32) / fp32 < 0.02 and w2 > 1.5 * fp32  # perplexity: lower is better
