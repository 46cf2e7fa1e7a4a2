"""The nearest-weight cache: plans measured one after another quantize each (layer, candidate) once,
with results equal to quantizing afresh, and a changed or dropped weight never serves a stale entry."""
import gc

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

from mixprec.apply import apply
from mixprec.candidates import parse_candidate
from mixprec.groups import discover_groups
from mixprec.plan import Plan
from mixprec.quantizers import quantize_weight
from mixprec.swap import nearest_weight
from mixprec.weight_cache import NEAREST, WeightCache


def model_and_data():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 5)).eval()
    data = [torch.randn(4, 3, 6, 6) for _ in range(2)]
    return model, data


def test_apply_twice_equal_and_served_from_cache():
    model, data = model_and_data()
    plan = Plan.uniform(discover_groups(model, data[0]), "w3a8")
    NEAREST.clear()
    first = apply(model, plan, data, progress=False)
    misses, hits = NEAREST.misses, NEAREST.hits
    second = apply(model, plan, data, progress=False)
    assert NEAREST.hits - hits == 2 and NEAREST.misses == misses  # both layers, no new quantization
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)
    fresh = quantize_weight(model[0].weight.detach(), parse_candidate("w3a8").weight, "mse")
    assert torch.equal(second.state_dict()["0.layer.weight"], fresh)


def test_in_place_change_is_not_served_stale():
    model, _ = model_and_data()
    cand = parse_candidate("w4a8")
    before = nearest_weight(model[0].weight, cand)
    with torch.no_grad():
        model[0].weight.mul_(3.0)  # bumps the tensor's version
    after = nearest_weight(model[0].weight, cand)
    assert not torch.equal(before, after)
    assert torch.equal(after, quantize_weight(model[0].weight.detach(), cand.weight, "mse"))


def test_callers_get_copies():
    w = torch.randn(6, 10)
    cand = parse_candidate("w4a8")
    a = nearest_weight(w, cand)
    a.zero_()
    assert not torch.equal(nearest_weight(w, cand), a)


def test_limit_and_dropped_tensors():
    cache = WeightCache(limit_bytes=2 * 10 * 4)  # two 10-float entries
    tensors = [torch.randn(10) for _ in range(3)]
    for t in tensors:
        cache.get(t, ("k",), lambda t=t: t * 2)
    assert cache.bytes <= 80 and len(cache.entries) == 2  # the oldest left first
    calls = []
    cache.get(tensors[0], ("k",), lambda: calls.append(1) or tensors[0] * 2)
    assert calls == [1]  # it had been evicted
    del tensors, t
    gc.collect()
    cache.get(torch.randn(10), ("k",), lambda: torch.zeros(10))  # purges the dead owners
    assert len(cache.entries) == 1 and cache.bytes == 40


def test_zero_limit_turns_it_off(monkeypatch):
    monkeypatch.setenv("MIXPREC_WEIGHT_CACHE_MB", "0")
    cache = WeightCache()
    w = torch.randn(4, 4)
    cache.get(w, ("k",), lambda: w + 1)
    assert not cache.entries
    monkeypatch.setenv("MIXPREC_WEIGHT_CACHE_MB", "lots")
    with pytest.raises(ValueError, match="megabytes"):
        cache.get(w, ("k",), lambda: w + 1)


def test_analysis_leaves_only_range_choices_which_the_next_plan_reuses():
    """The measurement context keeps every weight it makes; the cache keeps only the mse search's
    choices (a byte per range), and the plans measured after the analysis skip the search."""
    import mixprec
    model, data = model_and_data()
    NEAREST.clear()
    mixprec.analyze(model, data, candidates="w3a8,w8a8", progress=False)
    assert NEAREST.entries and all(v.dtype == torch.uint8 for v in NEAREST.entries.values())
    weights = sum(m.weight.numel() for m in (model[0], model[3]))
    assert NEAREST.bytes <= 2 * (8 + 5)  # one byte per output channel of each layer, at two candidates
    assert NEAREST.bytes < weights / 10
    misses, hits = NEAREST.misses, NEAREST.hits
    quantized = apply(model, Plan.uniform(discover_groups(model, data[0]), "w3a8"), data, progress=False)
    assert NEAREST.misses == misses and NEAREST.hits - hits == 2
    fresh = quantize_weight(model[3].weight.detach(), parse_candidate("w3a8").weight, "mse")
    assert torch.equal(quantized.state_dict()["3.layer.weight"], fresh)


def test_a_format_with_minmax_ranges_is_not_cached():
    """One min/max pass costs less than the memory an entry takes, whatever method the caller names."""
    NEAREST.clear()
    w = torch.randn(6, 64)
    nearest_weight(w, parse_candidate("w4g32-minmax"), "mse")
    nearest_weight(w, parse_candidate("w4g32"), "mse")
    assert len(NEAREST.entries) == 1


FORMATS = ["w4a8", "w3g16", "w5g24-asym", "w2g8", "w8", "fp8", "w4g32-minmax"]


@settings(max_examples=60, deadline=None)
@given(out=st.integers(1, 9), k=st.integers(1, 70), fmt=st.sampled_from(FORMATS), seed=st.integers(0, 2**16),
       chunk=st.sampled_from([None, 16, 64]))
def test_a_remembered_choice_gives_the_same_weight_bit_for_bit(out, k, fmt, seed, chunk):
    """quantize_weight_choice with the choice an earlier call made: the same tensor as the search
    (whatever the shape, the groups' remainder, the row chunks), with one byte per range."""
    import mixprec.quantizers as q
    generator = torch.Generator().manual_seed(seed)
    w = torch.randn(out, k, generator=generator) * torch.rand(out, 1, generator=generator) * 3
    weight_format = parse_candidate(fmt).weight
    saved = q.ROW_CHUNK_ELEMENTS
    try:
        if chunk is not None:
            q.ROW_CHUNK_ELEMENTS = chunk
        searched, choice = q.quantize_weight_choice(w, weight_format, "mse")
        assert torch.equal(searched, quantize_weight(w, weight_format, "mse"))
        if choice is None:  # a format that fixes minmax ranges: nothing to remember
            assert getattr(weight_format, "range_method", None) == "minmax"
            return
        assert choice.dtype == torch.uint8 and choice.shape[0] == out
        groups = getattr(weight_format, "group_size", None)
        assert choice.shape[1] == (-(-k // groups) if weight_format.granularity == "group" else 1)
        again, same = q.quantize_weight_choice(w, weight_format, "mse", choice=choice)
        assert torch.equal(again, searched) and torch.equal(same, choice)
    finally:
        q.ROW_CHUNK_ELEMENTS = saved


def test_percentile_ranges_are_not_cached():
    NEAREST.clear()
    nearest_weight(torch.randn(6, 64), parse_candidate("w4g32"), "percentile")
    assert not NEAREST.entries


def _reference_choice(rows, fmt):
    """The mse search as first written: a fresh fake-quantized copy per factor."""
    from mixprec.quantizers import MSE_GRID, fake_quant_range
    lo, hi = rows.amin(dim=1, keepdim=True), rows.amax(dim=1, keepdim=True)
    best_err, best = torch.full_like(lo, float("inf")), torch.ones_like(lo)
    for alpha in MSE_GRID.tolist():
        err = (fake_quant_range(rows, alpha * lo, alpha * hi, fmt) - rows).pow(2).sum(dim=1, keepdim=True)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, torch.full_like(best, alpha), best)
    return best * lo, best * hi


@settings(max_examples=60, deadline=None)
@given(out=st.integers(1, 12), k=st.integers(2, 80), fmt=st.sampled_from(["w4a8", "w3a8-asym", "w2a8", "w8", "fp8", "q4_0", "w5a8-asym"]),
       seed=st.integers(0, 2**16), zeros=st.booleans(), per_pass=st.sampled_from([1, 2, 5, 40, 41, 1000]))
def test_the_in_place_search_chooses_the_ranges_the_plain_one_does(out, k, fmt, seed, zeros, per_pass):
    """Also with several factors a pass (the whole grid, or chunks that end anywhere in it): the first
    factor of least error wins across chunks as within one."""
    from mixprec import quantizers
    from mixprec.quantizers import choose_range
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randn(out, k, generator=generator) * torch.rand(out, 1, generator=generator) * 4
    if zeros:
        rows[0] = 0.0
        rows[:, : k // 3] = torch.round(rows[:, : k // 3])
    weight_format = parse_candidate(fmt).weight
    if getattr(weight_format, "range_method", None) == "minmax":
        return
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(quantizers, "MSE_BATCH_ELEMENTS", per_pass * out * k)
        lo, hi = choose_range(rows, weight_format, "mse")
    ref_lo, ref_hi = _reference_choice(rows, weight_format)
    assert torch.equal(lo, ref_lo) and torch.equal(hi, ref_hi)
