"""A chain of blocks: consecutive blocks (brecq.find_blocks) where each one's input is the previous
one's output, and their other arguments are the very same objects (the layers of a transformer, a
stage of residual blocks). Along a chain the layer-wise back-ends run one block at a time on the
block inputs they keep, instead of running the model from its start for every step: a model of L
blocks costs about one pass over the calibration data plus a few block passes per block, not L/2
passes.

    find_chain(model, first batch, layers) -> {block: its layers} in call order, or {} where the
        model does not chain on the first batch (then the step-by-step passes are used)
    next_inputs(block, inputs) -> the next block's inputs: this block's output in place of the
        first argument, the rest unchanged

A chain is only taken where every other argument is a tensor, a number, a string or None (no
cache object that a second run of the block would change), each chained block runs once per
pass, and the step layers inside them once per block call.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from ..capture import StopForward, first_tensor
from . import brecq

_PLAIN = (torch.Tensor, type(None), bool, int, float, str)


def _plain(value: Any) -> bool:
    if isinstance(value, dict):
        return all(_plain(v) for v in value.values())
    if isinstance(value, (tuple, list)):
        return all(_plain(v) for v in value)
    return isinstance(value, _PLAIN)


def find_chain(model: nn.Module, inputs: Any, layers: list[str],
               run: Callable[[nn.Module, Any, int], Any]) -> dict[str, list[str]]:
    blocks = {b: m for b, m in brecq.find_blocks(model, layers).items() if m != [b]}
    if len(blocks) < 2:
        return {}
    log: list[list] = []  # [block, args, kwargs, output]

    def pre(name):
        def hook(module, args, kwargs):
            log.append([name, args, kwargs, None])
        return hook

    def post(name):
        def hook(module, args, kwargs, output):
            if log and log[-1][0] == name:
                log[-1][3] = output
        return hook

    handles = []
    for name in blocks:
        module = model.get_submodule(name)
        handles += [module.register_forward_pre_hook(pre(name), with_kwargs=True),
                    module.register_forward_hook(post(name), with_kwargs=True)]
    try:
        with torch.no_grad():
            run(model, inputs, 0)
    finally:
        for h in handles:
            h.remove()
    order = [entry[0] for entry in log]
    if sorted(order) != sorted(blocks) or not all(_plain(e[1]) and _plain(e[2]) for e in log):
        return {}
    for (_, args0, kwargs0, out0), (_, args1, kwargs1, _) in zip(log, log[1:]):
        if (not args1 or out0 is None or args1[0] is not first_tensor(out0) or len(args1) != len(args0)
                or any(a is not b for a, b in zip(args1[1:], args0[1:]))
                or kwargs1.keys() != kwargs0.keys() or any(kwargs1[k] is not kwargs0[k] for k in kwargs0)):
            return {}
    return {name: blocks[name] for name in order}


def run_block(module: nn.Module, inputs: tuple) -> Any:
    """The block on its kept (args, kwargs), or None where a hook stopped it."""
    args, kwargs = inputs
    try:
        return module(*args, **kwargs)
    except StopForward:
        return None


def next_inputs(module: nn.Module, inputs: list) -> list:
    """The next block's kept inputs: this block's output as the first argument, the rest unchanged."""
    out = []
    with torch.no_grad():
        for args, kwargs in inputs:
            result = first_tensor(run_block(module, (args, kwargs))).detach()
            out.append(((result,) + tuple(args[1:]), kwargs))
    return out
