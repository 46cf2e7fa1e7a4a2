"""The nearest-weight cache: plans measured one after another quantize each (layer, candidate) once,
with results equal to quantizing afresh, and a changed or dropped weight never serves a stale entry."""
import gc

import pytest
import torch
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


def test_analysis_keeps_its_own_weights_not_a_second_copy():
    """The measurement context keeps every weight it makes; the cache would hold each a second time."""
    import mixprec
    model, data = model_and_data()
    NEAREST.clear()
    misses = NEAREST.misses
    mixprec.analyze(model, data, candidates="w3a8,w8a8", progress=False)
    assert NEAREST.misses == misses and not NEAREST.entries


def test_a_format_with_minmax_ranges_is_not_cached():
    """One min/max pass costs less than the memory an entry takes, whatever method the caller names."""
    NEAREST.clear()
    w = torch.randn(6, 64)
    nearest_weight(w, parse_candidate("w4g32-minmax"), "mse")
    nearest_weight(w, parse_candidate("w4g32"), "mse")
    assert len(NEAREST.entries) == 1
