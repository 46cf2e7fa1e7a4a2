"""Streaming blocks: a model larger than the accelerator, measured and quantized one block at a time.

    stream_blocks(model, device) -> BlockStream   the model's stack of blocks (mixprec.capture's
        container_blocks: the decoder layers of an LLM, the residual blocks of a CNN) waits in
        CPU memory; everything else (embeddings, norms, lm_head) moves to ``device``. Each block
        comes onto the device when it is called and stays until two others have come (the block
        being run and the next one, fetched ahead on a side stream while the current one computes).
    place(model, device)   model.to(device), or for a streamed model its parts outside the blocks
    device_of(model)       where the model computes (a streamed model's device, else its first parameter's)

The stream stays on the model (``model._mixprec_stream``) until :meth:`BlockStream.close`, so every
later forward pass streams too: the float passes, the forks of an analysis, the guard's plans,
GPTQ's block passes and the quantized model. A block at rest keeps its tensors in CPU memory
(page-locked where the system allows, so a copy to the device does not stop the host); a tensor
changed in place on the device by ``param.copy_`` (GPTQ writing a rounded weight) is copied back
when its block leaves, and a tensor that appeared on the device while the block was there (a
quantized layer swapped in) leaves with it.

Forks of an output metric run block-major on a streamed model (mixprec.sensitivity.outputs): each
block is fetched once per group and runs every candidate's and batch's activations, so the
transfers are one model's worth per group, not one per (candidate, batch).
"""
from __future__ import annotations

import weakref
from collections import OrderedDict
from typing import Iterable

import torch
from torch import nn

from .capture import container_blocks
from .errors import MixprecError
from .groups import quantizable_layers

RESIDENT = 2  # blocks on the device at once: the one running and the one fetched ahead
_STREAMS: "weakref.WeakSet[BlockStream]" = weakref.WeakSet()  # streams open in this process


def _tensors(module: nn.Module) -> Iterable[tuple[nn.Module, str, str]]:
    """(owner, attribute, "p" or "b") of every parameter and buffer of ``module``, each tensor once."""
    seen: set[int] = set()
    for owner in module.modules():
        for kind, table in (("p", owner._parameters), ("b", owner._buffers)):
            for name, tensor in table.items():
                if tensor is not None and id(tensor) not in seen:
                    seen.add(id(tensor))
                    yield owner, name, kind


class BlockStream:
    def __init__(self, model: nn.Module, device: torch.device | str, blocks: list[str] | None = None):
        self.model, self.device = model, _indexed(torch.device(device))
        if blocks is None:
            blocks = container_blocks(model, list(quantizable_layers(model)))
        first = next(iter(model.named_parameters()), (None, None))[0]
        # a block holding the model's first parameter stays on the device: code that asks
        # next(model.parameters()).device (evaluation functions) must find the device
        blocks = [b for b in blocks if first is None or not (first == b or first.startswith(b + "."))]
        if len(blocks) < 2:
            raise MixprecError(f"streaming needs a stack of at least 2 blocks (the nn.Sequential/nn.ModuleList elements "
                               f"that hold the layers); this model has {len(blocks)}: run it without streaming")
        self.blocks = blocks
        self.modules = [model.get_submodule(b) for b in blocks]
        self._index = {id(m): k for k, m in enumerate(self.modules)}
        # on the device: key (a block index, or a copy's module) -> (module, {tensor: entry}), an entry being
        # (the parameter or None, kind, owner, name, its CPU tensor, its version when moved, the device tensor)
        self._resident: OrderedDict[object, tuple[nn.Module, dict]] = OrderedDict()
        self._owner: dict[object, object] = {}  # tensor on the device -> the key that brought it
        self._ready: dict[object, torch.cuda.Event] = {}  # fetched ahead: the event their copies end at
        self._side = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self.fetched_bytes = 0
        self.fetches = 0
        in_blocks = {id(t) for m in self.modules for t in (*m.parameters(), *m.buffers())}
        with torch.no_grad():
            for param in model.parameters():
                if id(param) not in in_blocks:
                    param.data = param.data.to(self.device)
            for owner in model.modules():
                for name, buf in owner._buffers.items():
                    if buf is not None and id(buf) not in in_blocks:
                        owner._buffers[name] = buf.to(self.device)
            for module in self.modules:  # at rest in CPU memory
                for owner, name, kind in _tensors(module):
                    self._rest(owner, name, kind, self._pinned(self._get(owner, name, kind)))
        self._handles = [m.register_forward_pre_hook(self._before) for m in self.modules]
        model._mixprec_stream = self
        _STREAMS.add(self)

    def __deepcopy__(self, memo):  # a copy of the model streams through the same stream
        return self

    @property
    def block_bytes(self) -> list[int]:
        return [sum(t.numel() * t.element_size() for t in (*m.parameters(), *m.buffers())) for m in self.modules]

    def _pinned(self, tensor: torch.Tensor) -> torch.Tensor:
        cpu = tensor.detach().to("cpu")
        if self.device.type != "cuda":
            return cpu
        try:
            return cpu.pin_memory()
        except RuntimeError:  # no page-locked memory to spare: a pageable copy still works
            return cpu

    @staticmethod
    def _get(owner: nn.Module, name: str, kind: str) -> torch.Tensor:
        return (owner._parameters if kind == "p" else owner._buffers)[name]

    @staticmethod
    def _rest(owner: nn.Module, name: str, kind: str, tensor: torch.Tensor) -> None:
        if kind == "p":
            owner._parameters[name].data = tensor
        else:
            owner._buffers[name] = tensor

    def _before(self, module: nn.Module, args) -> None:
        if "forward" in module.__dict__:  # answered from a record (mixprec.sensitivity.blocks): nothing runs
            return
        k = self._index.get(id(module))
        if k is None:  # a copy of a block (a model copy's): its tensors, shared or its own, come for the call
            self.load(("module", id(module)), module)
            return
        self.load(k)
        if k + 1 < len(self.modules):
            self.prefetch(k + 1)

    @staticmethod
    def _ident(owner: nn.Module, name: str, kind: str, tensor: torch.Tensor):
        # a parameter is itself wherever it is shared (a model copy that shares the parameters); a buffer is
        # replaced on each move, so it is known by its place
        return id(tensor) if kind == "p" else (id(owner), name)

    def load(self, key, module: nn.Module | None = None) -> None:
        """Block ``key`` (an index, or a copy's ``module``) on the device, ready for the current stream."""
        if key not in self._resident:
            self._make_room(keep=key)
            module = self.modules[key] if module is None else module
            self._resident[key] = (module, {})
        # also when it is there already: a layer swapped in since its last call may hold tensors in CPU memory
        self._copy_in(key, self._resident[key][0])
        self._resident.move_to_end(key)
        self._wait(key)

    def _wait(self, key) -> None:
        event = self._ready.pop(key, None)
        if event is not None:
            main = torch.cuda.current_stream(self.device)
            main.wait_event(event)
            for obj, kind, _, _, _, _, moved in self._resident[key][1].values():
                moved.record_stream(main)

    def prefetch(self, k: int) -> None:
        """Start copying block ``k`` to the device on the side stream (at once without one)."""
        if k in self._resident:
            return
        self._make_room(keep=k, protect=next(reversed(self._resident), None))
        self._resident[k] = (self.modules[k], {})
        if self._side is None:
            self._copy_in(k, self.modules[k])
            return
        self._side.wait_stream(torch.cuda.current_stream(self.device))  # room made on the main stream first
        with torch.cuda.stream(self._side):
            self._copy_in(k, self.modules[k])
            event = torch.cuda.Event()
            event.record(self._side)
        self._ready[k] = event
        self._resident.move_to_end(k, last=False)  # fetched ahead, not yet used: first to go

    def _copy_in(self, key, module: nn.Module) -> None:
        entries = self._resident[key][1]
        copied = False
        with torch.no_grad():
            for owner, name, kind in _tensors(module):
                held = self._get(owner, name, kind)
                ident = self._ident(owner, name, kind, held)
                before = self._owner.get(ident)
                if before is not None and before != key and before in self._resident:
                    self._wait(before)  # on the device for another key (a copy's call): it is this key's now
                    entries[ident] = self._resident[before][1].pop(ident)
                    self._owner[ident] = key
                    continue
                if held.device == self.device:
                    continue  # made on the device while the block was there (or a CPU device: nothing moves)
                cpu = held.data if kind == "p" else held
                moved = cpu.to(self.device, non_blocking=True)
                self._rest(owner, name, kind, moved)
                # the parameter object itself (a layer swapped in later may hold another under the same name),
                # or for a buffer the tensor put in its place
                entries[ident] = (held if kind == "p" else None, kind, owner, name, cpu,
                                  held._version if kind == "p" else moved._version, moved)
                self._owner[ident] = key
                self.fetched_bytes += cpu.numel() * cpu.element_size()
                copied = True
        if copied:
            self.fetches += 1

    def _make_room(self, keep, protect=None) -> None:
        while len(self._resident) >= RESIDENT:
            victim = next((k for k in self._resident if k not in (keep, protect)), None)
            if victim is None:
                return
            self.evict(victim)

    def evict(self, key) -> None:
        """Block ``key`` back to CPU memory: tensors changed in place copied back, tensors made on the
        device while it was there moved out."""
        held = self._resident.pop(key, None)
        self._ready.pop(key, None)
        if held is None:
            return
        module, entries = held
        for ident in entries:
            self._owner.pop(ident, None)
        if self.device.type == "cpu":
            return
        with torch.no_grad():
            for obj, kind, owner, name, cpu, version, moved in entries.values():
                if kind == "p":
                    if obj.device != self.device:
                        continue
                    if obj._version != version:  # written in place (GPTQ's rounded weight)
                        cpu.copy_(obj.data)
                    obj.data = cpu
                elif owner._buffers.get(name) is moved:  # a buffer put elsewhere since is not this one
                    if moved._version != version:
                        cpu.copy_(moved)
                    owner._buffers[name] = cpu
            for owner, name, kind in _tensors(module):
                t = self._get(owner, name, kind)
                ident = self._ident(owner, name, kind, t)
                if ident not in entries and ident not in self._owner and t.device == self.device:
                    self._rest(owner, name, kind, self._pinned(t))

    def release(self) -> None:
        """Every block back to CPU memory."""
        for key in list(self._resident):
            self.evict(key)

    def close(self) -> None:
        """Stop streaming: the blocks go back to CPU memory and the hooks are removed."""
        self.release()
        for h in self._handles:
            h.remove()
        if getattr(self.model, "_mixprec_stream", None) is self:
            del self.model._mixprec_stream
        _STREAMS.discard(self)


def _indexed(device: torch.device) -> torch.device:
    """``cuda`` as the tensors on it name it (``cuda:0``), so that device comparisons hold."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def stream_of(model: nn.Module) -> BlockStream | None:
    return getattr(model, "_mixprec_stream", None)


def stream_blocks(model: nn.Module, device: torch.device | str, blocks: list[str] | None = None) -> BlockStream:
    """Stream ``model``'s blocks to ``device`` from CPU memory from now on (see the module docstring);
    a model already streamed keeps its stream."""
    existing = stream_of(model)
    if existing is not None:
        if existing.device != _indexed(torch.device(device)):
            raise MixprecError(f"the model already streams to {existing.device}, not {device}")
        return existing
    return BlockStream(model, device, blocks)


def place(model: nn.Module, device: torch.device | str) -> nn.Module:
    """``model`` on ``device``: model.to(device), or for a streamed model only the parts outside its blocks
    (which are already there)."""
    stream = stream_of(model)
    if stream is None:
        return model.to(device)
    if stream.device != _indexed(torch.device(device)):
        raise MixprecError(f"the model streams its blocks to {stream.device}; it cannot run on {device}. "
                           f"Ask for the same device, or call close() on its stream first")
    return model


def placed_copy(model: nn.Module, device: torch.device | str) -> nn.Module:
    """``model`` on ``device`` without moving the caller's model: where its tensors lie elsewhere, a copy whose
    parameters and buffers are made on ``device`` (never a second copy where the model is; ties kept), since
    ``model.to`` would move the caller's own parameters, those of a copy sharing them too. ``model`` itself where
    it is there already, or streams its blocks (place)."""
    target = _indexed(torch.device(device))
    tensors = [*model.parameters(), *model.buffers()]
    if stream_of(model) is not None or all(t.device == target for t in tensors):
        return place(model, device)
    import copy
    if isinstance(model, torch.jit.ScriptModule):  # its deepcopy copies the compiled module whole, memo unread
        return copy.deepcopy(model).to(target)
    memo: dict[int, torch.Tensor] = {}
    for p in model.parameters():
        if id(p) not in memo:
            memo[id(p)] = nn.Parameter(p.detach().to(target), requires_grad=p.requires_grad)
    for b in model.buffers():
        if id(b) not in memo:
            memo[id(b)] = b.detach().to(target)
    return copy.deepcopy(model, memo)


def compute_device(tensor: torch.Tensor) -> torch.device | None:
    """Where to compute on ``tensor`` if not where it is: a tensor in CPU memory while a stream to an
    accelerator is open (a streamed block's weight at rest, or a copy of one) is worked on there."""
    if tensor.device.type != "cpu":
        return None
    for stream in list(_STREAMS):
        if stream.device.type != "cpu":
            return stream.device
    return None


def device_of(model: nn.Module) -> torch.device:
    stream = stream_of(model)
    if stream is not None:
        return stream.device
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")
