"""What every sensitivity metric measures with: the float model, its groups, the candidates,
the calibration batches, and the quantized version of any one group.

Only one group is quantized at a time, so every layer's input is the float model's input:
activation ranges are observed once, on a float pass, and reused for every candidate.
Multipoint candidates use the point counts given in ``points`` (as costs.json records them), or
choose them on the calibration data the first time they are needed (one float pass).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from ..batches import run_model, split_item, to_device
from ..candidates import Candidate
from ..capture import layer_input, on_inputs
from ..formats import Format
from ..groups import ModelGroups, QuantizerGroup
from ..multipoint import measure_points
from ..quantizers import ActivationQuantizer
from ..swap import QuantizedLayer, nearest_weight, set_module


@dataclass
class MeasureContext:
    model: nn.Module  # float reference, eval mode, never modified
    groups: ModelGroups
    candidates: list[Candidate]
    data: list  # calibration items: inputs or (inputs, labels)
    weight_method: str = "mse"
    activation_method: str = "mse"
    evaluate: Callable[[nn.Module], Any] | None = None  # the user's --eval (task metric)
    progress: bool = True
    points: dict[str, dict[str, str]] | None = None  # multipoint candidate -> layer -> points per channel
    on_batch: Callable[[float], None] | None = field(default=None, repr=False)  # progress: fraction of a chunk done
    _observers: dict[str, ActivationQuantizer] | None = field(default=None, repr=False)
    _weights: dict[tuple[str, Format | None, int], torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def layer(self, name: str) -> nn.Module:
        """The float model's layer ``name`` (TorchScript models too, which lack get_submodule)."""
        return dict(self.model.named_modules())[name]

    def inputs(self, index: int) -> Any:
        return to_device(split_item(self.data[index])[0], self.device)

    def labels(self, index: int) -> Any:
        labels = split_item(self.data[index])[1]
        return None if labels is None else labels.to(self.device)

    @property
    def has_labels(self) -> bool:
        return all(split_item(item)[1] is not None for item in self.data)

    def observers(self) -> dict[str, ActivationQuantizer]:
        """Per layer, the observed float input (min/max and a sample), from one float pass."""
        if self._observers is None:
            layers = dict(self.model.named_modules())
            observers = {l.name: ActivationQuantizer(_PROBE, self.activation_method, max_samples=1 << 18)
                         for l in self.groups.layers if l.kind != "Embedding"}  # an embedding reads token ids
            with on_inputs({name: layers[name] for name in observers},
                           lambda name, m, args, kwargs: observers[name]._observe(layer_input(args, kwargs))):
                with torch.no_grad():
                    for i in range(len(self.data)):
                        run_model(self.model, self.inputs(i))
            self._observers = observers
        return self._observers

    def quantized_weight(self, layer: str, candidate: Candidate) -> torch.Tensor:
        key = (layer, candidate.weight, candidate.points)
        if key not in self._weights:
            weight = self.layer(layer).weight
            points = self.multipoint_points()[candidate.name][layer] if candidate.multipoint else None
            self._weights[key] = nearest_weight(weight, candidate, self.weight_method, points, layer)
        return self._weights[key]

    def multipoint_points(self) -> dict[str, dict[str, str]]:
        """Points per channel of every (layer, multipoint candidate); measured once if not given."""
        wanted = [c for c in self.candidates if c.multipoint]
        have = self.points or {}
        if any(l.name not in have.get(c.name, {}) for c in wanted for l in self.groups.layers):
            measured = measure_points(self.model, {l.name: wanted for l in self.groups.layers}, self.data,
                                      self.weight_method, self.progress)
            self.points = {c: {**measured.get(c, {}), **have.get(c, {})} for c in {*measured, *have}}
        return self.points or {}

    def input_quantizer(self, layer: str, fmt: Format | None,
                        observers: dict[str, ActivationQuantizer] | None = None) -> ActivationQuantizer:
        """A quantizer for the layer's input, calibrated on what ``observers`` saw (default: the float inputs)."""
        if isinstance(self.model.get_submodule(layer), nn.Embedding):
            fmt = None  # token ids in: nothing to quantize
        quantizer = ActivationQuantizer(fmt, self.activation_method)
        if quantizer.needs_calibration:
            seen = (observers or self.observers())[layer]
            quantizer._seen_lo, quantizer._seen_hi = seen._seen_lo, seen._seen_hi
            quantizer._samples = list(seen._samples)
            quantizer.finish_calibration()
        else:
            quantizer.observing = False
        return quantizer.to(self.device)

    def quantized_modules(self, group: QuantizerGroup, candidate: Candidate,
                          observers: dict[str, ActivationQuantizer] | None = None) -> dict[str, nn.Module]:
        """Replacement modules for the group's layers: fake-quantized weight, input quantizer calibrated
        on what ``observers`` saw (default: the float model's inputs)."""
        out = {}
        for layer in group.layer_names:
            float_layer = self.model.get_submodule(layer)
            clone = copy.copy(float_layer)  # shallow: the float layer keeps its own weight
            clone._parameters = dict(float_layer._parameters)
            out[layer] = QuantizedLayer(clone, candidate, weight=self.quantized_weight(layer, candidate),
                                        input_quantizer=self.input_quantizer(layer, candidate.activation, observers))
        return out


class quantized_group:
    """Context manager: swap one group's layers into ``model`` in place, restore on exit."""

    def __init__(self, model: nn.Module, modules: dict[str, nn.Module]):
        self.model, self.modules, self.saved = model, modules, {}

    def __enter__(self):
        for name, module in self.modules.items():
            self.saved[name] = self.model.get_submodule(name)
            set_module(self.model, name, module)
        return self.model

    def __exit__(self, *exc):
        for name, module in self.saved.items():
            set_module(self.model, name, module)
        return False


# Any calibrated format works for observing: observation keeps raw min/max and samples.
from ..formats import IntFormat  # noqa: E402

_PROBE = IntFormat(8, symmetric=False)
