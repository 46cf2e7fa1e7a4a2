import json

import pytest
import torch
from torch import nn

from conftest import load_builtin_or_skip
from mixprec.apply import apply, quantized_layers
from mixprec.cli import main
from mixprec.costs import cost_tables
from mixprec.errors import MixprecError, RoundingError
from mixprec.formats import IntFormat
from mixprec.groups import discover_groups
from mixprec.plan import Plan
from mixprec.quantizers import fake_quant_int, quantize_weight, weight_qparams
from mixprec.rounding import ROUNDINGS, adaround, round_weights
from mixprec.rounding.gptq import GPTQ, gptq

DEFAULT = GPTQ().options()  # what rounding="gptq" runs (act-order on)

from test_gptq import correlated_inputs, one_thread  # noqa: F401  (tests/rounding is on sys.path: rootdir mode)


class TwoLayers(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = nn.Linear(64, 48), nn.Linear(48, 16)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def plan_of(assignments: dict[str, str]) -> Plan:
    return Plan({f"g_{n}": c for n, c in assignments.items()}, {f"g_{n}": [n] for n in assignments})


def test_gptq_is_sequential_and_adaround_reads_the_float_model():
    model = TwoLayers().eval()
    x = correlated_inputs(n=1024)
    data = list(x.split(256))
    fmt = IntFormat(3, granularity="channel")
    plan = plan_of({"fc1": "w3", "fc2": "w3"})
    q = round_weights(model, plan, data, "gptq", progress=False)
    # GPTQ: fc2's Hessian comes from fc1 with its GPTQ weight (the paper's layer-by-layer quantization)
    x2 = torch.relu(nn.functional.linear(x, q["fc1"], model.fc1.bias)).detach()
    w2 = model.fc2.weight.detach()
    expected, _, _ = gptq(w2, 2 * x2.T @ x2 / len(x2), *weight_qparams(w2, fmt), fmt, **DEFAULT)
    assert torch.allclose(q["fc2"], expected, atol=1e-6)
    # AdaRound: fc2 learns on the float model's fc1 output
    a = round_weights(model, plan, data, "adaround", progress=False, iterations=20)
    with torch.no_grad():
        x2_float = torch.relu(model.fc1(x))
    by_hand = adaround.round_layer(model.fc2, [x2_float], fmt, "mse", **adaround.AdaRound(iterations=20).options())
    assert torch.equal(a["fc2"], by_hand)


class SharedInputs(nn.Module):
    """q and k read the same tensor (one step); o is reused twice per forward pass."""
    passes = 0  # forward passes of this model and of its copies

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.q, self.k, self.o = nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 16)

    def forward(self, x):
        type(self).passes += 1
        return self.o(torch.relu(self.o(self.q(x) * self.k(x))))


def test_layers_on_one_input_share_a_pass_and_reused_layers_see_every_call():
    model = SharedInputs().eval()
    x = torch.randn(96, 16)
    data = list(x.split(32))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    q = round_weights(model, plan_of({"q": "w4", "k": "w4", "o": "w4"}), data, "gptq", progress=False)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the input model is untouched
    assert not any(m._forward_pre_hooks for m in model.modules())
    fmt = IntFormat(4, granularity="channel")
    # o's Hessian holds both of its calls, with q and k already quantized
    h = nn.functional.linear(x, q["q"], model.q.bias) * nn.functional.linear(x, q["k"], model.k.bias)
    h2 = torch.relu(model.o(h)).detach()
    both = torch.cat([h.detach(), h2])
    w = model.o.weight.detach()
    expected, _, _ = gptq(w, 2 * both.T @ both / len(both), *weight_qparams(w, fmt), fmt, **DEFAULT)
    assert torch.allclose(q["o"], expected, atol=1e-6)


def test_forward_passes_per_step():
    model = SharedInputs().eval()
    SharedInputs.passes = 0
    round_weights(model, plan_of({"q": "w4", "k": "w4", "o": "w4"}), [torch.randn(4, 16)] * 3, "gptq", progress=False)
    assert SharedInputs.passes == 1 + 2 * 3  # order pass + 2 steps ([q, k], [o]) x 3 batches


def test_only_integer_weight_formats_are_rounded():
    model = TwoLayers().eval()
    plan = plan_of({"fc1": "fp8", "fc2": "w4g32a8"})
    q = round_weights(model, plan, [torch.randn(8, 64)], "gptq", progress=False)
    assert set(q) == {"fc2"}
    assert set(round_weights(model, plan_of({"fc1": "fp16", "fc2": "fp32"}), [torch.randn(8, 64)], "gptq")) == set()


def test_layer_the_data_never_calls_gets_nearest_with_a_warning():
    model = nn.ModuleDict({"used": nn.Linear(8, 8), "unused": nn.Linear(8, 8)})
    model.forward = lambda x: model["used"](x)
    plan = plan_of({"used": "w4", "unused": "w4"})
    with pytest.warns(UserWarning, match="not called"):
        q = round_weights(model, plan, [torch.randn(16, 8)], "gptq", progress=False)
    nearest = quantize_weight(model["unused"].weight.detach(), IntFormat(4, granularity="channel"))
    assert torch.equal(q["unused"], nearest)


def test_bad_method_options_and_missing_data_are_clear_errors():
    model = TwoLayers().eval()
    plan = plan_of({"fc1": "w4", "fc2": "w4"})
    data = [torch.randn(8, 64)]
    with pytest.raises(MixprecError, match="unknown rounding 'obq'.*nearest, gptq, adaround, brecq"):
        apply(model, plan, data, rounding="obq", progress=False)
    with pytest.raises(RoundingError, match="unknown rounding"):
        round_weights(model, plan, data, "optq")
    with pytest.raises(MixprecError, match="needs calibration data"):
        apply(model, plan_of({"fc1": "w4", "fc2": "w4"}), None, rounding="gptq", progress=False)
    with pytest.raises(RoundingError, match="needs calibration data"):
        round_weights(model, plan, [], "adaround")
    with pytest.raises(RoundingError, match="no option 'iterations'.*act_order"):
        round_weights(model, plan, data, "gptq", iterations=3)
    with pytest.raises(RoundingError, match="block_size must be a positive integer"):
        round_weights(model, plan, data, "gptq", block_size=0)
    with pytest.raises(RoundingError, match="iterations must be a positive integer"):
        round_weights(model, plan, data, "adaround", iterations=-1)
    with pytest.raises(MixprecError, match="nearest rounding takes no options"):
        apply(model, plan, data, rounding_options={"act_order": True}, progress=False)
    assert list(ROUNDINGS) == ["nearest", "gptq", "adaround", "brecq"]


def test_apply_gptq_on_demo_cnn_beats_nearest_at_same_cost():
    builtin, model = load_builtin_or_skip("demo-cnn")
    data = builtin.calibration(256)
    groups = discover_groups(model, builtin.example_input())
    plan = Plan.uniform(groups, "w3a8")
    nearest = apply(model, plan, data, progress=False)
    rounded = apply(model, plan, data, rounding="gptq", progress=False)
    acc_nearest, acc_gptq = builtin.evaluate(nearest).value, builtin.evaluate(rounded).value
    assert acc_gptq >= acc_nearest - 0.5
    # the same grids as nearest rounding: per-channel scales unchanged, so the storage and the costs are too
    for name, layer in quantized_layers(rounded).items():
        w = model.get_submodule(name).weight.detach()
        rows = w.reshape(w.shape[0], -1)
        fmt = IntFormat(3, granularity="channel")
        q = layer.layer.weight.detach().reshape(rows.shape)
        assert torch.equal(fake_quant_int(q, *weight_qparams(rows, fmt), fmt), q)
    costs = cost_tables(groups, ["w3a8"], model)
    assert costs.total("bytes", plan.assignments) == costs.uniform("bytes", "w3a8")


def test_cli_quantize_with_gptq_records_the_rounding(tmp_path, capsys):
    base = ["quantize", "--model", "demo-cnn", "--uniform", "w3a8"]
    assert main(base + ["--out", str(tmp_path / "nearest")]) == 0
    assert main(base + ["--rounding", "gptq", "--no-act-order", "--out", str(tmp_path / "gptq")]) == 0
    nearest = json.loads((tmp_path / "nearest" / "result.json").read_text())
    result = json.loads((tmp_path / "gptq" / "result.json").read_text())
    assert nearest["rounding"] == "nearest" and result["rounding"] == "gptq"
    assert result["rounding_options"] == {**DEFAULT, "act_order": False}  # every option, defaults too
    assert result["costs"] == nearest["costs"]
    assert result["metric"] >= nearest["metric"] - 0.5
    assert main(base + ["--rounding", "adaround", "--rounding-iterations", "20", "--out", str(tmp_path / "ada")]) == 0
    assert json.loads((tmp_path / "ada" / "result.json").read_text())["rounding_options"]["iterations"] == 20
    capsys.readouterr()
    assert main(base + ["--rounding", "adaround", "--act-order", "--out", str(tmp_path / "x")]) == 2
    assert "--act-order is an option of --rounding gptq" in capsys.readouterr().err
    # a plan is applied with the rounding it was chosen with (as export does), unless --rounding says otherwise
    plan = json.loads((tmp_path / "gptq" / "plan.json").read_text())
    plan["metadata"].update(rounding="gptq", rounding_options={**DEFAULT, "act_order": False})
    (tmp_path / "gptq_plan.json").write_text(json.dumps(plan))
    again = ["quantize", "--model", "demo-cnn", "--plan", str(tmp_path / "gptq_plan.json")]
    assert main(again + ["--out", str(tmp_path / "again")]) == 0
    assert "this plan was chosen with gptq-rounded weights: applied with gptq" in capsys.readouterr().out
    applied = json.loads((tmp_path / "again" / "result.json").read_text())
    assert applied["rounding"] == "gptq" and applied["rounding_options"] == result["rounding_options"]
    assert applied["metric"] == result["metric"]  # the same weights as --rounding gptq --no-act-order made
    assert main(again + ["--rounding", "nearest", "--out", str(tmp_path / "near")]) == 0
    assert json.loads((tmp_path / "near" / "result.json").read_text())["rounding"] == "nearest"


def test_gptq_sees_the_inputs_the_plans_activation_quantizers_make():
    model = TwoLayers().eval()
    x = correlated_inputs(n=1024)
    data = list(x.split(256))
    fmt = IntFormat(3, granularity="channel")
    plan = plan_of({"fc1": "w3a4", "fc2": "w3a4"})
    q = round_weights(model, plan, data, "gptq", progress=False)
    quantized = apply(model, plan, data, progress=False)
    quantized.fc1.layer.weight = nn.Parameter(q["fc1"], requires_grad=False)
    seen = []
    quantized.fc2.layer.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    with torch.no_grad():
        for batch in data:
            quantized(batch)
    x2 = torch.cat(seen)
    assert len(torch.unique(x2)) <= 16  # 4-bit inputs
    w2 = model.fc2.weight.detach()
    expected, _, _ = gptq(w2, 2 * x2.T @ x2 / len(x2), *weight_qparams(w2, fmt), fmt, **DEFAULT)
    assert torch.allclose(q["fc2"], expected, atol=1e-5)


def test_a_checkpoint_of_a_model_changed_in_place_since_is_not_read(tmp_path, monkeypatch):
    # the model's hash is remembered between calls (a search checkpoints every plan of one model): a weight
    # changed in place must still give another checkpoint, never the stale one
    from mixprec.rounding import prefix
    model = TwoLayers().eval()
    plan = plan_of({"fc1": "w4", "fc2": "w4"})
    data = [torch.randn(8, 64, generator=torch.Generator().manual_seed(0))]
    round_weights(model, plan, data, "gptq", progress=False, checkpoint=tmp_path)
    with torch.no_grad():
        model.fc1.weight.mul_(3.0)
    monkeypatch.setattr(prefix, "STORE", prefix.PrefixStore())
    again = round_weights(model, plan, data, "gptq", progress=False, checkpoint=tmp_path)
    fresh = TwoLayers().eval()
    with torch.no_grad():
        fresh.fc1.weight.mul_(3.0)
    expected = round_weights(fresh, plan, data, "gptq", progress=False)
    assert all(torch.equal(again[n], expected[n]) for n in expected)
    assert len(list(tmp_path.glob("gptq-*.pt"))) == 2


@pytest.mark.parametrize("method", ["gptq", "adaround", "brecq"])
def test_nan_inputs_from_some_samples_are_a_rounding_error_naming_the_layer(method):
    """The model computes NaN for some calibration samples only (the data itself is finite): the learned
    roundings fit them and GPTQ's Hessian sums them, so the result was garbage or a misleading error."""
    class SomeNan(TwoLayers):
        def forward(self, x):
            h = self.fc1(x)
            return self.fc2(torch.where(x[:, :1] > 1.5, torch.sqrt(h), torch.relu(h)))  # NaN where h < 0

    model = SomeNan().eval()
    data = [torch.randn(32, 64, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    plan = Plan.uniform(discover_groups(model, data[0]), "w4a8")
    with pytest.raises(RoundingError, match=r"(layer|block) 'fc2': [\d,]+ of [\d,]+ (input|output) values on the "
                                            r"calibration data are NaN or infinite"):
        apply(model, plan, data, rounding=method, progress=False)


def test_a_rounding_checkpoint_is_not_reused_for_a_model_with_the_same_weights_and_another_forward(tmp_path):
    class Tanh(TwoLayers):  # the same weights, another forward
        def forward(self, x):
            return self.fc2(torch.tanh(self.fc1(x)))

    data = [torch.randn(32, 64, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    relu, tanh = TwoLayers().eval(), Tanh().eval()
    plan = Plan.uniform(discover_groups(relu, data[0]), "w3a8")
    for model in (relu, tanh):
        apply(model, plan, data, rounding="adaround", rounding_options={"iterations": 20}, progress=False,
              rounding_checkpoint=tmp_path)
    assert len(list(tmp_path.glob("adaround-*.pt"))) == 2  # one each: the second was not read from the first's


@pytest.mark.parametrize("rounding", ["gptq", "brecq"])
def test_a_model_of_two_inputs_is_rounded_from_its_inputs_and_labels(rounding):
    """Items ((a, b), labels): the inputs kept for the rounding are the 2-tuple (a, b), which calibration read
    again as (inputs, labels) and called the model with a alone."""
    torch.manual_seed(0)

    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.fc = nn.Linear(8, 16), nn.Linear(8, 16), nn.Linear(32, 3)

        def forward(self, left, right):
            return self.fc(torch.cat([torch.relu(self.a(left)), torch.relu(self.b(right))], 1))

    model = TwoInputs().eval()
    data = [((torch.randn(32, 8), torch.randn(32, 8)), torch.randint(0, 3, (32,))) for _ in range(2)]
    plan = Plan.uniform(discover_groups(model, data[0][0]), "w4a8")
    nearest = apply(model, plan, data, progress=False)
    rounded = apply(model, plan, data, rounding=rounding, progress=False,
                            rounding_options={"iterations": 5} if rounding == "brecq" else None)
    x = data[0][0]
    assert rounded(*x).shape == (32, 3)
    assert not torch.equal(rounded.get_submodule("a").layer.weight, nearest.get_submodule("a").layer.weight)
