"""Where layers become quantized: weights at a candidate, the layer swap, activation calibration.

    nearest_weight(weight, candidate, method, points)  a layer's weight at a candidate with nearest
        rounding: every weight to the closest point of its grid, or a multipoint weight from its
        per-channel point counts (mixprec.multipoint)
    QuantizedLayer(layer, candidate, ...)   the layer with a fake-quantized weight and a quantizer
        on its input
    quantize_layers(model, candidates, data, weights=...)   every named layer of ``model`` (a copy)
        swapped for a QuantizedLayer, its weight given or made by nearest_weight, the activation
        quantizers calibrated on ``data``
    with_join_quantizers(model, data)   ``model`` traced with calibrated join quantizers (mixprec.joins)
    planned_model(model, plan, data)   the copy apply(model, plan, data) makes with nearest
        rounding, frozen: the working model of the rounding back-ends

apply (mixprec.apply) chooses the weights (a rounding back-end, multipoint) and calls
quantize_layers; the sensitivity metrics swap one group at a time with set_module.
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Iterable

import torch
from torch import nn
from .progress import tqdm

from .batches import describe_shape, shapes_compatible, split_item
from .capture import forward
from .candidates import Candidate, parse_candidate
from .errors import MixprecError, ModelError
from .groups import check_weights
from .integer_bias import attach as attach_integer_bias, rounding_error
from .joins import insert_join_quantizers, join_quantizers, layers_reading_joins
from .multipoint import multipoint_weight, plan_points
from .plan import Plan
from .quantizers import ActivationQuantizer, check_range_method, quantize_weight, quantize_weight_choice, real_tokens
from .streaming import compute_device
from .weight_cache import NEAREST


def nearest_weight(weight: torch.Tensor, candidate: Candidate, method: str = "mse", points: str | None = None,
                   layer: str = "") -> torch.Tensor:
    """``weight`` at ``candidate`` with nearest rounding; same shape, dtype and device.

    points: one digit per output channel, its number of multipoint points (``layer`` names it in
    errors); without them one point, on the candidate's weight format. With the mse range method, the
    range search's outcome is remembered for the next call on the same tensor (mixprec.weight_cache)."""
    work = compute_device(weight)  # a streamed model's weight in CPU memory: quantized on its accelerator
    source = weight.detach() if work is None else weight.detach().to(work)
    home = (lambda t: t) if work is None else (lambda t: t.to(weight.device))
    if points is not None:
        return home(multipoint_weight(source, candidate, points, method, layer))
    fmt = candidate.weight
    if fmt is None or (getattr(fmt, "range_method", None) or method) != "mse":
        return home(quantize_weight(source, fmt, method))
    key = ("mse-choice", repr(fmt))
    choice = NEAREST.lookup(weight, key)
    if choice is not None and choice.device != source.device:
        choice = choice.to(source.device)
    quantized, made = quantize_weight_choice(source, fmt, method, choice=choice)
    if choice is None and made is not None:
        NEAREST.store(weight, key, made)
    quantized = home(quantized)
    return quantized


class QuantizedLayer(nn.Module):
    """A Conv/Linear layer with a fake-quantized weight and a quantizer on its input (an Embedding:
    the weight only)."""

    def __init__(self, layer: nn.Module, candidate: Candidate, weight_method: str = "mse",
                 activation_method: str = "mse", *, weight: torch.Tensor | None = None,
                 input_quantizer: ActivationQuantizer | None = None):
        """``weight``/``input_quantizer``: already quantized weight / calibrated quantizer to use."""
        super().__init__()
        self.candidate = candidate.name
        # A new Parameter, not an in-place copy: the weight may be shared (tied embeddings),
        # and the other user of it must stay float.
        old = layer.weight
        new = nearest_weight(old, candidate, weight_method) if weight is None else weight
        layer.weight = nn.Parameter(new, requires_grad=old.requires_grad)
        self.layer = layer
        if isinstance(layer, nn.Embedding):  # its input is token ids
            input_quantizer = ActivationQuantizer(None)
        self.input_quantizer = input_quantizer or ActivationQuantizer(candidate.activation, activation_method)
        self.parsed = candidate
        self.integer_bias = None  # mixprec.integer_bias.BiasFold: round the bias as an int8 graph's kernel does
        self.train(layer.training)  # the mode of the layer it stands for, as the rest of the model has it

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        out = self.layer(self.input_quantizer(x), *args, **kwargs)
        fold = self.integer_bias
        if fold is not None and fold.enabled and not self.input_quantizer.observing:
            error = rounding_error(self.layer, self.parsed, self.input_quantizer, fold, x.dim())
            if error is not None:  # per output channel: before a conv's spatial dimensions, the last of a Gemm's
                out = out + error.to(out.dtype).reshape((-1,) + (1,) * (self.layer.weight.dim() - 2))
        return out

    def __getattr__(self, name: str):
        # Model code sometimes reads layer attributes (weight, in_features, ...) directly.
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("layer"), name)

    def extra_repr(self) -> str:
        return f"candidate={self.candidate}"


def set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def quantized_layers(model: nn.Module) -> dict[str, QuantizedLayer]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantizedLayer)}


def check_range_methods(*methods: str) -> None:
    for method in methods:
        check_range_method(method)


def multipoint_weights(model: nn.Module, candidates: dict[str, Candidate], points: dict[str, str],
                       weight_method: str = "mse") -> dict[str, torch.Tensor]:
    """The weight of every multipoint layer from its point counts (``points``: layer -> digits)."""
    names = sorted(name for name, c in candidates.items() if c.multipoint)
    return {name: nearest_weight(model.get_submodule(name).weight, candidates[name], weight_method, points[name], name)
            for name in names}


def quantize_layers(model: nn.Module, candidates: dict[str, Candidate], data: Iterable | None, *,
                    weights: dict[str, torch.Tensor] | None = None, weight_method: str = "mse",
                    activation_method: str = "mse", calibrate: bool = True, progress: bool = True,
                    sources: dict[str, torch.Tensor] | None = None,
                    after_layer: Callable[[str], None] | None = None) -> nn.Module:
    """``model`` with every layer of ``candidates`` (name -> candidate) a QuantizedLayer; returns it.

    model: a deep copy, taken by the caller before its passes over the data (a model in training
    mode changes on every pass). weights: ready-made weights by layer name (rounded, multipoint);
    the other layers get nearest_weight. The activation quantizers are calibrated on ``data``
    (input batches or (inputs, labels) pairs); ``calibrate=False`` leaves them uncalibrated, for a
    saved quantized state dict to be loaded on top. sources: the float weights nearest rounding reads
    instead of the layers' own (the caller's model before its copy: the weight cache knows its tensors,
    so plans measured one after another quantize each (layer, candidate) once); each entry is removed once
    used, so that a float weight nothing else holds is freed layer by layer. after_layer: called with
    each layer's name once its quantized weight is in place.
    """
    weights = weights or {}
    sources = sources if sources is not None else {}  # emptied as the layers are quantized
    names = list(candidates)
    for name in tqdm(names, desc="quantizing weights", disable=not progress or len(names) < 20, leave=False):
        layer = model.get_submodule(name)
        weight = weights.get(name)
        if weight is None and name in sources:  # popped: a float weight no other layer reads can go now
            weight = nearest_weight(sources.pop(name), candidates[name], weight_method)
        set_module(model, name, QuantizedLayer(layer, candidates[name], weight_method, activation_method,
                                               weight=weight))
        if after_layer is not None:
            after_layer(name)
    attach_integer_bias(model)  # in a model with an int8 graph's join quantizers: int32 biases as the kernels round them
    quantizers = [m.input_quantizer for m in quantized_layers(model).values() if m.input_quantizer.needs_calibration]
    joins = {n: q for n, q in join_quantizers(model).items() if q.observing}
    if not calibrate:
        for q in quantizers + list(joins.values()):
            q.observing = False
        return model
    if quantizers or joins:
        if data is None:
            raise MixprecError("the plan quantizes activations, which needs calibration data; pass --data "
                               "(or calibration_data=...), or choose weight-only candidates")
        calibrate_activations(model, data, progress=progress)  # join quantizers calibrate in the same pass
        for name, layer in quantized_layers(model).items():
            q = layer.input_quantizer
            if q.needs_calibration and q._seen_lo is None:
                raise ModelError(f"layer {name!r} saw no finite input during calibration (not called by the "
                                 "calibration data, or only NaN/Inf); exclude it or check the data")
            q.finish_calibration()
        _finish_joins(joins)
    share_join_ranges(model)
    return model


def share_join_ranges(model: nn.Module) -> None:
    """A layer whose 8-bit input quantizer reads a join quantizer's tensor takes its range (mixprec.joins)."""
    layers = quantized_layers(model)
    for layer, join in layers_reading_joins(model).items():
        q, j = layers[layer].input_quantizer if layer in layers else None, model.get_submodule(join)
        if q is not None and q.fmt == j.fmt and q.method == j.method and not q.observing and not j.observing:
            q.lo, q.hi = j.lo.clone().to(q.lo.device), j.hi.clone().to(q.hi.device)


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
                             f"the same structure as batch 0, {describe_shape(reference)} (tensors of the same rank; "
                             "sizes may differ)")
        with real_tokens(inputs):  # a padded batch's padding calibrates nothing
            forward(model, inputs, index, device)
        count += 1
    if count == 0:
        raise MixprecError("the calibration data is empty; give at least one batch (a generator or other iterator is "
                           "used up by one pass, e.g. analyze's: give a list of batches or a DataLoader to use it "
                           "again)")
    return count


def with_join_quantizers(model: nn.Module, data: Iterable, method: str = "mse", progress: bool = False) -> nn.Module:
    """``model`` traced by torch.fx, with join quantizers (mixprec.joins) calibrated on ``data`` through the
    float model: the model an analysis measures when its plans will run with join quantizers. Its other
    modules are ``model``'s own, under the same names; deterministic for the same model and data."""
    data = list(data)
    traced = insert_join_quantizers(model, method, example=split_item(data[0])[0] if data else None)
    quantizers = join_quantizers(traced)
    if quantizers:
        if not data:
            raise MixprecError("join quantizers are calibrated on data; give calibration data (--data)")
        with torch.no_grad():
            calibrate_activations(traced, data, progress=progress)
        _finish_joins(quantizers)
    return traced


def _finish_joins(quantizers: dict) -> None:
    """Fix the ranges of join quantizers (name -> JoinQuantizer) that observed a calibration pass."""
    for name, q in quantizers.items():
        if q._seen_lo is None:
            raise ModelError(f"join quantizer {name} ({q.where}) saw no finite value during calibration")
        q.finish_calibration()


def planned_model(model: nn.Module, plan: Plan, data: list, weight_method: str = "mse",
                  activation_method: str = "mse", weights: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """The copy ``apply(model, plan, data)`` makes (nearest rounding, the plan's or measured multipoint
    points, activations calibrated), with no gradients: what the rounding back-ends work on.
    weights: ready-made weights of some layers (rounded), used as they are."""
    check_range_methods(weight_method, activation_method)
    check_weights(plan.model_layers(model))
    quantized = copy.deepcopy(model).eval()
    candidates = {name: parse_candidate(c) for name, c in plan.layer_candidates().items()}
    points = plan_points(model, plan, data, weight_method) if any(c.multipoint for c in candidates.values()) else {}
    ready = {**multipoint_weights(model, candidates, points, weight_method), **(weights or {})}
    quantized = quantize_layers(quantized, candidates, data, weights=ready,
                                weight_method=weight_method, activation_method=activation_method, progress=False)
    for p in quantized.parameters():
        p.requires_grad_(False)
    return quantized
