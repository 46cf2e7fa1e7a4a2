import pytest
import torch
from torch import nn

from mixprec.candidates import parse_candidate
from mixprec.plan import Plan
from mixprec.quantizers import fake_quant_int, quantize_weight, weight_qparams
from mixprec.rounding import adaround, round_weights

from test_gptq import correlated_inputs, one_thread  # noqa: F401  (tests/rounding is on sys.path: rootdir mode)


def plan_for(name, cand):
    return Plan({"g": cand}, {"g": [name]})


@pytest.mark.parametrize("cand", ["w3", "w4g16-asym"])
def test_rounds_each_weight_down_or_up_on_nearest_grid(cand):
    fmt = parse_candidate(cand).weight
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 24))
    q = round_weights(model, plan_for("0", cand), list(correlated_inputs(n=512).split(128)), "adaround",
                      progress=False, iterations=150)["0"]
    w = model[0].weight.detach()
    scale, zero_point = weight_qparams(w, fmt)
    assert q.shape == w.shape and q.dtype == w.dtype
    assert torch.equal(fake_quant_int(q, scale, zero_point, fmt), q)  # nearest rounding's grid, same scales
    code = torch.round(q / scale + zero_point)
    down = torch.clamp(torch.floor(w / scale) + zero_point, fmt.qmin, fmt.qmax)
    up = torch.clamp(torch.floor(w / scale) + 1 + zero_point, fmt.qmin, fmt.qmax)
    assert torch.all((code == down) | (code == up))  # |q - w/s| < 1 grid step, clipping aside
    nearest_code = torch.round(quantize_weight(w, fmt) / scale + zero_point)
    assert not torch.equal(code, nearest_code)  # it learned something


@pytest.mark.parametrize("layer", ["linear", "conv"])
def test_output_error_lower_than_nearest(layer):
    torch.manual_seed(0)
    if layer == "linear":
        model, x = nn.Sequential(nn.Linear(64, 32)), correlated_inputs(n=512)
        forward = lambda w: x @ w.T
    else:
        model = nn.Sequential(nn.Conv2d(6, 8, 3, padding=1))
        x = torch.randn(96, 2, 6, 6).repeat(1, 3, 1, 1) + 0.3 * torch.randn(96, 6, 6, 6)
        forward = lambda w: nn.functional.conv2d(x, w, padding=1)
    data = list(x.split(32))
    w = model[0].weight.detach()
    error = lambda q: float((forward(q) - forward(w)).pow(2).sum())
    plan = plan_for("0", "w3")
    nearest = round_weights(model, plan, None, "nearest")["0"]
    learned = round_weights(model, plan, data, "adaround", progress=False, iterations=300)["0"]
    assert error(learned) < 0.7 * error(nearest)


def test_rectified_sigmoid_starts_at_the_fractional_part():
    # V is initialised so that the soft weight equals the float weight (h(V) = w/s - floor(w/s)).
    rest = torch.linspace(0, 0.999, 101)
    V = -torch.log((adaround.ZETA - adaround.GAMMA) / (rest - adaround.GAMMA) - 1)
    assert torch.allclose(adaround.rectified_sigmoid(V), rest, atol=1e-5)
    assert adaround.rectified_sigmoid(torch.tensor([-50.0, 50.0])).tolist() == [0.0, 1.0]
