import pytest
import torch
from torch import nn

from mixprec.candidates import parse_candidate
from mixprec.formats import IntFormat
from mixprec.plan import Plan
from mixprec.quantizers import fake_quant_int, quantize_weight, weight_qparams
from mixprec.rounding import round_weights
from mixprec.capture import layer_columns
from mixprec.rounding.gptq import gptq

FORMATS = [IntFormat(3, granularity="channel"), IntFormat(4, symmetric=False, granularity="channel"),
           IntFormat(3, granularity="group", group_size=16),
           IntFormat(4, symmetric=False, granularity="group", group_size=32),
           IntFormat(3, granularity="tensor")]


@pytest.fixture(autouse=True)
def one_thread():
    """The layers here are tiny: on 2 busy cores, intra-op threads wait for each other far longer than
    they compute (a 32x64 matmul step takes 30 ms with 2 threads, 0.1 ms with 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def correlated_inputs(n=2048, k=64, seed=0):
    """Inputs whose features are strongly correlated (the case where GPTQ's error feedback pays)."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(k, k, generator=g) / k ** 0.5 + 2 * torch.eye(k)
    return torch.randn(n, k // 4, generator=g).repeat(1, 4) @ mix + 0.3 * torch.randn(n, k, generator=g)


def hessian(x):
    return 2 * x.T @ x / x.shape[0]


def one_layer_plan(name, cand):
    return Plan({"g": cand}, {"g": [name]})


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
@pytest.mark.parametrize("method", ["minmax", "mse", "percentile"])
def test_weight_qparams_reproduce_quantize_weight(fmt, method):
    g = torch.Generator().manual_seed(3)
    for w in (torch.randn(8, 100, generator=g), torch.randn(6, 4, 3, 3, generator=g)):  # 100 = 3 x 32 + a short group
        rows = w.reshape(w.shape[0], -1)
        scale, zero_point = weight_qparams(rows, fmt, method)
        assert scale.shape == zero_point.shape == rows.shape
        expected = quantize_weight(w, fmt, method).reshape(rows.shape)
        assert torch.equal(fake_quant_int(rows, scale, zero_point, fmt), expected)


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_diagonal_hessian_is_nearest_rounding(fmt):
    # No correlation between inputs: no error feedback, so GPTQ must give nearest rounding exactly
    # (same scales, same groups, a shorter last group included).
    w = torch.randn(12, 100, generator=torch.Generator().manual_seed(1))
    H = torch.diag(torch.rand(100, generator=torch.Generator().manual_seed(2)) + 0.1)
    q, _, _ = gptq(w, H, *weight_qparams(w, fmt), fmt, block_size=32)
    assert torch.equal(q, quantize_weight(w, fmt))


@pytest.mark.parametrize("fmt", FORMATS[:2], ids=lambda f: f.name)
def test_per_channel_result_is_on_quantize_weight_grid(fmt):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 24))
    x = correlated_inputs()
    q = round_weights(model, one_layer_plan("0", f"w{fmt.bits}" + ("-asym" if not fmt.symmetric else "")),
                      list(x.split(256)), "gptq", progress=False)["0"]
    w = model[0].weight.detach()
    scale, zero_point = weight_qparams(w, fmt)
    assert q.shape == w.shape and q.dtype == w.dtype
    assert torch.equal(fake_quant_int(q, scale, zero_point, fmt), q)  # every value on the nearest-rounding grid
    assert not torch.equal(q, quantize_weight(w, fmt))  # but not nearest rounding


@pytest.mark.parametrize("act_order", [False, True])
def test_grouped_result_has_one_grid_per_group(act_order):
    fmt = IntFormat(3, granularity="group", group_size=24)  # 64 = 24 + 24 + 16
    x = correlated_inputs()
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(4)) * 0.1
    q, scale, zero_point = gptq(w, hessian(x), *weight_qparams(w, fmt), fmt, act_order=act_order, block_size=16)
    assert torch.equal(fake_quant_int(q, scale, zero_point, fmt), q)
    for start in (0, 24, 48):
        s = scale[:, start:start + 24]
        assert torch.equal(s, s[:, :1].expand_as(s))  # one scale per group of contiguous columns
        codes = q[:, start:start + 24] / s
        assert torch.allclose(codes, codes.round(), atol=1e-4) and codes.abs().max() <= 2 ** (fmt.bits - 1)
    # scales were chosen from the error-updated weights, not the float ones
    assert not torch.equal(scale, weight_qparams(w, fmt)[0])


def output_error(w, q, x):
    return float((x @ (w - q).T).pow(2).sum())


@pytest.mark.parametrize("cand", ["w3", "w4", "w3g16", "w4g32-asym"])
def test_gptq_beats_nearest_on_correlated_inputs(cand):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32))
    x = correlated_inputs()
    data = list(x.split(512))
    w = model[0].weight.detach()
    nearest = round_weights(model, one_layer_plan("0", cand), data, "nearest")["0"]
    for act_order in (False, True):
        q = round_weights(model, one_layer_plan("0", cand), data, "gptq", progress=False, act_order=act_order)["0"]
        assert output_error(w, q, x) < 0.8 * output_error(w, nearest, x)


def test_act_order_is_permute_quantize_permute_back():
    fmt = IntFormat(3, granularity="channel")
    x = correlated_inputs() * torch.linspace(0.2, 2, 64)  # uneven diagonal: a real permutation
    w = torch.randn(8, 64, generator=torch.Generator().manual_seed(5))
    H = hessian(x)
    scale, zero_point = weight_qparams(w, fmt)
    perm = torch.argsort(torch.diag(H), descending=True)
    assert not torch.equal(perm, torch.arange(64))
    inverse = torch.argsort(perm)
    q, _, _ = gptq(w, H, scale, zero_point, fmt, act_order=True, block_size=16)
    by_hand, _, _ = gptq(w[:, perm], H[perm][:, perm], scale[:, perm], zero_point[:, perm], fmt, block_size=16)
    assert torch.equal(q, by_hand[:, inverse])
    assert not torch.equal(q, gptq(w, H, scale, zero_point, fmt, block_size=16)[0])


def test_dead_inputs_give_zero_weights_and_no_nan():
    fmt = IntFormat(4, granularity="channel")
    x = correlated_inputs(k=16)
    x[:, 3] = 0
    w = torch.randn(4, 16)
    q, _, _ = gptq(w, hessian(x), *weight_qparams(w, fmt), fmt)
    assert torch.isfinite(q).all() and torch.all(q[:, 3] == 0)


@pytest.mark.parametrize("conv", [
    nn.Conv2d(4, 6, 3, padding=1, bias=False),
    nn.Conv2d(4, 6, (3, 2), stride=2, dilation=(1, 2), padding="valid", bias=False),
    nn.Conv2d(4, 6, 4, padding="same", padding_mode="reflect", groups=2, bias=False),
    nn.Conv2d(4, 4, 3, padding=2, padding_mode="circular", groups=4, bias=False),
    nn.Conv1d(4, 6, 3, stride=2, padding=1, padding_mode="replicate", bias=False),
], ids=["plain", "strided-dilated", "same-reflect-grouped", "depthwise-circular", "conv1d"])
def test_layer_columns_are_what_the_conv_multiplies(conv):
    x = torch.randn(2, 4, *([9, 10] if isinstance(conv, nn.Conv2d) else [11]))
    out = conv(x)
    columns = layer_columns(conv, x)  # (conv groups, patches, inputs per group)
    w = conv.weight.detach().reshape(conv.groups, conv.out_channels // conv.groups, -1)
    patches = torch.cat([columns[g] @ w[g].T for g in range(conv.groups)], dim=1)
    assert torch.allclose(patches, out.movedim(1, -1).reshape(-1, conv.out_channels), atol=1e-5)


def test_grouped_conv_gptq_beats_nearest():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.ReLU(), nn.Conv2d(8, 6, 3, padding=1))
    base = torch.randn(64, 2, 8, 8)
    x = base.repeat(1, 4, 1, 1) + 0.2 * torch.randn(64, 8, 8, 8)  # correlated channels
    plan = Plan({"g0": "w3", "g1": "w3g20"}, {"g0": ["0"], "g1": ["2"]})
    q = round_weights(model, plan, list(x.split(16)), "gptq", progress=False)
    nearest = round_weights(model, plan, None, "nearest")
    with torch.no_grad():
        conv = lambda w: nn.functional.conv2d(x, w, padding=1, groups=2)
        error = lambda w: float((conv(w) - conv(model[0].weight)).pow(2).sum())
        assert error(q["0"]) < 0.9 * error(nearest["0"])


def test_layers_reading_one_input_are_rounded_in_one_column_loop():
    """Q/K/V-like layers with one Hessian and one format: their rows go through GPTQ together, with the
    weights each gets alone; another format or another input is rounded apart."""
    from mixprec.capture import add_moments
    from mixprec.rounding.gptq import GPTQ, stack_rows
    torch.manual_seed(0)
    layers = {n: nn.Linear(64, r, bias=False) for n, r in [("q", 64), ("k", 32), ("v", 32), ("o", 48)]}
    x = torch.randn(500, 64) @ torch.randn(64, 64)
    states = {n: add_moments(None, layer, x) for n, layer in layers.items()}
    states["o"] = add_moments(None, layers["o"], torch.randn(500, 64))
    formats = {n: parse_candidate("w4g16").weight for n in layers}
    assert stack_rows(layers, states, formats) == [["q", "k", "v"], ["o"]]
    config = GPTQ()
    together = config.round_step(layers, states, formats, "mse")
    for name, layer in layers.items():
        assert torch.equal(together[name], config.round_layer(layer, states[name], formats[name], "mse"))
    formats["k"] = parse_candidate("w3g16").weight
    assert stack_rows(layers, states, formats) == [["q"], ["k"], ["v"], ["o"]]


def test_a_large_layer_goes_a_chunk_of_rows_at_a_time_with_the_same_result(monkeypatch):
    from mixprec.capture import add_moments
    from mixprec.rounding import gptq as module
    torch.manual_seed(1)
    layer = nn.Linear(48, 40, bias=False)
    state = add_moments(None, layer, correlated_inputs(k=48))
    fmt = parse_candidate("w4g16").weight
    whole = module.GPTQ().round_layer(layer, state, fmt, "mse")
    monkeypatch.setattr(module, "ROW_CHUNK_ELEMENTS", 7 * 48)  # chunks of 7 rows, the last one shorter
    assert torch.equal(module.GPTQ().round_layer(layer, state, fmt, "mse"), whole)


def test_in_place_gptq_hands_each_float_weight_over_to_its_rounded_one():
    """apply(..., inplace=True) with GPTQ: the same weights as a copy gets, and no layer is held twice
    (each float parameter's data became the rounded tensor the quantized layer keeps)."""
    from mixprec.apply import apply
    from mixprec.groups import discover_groups
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 8)).eval()
    data = [torch.randn(64, 32) @ torch.randn(32, 32) for _ in range(2)]
    plan = Plan.uniform(discover_groups(model, data[0]), "w4g16")
    copied = apply(model, plan, data, rounding="gptq", progress=False)
    floats = {i: model[i].weight for i in (0, 2, 4)}
    in_place = apply(model, plan, data, rounding="gptq", progress=False, inplace=True)
    assert in_place is model
    for i, old in floats.items():
        rounded = in_place[i].layer.weight
        assert torch.equal(rounded, copied[i].layer.weight)
        assert old.data_ptr() == rounded.data_ptr()  # the float tensor's storage was given up, not kept beside


def test_a_float_weight_rounded_in_place_is_not_served_its_old_range_choice():
    """The weight cache keys on the tensor's version: rounding in place moves it on, so a later nearest
    rounding of that tensor searches its ranges again instead of reusing the float values' choice."""
    from mixprec.apply import apply
    from mixprec.groups import discover_groups
    from mixprec.swap import nearest_weight
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 8)).eval()
    data = [torch.randn(64, 32) for _ in range(2)]
    cand = parse_candidate("w3g16")
    nearest_weight(model[0].weight, cand)  # a choice cached for the float values
    version = model[0].weight._version
    float_weight = model[0].weight
    apply(model, Plan.uniform(discover_groups(model, data[0]), "w3g16"), data, rounding="gptq", progress=False,
          inplace=True)
    assert float_weight._version > version
    assert torch.equal(nearest_weight(float_weight, cand), quantize_weight(float_weight.detach(), cand.weight, "mse"))


def test_gptq_on_fewer_input_rows_than_inputs_says_its_hessian_is_singular(monkeypatch):
    from mixprec.apply import apply
    from mixprec.errors import RoundingNote
    from mixprec.groups import discover_groups
    from mixprec.plan import Plan
    from mixprec.rounding import gptq as module
    monkeypatch.setattr(module, "_SAID_SHORT", [])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    few = [torch.randn(2, 32)]  # 2 rows for 32 inputs
    plan = Plan.uniform(discover_groups(model, few[0]), "w4a8")
    with pytest.warns(RoundingNote, match=r"layer 0 saw 2 input rows on the calibration data, fewer than its 32"):
        apply(model, plan, few, rounding="gptq", progress=False)
