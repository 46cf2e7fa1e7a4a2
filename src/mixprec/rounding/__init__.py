"""Rounding back-ends: the best weights on the grid of the format the plan gives each layer.

    round_weights(model, plan, calibration_data, method) -> {layer name: fake-quantized weight}

``apply(model, plan, data, rounding=NAME)`` puts each result into the layer's QuantizedLayer.
Only the rounding changes: format, granularity, group size (a shorter last group included) and
the range method stay nearest rounding's, so the costs of a plan do not depend on the rounding.
Layers with float (or no) weight formats are left to apply.

A back-end is a module in ROUNDINGS with
    NEEDS_DATA   whether it reads calibration inputs (nearest does not)
    SEQUENTIAL   True: a layer's inputs come from the model whose earlier layers already carry
                 their rounded weights (GPTQ, layer by layer as in the paper) and, where the plan
                 quantizes activations, through their calibrated activation quantizers; False:
                 from the float model (AdaRound, the paper's default)
    OPTIONS      option name -> default; check_options(options) validates and fills defaults
    observe(state, layer, x) -> state      keep what it needs from one call's input (state starts None)
    round_layer(layer, state, fmt, weight_method, **options) -> weight of the layer's shape and dtype

A block-wise back-end (BRECQ) instead has BLOCKWISE = True and
    round_model(model, quantized, batches, targets, run, weight_method, progress, done=, save=, **options)
which gets the model already quantized by the plan with nearest rounding (activations calibrated)
and reconstructs whole blocks (see brecq.py).

checkpoint=DIR keeps the weights rounded so far in DIR/<method>-<key>.pt, the key a hash of the
method, its options, the range methods, the plan's formats, the model's weights and the
calibration data; an interrupted run resumes from there, and a finished one is read back whole.
It is written at most every 30 s (and at the end), so an interruption loses at most that.

Where the planned layers sit in a chain of blocks (chain.py: transformer layers, residual stages),
the steps inside the chain run block by block on the block inputs kept from the step before, so
a deep model costs about one pass over the calibration data, not one per step; the results are
the same.

Layers are visited in the order the first calibration batch calls them; consecutive layers that
read the very same input tensor (Q/K/V, gate/up) form one step. Each step runs the calibration
batches through a working copy of the model with hooks on the planned layers and stops the
forward pass once the step's layers have been called as often as in the first batch, so a step
costs on average half a pass over the calibration set. apply calibrates the activation quantizers
again afterwards on the model with the rounded weights, as for nearest rounding.
"""
from __future__ import annotations

import copy
import hashlib
import json
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from ..batches import split_item
from ..cache import save_atomic
from ..capture import StopForward, block_inputs, forward, layer_input, on_inputs
from ..candidates import parse_candidate
from ..errors import RoundingError
from ..formats import IntFormat
from ..groups import is_torchscript
from ..plan import Plan
from ..quantizers import RANGE_METHODS
from ..swap import nearest_weight, planned_model
from . import adaround, brecq, chain, gptq, nearest

ROUNDINGS = {"nearest": nearest, "gptq": gptq, "adaround": adaround, "brecq": brecq}
SAVE_EVERY_S = 30.0


def round_weights(model: nn.Module, plan: Plan, calibration_data: Iterable | None, method: str, *,
                  weight_method: str = "mse", activation_method: str = "mse", progress: bool = True,
                  checkpoint: str | Path | None = None, **options: Any) -> dict[str, torch.Tensor]:
    """Fake-quantized weight of every planned layer with an integer weight format, rounded by ``method``.

    calibration_data: iterable of input batches or (inputs, labels) pairs, iterated once per step.
    options: the back-end's options (``ROUNDINGS[method].OPTIONS``), e.g. act_order=True for gptq,
    iterations=200 for adaround. activation_method: the activation range method, for the back-ends
    that see quantized activations while rounding (brecq). checkpoint: a directory to resume from
    (see the module docstring). The model is not modified.
    """
    if method not in ROUNDINGS:
        raise RoundingError(f"unknown rounding {method!r}; choose one of: {', '.join(ROUNDINGS)}")
    if weight_method not in RANGE_METHODS:
        raise RoundingError(f"range method must be one of {RANGE_METHODS}, got {weight_method!r}")
    if not isinstance(plan, Plan):
        raise RoundingError(f"plan must be a mixprec Plan (Plan.load(path), Plan.uniform(...)), got {type(plan).__name__}")
    backend = ROUNDINGS[method]
    unknown = sorted(set(options) - set(backend.OPTIONS))
    if unknown:
        valid = ", ".join(f"{k}={v!r}" for k, v in backend.OPTIONS.items()) or "none"
        raise RoundingError(f"{method} rounding has no option {unknown[0]!r}; its options (defaults): {valid}")
    options = backend.check_options(options)
    layers = plan.model_layers(model)
    wanted = plan.layer_candidates()
    candidates = {name: parse_candidate(c) for name, c in wanted.items()}
    targets = {name: c.weight for name, c in candidates.items() if isinstance(c.weight, IntFormat)}
    if not backend.NEEDS_DATA:
        return {name: backend.round_layer(layers[name], None, f, weight_method, **options)
                for name, f in targets.items()}
    if is_torchscript(model):
        raise RoundingError(f"{method} rounding needs an eager model to hook (give it as file.py:function), not a "
                            "TorchScript file; or use --rounding nearest")
    batches = [] if calibration_data is None else [split_item(item)[0] for item in calibration_data]
    if not batches:
        raise RoundingError(f"{method} rounding needs calibration data (the layers' inputs); pass --data "
                            "(or calibration_data=...), or use rounding='nearest'")
    if not targets:
        return {}
    done, save = _checkpoint(checkpoint, method, options, weight_method, activation_method, wanted, model, batches)
    device = next(model.parameters()).device
    if getattr(backend, "BLOCKWISE", False):
        quantized = planned_model(model, plan, batches, weight_method, activation_method)
        rounded = backend.round_model(model, quantized, batches, targets, lambda m, x, i: forward(m, x, i, device),
                                      weight_method, progress, done=done, save=save, **options)
        save(rounded, final=True)
        return {name: rounded[name] for name in targets}

    quantizes_inputs = any(not parse_candidate(c).weight_only for c in wanted.values())
    if backend.SEQUENTIAL and quantizes_inputs:
        # the layers see their inputs as the plan makes them: quantized by calibrated activation
        # quantizers, earlier layers already rounded (the hooks sit on the layers inside apply's wrappers)
        working = planned_model(model, plan, batches, weight_method, activation_method)
        modules = {name: working.get_submodule(name).layer for name in targets}
        for name, layer in modules.items():  # float until rounded, as in the other path
            _set_weight(layer, model.get_submodule(name).weight.detach().clone())
    else:
        working = copy.deepcopy(model).eval()
        modules = {name: working.get_submodule(name) for name in targets}
        if backend.SEQUENTIAL:  # later layers must see earlier float-format layers as apply will make them
            for name, c in candidates.items():
                if c.weight is not None and name not in targets:
                    layer = working.get_submodule(name)
                    _set_weight(layer, nearest_weight(layer.weight, c, weight_method))
    steps, calls = _steps(working, batches[0], modules, device)
    never = [name for name in targets if name not in calls]
    if never:
        warnings.warn(f"{len(never)} planned layer(s) were not called on the first calibration batch, e.g. "
                      f"{never[0]!r}; they get nearest rounding", stacklevel=2)
    rounded = {name: nearest_weight(modules[name].weight, candidates[name], weight_method) for name in never}
    run = lambda m, x, i: forward(m, x, i, device)  # noqa: E731
    chained = _chain_steps(working, batches[0], steps, calls, run)
    bar = tqdm(total=len(steps), desc=f"{method} rounding", unit="layer" if all(len(s) == 1 for s in steps) else
               "step", disable=not progress, leave=False)
    kept = None  # the current chained block's inputs
    for index, step in enumerate(steps):
        bar.set_postfix_str(step[0], refresh=False)
        block = chained.get(index)
        if block is not None and kept is None:  # the chain starts: one pass up to its first block
            kept = block_inputs(working, block, batches, run)
        if all(name in done for name in step):
            rounded.update({name: done[name] for name in step})
        else:
            if block is None:
                states = _observe(batches, lambda x, i: run(working, x, i), modules, step, calls, backend)
            else:
                module = working.get_submodule(block)
                states = _observe(kept, lambda x, i: chain.run_block(module, x), modules, step, calls, backend)
            for name in step:
                rounded[name] = backend.round_layer(modules[name], states[name], targets[name], weight_method,
                                                    **options)
            save(rounded)
        if backend.SEQUENTIAL:
            for name in step:
                _set_weight(modules[name], rounded[name])
        if block is not None and chained.get(index + 1) != block:  # the block is done: its outputs go on
            kept = chain.next_inputs(working.get_submodule(block), kept) if index + 1 in chained else None
        bar.update(1)
    bar.close()
    save(rounded, final=True)
    return {name: rounded[name] for name in targets}


def _chain_steps(model: nn.Module, inputs: Any, steps: list[list[str]], calls: dict[str, int],
                 run) -> dict[int, str]:
    """Step index -> its chained block, where the steps of a chain of blocks (chain.py) are
    consecutive and in block order, each inside one block and called once; else nothing is chained."""
    blocks = chain.find_chain(model, inputs, [name for step in steps for name in step], run)
    owner = {name: block for block, members in blocks.items() for name in members}
    chained = {}
    for index, step in enumerate(steps):
        owners = {owner.get(name) for name in step}
        if len(owners) != 1 or (None not in owners and any(calls[name] != 1 for name in step)):
            return {}
        if None not in owners:
            chained[index] = owners.pop()
    indices = sorted(chained)
    order = list(dict.fromkeys(chained[i] for i in indices))
    if (not indices or indices != list(range(indices[0], indices[-1] + 1)) or order != list(blocks)):
        return {}
    return chained


def _fingerprint(digest: Any, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, dict):
        for k in sorted(value, key=str):
            digest.update(str(k).encode())
            _fingerprint(digest, value[k])
    elif isinstance(value, (list, tuple)):
        for v in value:
            _fingerprint(digest, v)
    else:
        digest.update(repr(value).encode())


def _checkpoint(directory: str | Path | None, method: str, options: dict, weight_method: str, activation_method: str,
                wanted: dict[str, str], model: nn.Module, batches: list) -> tuple[dict, Callable]:
    """(weights already rounded, save(weights, final=False)); no-ops without a directory."""
    if directory is None:
        return {}, lambda weights, final=False: None
    digest = hashlib.sha256(json.dumps({"method": method, "options": repr(sorted(options.items())),
                                        "weight_method": weight_method, "activation_method": activation_method,
                                        "formats": sorted(wanted.items())}).encode())
    _fingerprint(digest, model.state_dict())
    _fingerprint(digest, batches)
    path = Path(directory) / f"{method}-{digest.hexdigest()[:20]}.pt"
    done: dict[str, torch.Tensor] = {}
    if path.exists():
        try:
            done = torch.load(path, map_location=next(model.parameters()).device, weights_only=True)
        except Exception as exc:  # a broken checkpoint costs a new start, never a wrong result
            warnings.warn(f"could not read the rounding checkpoint {path} ({exc}); starting again", stacklevel=3)
    last = [time.monotonic()]
    saved = [len(done)]

    def save(weights: dict[str, torch.Tensor], final: bool = False) -> None:
        if len(weights) > saved[0] and (final or time.monotonic() - last[0] >= SAVE_EVERY_S):
            save_atomic({k: v.detach() for k, v in weights.items()}, path)
            last[0], saved[0] = time.monotonic(), len(weights)
    return done, save


def _set_weight(layer: nn.Module, weight: torch.Tensor) -> None:
    # A new Parameter, not an in-place copy: a tied weight's other user must stay float.
    layer.weight = nn.Parameter(weight, requires_grad=False)


def _steps(model: nn.Module, inputs: Any, modules: dict[str, nn.Module],
           device: torch.device) -> tuple[list[list[str]], dict[str, int]]:
    """Steps (layer names) in the order ``inputs`` calls the layers, and how often each is called."""
    steps: list[list[str]] = []
    calls: dict[str, int] = {}
    step_input: list[torch.Tensor] = []  # the input of the current step (one reference only)

    def see(name, module, args, kwargs):
        if name not in calls:
            x = layer_input(args, kwargs)
            if step_input and x is step_input[0]:
                steps[-1].append(name)
            else:
                steps.append([name])
                step_input[:] = [x]
        calls[name] = calls.get(name, 0) + 1

    with on_inputs(modules, see), torch.no_grad():
        forward(model, inputs, 0, device)
    return steps, calls


def _observe(items: list, run: Callable[[Any, int], Any], modules: dict[str, nn.Module], step: list[str],
             calls: dict[str, int], backend: Any) -> dict[str, Any]:
    """run(item, index) over the items (calibration batches, or a chained block's kept inputs), each
    stopped once the step's layers have seen it; the back-end's state per layer."""
    states: dict[str, Any] = {name: None for name in step}
    seen = dict.fromkeys(step, 0)

    def see(name, module, args, kwargs):
        if name in seen:
            states[name] = backend.observe(states[name], module, layer_input(args, kwargs))
            seen[name] += 1
        elif all(seen[n] >= calls[n] for n in step):
            raise StopForward

    with on_inputs(modules, see):
        for index, item in enumerate(items):
            seen.update(dict.fromkeys(step, 0))
            with torch.no_grad():
                run(item, index)
    return states
