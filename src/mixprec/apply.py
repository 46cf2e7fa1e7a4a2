"""apply(model, plan, calibration_data): the one public verb that makes a quantized model.

Returns a quantized (simulated) copy: every planned layer becomes a :class:`QuantizedLayer`
whose weight is fake-quantized once and whose input goes through an activation quantizer
calibrated on the calibration data. The input model is not modified, unless ``inplace=True`` asks
for the model itself to be quantized (one model's memory instead of two). :func:`applied_beside` is
the same quantized model for one measurement beside the float model: on a GPU it holds about one
model's memory, the float weights it replaces waiting in CPU memory until the measurement ends. Multipoint layers
(``w4x2``) take the point counts the plan stores (``plan.metadata["points"]``, written by
``mixprec solve``), else they are chosen on the calibration data (mixprec.multipoint).
The weights come from a rounding back-end (mixprec.rounding) or nearest rounding; the swap and
the calibration are mixprec.swap's.
"""
from __future__ import annotations

import copy
import gc
import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

import torch
from torch import nn

from .canonical import canonical, copy_sharing_parameters
from .batches import as_batches, split_item
from .candidates import Candidate, parse_candidate
from .errors import MixprecError, ModelError, PlanError
from .formats import is_static_integer
from .groups import check_weights, is_torchscript
from .joins import insert_join_quantizers, int8_graph, strip_join_quantizers
from .quantizers import range_methods
from .multipoint import plan_points
from .offload import policy, should_move
from .plan import Plan
from .rounding import ROUNDINGS, RoundingConfig, round_weights
from .swap import (QuantizedLayer, calibrate_activations, check_range_methods, multipoint_weights, nearest_weight,
                   quantize_layers, quantized_layers, set_module)

__all__ = ["apply", "plan_points", "QuantizedLayer", "calibrate_activations", "quantized_layers", "set_module"]


def apply(model: nn.Module, plan: Plan, calibration_data: Iterable | None = None, *,
          weight_range: str | None = None, activation_range: str | None = None, calibrate: bool = True,
          progress: bool = True, rounding: str | RoundingConfig | None = None, rounding_options: dict | None = None,
          rounding_checkpoint: str | Path | None = None, points: dict[str, str] | None = None,
          joins: bool | None = None, inplace: bool = False, weight_method: str | None = None,
          activation_method: str | None = None) -> nn.Module:
    """Quantized copy of ``model`` following ``plan``; activation ranges from ``calibration_data``.

    calibration_data: iterable of input batches or (inputs, labels) pairs. weight_range, activation_range: how
    weight and activation ranges are set, mse (default), minmax or percentile, as in ``analyze`` (the former
    names weight_method, activation_method are still taken). ``calibrate=False``
    skips calibration (for loading a saved quantized state dict on top). rounding: how weights
    go onto their grid, a name in ``ROUNDINGS`` (nearest, gptq, adaround, brecq; all but nearest read
    the calibration data) or a config (``GPTQ(act_order=True)``), with ``rounding_options`` set on
    it (see mixprec.rounding); None (the default) is nearest, with a RoundingNote warning where the plan's
    metadata says it was chosen with another rounding (pass that rounding, or "nearest" to mean it);
    ``rounding_checkpoint``: a directory where the rounding resumes from after an interruption.
    points: layer -> points per output channel of its multipoint candidate (default
    ``plan.metadata["points"]``; layers without are chosen on ``calibration_data``, :func:`plan_points`).
    joins: also quantize, at 8 bits, the tensors that residual adds and concatenations read and write, as an
    int8 runtime graph does (mixprec.joins; the model must trace with torch.fx, and the result is an
    fx.GraphModule whose modules keep their names). Default: ``plan.metadata["joins"]`` (False).
    inplace: quantize ``model`` itself, not a copy: each replaced float weight is dropped as its quantized
    one is made, so a large model needs about one model's memory, not two. Use the returned model;
    the one passed in is its float original no more. ``plan``: a Plan, or the path of a plan.json.
    """
    if isinstance(plan, (str, os.PathLike)):  # a plan.json, as solve and quantize write it
        plan = Plan.load(plan)
    if not isinstance(plan, Plan):
        raise PlanError(f"apply takes a mixprec Plan or the path of a plan.json, got {type(plan).__name__}; "
                        "load one with Plan.load(path), make one with Plan.uniform(groups, 'w8a8') or "
                        "analysis.plan(front_plan.assignments)")
    if rounding is None:
        rounding = "nearest"
        note_plan_rounding(plan, "apply", stacklevel=3)
    weight_method, activation_method = range_methods(weight_range, activation_range, weight_method, activation_method)
    return _apply(model, plan, calibration_data, weight_method=weight_method, activation_method=activation_method,
                  calibrate=calibrate, progress=progress, rounding=rounding, rounding_options=rounding_options,
                  rounding_checkpoint=rounding_checkpoint, points=points, joins=joins, inplace=inplace)


def note_plan_rounding(plan: Plan, what: str, stacklevel: int = 4) -> None:
    """A RoundingNote where ``plan`` was chosen with a learned rounding (its metadata says which) and ``what`` is
    about to round it by nearest because no rounding was given: the weights then differ from those measured."""
    from .rounding import ROUNDINGS, plan_rounding
    named = plan.metadata.get("rounding")
    if named is not None and named not in ROUNDINGS:  # not silently nearest: the plan was measured otherwise
        from .errors import RoundingError
        raise RoundingError(f"the plan records rounding {named!r}, which this mixprec does not have "
                            f"({', '.join(ROUNDINGS)}); give the rounding to apply it with (--rounding nearest, in "
                            "Python rounding='nearest'), or use the mixprec that made the plan")
    recorded = plan_rounding(plan.metadata)
    if recorded is not None and recorded.name != "nearest":
        from .errors import RoundingNote
        options = ", ".join(f"{k}={v!r}" for k, v in recorded.options().items())
        warnings.warn(f"the plan was chosen with {recorded.name} rounding ({options or 'its defaults'}), and {what} "
                      f"rounds it by nearest, since no rounding was given: the weights differ from those the plan "
                      f"was measured with. Pass rounding=mixprec.rounding.plan_rounding(plan.metadata) (or a "
                      f"model apply made with it, as quantized=), or rounding='nearest' to mean nearest",
                      RoundingNote, stacklevel=stacklevel)


def _apply(model: nn.Module, plan: Plan, calibration_data: Iterable | None = None, *,
           weight_method: str = "mse", activation_method: str = "mse", calibrate: bool = True,
           progress: bool = True, rounding: str | RoundingConfig = "nearest", rounding_options: dict | None = None,
           rounding_checkpoint: str | Path | None = None, points: dict[str, str] | None = None,
           joins: bool | None = None, offload: "_Offload | None" = None, inplace: bool = False) -> nn.Module:
    check_range_methods(weight_method, activation_method)
    method = rounding.name if isinstance(rounding, RoundingConfig) else rounding
    if method not in ROUNDINGS:
        raise MixprecError(f"unknown rounding {rounding!r}; choose one of: {', '.join(ROUNDINGS)}")
    if method == "nearest" and rounding_options:
        raise MixprecError(f"nearest rounding takes no options, got {sorted(rounding_options)}; choose "
                           "rounding='gptq', 'adaround' or 'brecq' to use them")
    if method != "nearest" and calibration_data is None:
        raise MixprecError(f"rounding={method!r} needs calibration data (the layers' inputs); pass --data "
                           "(or calibration_data=...), or use rounding='nearest'")
    if joins is None:  # a model measured with join quantizers (an analysis's) is planned with them, too
        joins = bool(plan.metadata.get("joins", False)) or int8_graph(model)
    if joins and calibration_data is None:
        raise MixprecError("join quantizers (joins=True) are calibrated on data; pass --data (or "
                           "calibration_data=...)")
    if joins and is_torchscript(model):
        raise ModelError("join quantizers need a model torch.fx can trace, not a TorchScript model; give the "
                         "model as file.py:function or quantize without joins")
    model = canonical(model)  # the layers plans name (mixprec.canonical)
    calibration_data = as_batches(calibration_data, model)  # a list: read more than once (a generator would be spent)
    wanted = plan.layer_candidates()
    check_weights(plan.model_layers(model))
    plan.check_covers(model, progress)  # a plan mixprec made names every layer: a PlanError, else a PlanNote
    # before any pass: a model in training mode changes on each; with ``offload``, the copy shares the
    # tensors it keeps, and each float weight it replaces leaves the device once quantized (applied_beside)
    quantized = model if inplace else copy_sharing_parameters(model) if offload is not None else copy.deepcopy(model)
    quantized = quantized.eval()
    candidates = {name: parse_candidate(c) for name, c in wanted.items()}
    multipoint = sorted(name for name, c in candidates.items() if c.multipoint)
    if multipoint and method != "nearest":
        raise MixprecError(f"rounding={method!r} does not build multipoint weights (layer {multipoint[0]!r} is "
                           f"planned as {candidates[multipoint[0]].name}); use rounding='nearest' "
                           "(--rounding nearest)")
    counts = plan_points(model, plan, calibration_data, weight_method, points, progress) if multipoint else {}
    weights = multipoint_weights(model, candidates, counts, weight_method)
    if is_torchscript(model) and method == "nearest":
        return _apply_torchscript(quantized, candidates, weight_method, weights)
    if method != "nearest":
        weights = round_weights(model, plan, calibration_data, rounding, weight_method=weight_method,
                                activation_method=activation_method, progress=progress,
                                checkpoint=rounding_checkpoint, inplace=inplace, **(rounding_options or {}))
    sources = {name: model.get_submodule(name).weight for name in candidates if name not in weights}
    if joins:
        integer = {name for name, c in candidates.items() if is_static_integer(c.activation)}
        example = next((split_item(item)[0] for item in calibration_data), None)
        if int8_graph(quantized):  # an analysis's model, its joins at every join, calibrated through the float
            # model: the plan's own instead, as apply of the model itself makes them (what export writes)
            quantized = strip_join_quantizers(quantized)
        quantized = insert_join_quantizers(quantized, activation_method, integer, example)  # calibrated with the layers
    return quantize_layers(quantized, candidates, calibration_data, weights=weights, weight_method=weight_method,
                           activation_method=activation_method, calibrate=calibrate, progress=progress,
                           sources=sources, after_layer=offload.quantized if offload is not None else None)


class _Offload:
    """The float weights of the planned layers, moved to CPU memory one by one as their quantized copies
    are made, and back on ``restore()``. A weight read by a layer the plan leaves float stays."""

    def __init__(self, model: nn.Module, layers: Iterable[str]):
        layers = list(layers)
        self.users: dict[int, int] = {}  # id(weight) -> planned layers not yet quantized that read it
        self.params: dict[int, nn.Parameter] = {}
        for name in layers:
            weight = model.get_submodule(name).weight
            self.users[id(weight)] = self.users.get(id(weight), 0) + 1
            self.params[id(weight)] = weight
        planned = set(layers)
        for name, module in model.named_modules():  # a weight that a float layer reads too never moves
            weight = getattr(module, "weight", None)
            if name not in planned and isinstance(weight, torch.Tensor) and id(weight) in self.params:
                self.users[id(weight)] = -1
        self.model = model
        self.moved: dict[int, torch.device] = {}
        self.active = self.wanted()  # with room enough on the device, nothing moves

    def wanted(self) -> bool:
        """Whether the weights should move (mixprec.offload: ``MIXPREC_OFFLOAD``, room on the device)."""
        policy()  # a bad setting is refused even where nothing would move
        movable = [p for key, p in self.params.items() if self.users.get(key, -1) > 0 and p.device.type != "cpu"]
        return bool(movable) and should_move(movable[0].device, sum(p.numel() * p.element_size() for p in movable))

    def quantized(self, name: str) -> None:
        weight = self.model.get_submodule(name).weight
        key = id(weight)
        if not self.active or self.users.get(key, -1) < 0:
            return
        self.users[key] -= 1
        if self.users[key] == 0 and weight.device.type != "cpu":
            self.moved[key] = weight.device
            weight.data = weight.data.to("cpu")

    def restore(self) -> None:
        for key, device in self.moved.items():
            param = self.params[key]
            param.data = param.data.to(device)
        self.moved.clear()


@contextmanager
def applied_beside(model: nn.Module, plan: Plan, calibration_data: Iterable | None = None, **options) -> Iterator[nn.Module]:
    """``apply(model, plan, calibration_data, **options)`` for a measurement on ``model``'s device that
    needs about one model's memory there, not two: the quantized copy shares every tensor it keeps as
    it is, and each float weight it replaces waits in CPU memory until the block ends, when ``model``
    is whole again (also after an error). Drop every reference to the quantized model inside the block
    (``del``): the float weights come back only after it is gone. With a rounding that reads the data
    (GPTQ...) or a TorchScript model, the plain copy is made.

    The float weights move only when the device lacks room for the quantized ones beside them
    (``MIXPREC_OFFLOAD``: ``auto``, the default; ``always``; ``never``): moving an 8B model's weights
    out and back took about 10 s a plan on an H100, and most plans measured on a large GPU fit."""
    method = options.get("rounding", "nearest")
    method = method.name if isinstance(method, RoundingConfig) else method
    if method != "nearest" or is_torchscript(model):
        quantized = apply(model, plan, calibration_data, **options)
        try:
            yield quantized
        finally:
            del quantized
        return
    offload = _Offload(model, list(plan.layer_candidates()))
    try:
        quantized = _apply(model, plan, calibration_data, offload=offload, **options)
        yield quantized
    finally:
        quantized = None
        if offload.moved:
            gc.collect()  # the quantized copy (cycles included) is freed before the float weights return
        offload.restore()


def _apply_torchscript(model: nn.Module, candidates: dict[str, Candidate], weight_method: str,
                       weights: dict[str, torch.Tensor]) -> nn.Module:
    """A compiled graph cannot take new modules: weights are quantized in place, inputs stay float."""
    with_activations = sorted(n for n, c in candidates.items() if c.quantizes_input)
    if with_activations:
        raise ModelError(f"a TorchScript model takes weight-only candidates only (e.g. w4, w8, w4g128); layer "
                         f"{with_activations[0]!r} is planned as {candidates[with_activations[0]].name}. Give the "
                         "model as file.py:function to quantize activations too")
    layers = dict(model.named_modules())
    with torch.no_grad():
        for name, cand in candidates.items():
            weight = layers[name].weight
            weight.copy_(weights[name] if name in weights else nearest_weight(weight, cand, weight_method))
    return model
