"""The layer-wise path of round_weights (GPTQ, AdaRound): layer by layer, each from its inputs.

Layers are visited in the order the first calibration batch calls them; consecutive layers that
read the very same input tensor (Q/K/V, gate/up) form one step. Each step runs the calibration
batches through a working copy of the model with hooks on the planned layers and stops the
forward pass once the step's layers have been called as often as in the first batch, so a step
costs on average half a pass over the calibration set. The back-end keeps what it needs of each
input (config.observe) and rounds the layer from it (config.round_layer). apply calibrates the
activation quantizers again afterwards on the model with the rounded weights, as for nearest
rounding.

Where the planned layers sit in a chain of blocks (chain.py: transformer layers, residual stages),
the steps inside the chain run block by block on the block inputs kept from the step before, so
a deep model costs about one pass over the calibration data, not one per step; the results are
the same.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable

import torch
from torch import nn
from ..progress import tqdm

from ..batches import as_items
from ..candidates import Candidate
from ..capture import StopForward, block_inputs, forward, layer_input, on_inputs
from ..formats import IntFormat
from ..plan import Plan
from ..quantizers import needs_calibration
from ..streaming import stream_of
from ..canonical import copy_sharing_parameters
from ..swap import nearest_weight, planned_model
from . import chain, prefix
from .config import RoundingConfig, check_finite_input


def round_layers(model: nn.Module, plan: Plan, batches: list, candidates: dict[str, Candidate],
                 targets: dict[str, IntFormat], config: RoundingConfig, weight_method: str, activation_method: str,
                 progress: bool, done: dict[str, torch.Tensor], save: Callable,
                 release: bool = False) -> dict[str, torch.Tensor]:
    """Rounded weights of ``targets``, step by step (``done``: already rounded; save(weights) after each step).

    release: each rounded layer's float weight in ``model`` takes the rounded values in place once the
    step is done (a sequential back-end reads it no more), so the model is never held twice."""
    device = next(model.parameters()).device
    working, modules = _working_model(model, plan, batches, candidates, targets, config, weight_method,
                                      activation_method)
    # calibrated input ranges depend on the whole plan; float casts and dynamic ranges only on the inputs
    shared = config.sequential and not release and not any(needs_calibration(c.activation)
                                                            for c in candidates.values())
    others = {name: working.get_submodule(name) for name in candidates if name not in modules} if shared else None
    steps, calls, positions = _steps(working, batches[0], modules, device, others)
    if shared:  # steps a plan rounded a moment ago shares with this one are taken as they are (prefix.py)
        wanted = {name: c.name for name, c in candidates.items()}
        key = prefix.STORE.key(model, config, weight_method, batches)
        reused = prefix.STORE.lookup(model, key, wanted, positions, steps)
        prefix.STORE.reused_steps += sum(all(n in reused for n in step) for step in steps)
        done = {**reused, **done}
    never = [name for name in targets if name not in calls]
    if never:
        warnings.warn(f"{len(never)} planned layer(s) were not called on the first calibration batch, e.g. "
                      f"{never[0]!r}; they get nearest rounding", stacklevel=3)
    rounded = {name: nearest_weight(modules[name].weight, candidates[name], weight_method) for name in never}
    run = lambda m, x, i: forward(m, x, i, device)  # noqa: E731
    chained = _chain_steps(working, batches[0], steps, calls, run)
    bar = tqdm(total=len(steps), desc=f"{config.name} rounding", unit="layer" if all(len(s) == 1 for s in steps) else
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
                states = _observe(batches, lambda x, i: run(working, x, i), modules, step, calls, config)
            else:
                module = working.get_submodule(block)
                states = _observe(kept, lambda x, i: chain.run_block(module, x), modules, step, calls, config)
            rounded.update(config.round_step({name: modules[name] for name in step}, states,
                                             {name: targets[name] for name in step}, weight_method))
            prefix.STORE.rounded_steps += 1
            save(rounded)
        if config.sequential:
            for name in step:
                if release:  # the float tensor takes the rounded values (in place: its version moves on, so
                    # nothing cached for the float values, mixprec.weight_cache, is served again) and stands for them
                    weight = model.get_submodule(name).weight
                    with torch.no_grad():
                        weight.copy_(rounded[name])
                    # a streamed model's parameter goes back to CPU memory with its block (mixprec.streaming):
                    # the parameter itself stands for the values, not a view of where they are now
                    rounded[name] = weight if stream_of(model) is not None else weight.detach()
                    if modules[name].weight is weight:  # the working copy shares it: it reads the rounded values
                        continue
                _set_weight(modules[name], rounded[name])
        if block is not None and chained.get(index + 1) != block:  # the block is done: its outputs go on
            kept = chain.next_inputs(working.get_submodule(block), kept) if index + 1 in chained else None
        bar.update(1)
    bar.close()
    if shared:
        prefix.STORE.keep(model, key, wanted, positions, steps, {name: rounded[name] for name in targets})
    return rounded


def _working_model(model: nn.Module, plan: Plan, batches: list, candidates: dict[str, Candidate],
                   targets: dict[str, IntFormat], config: RoundingConfig, weight_method: str,
                   activation_method: str) -> tuple[nn.Module, dict[str, nn.Module]]:
    """The copy the steps run through, and its layers to round (float until rounded)."""
    quantizes_inputs = any(not c.weight_only for c in candidates.values())
    if config.sequential and quantizes_inputs:
        # the layers see their inputs as the plan makes them: quantized by calibrated activation
        # quantizers, earlier layers already rounded (the hooks sit on the layers inside apply's wrappers)
        working = planned_model(model, plan, as_items(batches), weight_method, activation_method)
        modules = {name: working.get_submodule(name).layer for name in targets}
        for name, layer in modules.items():  # float until rounded, as in the other path
            _set_weight(layer, model.get_submodule(name).weight.detach().clone())
        return working, modules
    # the steps only read the float parameters, and a rounded or float-format weight goes in as a new Parameter
    working = copy_sharing_parameters(model).eval()
    modules = {name: working.get_submodule(name) for name in targets}
    if config.sequential:  # later layers must see earlier float-format layers as apply will make them
        for name, c in candidates.items():
            if c.weight is not None and name not in targets:
                layer = working.get_submodule(name)
                _set_weight(layer, nearest_weight(layer.weight, c, weight_method))
    return working, modules


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


def _set_weight(layer: nn.Module, weight: torch.Tensor) -> None:
    # A new Parameter, not an in-place copy: a tied weight's other user must stay float.
    layer.weight = nn.Parameter(weight, requires_grad=False)


def _steps(model: nn.Module, inputs: Any, modules: dict[str, nn.Module], device: torch.device,
           others: dict[str, nn.Module] | None = None
           ) -> tuple[list[list[str]], dict[str, int], dict[str, tuple[int, int]]]:
    """Steps (layer names) in the order ``inputs`` calls ``modules``, how often each is called, and the
    (first, last) position of each of ``modules`` and ``others`` among the calls to any of them."""
    steps: list[list[str]] = []
    calls: dict[str, int] = {}
    positions: dict[str, tuple[int, int]] = {}
    step_input: list[torch.Tensor] = []  # the input of the current step (one reference only)

    def see(name, module, args, kwargs):
        positions[name] = (positions.get(name, (count[0],))[0], count[0])
        count[0] += 1
        if name not in modules:
            return
        if name not in calls:
            x = layer_input(args, kwargs)
            if step_input and x is step_input[0]:
                steps[-1].append(name)
            else:
                steps.append([name])
                step_input[:] = [x]
        calls[name] = calls.get(name, 0) + 1

    count = [0]  # calls so far, to any of them
    with on_inputs({**(others or {}), **modules}, see), torch.no_grad():
        forward(model, inputs, 0, device)
    return steps, calls, positions


def _observe(items: list, run: Callable[[Any, int], Any], modules: dict[str, nn.Module], step: list[str],
             calls: dict[str, int], config: RoundingConfig) -> dict[str, Any]:
    """run(item, index) over the items (calibration batches, or a chained block's kept inputs), each
    stopped once the step's layers have seen it; the back-end's state per layer."""
    states: dict[str, Any] = {name: None for name in step}
    seen = dict.fromkeys(step, 0)

    def see(name, module, args, kwargs):
        if name in seen:
            x = layer_input(args, kwargs)
            check_finite_input(name, x, config.name)
            states[name] = config.observe(states[name], module, x)
            seen[name] += 1
        elif all(seen[n] >= calls[n] for n in step):
            raise StopForward

    with on_inputs(modules, see):
        for index, item in enumerate(items):
            seen.update(dict.fromkeys(step, 0))
            with torch.no_grad():
                run(item, index)
    return states
