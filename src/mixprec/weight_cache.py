"""The mse range search's choices remembered per float tensor: a search that measures many plans of one
model searches each (layer, candidate)'s ranges once.

A weight's nearest rounding depends only on the float tensor, the candidate's weight format and the
range method, yet every measured plan (the guard's rivals, the local search's moves, refine, a Pareto
front's evaluations, and the analysis's forks before them) used to choose every layer's range again;
with the mse method that is ``len(MSE_GRID)`` passes over each weight, most of the cost of measuring a
plan of an LLM. What is kept is the search's outcome (mixprec.quantizers.quantize_weight_choice): one
byte per output channel or group, which gives back the same quantized weight, bit for bit, in one
pass. An LLM's whole table of choices is a small fraction of the model (1/128 byte per weight at
groups of 128), where the quantized weights themselves would be another copy of it. minmax and
percentile ranges are not kept: they cost one pass or a quantile per row.

The cache is keyed by the float tensor itself, held weakly (an entry goes when its model goes), and by
the tensor's version counter (an in-place change of the weight makes its entries stale). It holds at
most ``MIXPREC_WEIGHT_CACHE_MB`` megabytes (default 4096; 0 turns it off), the least recently used
entries leaving first. Callers get a copy, so nothing they do to it reaches the cache.
"""
from __future__ import annotations

import os
import weakref
from collections import OrderedDict
from typing import Callable

import torch

DEFAULT_MB = 4096


def _limit_bytes() -> int:
    text = os.environ.get("MIXPREC_WEIGHT_CACHE_MB", str(DEFAULT_MB))
    try:
        mb = float(text)
    except ValueError:
        raise ValueError(f"MIXPREC_WEIGHT_CACHE_MB must be a number of megabytes, got {text!r}") from None
    return max(0, int(mb * 2**20))


class WeightCache:
    """(float tensor, its version, key) -> a derived tensor, least recently used out past ``limit`` bytes."""

    def __init__(self, limit_bytes: int | None = None):
        self.limit = limit_bytes
        self.entries: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self.refs: dict[int, weakref.ref] = {}  # id(tensor) -> a weak reference that drops its entries
        self.bytes = 0
        self.hits = self.misses = 0
        self.dead: list[int] = []  # owners whose tensor is gone (a weakref callback only records them)

    def _drop_owner(self, owner: int) -> None:
        self.refs.pop(owner, None)
        for key in [k for k in self.entries if k[0] == owner]:
            self.bytes -= _nbytes(self.entries.pop(key))

    def get(self, tensor: torch.Tensor, key: tuple, make: Callable[[], torch.Tensor]) -> torch.Tensor:
        """``make()`` for ``tensor`` and ``key``, from the cache when it is there; always a fresh copy."""
        found = self.lookup(tensor, key)
        if found is not None:
            return found
        value = make()
        self.store(tensor, key, value)
        return value

    def lookup(self, tensor: torch.Tensor, key: tuple) -> torch.Tensor | None:
        """A copy of the entry for ``tensor`` (as it is now) and ``key``, or None (a miss)."""
        while self.dead:
            gone = self.dead.pop()
            if gone in self.refs and self.refs[gone]() is None:
                self._drop_owner(gone)
        owner = id(tensor)
        ref = self.refs.get(owner)
        if ref is not None and ref() is not tensor:  # the id was reused by another tensor
            self._drop_owner(owner)
        full = (owner, tensor._version, key)
        if full in self.entries:
            self.hits += 1
            self.entries.move_to_end(full)
            return self.entries[full].clone()
        self.misses += 1
        return None

    def store(self, tensor: torch.Tensor, key: tuple, value: torch.Tensor) -> None:
        """Keep a copy of ``value`` for ``tensor`` (as it is now) and ``key``, within the limit."""
        limit = _limit_bytes() if self.limit is None else self.limit
        size = _nbytes(value)
        if limit == 0 or size > limit:
            return
        owner = id(tensor)
        if owner not in self.refs:
            try:
                self.refs[owner] = weakref.ref(tensor, lambda _, owner=owner: self.dead.append(owner))
            except TypeError:  # not weak-referenceable: never cached
                return
        for stale in [k for k in self.entries if k[0] == owner and k[1] != tensor._version]:
            self.bytes -= _nbytes(self.entries.pop(stale))
        full = (owner, tensor._version, key)
        if full in self.entries:
            self.bytes -= _nbytes(self.entries.pop(full))
        self.entries[full] = value.detach().clone()
        self.bytes += size
        while self.bytes > limit and self.entries:
            _, old = self.entries.popitem(last=False)
            self.bytes -= _nbytes(old)

    def clear(self) -> None:
        self.entries.clear()
        self.refs.clear()
        self.bytes = 0


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


NEAREST = WeightCache()
