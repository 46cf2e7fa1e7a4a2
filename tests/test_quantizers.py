"""Property tests of the fake-quantization maths in mixprec.quantizers.

Reference values (scales, zero-points, grids) are recomputed here from ``int_qparams`` and
an explicit loop over rows/groups, independently of the reshapes quantize_weight uses.
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from mixprec.formats import FP8_MAX, FloatFormat, IntFormat
from mixprec.quantizers import (
    RANGE_METHODS,
    ActivationQuantizer,
    fake_quant_fp8,
    fake_quant_int,
    fake_quant_blocks,
    fake_quant_range,
    fp8_scale,
    int_qparams,
    quantize_weight,
)

FAST = settings(max_examples=40, deadline=None)
SLOW = settings(max_examples=12, deadline=None)  # examples that run the 41-point MSE search
FP8_DTYPES = {"fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}
# (mantissa bits, smallest normal exponent) of each FP8 flavour (OCP FP8 spec).
FP8_MANTISSA = {"fp8_e4m3": (3, -6), "fp8_e5m2": (2, -14)}


# ---------------------------------------------------------------- strategies and helpers

@st.composite
def int_formats(draw, granularities=("tensor", "channel", "group"), bits=st.integers(2, 16)):
    granularity = draw(st.sampled_from(granularities))
    group_size = draw(st.integers(1, 40)) if granularity == "group" else None
    return IntFormat(draw(bits), draw(st.booleans()), granularity, group_size)


@st.composite
def weight_tensors(draw, max_rows=6, max_cols=60, min_cols=1):
    """A float32 weight (rows, cols) of gaussian values with a drawn scale and per-row offset."""
    seed = draw(st.integers(0, 2**31 - 1))
    rows = draw(st.integers(1, max_rows))
    cols = draw(st.integers(min_cols, max_cols))
    scale = 10.0 ** draw(st.floats(-4, 4))
    offset = draw(st.sampled_from([0.0, 0.0, 2.0, -2.0]))  # some rows all-positive / all-negative
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, cols, generator=g) + offset) * scale


def gaussian(seed: int, scale: float, shape) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * scale


def reference_qparams(w: torch.Tensor, fmt: IntFormat, lo_fn=None):
    """Scale and zero-point of every element of ``w`` (as (R, K) rows), range = min/max per block."""
    rows = w.reshape(w.shape[0], -1) if w.dim() >= 2 else w.reshape(1, -1)
    scale = torch.empty_like(rows)
    zero = torch.empty_like(rows)
    granularity = fmt.granularity if w.dim() >= 2 else "tensor"
    if granularity == "tensor":
        blocks = [(slice(None), slice(None))]
    elif granularity == "channel":
        blocks = [(slice(r, r + 1), slice(None)) for r in range(rows.shape[0])]
    else:
        k = rows.shape[1]
        blocks = [(slice(r, r + 1), slice(c, min(c + fmt.group_size, k)))
                  for r in range(rows.shape[0]) for c in range(0, k, fmt.group_size)]
    for rs, cs in blocks:
        block = rows[rs, cs]
        s, z = int_qparams(block.min(), block.max(), fmt)
        scale[rs, cs] = s
        zero[rs, cs] = z
    return rows, scale, zero


def mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).pow(2).mean().item()


def assert_half_step(x: torch.Tensor, xq: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None = None,
                     fmt: IntFormat | None = None) -> None:
    """Within half a step of x, or, given the format, of x clamped to the grid's ends: a symmetric
    grid keeps the extreme of its range at qmin, and the other side reaches qmax / -qmin of it."""
    if fmt is not None:
        ends = ((fmt.qmin - zero) * scale, (fmt.qmax - zero) * scale)
        x = torch.maximum(torch.minimum(x, torch.maximum(*ends)), torch.minimum(*ends))
    err = (xq - x).abs()
    # Two float32 roundings (x / s and (q - z) * s) add a few ulps of |x| and of s.
    step = scale.abs()  # symmetric scales are signed (int_qparams)
    bound = step / 2 + 4e-6 * step + 4 * torch.finfo(torch.float32).eps * x.abs()
    worst = (err - bound).max().item()
    assert worst <= 0, f"error exceeds half a step by {worst}"


def assert_on_grid(xq: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, fmt: IntFormat) -> None:
    """(xq / s + z) is an integer code in [qmin, qmax], up to float32 rounding (codes reach 65535)."""
    codes = xq.double() / scale.double() + zero.double()
    tol = 1e-4 + 4 * torch.finfo(torch.float32).eps * (codes.abs() + zero.double().abs())
    assert ((codes - codes.round()).abs() <= tol).all()
    assert codes.round().min() >= fmt.qmin and codes.round().max() <= fmt.qmax


# ---------------------------------------------------------------- integer error bound

@FAST
@given(w=weight_tensors(), fmt=int_formats())
def test_minmax_error_at_most_half_step(w, fmt):
    q = quantize_weight(w, fmt, "minmax")
    assert q.shape == w.shape and q.dtype == w.dtype
    rows, scale, zero = reference_qparams(w, fmt)
    assert_half_step(rows, q.reshape(rows.shape), scale, zero, fmt)
    # The output lies on each block's grid: (q / s + z) is an integer in [qmin, qmax].
    assert_on_grid(q.reshape(rows.shape), scale, zero, fmt)


@FAST
@given(seed=st.integers(0, 2**31 - 1), fmt=int_formats(granularities=("tensor",)),
       lo=st.floats(-100, 0), width=st.floats(1e-3, 200))
def test_values_inside_range_within_half_step(seed, fmt, lo, width):
    hi = lo + width
    x = torch.rand(200, generator=torch.Generator().manual_seed(seed)) * width + lo
    lo_t, hi_t = torch.tensor(lo), torch.tensor(hi)
    scale, zero = int_qparams(lo_t, hi_t, fmt)
    assert_half_step(x, fake_quant_range(x, lo_t, hi_t, fmt), scale.expand_as(x), zero.expand_as(x), fmt)


# ---------------------------------------------------------------- clamping, zero-point, zero

@FAST
@given(fmt=int_formats(granularities=("tensor",)), lo=st.floats(-1e3, 1e3), hi=st.floats(-1e3, 1e3),
       seed=st.integers(0, 2**31 - 1))
@example(fmt=IntFormat(2, True, "tensor"), lo=5.0, hi=-4.0, seed=0)  # the other side short of the range
def test_clamping_and_zero_point(fmt, lo, hi, seed):
    lo, hi = min(lo, hi), max(lo, hi)
    assume(max(-lo, hi, hi - lo) > 1e-3)
    lo_t, hi_t = torch.tensor(lo), torch.tensor(hi)
    scale, zero = int_qparams(lo_t, hi_t, fmt)
    # The zero-point is an integer code inside [qmin, qmax] (0 for symmetric formats).
    assert fmt.qmin <= zero.item() <= fmt.qmax and zero.item() == round(zero.item())
    if fmt.symmetric:
        assert zero.item() == 0
    ends = ((fmt.qmin - zero) * scale, (fmt.qmax - zero) * scale)  # a signed scale swaps them
    bottom, top = torch.minimum(*ends), torch.maximum(*ends)
    step = scale.abs()
    # Zero is exactly representable.
    assert fake_quant_range(torch.zeros(5), lo_t, hi_t, fmt).eq(0).all()
    # Far outside the range: exactly the grid ends. Anywhere: never beyond the grid ends.
    span = max(abs(lo), abs(hi), 1.0)
    g = torch.Generator().manual_seed(seed)
    far_above = top + step + torch.rand(50, generator=g) * 10 * span
    far_below = bottom - step - torch.rand(50, generator=g) * 10 * span
    assert torch.equal(fake_quant_range(far_above, lo_t, hi_t, fmt), top.expand(50))
    assert torch.equal(fake_quant_range(far_below, lo_t, hi_t, fmt), bottom.expand(50))
    anywhere = (torch.rand(200, generator=g) - 0.5) * 40 * span
    out = fake_quant_range(anywhere, lo_t, hi_t, fmt)
    assert out.min() >= bottom and out.max() <= top
    lo0, hi0 = min(lo, 0.0), max(hi, 0.0)
    if not fmt.symmetric:  # the clipping range [lo, hi] (widened to hold 0) is covered to within half a step
        assert bottom.item() <= lo0 + step.item() * (0.5 + 1e-5)
        assert top.item() >= hi0 - step.item() * (0.5 + 1e-5)
    else:  # the other side of a symmetric grid reaches qmax steps, qmax / -qmin of the extreme
        extreme = lo0 if -lo0 >= hi0 else hi0
        other_end = top if extreme < 0 else bottom
        assert abs(other_end.item()) == pytest.approx(fmt.qmax * step.item(), rel=1e-6)
    if fmt.symmetric:  # the end of larger magnitude is exactly on the grid, at code qmin: nothing is clipped
        extreme = lo0 if -lo0 >= hi0 else hi0
        assert fake_quant_range(torch.tensor([extreme]), lo_t, hi_t, fmt).item() == pytest.approx(extreme, rel=1e-6)
        assert torch.round(torch.tensor(extreme) / scale).item() == fmt.qmin


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_symmetric_grid_uses_every_level(bits, sign):
    """min-max symmetric quantization of a ramp uses all 2^B codes whichever side holds the extreme."""
    fmt = IntFormat(bits, symmetric=True, granularity="tensor")
    x = sign * torch.linspace(-1.0, 1.0 - 2.0 ** (1 - bits), 4001)  # the grid spans [-1, qmax / -qmin]
    levels = torch.unique(quantize_weight(x.reshape(1, -1), fmt, "minmax"))
    assert len(levels) == 2 ** bits
    assert levels.abs().max().item() == pytest.approx(1.0)  # the extreme is kept, not clipped


@FAST
@given(fmt=int_formats(granularities=("tensor",)), seed=st.integers(0, 2**31 - 1),
       log_scale=st.floats(-6, 3), zero_frac=st.floats(0, 1))
def test_fake_quant_int_idempotent(fmt, seed, log_scale, zero_frac):
    scale = torch.tensor(10.0**log_scale)
    zero = torch.tensor(float(round(fmt.qmin + zero_frac * (fmt.qmax - fmt.qmin))))
    x = gaussian(seed, 10.0 ** (log_scale + fmt.bits / 3), (300,))
    once = fake_quant_int(x, scale, zero, fmt)
    assert torch.equal(fake_quant_int(once, scale, zero, fmt), once)


@FAST
@given(w=weight_tensors(), bits=st.integers(2, 16))
def test_quantize_weight_idempotent_symmetric_per_channel(w, bits):
    # Holds exactly: the row maximum maps to qmax * s, and fl(fl(qmax * s) / qmax) == s for
    # s = fl(amax / qmax) (checked empirically over millions of values), so the second pass
    # finds the same scale and every code maps to itself.
    fmt = IntFormat(bits, True, "channel")
    once = quantize_weight(w, fmt, "minmax")
    assert torch.equal(quantize_weight(once, fmt, "minmax"), once)


# ---------------------------------------------------------------- monotonicity and MSE search

@SLOW
@given(seed=st.integers(0, 2**31 - 1), log_scale=st.floats(-3, 3), n=st.integers(64, 160),
       symmetric=st.booleans(), granularity=st.sampled_from(["tensor", "channel", "group"]),
       method=st.sampled_from(["minmax", "mse"]))
def test_error_non_increasing_in_bits(seed, log_scale, n, symmetric, granularity, method):
    # Not a theorem (the grids of b and b+1 bits are not nested), but for >= 64 gaussian
    # values the error roughly quarters per bit; it held on 400 seeds x 2..16 bits offline.
    w = gaussian(seed, 10.0**log_scale, (2, n))
    group = 32 if granularity == "group" else None
    errors = [mse(quantize_weight(w, IntFormat(b, symmetric, granularity, group), method), w) for b in range(2, 17)]
    for b, (low, high) in enumerate(zip(errors, errors[1:]), start=2):
        assert high <= low, f"{method}: error grew from {b} to {b + 1} bits: {low} -> {high}"
    assert errors[-1] < errors[0]


@SLOW
@given(w=weight_tensors(max_rows=4, max_cols=40), fmt=int_formats())
def test_mse_method_never_worse_than_minmax(w, fmt):
    # Per row the search starts at alpha = 1 (the minmax range) and keeps only strict improvements.
    assert mse(quantize_weight(w, fmt, "mse"), w) <= mse(quantize_weight(w, fmt, "minmax"), w) * (1 + 1e-6) + 1e-30


@SLOW
@given(w=weight_tensors(max_rows=4, max_cols=40), kind=st.sampled_from(["fp8_e4m3", "fp8_e5m2"]))
def test_mse_method_never_worse_than_minmax_fp8(w, kind):
    fmt = FloatFormat(kind, "channel")
    assert mse(quantize_weight(w, fmt, "mse"), w) <= mse(quantize_weight(w, fmt, "minmax"), w) * (1 + 1e-6) + 1e-30


# ---------------------------------------------------------------- edge cases

EDGE_FORMATS = [IntFormat(2, True, "channel"), IntFormat(2, False, "channel"), IntFormat(2, True, "group", 3),
                IntFormat(2, False, "tensor"), IntFormat(8, False, "group", 5), IntFormat(16, True, "tensor"),
                FloatFormat("fp8_e4m3", "channel"), FloatFormat("fp8_e5m2", "tensor")]


def _edge_tensors():
    outlier = gaussian(0, 1.0, (4, 11))
    outlier[2, 7] = 1e30
    tiny = gaussian(1, 1e-30, (4, 11))
    return {"zeros": torch.zeros(4, 11), "outlier": outlier, "tiny": tiny,
            "denormal": gaussian(2, 1e-40, (4, 11))}


@pytest.mark.parametrize("method", RANGE_METHODS)
@pytest.mark.parametrize("fmt", EDGE_FORMATS, ids=lambda f: f.name)
@pytest.mark.parametrize("case", sorted(_edge_tensors()))
def test_edge_cases_finite(case, fmt, method):
    w = _edge_tensors()[case]
    q = quantize_weight(w, fmt, method)
    assert q.shape == w.shape
    assert torch.isfinite(q).all(), f"{case}: non-finite output"
    if case == "zeros":
        assert q.eq(0).all()
    if case in ("tiny", "denormal"):
        # Every value is reproduced to within its own magnitude (never blown up).
        assert ((q - w).abs() <= w.abs().amax() * 1.01).all()
    if case == "outlier":
        # The outlier row keeps its outlier; other rows of per-channel formats are untouched by it.
        assert q[2, 7].item() == pytest.approx(1e30, rel=0.07)


@pytest.mark.parametrize("method", RANGE_METHODS)
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("granularity,group", [("tensor", None), ("channel", None), ("group", 4)])
@pytest.mark.parametrize("value", [0.1, -0.1, 3.7, -1e-3, 1e5, -1 / 3])
def test_constant_tensor_reconstructed(value, granularity, group, symmetric, method):
    # Exact up to float32 rounding of (c / qmax) * qmax: c = 0.1 at 2 bits asymmetric comes back
    # 1 ulp off (0.1 / 3 * 3 != 0.1 in float32); never more than that.
    w = torch.full((3, 10), value)
    for bits in (2, 3, 4, 8, 16):
        q = quantize_weight(w, IntFormat(bits, symmetric, granularity, group), method)
        torch.testing.assert_close(q, w, rtol=2 * torch.finfo(torch.float32).eps, atol=0)


def test_huge_outlier_does_not_touch_other_channels():
    w = gaussian(3, 1.0, (4, 20))
    spiked = w.clone()
    spiked[1, 5] = 1e30
    fmt = IntFormat(4, True, "channel")
    a, b = quantize_weight(w, fmt, "minmax"), quantize_weight(spiked, fmt, "minmax")
    assert torch.equal(a[[0, 2, 3]], b[[0, 2, 3]])
    assert torch.isfinite(b).all()


# ---------------------------------------------------------------- dtype and device

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]
DTYPE_FORMATS = [IntFormat(4, True, "channel"), IntFormat(3, False, "group", 7), FloatFormat("fp8_e4m3", "channel"),
                 FloatFormat("fp16"), FloatFormat("bf16"), FloatFormat("fp32"), None]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("fmt", DTYPE_FORMATS, ids=lambda f: f.name if f else "none")
def test_dtype_and_device_preserved(fmt, dtype, device):
    w = gaussian(4, 0.5, (6, 30)).to(dtype).to(device)
    q = quantize_weight(w, fmt, "minmax")
    assert q.dtype == dtype and q.device == w.device and q.shape == w.shape
    assert torch.isfinite(q.float()).all()
    if fmt is None or isinstance(fmt, IntFormat) or fmt.scaled:
        # Computed in float32, then cast back.
        expected = quantize_weight(w.float(), fmt, "minmax").to(dtype)
        assert torch.equal(q, expected)
    aq = ActivationQuantizer(fmt, "minmax").to(device)
    x = gaussian(5, 2.0, (3, 8)).to(dtype).to(device)
    aq(x)
    if aq.observing:
        aq.finish_calibration()
    y = aq(x)
    assert y.dtype == dtype and y.device == x.device


# ---------------------------------------------------------------- group granularity

@FAST
@given(seed=st.integers(0, 2**31 - 1), group=st.integers(2, 16), full_groups=st.integers(1, 4),
       tail=st.integers(1, 15), bits=st.integers(2, 8), symmetric=st.booleans())
def test_short_last_group_has_own_scale(seed, group, full_groups, tail, bits, symmetric):
    tail = 1 + (tail - 1) % (group - 1)  # 1 <= tail < group: the size does not divide the row
    k = full_groups * group + tail
    fmt = IntFormat(bits, symmetric, "group", group)
    w = gaussian(seed, 1.0, (3, k))
    spiked = w.clone()
    spiked[:, -1] = 1e4  # only in the tail group
    full = full_groups * group
    q, qs = quantize_weight(w, fmt, "minmax"), quantize_weight(spiked, fmt, "minmax")
    assert torch.equal(q[:, :full], qs[:, :full])  # other groups unaffected
    assert torch.equal(qs[:, :full], quantize_weight(w[:, :full], fmt, "minmax"))
    # The tail is quantized on its own range.
    tail_scale, tail_zero = int_qparams(spiked[:, full:].amin(1, keepdim=True), spiked[:, full:].amax(1, keepdim=True),
                                        fmt)
    assert_half_step(spiked[:, full:], qs[:, full:], tail_scale.expand(3, tail), tail_zero.expand(3, tail), fmt)
    assert fmt.num_scales((3, k)) == 3 * (full_groups + 1)


@FAST
@given(seed=st.integers(0, 2**31 - 1), out=st.integers(1, 5), cin=st.integers(1, 5), kh=st.integers(1, 3),
       kw=st.integers(1, 3), fmt=int_formats())
def test_conv_weight_shape_and_bound(seed, out, cin, kh, kw, fmt):
    w = gaussian(seed, 0.3, (out, cin, kh, kw))
    q = quantize_weight(w, fmt, "minmax")
    assert q.shape == w.shape
    rows, scale, zero = reference_qparams(w, fmt)  # groups run over in x kh x kw of each output channel
    assert_half_step(rows, q.reshape(rows.shape), scale, zero, fmt)


def test_one_dimensional_weight_uses_one_scale():
    w = gaussian(6, 1.0, (50,))
    q = quantize_weight(w, IntFormat(4, True, "group", 8), "minmax")
    assert torch.equal(q, quantize_weight(w, IntFormat(4, True, "tensor"), "minmax"))


# ---------------------------------------------------------------- FP8 and float casts

@FAST
@given(w=weight_tensors(), kind=st.sampled_from(["fp8_e4m3", "fp8_e5m2"]),
       granularity=st.sampled_from(["tensor", "channel"]))
def test_fp8_representable_and_relative_error(w, kind, granularity):
    q = quantize_weight(w, FloatFormat(kind, granularity), "minmax")
    assert torch.isfinite(q).all()
    amax = w.abs().amax(dim=1, keepdim=True) if granularity == "channel" else w.abs().amax()
    scale = fp8_scale(amax, kind)
    # Representable: re-quantizing with the same scale changes nothing (exactly) ...
    assert torch.equal(fake_quant_fp8(q, scale, kind), q)
    # ... and the scaled value casts to FP8 and back unchanged, up to the float32 rounding of
    # (y * s) / s (it differs from y by an ulp for most tensors, so exact equality does not hold).
    y = q / scale
    torch.testing.assert_close(y.to(FP8_DTYPES[kind]).to(torch.float32), y, rtol=4e-7, atol=0)
    assert y.abs().max() <= FP8_MAX[kind] * (1 + 1e-6)  # (amax / s) is FP8_MAX up to an ulp
    mantissa, min_exp = FP8_MANTISSA[kind]
    x = w / scale
    err = (q - w).abs()
    normal = x.abs() >= 2.0**min_exp
    rel_bound = 2.0 ** -(mantissa + 1) * (1 + 1e-5)
    assert (err[normal] <= rel_bound * w.abs()[normal]).all()
    # Subnormals: half the subnormal spacing 2^(min_exp - mantissa), times the scale.
    sub_bound = (2.0 ** (min_exp - mantissa - 1)) * scale * (1 + 1e-5)
    assert (err <= torch.maximum(rel_bound * w.abs(), sub_bound.expand_as(w))).all()


@pytest.mark.parametrize("kind", ["fp8_e4m3", "fp8_e5m2"])
def test_fp8_large_values_clamp(kind):
    limit = FP8_MAX[kind]
    scale = torch.tensor(0.5)
    x = torch.tensor([limit * 0.5 * 1.5, limit * 10, 1e30, -1e30, -limit * 0.75, float("inf")])
    q = fake_quant_fp8(x, scale, kind)
    assert not torch.isnan(q).any()
    assert torch.equal(q, torch.tensor([limit, limit, limit, -limit, -limit, limit]) * 0.5)


@pytest.mark.parametrize("kind,dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_half_float_pass_through_is_a_cast(kind, dtype):
    w = gaussian(7, 3.0, (5, 13))
    w[0, 0] = 1e-9
    q = quantize_weight(w, FloatFormat(kind), "mse")
    assert torch.equal(q, w.to(dtype).to(torch.float32))
    assert not torch.equal(q, w)  # a real rounding happened
    assert torch.equal(quantize_weight(w, FloatFormat("fp32")), w)
    assert quantize_weight(w, FloatFormat("fp32")) is not w


# ---------------------------------------------------------------- ActivationQuantizer

def _batches(seed, n, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 7, generator=g) * (i + 1) + shift for i in range(n)]


@FAST
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 5), bits=st.integers(2, 16), symmetric=st.booleans(),
       shift=st.sampled_from([0.0, 3.0, -3.0]))
def test_activation_minmax_range_and_grid(seed, n, bits, symmetric, shift):
    fmt = IntFormat(bits, symmetric, "tensor")
    aq = ActivationQuantizer(fmt, "minmax")
    batches = _batches(seed, n, shift)
    for x in batches:
        assert torch.equal(aq(x), x)  # observing: identity
    assert not aq.calibrated
    aq.finish_calibration()
    assert aq.calibrated
    everything = torch.cat([b.reshape(-1) for b in batches])
    assert aq.lo.item() == everything.min().item() and aq.hi.item() == everything.max().item()
    scale, zero = int_qparams(aq.lo, aq.hi, fmt)
    y = aq(torch.cat(batches) * 1.5)  # including values beyond the calibrated range
    assert_on_grid(y, scale.expand_as(y), zero.expand_as(y), fmt)


@SLOW
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 4), method=st.sampled_from(["percentile", "mse"]),
       fmt=st.sampled_from([IntFormat(8, False), IntFormat(4, True), FloatFormat("fp8_e4m3")]),
       shift=st.sampled_from([0.0, 3.0, -3.0]))
def test_activation_percentile_and_mse_within_observed_range(seed, n, method, fmt, shift):
    aq = ActivationQuantizer(fmt, method, percentile=99.0)
    batches = _batches(seed, n, shift)
    for x in batches:
        aq(x)
    aq.finish_calibration()
    everything = torch.cat([b.reshape(-1) for b in batches])
    # Within the observed range widened to hold 0 (percentile clips each tail, but never past 0).
    lo_seen, hi_seen = min(everything.min().item(), 0.0), max(everything.max().item(), 0.0)
    assert lo_seen <= aq.lo.item() <= aq.hi.item() <= hi_seen
    assert aq.hi.item() > aq.lo.item()
    assert torch.isfinite(aq(everything)).all()


@pytest.mark.parametrize("method", ["percentile", "mse"])
def test_activation_ranges_of_the_same_samples_do_not_depend_on_their_order_or_batching(method):
    """Within the sample budget every value is kept: the same samples shuffled (a DataLoader with shuffle=True),
    reversed or in one batch calibrate the same range (draws with replacement kept about 1,300 distinct of each
    2,048 values, and the logits of one model moved by 1.5)."""
    samples = torch.randn(256, 8, generator=torch.Generator().manual_seed(0)) * torch.linspace(0.5, 4, 8)

    def calibrated(batches):
        aq = ActivationQuantizer(IntFormat(8, False), method, percentile=99.0)
        for x in batches:
            aq(x)
        aq.finish_calibration()
        return aq.lo.item(), aq.hi.item()
    order = torch.randperm(256, generator=torch.Generator().manual_seed(1))
    expected = calibrated(samples.split(32))
    assert calibrated(samples[order].split(32)) == expected
    assert calibrated(samples.flip(0).split(32)) == expected
    assert calibrated([samples]) == expected


def test_activation_integer_inputs_pass_through():
    aq = ActivationQuantizer(IntFormat(8, False), "minmax")
    tokens = torch.arange(10)
    assert aq(tokens) is tokens
    with pytest.raises(RuntimeError, match="observed no finite values"):
        aq.finish_calibration()


def test_activation_non_finite_only_raises():
    aq = ActivationQuantizer(IntFormat(8, False), "mse")
    aq(torch.tensor([float("inf"), float("nan")]))
    with pytest.raises(RuntimeError, match="observed no finite values"):
        aq.finish_calibration()


def test_activation_ignores_non_finite_when_observing():
    aq = ActivationQuantizer(IntFormat(8, False), "minmax")
    aq(torch.tensor([1.0, -2.0, float("inf"), float("-inf"), float("nan")]))
    aq.finish_calibration()
    assert (aq.lo.item(), aq.hi.item()) == (-2.0, 1.0)


@pytest.mark.parametrize("kind,dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_activation_half_float_casts_without_calibration(kind, dtype):
    aq = ActivationQuantizer(FloatFormat(kind), "mse")
    assert not aq.needs_calibration and aq.calibrated and not aq.observing
    x = gaussian(8, 3.0, (4, 9))
    assert torch.equal(aq(x), x.to(dtype).to(torch.float32))
    aq.finish_calibration()  # nothing to finish: no error


def test_activation_none_is_identity():
    aq = ActivationQuantizer(None)
    x = gaussian(9, 1.0, (3,))
    assert aq(x) is x and aq.calibrated


def test_activation_unknown_method_raises():
    with pytest.raises(ValueError, match="range method"):
        ActivationQuantizer(IntFormat(8), "absmax")


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from(["channel", "group"]), st.sampled_from(["mse", "minmax"]),
       st.sampled_from([torch.float32, torch.bfloat16]), st.integers(1, 9))
def test_a_weight_quantized_a_chunk_of_rows_at_a_time_is_the_weight_quantized_whole(seed, granularity, method,
                                                                                   dtype, chunk_rows):
    """Rows (channels, groups) are quantized independently, so chunking the rows to bound float32 memory
    (ROW_CHUNK_ELEMENTS) changes nothing, bit for bit, in the weight's own dtype."""
    import mixprec.quantizers as q
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(13, 3, 7, generator=g) * torch.rand(13, 1, 1, generator=g) * 4).to(dtype)
    fmt = IntFormat(4, symmetric=True, granularity=granularity, group_size=8 if granularity == "group" else None)
    whole = q.quantize_weight(w, fmt, method)
    old = q.ROW_CHUNK_ELEMENTS
    try:
        q.ROW_CHUNK_ELEMENTS = 21 * chunk_rows  # chunk_rows rows of 21 values
        chunked = q.quantize_weight(w, fmt, method)
    finally:
        q.ROW_CHUNK_ELEMENTS = old
    assert chunked.dtype == w.dtype and chunked.shape == w.shape and torch.equal(chunked, whole)


# ---------------------------------------------------------------- dynamic inputs per block (a8d<N>)

@FAST
@given(seed=st.integers(0, 2**31 - 1), rows=st.integers(1, 4), k=st.integers(1, 70), block=st.sampled_from([4, 16, 32]),
       log_scale=st.floats(-8, 8))
def test_block_inputs_are_each_blocks_symmetric_grid(seed, rows, k, block, log_scale):
    """Every block of every row on its own narrow grid, scale max|x| / 127 (MLAS's QuantizeARow_CompInt8),
    recomputed here with an explicit loop; within half a step of the input; a shorter last block too."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, k, generator=g) * 2.0 ** log_scale
    fmt = IntFormat(8, True, "group", block, narrow_range=True, range_method="minmax")
    out = fake_quant_blocks(x, fmt)
    assert out.shape == x.shape
    for r in range(rows):
        for start in range(0, k, block):
            part = x[r, start:start + block]
            amax = part.abs().max()
            scale = amax / 127
            codes = torch.round(part * (torch.tensor(127.0) / amax)) if amax > 0 else torch.zeros_like(part)
            assert torch.equal(out[r, start:start + block], codes * scale)
            assert bool((codes.abs() <= 127).all()) and (amax == 0 or codes.abs().max() == 127)
            assert bool(((out[r, start:start + block] - part).abs() <= scale / 2 * (1 + 1e-5) + 1e-30).all())


def test_block_inputs_zero_block_and_the_activation_quantizer_needs_no_calibration():
    fmt = IntFormat(8, True, "group", 4, narrow_range=True, range_method="minmax")
    x = torch.tensor([[0.0, 0.0, 0.0, 0.0, 1.0, -0.5, 0.25, 2.0]])
    out = fake_quant_blocks(x, fmt)
    assert torch.equal(out[0, :4], torch.zeros(4)) and out[0, 7] == 2.0
    q = ActivationQuantizer(fmt)
    assert not q.needs_calibration and q.calibrated
    assert torch.equal(q(x), out)  # at once: ranges come from the values
    assert torch.equal(q(x.double()), out.double())  # computed in float32, returned in the input's dtype
