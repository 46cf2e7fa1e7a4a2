"""apply(model, plan, calibration_data): the one place that swaps modules.

Returns a quantized (simulated) copy: every planned layer becomes a :class:`QuantizedLayer`
whose weight is fake-quantized once and whose input goes through an activation quantizer
calibrated on the calibration data. The input model is never modified. Multipoint layers
(``w4x2``) take the point counts the plan stores (``plan.metadata["points"]``, written by
``mixprec solve``), else they are chosen on the calibration data (mixprec.multipoint).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from .batches import describe_shape, run_model, shapes_compatible, split_item, to_device
from .candidates import Candidate, parse_candidate
from .errors import MixprecError, ModelError
from .groups import check_weights, is_torchscript
from .multipoint import measure_points, multipoint_weight
from .plan import Plan
from .quantizers import ActivationQuantizer, RANGE_METHODS, quantize_weight
from .rounding import ROUNDINGS, round_weights


class QuantizedLayer(nn.Module):
    """A Conv/Linear layer with a fake-quantized weight and a quantizer on its input."""

    def __init__(self, layer: nn.Module, candidate: Candidate, weight_method: str = "mse",
                 activation_method: str = "mse", *, weight: torch.Tensor | None = None,
                 input_quantizer: ActivationQuantizer | None = None):
        """``weight``/``input_quantizer``: already quantized weight / calibrated quantizer to use."""
        super().__init__()
        self.candidate = candidate.name
        # A new Parameter, not an in-place copy: the weight may be shared (tied embeddings),
        # and the other user of it must stay float.
        old = layer.weight
        new = quantize_weight(old.detach(), candidate.weight, weight_method) if weight is None else weight
        layer.weight = nn.Parameter(new, requires_grad=old.requires_grad)
        self.layer = layer
        self.input_quantizer = input_quantizer or ActivationQuantizer(candidate.activation, activation_method)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return self.layer(self.input_quantizer(x), *args, **kwargs)

    def __getattr__(self, name: str):
        # Model code sometimes reads layer attributes (weight, in_features, ...) directly.
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("layer"), name)

    def extra_repr(self) -> str:
        return f"candidate={self.candidate}"


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def quantized_layers(model: nn.Module) -> dict[str, QuantizedLayer]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantizedLayer)}


def apply(model: nn.Module, plan: Plan, calibration_data: Iterable | None = None, *,
          weight_method: str = "mse", activation_method: str = "mse", calibrate: bool = True,
          progress: bool = True, rounding: str = "nearest", rounding_options: dict | None = None,
          rounding_checkpoint: str | Path | None = None, points: dict[str, str] | None = None) -> nn.Module:
    """Quantized copy of ``model`` following ``plan``; activation ranges from ``calibration_data``.

    calibration_data: iterable of input batches or (inputs, labels) pairs. ``calibrate=False``
    skips calibration (for loading a saved quantized state dict on top). rounding: how weights
    go onto their grid, one of ``ROUNDINGS`` (nearest, gptq, adaround, brecq; all but nearest read
    the calibration data), with ``rounding_options`` for it (see mixprec.rounding);
    ``rounding_checkpoint``: a directory where the rounding resumes from after an interruption.
    points: layer -> points per output channel of its multipoint candidate (default
    ``plan.metadata["points"]``; layers without are chosen on ``calibration_data``, :func:`plan_points`).
    """
    for method in (weight_method, activation_method):
        if method not in RANGE_METHODS:
            raise MixprecError(f"range method must be one of {RANGE_METHODS}, got {method!r}")
    if rounding not in ROUNDINGS:
        raise MixprecError(f"unknown rounding {rounding!r}; choose one of: {', '.join(ROUNDINGS)}")
    if rounding == "nearest" and rounding_options:
        raise MixprecError(f"nearest rounding takes no options, got {sorted(rounding_options)}; choose "
                           "rounding='gptq', 'adaround' or 'brecq' to use them")
    if rounding != "nearest" and calibration_data is None:
        raise MixprecError(f"rounding={rounding!r} needs calibration data (the layers' inputs); pass --data "
                           "(or calibration_data=...), or use rounding='nearest'")
    wanted = plan.layer_candidates()
    check_weights(plan.model_layers(model))
    quantized = copy.deepcopy(model)
    quantized.eval()
    candidates = {name: parse_candidate(c) for name, c in set(wanted.items())}
    names = list(wanted)
    multipoint = _multipoint_weights(model, plan, candidates, calibration_data, weight_method, points, rounding,
                                     progress)
    if is_torchscript(model) and rounding == "nearest":
        return _apply_torchscript(quantized, candidates, weight_method, multipoint)
    rounded = multipoint if rounding == "nearest" else round_weights(
        model, plan, calibration_data, rounding, weight_method=weight_method, activation_method=activation_method,
        progress=progress, checkpoint=rounding_checkpoint, **(rounding_options or {}))
    for name in tqdm(names, desc="quantizing weights", disable=not progress or len(names) < 20, leave=False):
        layer = quantized.get_submodule(name)
        _set_module(quantized, name, QuantizedLayer(layer, candidates[name], weight_method, activation_method,
                                                    weight=rounded.get(name)))
    quantizers = [m.input_quantizer for m in quantized_layers(quantized).values()
                  if m.input_quantizer.needs_calibration]
    if not calibrate:
        for q in quantizers:
            q.observing = False
        return quantized
    if quantizers:
        if calibration_data is None:
            raise MixprecError("the plan quantizes activations, which needs calibration data; pass --data "
                               "(or calibration_data=...), or choose weight-only candidates")
        calibrate_activations(quantized, calibration_data, progress=progress)
        for name, layer in quantized_layers(quantized).items():
            q = layer.input_quantizer
            if q.needs_calibration and q._seen_lo is None:
                raise ModelError(f"layer {name!r} saw no finite input during calibration (not called by the "
                                 "calibration data, or only NaN/Inf); exclude it or check the data")
            q.finish_calibration()
    return quantized


@torch.no_grad()
def calibrate_activations(model: nn.Module, data: Iterable, progress: bool = True,
                          reference: Any = None) -> int:
    """Run calibration batches through ``model``; returns the number of batches seen."""
    device = next(model.parameters()).device
    count = 0
    for index, item in enumerate(tqdm(data, desc="calibrating activations", disable=not progress, leave=False)):
        inputs, _ = split_item(item)
        if reference is None:
            reference = inputs
        elif not shapes_compatible(inputs, reference):
            raise ModelError(f"calibration batch {index} has shape {describe_shape(inputs)}; expected "
                             f"the same layout as batch 0, {describe_shape(reference)} (any batch size)")
        try:
            run_model(model, to_device(inputs, device))
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            raise ModelError(f"the model failed on calibration batch {index} of shape {describe_shape(inputs)}: "
                             f"{str(exc).splitlines()[0]}") from exc
        count += 1
    if count == 0:
        raise MixprecError("the calibration data is empty; give at least one batch")
    return count


def _multipoint_weights(model, plan, candidates, calibration_data, weight_method, points, rounding,
                        progress) -> dict[str, torch.Tensor]:
    names = sorted(name for name, c in candidates.items() if c.multipoint)
    if names and rounding != "nearest":
        raise MixprecError(f"rounding={rounding!r} does not build multipoint weights (layer {names[0]!r} is "
                           f"planned as {candidates[names[0]].name}); use rounding='nearest'")
    counts = plan_points(model, plan, calibration_data, weight_method, points, progress) if names else {}
    return {name: multipoint_weight(model.get_submodule(name).weight.detach(), candidates[name], counts[name],
                                    weight_method, name) for name in names}


def plan_points(model: nn.Module, plan: Plan, calibration_data: Iterable | None, weight_method: str = "mse",
                points: dict[str, str] | None = None, progress: bool = False) -> dict[str, str]:
    """Points per output channel of every multipoint layer of ``plan``: ``points``, else the plan's
    stored ones, else chosen on ``calibration_data`` (what the analysis would choose on the same data)."""
    candidates = {name: parse_candidate(c) for name, c in plan.layer_candidates().items()}
    given = dict(plan.metadata.get("points") or {}) if points is None else dict(points)
    todo = {name: [c] for name, c in candidates.items() if c.multipoint and name not in given}
    if todo and is_torchscript(model):
        raise ModelError(f"a TorchScript model cannot be hooked to choose multipoint points (layer "
                         f"{next(iter(todo))!r}); use a plan from `mixprec solve`, which stores them, or give the "
                         "model as file.py:function")
    measured = measure_points(model, todo, calibration_data, weight_method, progress)
    for cand, layers in measured.items():
        given.update(layers)
    return {name: given[name] for name, c in candidates.items() if c.multipoint}


def _apply_torchscript(model: nn.Module, candidates: dict[str, Candidate], weight_method: str,
                       weights: dict[str, torch.Tensor]) -> nn.Module:
    """A compiled graph cannot take new modules: weights are quantized in place, inputs stay float."""
    with_activations = sorted(n for n, c in candidates.items() if not c.weight_only and c.weight is not None)
    if with_activations:
        raise ModelError(f"a TorchScript model takes weight-only candidates only (e.g. w4, w8, w4g128); layer "
                         f"{with_activations[0]!r} is planned as {candidates[with_activations[0]].name}. Give the "
                         "model as file.py:function to quantize activations too")
    layers = dict(model.named_modules())
    with torch.no_grad():
        for name, cand in candidates.items():
            weight = layers[name].weight
            weight.copy_(weights[name] if name in weights else quantize_weight(weight.detach(), cand.weight,
                                                                               weight_method))
    return model
