"""Measure one-group-quantized outputs from the group's block onward, for models torch.fx cannot trace.

Most deep models are a stack of blocks called one after the other (the decoder or encoder layers of
a transformer, the residual blocks of a ResNet stage): the elements of an ``nn.Sequential`` or
``nn.ModuleList`` that hold quantized layers. One float pass per calibration batch records every
block's output. A fork for a group whose first layer runs inside block k (or after it) then runs the
whole model with blocks 0..k-1 answering from that record instead of computing: their ``forward``
returns a copy of the recorded output, so the model's own code between and after the blocks runs
unchanged and block k sees exactly its float input. Only the layers of blocks k.. (and those
outside every block) compute, so a table costs about 1 + sum_g C * (1 - blocks before g's) forward-
equivalents per batch instead of G * C, and equals the naive table (the same operations on the
same values).

The record holds every block's output of every batch (the memory of one activation per block and
batch), in CPU memory when the model runs on an accelerator: a fork fetches one block's output per
batch, and the accelerator keeps room for the model. Blocks must each be called once per forward, in
one order, or the runner falls back to one full forward per entry.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import nn

from ..batches import run_model
from ..capture import StopForward, container_blocks, detach, first_tensor, map_tensors, replace_first

class NotBlocked(Exception):
    pass


class Away:
    """A recorded tensor kept in CPU memory, and the device it goes back to."""
    __slots__ = ("tensor", "device")

    def __init__(self, tensor: torch.Tensor):
        self.device = tensor.device
        self.tensor = tensor.to("cpu")
        try:  # page-locked: the copy back does not stop the host while the device works
            self.tensor = self.tensor.pin_memory()
        except RuntimeError:
            pass


def _park(value: Any, memo: dict | None = None) -> Any:
    """A block's detached output for the record: tensors on an accelerator move to CPU memory (each
    tensor once where ``memo`` is given: the arguments every block shares)."""
    def away(t):
        if t.device.type == "cpu":
            return t
        if memo is None:
            return Away(t)
        if id(t) not in memo:
            memo[id(t)] = (t, Away(t))  # the tensor kept alive so that its id stays its own
        return memo[id(t)][1]
    return map_tensors(value, away)


def fetch(t: torch.Tensor | Away) -> torch.Tensor:
    if isinstance(t, Away):  # asynchronous from page-locked memory; the record is never written again
        # copy=True: a record kept on the device it returns to (CPU) would otherwise come back as itself
        return t.tensor.to(t.device, non_blocking=t.tensor.is_pinned(), copy=True)
    return t.clone()


def _copy(value: Any) -> Any:
    """A copy of a recorded output on its own device, so that in-place code after a block cannot change
    the record."""
    return map_tensors(value, fetch, (torch.Tensor, Away))


class BlockForward:
    def __init__(self, model: nn.Module, layer_macs: dict[str, int]):
        if isinstance(model, torch.jit.ScriptModule):
            raise NotBlocked("a TorchScript model's blocks cannot be replaced")
        self.model = model
        self.blocks = container_blocks(model, list(layer_macs))
        if len(self.blocks) < 2:
            raise NotBlocked("nor do the quantized layers sit in a stack of two or more blocks (the elements of an "
                             "nn.Sequential or nn.ModuleList), whose float outputs could be shared instead")
        self.modules = [model.get_submodule(b) for b in self.blocks]
        # MACs inside each block; a stubbed block's layers do not run
        self.block_macs = [sum(m for layer, m in layer_macs.items() if layer == b or layer.startswith(b + "."))
                           for b in self.blocks]
        self.full_macs = sum(layer_macs.values())
        self.layer_block = {layer: next((k for k, b in enumerate(self.blocks)
                                         if layer == b or layer.startswith(b + ".")), None) for layer in layer_macs}
        self._outputs: dict[int, list[Any]] = {}  # batch -> output of every block, in call order
        # streamed models (mixprec.streaming): batch -> every block's call but its first input, and whether
        # each block's first input was the previous block's output on every batch (a chain)
        self.record_calls = False
        self._calls: dict[int, list[Any]] = {}
        self.chained = True
        self.unchained_reason = ""
        self._first_calls: dict[str, int] | None = None  # layer -> event index of its first call (first batch)
        self._block_ends: list[int] = []

    @torch.no_grad()
    def float_pass(self, batch: int, inputs: Any) -> Any:
        """The float model's output on ``inputs``, recording every block's output for ``batch``."""
        outputs: list[Any] = [None] * len(self.blocks)
        calls = [0] * len(self.blocks)
        order: list[int] = []
        events: list[tuple[str, Any]] = []  # ("block_end", k) and ("layer", name), in call order
        first_batch = self._first_calls is None
        handles = []

        raw: list[Any] = [None] * len(self.blocks)
        block_calls: list[Any] = [None] * len(self.blocks)
        memo: dict = {}

        def on_output(k):
            def hook(module, args, output):
                calls[k] += 1
                order.append(k)
                outputs[k] = _park(detach(output))
                events.append(("block_end", k))
                if self.record_calls:
                    raw[k] = first_tensor(output)
            return hook

        def on_call(k):
            def hook(module, args, kwargs):
                first = args[0] if args else next(iter(kwargs.values()), None)
                if k > 0 and first is not raw[k - 1] and self.chained:
                    self.chained = False
                    self.unchained_reason = (f"block {self.blocks[k]}'s first input is not block "
                                             f"{self.blocks[k - 1]}'s output")
                rest = (args[1:], kwargs) if args else ((), dict(list(kwargs.items())[1:]))
                block_calls[k] = (bool(args), next(iter(kwargs), None) if not args else None,
                                  _park(detach(rest), memo))
            return hook

        for k, module in enumerate(self.modules):
            handles.append(module.register_forward_hook(on_output(k)))
            if self.record_calls:
                handles.append(module.register_forward_pre_hook(on_call(k), with_kwargs=True))
        if first_batch:
            for name in self.layer_block:
                handles.append(self.model.get_submodule(name).register_forward_pre_hook(
                    lambda m, a, name=name: events.append(("layer", name))))
        try:
            out = run_model(self.model, inputs)
        finally:
            for h in handles:
                h.remove()
        if calls != [1] * len(self.blocks) or order != list(range(len(self.blocks))):
            raise NotBlocked("the blocks are not each called once, in order, per forward "
                             f"({dict(zip(self.blocks, calls))})")
        if first_batch:
            first: dict[str, int] = {}
            for i, (kind, what) in enumerate(events):
                if kind == "layer":
                    first.setdefault(what, i)
                else:
                    self._block_ends.append(i)
            self._first_calls = first
        self._outputs[batch] = outputs
        if self.record_calls:
            self._calls[batch] = block_calls
        return out

    def block_call(self, batch: int, k: int, first: torch.Tensor) -> tuple[tuple, dict]:
        """(args, kwargs) of block ``k``'s call on ``batch``, with ``first`` as its first input (the
        previous block's output in a fork): the rest as the float pass called it."""
        positional, key, rest = self._calls[batch][k]
        args, kwargs = map_tensors(rest, fetch, (torch.Tensor, Away))
        if positional:
            return (first, *args), kwargs
        return (), {key: first, **kwargs}

    def capture_call(self, batch: int, k: int, inputs: Any) -> tuple[tuple, dict]:
        """(args, kwargs) the model passes to block ``k`` on ``inputs``, blocks 0..k-1 answering from the
        record of ``batch``: the model's code up to block k runs, no block computes."""
        seen: list = []

        def stop(*args, **kwargs):
            seen.append((args, kwargs))
            raise StopForward

        module = self.modules[k]
        with self.skipping(batch, k):
            module.forward = stop
            try:
                run_model(self.model, inputs)
            except StopForward:
                pass
            finally:
                del module.forward
        if not seen:
            raise NotBlocked(f"the model did not call block {self.blocks[k]}")
        return seen[0]

    def fork_block(self, layers: tuple[str, ...]) -> int:
        """How many blocks finish before the first of ``layers`` runs (the blocks a fork may skip)."""
        called = [self._first_calls[l] for l in layers if l in self._first_calls]
        if not called:
            return 0  # never called: nothing to skip safely
        start = min(called)
        return sum(1 for end in self._block_ends if end < start)

    def cost(self, skipped: int) -> float:
        """Forward-equivalents of one fork that skips the first ``skipped`` blocks."""
        if self.full_macs <= 0:
            return 1.0
        return (self.full_macs - sum(self.block_macs[:skipped])) / self.full_macs

    @contextmanager
    def skipping(self, batch: int, skipped: int, last: Any = None) -> Iterator[None]:
        """Blocks 0..skipped-1 return their recorded float outputs on ``batch`` instead of computing;
        ``last``: the first tensor block skipped-1 returns instead of its recorded one (a fork's)."""
        outputs = self._outputs[batch]
        patched = []
        try:
            for k in range(skipped):
                module = self.modules[k]
                if last is not None and k == skipped - 1:
                    module.forward = lambda *args, _out=outputs[k], **kwargs: replace_first(_copy(_out), last)
                else:
                    module.forward = lambda *args, _out=outputs[k], **kwargs: _copy(_out)
                patched.append(module)
            yield
        finally:
            for module in patched:
                del module.forward

    def forget(self, batch: int) -> None:
        self._outputs.pop(batch, None)
        self._calls.pop(batch, None)
