"""Rounding back-ends: the best weights on the grid of the format the plan gives each layer.

    round_weights(model, plan, calibration_data, "gptq" or GPTQ(act_order=True)) -> {layer name: weight}

``apply(model, plan, data, rounding=NAME or CONFIG)`` puts each result into the layer's
QuantizedLayer. Only the rounding changes: format, granularity, group size (a shorter last group
included) and the range method stay nearest rounding's, so the costs of a plan do not depend on
the rounding. Layers with float (or no) weight formats are left to apply.

A back-end is a config in ROUNDINGS (config.py: a frozen dataclass of its options, checked when
made; ``rounding_config(name, **options)`` makes one from a name):
    Nearest()       every weight to the closest point of its grid (nearest.py); reads no data
    GPTQ(...)       layer by layer (layerwise.py), each from the inputs of the model whose earlier
                    layers are already rounded (gptq.py)
    AdaRound(...)   layer by layer, each from the float model's inputs (adaround.py)
    BRECQ(...)      block by block, on the model already quantized by the plan with nearest
                    rounding, activations calibrated (brecq.py)
A layer-wise config gives observe(state, layer, x) -> state (what it keeps of one call's input,
state starting None) and round_layer(layer, state, fmt, weight_method) -> the layer's weight; a
block-wise one round_model(model, quantized, batches, targets, run, weight_method, progress,
done=, save=).

checkpoint=DIR keeps the weights rounded so far in DIR/<method>-<key>.pt, the key a hash of the
method, its options, the range methods, the plan's formats, the model's weights and the
calibration data; an interrupted run resumes from there, and a finished one is read back whole.
It is written as a layer or block finishes, at most every 30 s, at the end, and at a Ctrl-C (KeyboardInterrupt),
so a Ctrl-C loses at most the layer or block in progress, and a kill that one and those finished since the last
write (at most 30 s of them). Its key holds the model's weights and its code (mixprec.sensitivity.store's
structure_hash), so a model with the same weights and another forward is rounded anew.
"""
from __future__ import annotations

import contextlib
import hashlib
import pickle
import json
import time
import warnings
import weakref
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

from ..batches import as_items, split_item
from ..cache import save_atomic
from ..candidates import parse_candidate
from ..capture import forward
from ..errors import OutputError, RoundingError, RoundingNote
from ..formats import IntFormat
from ..groups import NO_COLUMNS, is_torchscript
from ..plan import Plan
from ..quantizers import GRID_VERSION, RANGE_METHODS
from ..swap import nearest_weight, planned_model
from .adaround import AdaRound
from .brecq import BRECQ
from .config import RoundingConfig
from .gptq import GPTQ
from .layerwise import round_layers
from .nearest import Nearest
from .prefix import fingerprint

ROUNDINGS: dict[str, type[RoundingConfig]] = {c.name: c for c in (Nearest, GPTQ, AdaRound, BRECQ)}
SAVE_EVERY_S = 30.0

__all__ = ["ROUNDINGS", "RoundingConfig", "Nearest", "GPTQ", "AdaRound", "BRECQ", "rounding_config", "round_weights",
           "recorded_rounding", "plan_rounding", "rounding_metadata"]

# Defaults that have changed: a record that does not name such an option was made under the former default
# (records name every option since; before, only the ones that differed from the defaults of the time).
FORMER_DEFAULTS: dict[str, dict[str, Any]] = {"gptq": {"act_order": False}}


@contextlib.contextmanager
def _no_interrupt():
    """SIGINT held back (delivered once the block ends) in the main thread, where the OS lets it be."""
    import signal
    import threading
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def recorded_rounding(name: str, options: dict[str, Any] | None) -> RoundingConfig:
    """The rounding a run, plan or result recorded (its name and options), an option it leaves out read at the
    default of the time it was recorded (FORMER_DEFAULTS)."""
    return rounding_config(name, **{**FORMER_DEFAULTS.get(name, {}), **(options or {})})


def rounding_metadata(config: RoundingConfig) -> dict[str, Any]:
    """What a plan's metadata records of the rounding its measurements assumed (read back by plan_rounding):
    nothing for nearest; the name and every option, defaults too (a default may change between versions)."""
    if config.name == "nearest":
        return {}
    return {"rounding": config.name, **({"rounding_options": config.options()} if config.options() else {})}


def plan_rounding(metadata: dict[str, Any]) -> RoundingConfig | None:
    """The rounding a plan's metadata says it was chosen with (its ``rounding`` and ``rounding_options``), or None
    where it names none (nearest) or one this mixprec does not have."""
    name = metadata.get("rounding")
    return recorded_rounding(name, metadata.get("rounding_options")) if name in ROUNDINGS else None


def rounding_config(method: str | RoundingConfig = "nearest", **options: Any) -> RoundingConfig:
    """The config of rounding ``method`` (a name in ROUNDINGS, or a config) with ``options`` set."""
    if not isinstance(method, RoundingConfig) and method not in ROUNDINGS:
        raise _unknown(method)
    kind = type(method) if isinstance(method, RoundingConfig) else ROUNDINGS[method]
    names = [f.name for f in fields(kind)]
    unknown = sorted(set(options) - set(names))
    if unknown:
        valid = ", ".join(f"{f.name}={f.default!r}" for f in fields(kind)) or "none"
        raise RoundingError(f"{kind.name} rounding has no option {unknown[0]!r}; its options (defaults): {valid}")
    # a list is the tuple it was before JSON (run.json, plan.json: adaround's beta): one config, hashable, either way
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
    return replace(method, **options) if isinstance(method, RoundingConfig) else kind(**options)


def _unknown(method: Any) -> RoundingError:
    return RoundingError(f"unknown rounding {method!r}; choose one of: {', '.join(ROUNDINGS)}")


def nearest_only(layers: dict[str, nn.Module], targets: Iterable[str], config: RoundingConfig) -> list[str]:
    """The layers of ``targets`` (names in ``layers``) every back-end rounds to nearest: embeddings (no input to
    reconstruct from), weights shared by two layers (one tensor that must stay one), and for GPTQ a transposed or
    3-D convolution, whose input has no column form for its Hessian (capture.layer_columns)."""
    targets = list(targets)
    holders: dict[int, int] = {}
    for name in targets:
        holders[id(layers[name].weight)] = holders.get(id(layers[name].weight), 0) + 1
    return [name for name in targets if isinstance(layers[name], nn.Embedding) or holders[id(layers[name].weight)] > 1
            or (config.name == "gptq" and isinstance(layers[name], NO_COLUMNS))]


def round_weights(model: nn.Module, plan: Plan, calibration_data: Iterable | None, method: str | RoundingConfig, *,
                  weight_method: str = "mse", activation_method: str = "mse", progress: bool = True,
                  checkpoint: str | Path | None = None, inplace: bool = False, **options: Any) -> dict[str, torch.Tensor]:
    """Fake-quantized weight of every planned layer with an integer weight format, rounded by ``method``.

    method: a name in ROUNDINGS or a config (GPTQ(act_order=True)); options: its options, set on
    it (e.g. act_order=True for gptq, iterations=200 for adaround). calibration_data: iterable of
    input batches or (inputs, labels) pairs, iterated once per step. activation_method: the
    activation range method, for the back-ends that see quantized activations while rounding.
    checkpoint: a directory to resume from (see the module docstring). The model is not modified, unless
    ``inplace``: then, with a sequential back-end (GPTQ), each rounded layer's float weight takes its
    rounded values as soon as they are made (in place; the returned tensor shares them), so a large
    model is never held twice; for ``apply(..., inplace=True)``, which replaces those weights anyway.
    """
    if not isinstance(method, RoundingConfig) and method not in ROUNDINGS:
        raise _unknown(method)
    if weight_method not in RANGE_METHODS:
        raise RoundingError(f"range method must be one of {RANGE_METHODS}, got {weight_method!r}")
    if not isinstance(plan, Plan):
        raise RoundingError(f"plan must be a mixprec Plan (Plan.load(path), Plan.uniform(...)), got {type(plan).__name__}")
    config = rounding_config(method, **options)
    if config.needs_data and torch.is_inference_mode_enabled():
        raise RoundingError(f"{config.name} rounding updates weights and, for adaround and brecq, learns with "
                            "gradients, which torch.inference_mode() forbids (its tensors cannot be changed or "
                            "tracked); call it outside inference_mode (torch.no_grad() is fine)")
    layers = plan.model_layers(model)
    wanted = plan.layer_candidates()
    candidates = {name: parse_candidate(c) for name, c in wanted.items()}
    targets = {name: c.weight for name, c in candidates.items() if isinstance(c.weight, IntFormat)}
    # Embedding tables have no input to reconstruct from, and a weight shared by two layers (an output layer
    # tied to the embedding) is one tensor that must stay one: every back-end rounds those to nearest. So does
    # GPTQ a 3-D or transposed convolution, whose input has no column form for its Hessian (capture.layer_columns).
    tables = {name: nearest_weight(layers[name].weight, candidates[name], weight_method)
              for name in nearest_only(layers, targets, config)}
    targets = {name: fmt for name, fmt in targets.items() if name not in tables}
    if not config.needs_data:
        return {**tables, **{name: nearest_weight(layers[name].weight, candidates[name], weight_method)
                             for name in targets}}
    if is_torchscript(model):
        raise RoundingError(f"{config.name} rounding needs an eager model to hook (give it as file.py:function), not "
                            "a TorchScript file; or use --rounding nearest")
    batches = [] if calibration_data is None else [split_item(item)[0] for item in calibration_data]
    if not batches:
        raise RoundingError(f"{config.name} rounding needs calibration data (the layers' inputs); pass --data "
                            "(or calibration_data=...), or use rounding='nearest'")
    if not targets:
        return tables
    done, save = _checkpoint(checkpoint, config.name, config.options(), weight_method, activation_method, wanted,
                             model, batches)
    try:
        if config.blockwise:
            device = next(model.parameters()).device
            quantized = planned_model(model, plan, as_items(batches), weight_method, activation_method)
            rounded = config.round_model(model, quantized, batches, targets,
                                         lambda m, x, i: forward(m, x, i, device), weight_method, progress,
                                         done=done, save=save)
        else:
            rounded = round_layers(model, plan, batches, candidates, targets, config, weight_method,
                                   activation_method, progress, done, save, release=inplace and config.sequential)
    except KeyboardInterrupt:  # Ctrl-C: what was rounded so far is kept, however recently it was last saved
        save(None, final=True)
        raise
    save(rounded, final=True)
    return {**tables, **{name: rounded[name] for name in targets}}


_MODEL_DIGESTS: "weakref.WeakKeyDictionary[nn.Module, tuple[tuple, str]]" = weakref.WeakKeyDictionary()


def _model_digest(model: nn.Module) -> str:
    """A hash of the model's state dict, computed again only when a tensor of it changed in place (its version)
    or was replaced: a search checkpoints every plan it measures of one model, and hashing an LLM's weights
    (copied to the host) costs a second or more each time."""
    state = model.state_dict(keep_vars=True)
    versions = tuple((name, id(t), t._version) for name, t in state.items() if isinstance(t, torch.Tensor))
    known = _MODEL_DIGESTS.get(model)
    if known is not None and known[0] == versions:
        return known[1]
    digest = hashlib.sha256()
    fingerprint(digest, {name: t.detach() if isinstance(t, torch.Tensor) else t for name, t in state.items()})
    _MODEL_DIGESTS[model] = (versions, digest.hexdigest())
    return digest.hexdigest()


def _checkpoint(directory: str | Path | None, method: str, options: dict, weight_method: str, activation_method: str,
                wanted: dict[str, str], model: nn.Module, batches: list) -> tuple[dict, Callable]:
    """(weights already rounded, save(weights, final=False)); no-ops without a directory."""
    if directory is None:
        return {}, lambda weights, final=False: None
    digest = hashlib.sha256(json.dumps({"method": method, "options": repr(sorted(options.items())),
                                        "weight_method": weight_method, "activation_method": activation_method,
                                        "formats": sorted(wanted.items()), "grid": GRID_VERSION}).encode())
    digest.update(_model_digest(model).encode())
    from ..sensitivity.store import structure_hash  # what the model computes besides its weights: its code
    digest.update(structure_hash(model).encode())
    fingerprint(digest, batches)
    path = Path(directory) / f"{method}-{digest.hexdigest()[:20]}.pt"
    done: dict[str, torch.Tensor] = {}
    if path.exists():
        try:
            with warnings.catch_warnings():  # torch's own notes on a damaged file (its pickle protocol): ours below
                warnings.simplefilter("ignore")
                done = torch.load(path, map_location=next(model.parameters()).device, weights_only=True)
        except Exception as exc:  # a broken checkpoint costs a new start, never a wrong result
            why = str(exc).splitlines()[0] if not isinstance(exc, pickle.UnpicklingError) and "Weights only" not in \
                str(exc) else "not a checkpoint of plain tensors"
            warnings.warn(f"the rounding checkpoint {path} is damaged ({why}): the rounding starts again, and the "
                          "damaged file is replaced", RoundingNote, stacklevel=3)
    last = [time.monotonic()]
    saved = [len(done)]
    latest: list = [done]  # the weights rounded so far, as last handed to save
    failed: list = []  # a write of the checkpoint that failed (said once)

    def save(weights: dict[str, torch.Tensor] | None, final: bool = False) -> None:
        """Write ``weights`` (None: the last ones handed over, at an interruption) every SAVE_EVERY_S, or now."""
        weights = latest[0] if weights is None else weights
        latest[0] = weights
        if len(weights) > saved[0] and (final or time.monotonic() - last[0] >= SAVE_EVERY_S):
            try:
                with _no_interrupt():  # a second Ctrl-C waits for the checkpoint of the first to be written
                    save_atomic({k: v.detach() for k, v in weights.items()}, path)
            except OutputError as exc:  # only a cache: the rounding goes on, said once
                if not failed:
                    warnings.warn(f"the rounding checkpoint could not be written ({exc}): the rounding goes on, but "
                                  "an interruption now would start it again", RoundingNote, stacklevel=2)
                failed.append(exc)
            last[0], saved[0] = time.monotonic(), len(weights)
    return done, save
