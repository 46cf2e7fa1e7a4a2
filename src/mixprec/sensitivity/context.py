"""What every sensitivity metric measures with: the float model, its groups, the candidates,
the calibration batches, and the quantized version of any one group.

Only one group is quantized at a time, so every layer's input is the float model's input:
activation ranges are observed once, on a float pass, and reused for every candidate.
Multipoint candidates use the point counts given in ``points`` (as costs.json records them), or
choose them on the calibration data the first time they are needed (one float pass).

Rounding-aware measurement (``rounding``: a layer-wise config such as GPTQ()): each layer's weight
at an integer candidate is rounded by that back-end from the layer's own float inputs, instead of
to the nearest grid point; what the measurement sees is then what ``apply(..., rounding=...)`` will
make, up to GPTQ's sequential inputs (a layer's rounding needs only its own inputs, so every
(layer, candidate) can be rounded alone). The inputs of a chunk's layers are gathered in one float
pass (round_layers), their state kept only until every candidate is rounded. Embeddings and
weights shared by two layers get nearest rounding, as in round_weights.
"""
from __future__ import annotations

import copy
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

from ..batches import run_model, split_item, to_device
from ..candidates import Candidate
from ..capture import forward, layer_input, on_inputs
from ..formats import Format, IntFormat
from ..groups import ModelGroups, QuantizerGroup
from ..integer_bias import attach as attach_integer_bias
from ..multipoint import measure_points
from ..quantizers import ACTIVATION_SAMPLES, ActivationQuantizer, real_tokens
from ..rounding.config import RoundingConfig, check_finite_input
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
    rounding: RoundingConfig | None = None  # a layer-wise rounding the measured weights get (None: nearest)
    # where a metric keeps the state it builds before its entries (Hessian traces), to resume after an interruption:
    # the run directory (one process), else None
    checkpoint: Path | None = None
    _observers: dict[str, ActivationQuantizer] | None = field(default=None, repr=False)
    _weights: dict[tuple[str, Format | None, int], torch.Tensor] = field(default_factory=dict, repr=False)
    # input quantizers calibrated on the float inputs, per (layer, format): the same for every batch and fork
    _calibrated: dict[tuple[str, Format | None], ActivationQuantizer] = field(default_factory=dict, repr=False)
    _nearest_only: set[str] | None = field(default=None, repr=False)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def nested_progress(self) -> bool:
        """Whether a bar inside the analysis's own bar is shown: only on a terminal, where its cursor moves
        redraw it (in a log they would be escape codes)."""
        return self.progress and sys.stderr.isatty()

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
            observers = {l.name: ActivationQuantizer(_PROBE, self.activation_method, max_samples=ACTIVATION_SAMPLES)
                         for l in self.groups.layers if l.kind != "Embedding"}  # an embedding reads token ids
            with on_inputs({name: layers[name] for name in observers},
                           lambda name, m, args, kwargs: observers[name]._observe(layer_input(args, kwargs))):
                with torch.no_grad():
                    for i in range(len(self.data)):
                        with real_tokens(self.inputs(i)):  # as apply calibrates: the real tokens alone
                            forward(self.model, self.inputs(i), i, self.device)  # a failing batch is named
            self._observers = observers
        return self._observers

    def quantized_weight(self, layer: str, candidate: Candidate) -> torch.Tensor:
        key = (layer, candidate.weight, candidate.points)
        if key not in self._weights and self.rounds(layer, candidate):
            self.round_layers([layer], [candidate])
        if key not in self._weights:
            weight = self.layer(layer).weight
            points = self.multipoint_points()[candidate.name][layer] if candidate.multipoint else None
            self._weights[key] = nearest_weight(weight, candidate, self.weight_method, points, layer)
        return self._weights[key]

    def forget_weights(self, layers: Iterable[str]) -> None:
        """Drop the quantized weights of ``layers`` (every candidate): their measurements are done."""
        layers = set(layers)
        for key in [k for k in self._weights if k[0] in layers]:
            del self._weights[key]

    def rounds(self, layer: str, candidate: Candidate) -> bool:
        """Whether ``layer`` at ``candidate`` gets the data-aware rounding (else nearest)."""
        if self.rounding is None or not self.rounding.needs_data or candidate.multipoint \
                or not isinstance(candidate.weight, IntFormat):
            return False
        if self._nearest_only is None:  # as apply rounds them (mixprec.rounding.nearest_only)
            from ..rounding import nearest_only
            names = [l.name for l in self.groups.layers]
            self._nearest_only = set(nearest_only({n: self.model.get_submodule(n) for n in names}, names,
                                                  self.rounding))
        return layer not in self._nearest_only

    @torch.no_grad()
    def round_layers(self, layers: list[str], candidates: list[Candidate] | None = None) -> None:
        """Round the weights of ``layers`` at ``candidates`` (default: all) with ``rounding`` and keep them.

        The layers' inputs are gathered on float passes over the calibration data, as many layers
        per pass as fit in STATE_BYTES of state (GPTQ: one Hessian per layer); each state is
        dropped once its layer is rounded at every candidate."""
        todo = [(name, [c for c in (candidates or self.candidates) if self.rounds(name, c)
                        and (name, c.weight, c.points) not in self._weights]) for name in dict.fromkeys(layers)]
        todo = [(name, cands) for name, cands in todo if cands]
        modules = dict(self.model.named_modules())
        while todo:
            batch, size = [], 0
            for name, cands in todo:
                need = _state_bytes(modules[name])
                if batch and size + need > STATE_BYTES:
                    break
                batch.append((name, cands))
                size += need
            todo = todo[len(batch):]
            states: dict[str, Any] = {}

            def see(name, module, args, kwargs):
                x = layer_input(args, kwargs)
                check_finite_input(name, x, self.rounding.name)
                states[name] = self.rounding.observe(states.get(name), module, x)
            with on_inputs({name: modules[name] for name, _ in batch}, see):
                for i in range(len(self.data)):
                    run_model(self.model, self.inputs(i))
            for name, cands in batch:
                state = states.pop(name, None)
                for cand in cands:
                    key = (name, cand.weight, cand.points)
                    if state is None:  # never called on the calibration data: nothing to reconstruct
                        self._weights[key] = nearest_weight(modules[name].weight, cand, self.weight_method)
                    else:
                        self._weights[key] = self.rounding.round_layer(modules[name], state, cand.weight,
                                                                       self.weight_method)

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
        if observers is None and (layer, fmt) in self._calibrated:  # its range search was done once already
            return self._calibrated[(layer, fmt)]
        quantizer = ActivationQuantizer(fmt, self.activation_method)
        if quantizer.needs_calibration:
            seen = (observers or self.observers())[layer]
            quantizer._seen_lo, quantizer._seen_hi = seen._seen_lo, seen._seen_hi
            quantizer._samples = list(seen._samples)
            if quantizer._seen_lo is None:
                from ..errors import ModelError
                raise ModelError(f"layer {layer!r} saw no finite input on the calibration data: it is never called "
                                 "by it (a training-only head, or the branch of an if the data does not take), or its "
                                 "inputs are only NaN/Inf. Leave it in float: exclude=[...] in Python, --exclude NAME "
                                 "on the command line")
            quantizer.finish_calibration()
        else:
            quantizer.observing = False
        quantizer = quantizer.to(self.device)
        if observers is None:
            self._calibrated[(layer, fmt)] = quantizer
        return quantizer

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
        attach_integer_bias(self.model, out)  # measured in an int8 graph: its kernels' int32 bias rounding too
        return out


STATE_BYTES = 2 << 30  # rounding state gathered in one pass (GPTQ: 4 bytes per Hessian entry)


def _state_bytes(layer: nn.Module) -> int:
    """What a layer-wise rounding keeps of a layer's inputs: GPTQ's X X^T per convolution group."""
    columns = layer.weight[0].numel() if layer.weight.dim() > 1 else 1
    return 4 * columns * columns * max(1, getattr(layer, "groups", 1))


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
_PROBE = IntFormat(8, symmetric=False)
