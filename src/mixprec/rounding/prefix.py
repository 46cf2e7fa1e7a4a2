"""Sequential rounding's steps shared between plans: a plan that differs from one rounded a moment ago only in
layers the model runs later reuses the steps before them.

GPTQ rounds layer by layer, each from the inputs of the model whose earlier layers are already rounded
(layerwise.py). A step's result therefore depends only on the layers called before it and on its own
layers' formats: where two weight-only plans agree on every planned layer called up to the end of a step,
that step's rounded weights are the same, bit for bit. The measured searches (the guard's rivals, the local
search's moves, a front's evaluations) round many plans of one model that differ in a group or two, so
most of each plan's steps were rounded already for the plan before it.

What is kept is the rounded weights of the last ``KEEP`` plans of one model, calibration data and rounding
(on their device: a copy of the planned weights each; the tensors the applied layers hold, so a weight changed
in place afterwards, by fine-tuning say, is never served again), and only while they fit in the weight cache's
budget (``MIXPREC_WEIGHT_CACHE_MB``, mixprec.weight_cache; 0 turns this off too). A plan reuses the steps of
the kept plan it shares the longest run of steps with; a plan that reuses steps counts as used, so the
plan a search moves from stays while its moves come and go. Plans that quantize activations are rounded
on inputs that depend on every layer's calibrated ranges, and are never shared.
"""
from __future__ import annotations

import hashlib
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..weight_cache import _limit_bytes, _nbytes

KEEP = 2  # plans kept per model, data and rounding: the one a search moves from, and its latest move


@dataclass
class _Rounded:
    wanted: dict[str, str]  # every planned layer -> its candidate
    calls: dict[str, tuple[int, int]]  # planned layer -> (first, last) position in the calls of one batch
    steps: list[list[str]]
    weights: dict[str, torch.Tensor]  # handed out as they are (the applied layers hold them): their versions,
    nbytes: int = field(init=False)    # recorded here, tell whether anything changed them in place since
    versions: dict[str, int] = field(init=False)

    def __post_init__(self):
        self.nbytes = sum(_nbytes(w) for w in self.weights.values())
        self.versions = {name: w._version for name, w in self.weights.items()}


def reusable(kept: _Rounded, wanted: dict[str, str], calls: dict[str, tuple[int, int]],
             steps: list[list[str]]) -> dict[str, torch.Tensor]:
    """The rounded weights of ``kept`` that a plan ``wanted`` (rounded in ``steps``, its layers called at
    ``calls``) can take as they are: those of the steps, in order, whose layers are all called for the last
    time before the first call of any planned layer the two plans give different candidates."""
    if kept.calls != calls:  # another model, or one that calls its layers otherwise
        return {}
    kept_steps = {tuple(step) for step in kept.steps}  # a step rounds its layers together: only the same
    # step reads the same numbers (a plan that puts one of them on a float format has other steps)
    differ = [name for name in set(wanted) | set(kept.wanted) if wanted.get(name) != kept.wanted.get(name)]
    if any(name not in calls for name in differ):  # a layer the first batch never calls: no order to go by
        return {}
    first_change = min((calls[name][0] for name in differ), default=None)
    out: dict[str, torch.Tensor] = {}
    for step in steps:
        if first_change is not None and max(calls[name][1] for name in step) >= first_change:
            break
        if tuple(step) not in kept_steps or any(kept.weights[name]._version != kept.versions[name] for name in step):
            break  # not a step of that plan, or changed in place since (a model fine-tuned after apply)
        out.update({name: kept.weights[name] for name in step})
    return out


class PrefixStore:
    """(model, rounding, data) -> the last KEEP plans' rounded weights, within the weight cache's budget."""

    def __init__(self):
        self.entries: OrderedDict[tuple, list[_Rounded]] = OrderedDict()
        self.models: dict[int, weakref.ref] = {}
        self.reused_steps = self.rounded_steps = 0

    def key(self, model: nn.Module, config: Any, weight_method: str, batches: list) -> tuple:
        """The model (by identity, and its parameters' versions: an in-place change starts afresh), the
        rounding and its options, the range method and the calibration data (by content)."""
        digest = hashlib.sha256()
        fingerprint(digest, batches)
        versions = tuple(p._version for p in model.parameters())
        return id(model), versions, repr(config), weight_method, digest.hexdigest()

    def _alive(self, model: nn.Module, key: tuple) -> None:
        ref = self.models.get(id(model))
        if ref is None or ref() is not model:  # a new model at the address of a dead one
            for k in [k for k in self.entries if k[0] == id(model)]:
                del self.entries[k]
            self.models[id(model)] = weakref.ref(model, lambda _, i=id(model): self._forget(i))

    def _forget(self, model_id: int) -> None:
        self.models.pop(model_id, None)
        for k in [k for k in self.entries if k[0] == model_id]:
            del self.entries[k]

    def lookup(self, model: nn.Module, key: tuple, wanted: dict[str, str], calls: dict[str, tuple[int, int]],
               steps: list[list[str]]) -> dict[str, torch.Tensor]:
        """The longest run of steps a kept plan gives ``wanted``; the plan it came from counts as used."""
        self._alive(model, key)
        kept = self.entries.get(key, [])
        best, found = None, {}
        for entry in kept:
            reuse = reusable(entry, wanted, calls, steps)
            if len(reuse) > len(found):
                best, found = entry, reuse
        if best is not None:
            kept.remove(best)
            kept.append(best)
        return found

    def keep(self, model: nn.Module, key: tuple, wanted: dict[str, str], calls: dict[str, tuple[int, int]],
             steps: list[list[str]], weights: dict[str, torch.Tensor]) -> None:
        limit = _limit_bytes()
        entry = _Rounded(dict(wanted), dict(calls), [list(s) for s in steps], dict(weights))
        if entry.nbytes * KEEP > limit:
            return
        self._alive(model, key)
        kept = self.entries.setdefault(key, [])
        kept[:] = [e for e in kept if e.wanted != entry.wanted] + [entry]
        del kept[:-KEEP]
        self.entries.move_to_end(key)
        while sum(e.nbytes for plans in self.entries.values() for e in plans) > limit:  # other models' plans go first
            oldest = next(iter(self.entries))
            del self.entries[oldest]


def fingerprint(digest: Any, value: Any) -> None:
    """Feed ``value`` (tensors by content, dicts by key, sequences in order, anything else by repr) into
    ``digest``: the calibration data of this store's keys and of the rounding checkpoints' (rounding/__init__)."""
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, dict):
        for k in sorted(value, key=str):
            digest.update(str(k).encode())
            fingerprint(digest, value[k])
    elif isinstance(value, (list, tuple)):
        for v in value:
            fingerprint(digest, v)
    else:
        digest.update(repr(value).encode())


STORE = PrefixStore()
