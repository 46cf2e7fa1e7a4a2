"""Fingerprints of what an analysis measured with: hashes of the model weights and of the
calibration data (the run directory, mixprec.run_directory, keeps them in run.json).

A model's hash is the sha256 of its tensors' own sha256 digests (each over the tensor's shape, dtype
and bytes), in the order of their names: the digests are taken on several threads at once (hashlib
releases the interpreter lock), 64 MB at a time from an accelerator, where one sha256 over all the
bytes in a row ran at about 1.3 GB/s, some 12 s for an 8B model in bfloat16 at each of analyze, the
guard and quantize. Runs written before recorded that single hash: a model is still recognised by it
(``recorded``)."""
from __future__ import annotations

import hashlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable

import torch

HASH_CHUNK_BYTES = 64 << 20  # read from an accelerator this many bytes at a time


def hash_tensors(tensors: Iterable[torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(str((tuple(t.shape), str(t.dtype))).encode())
        t = t.detach().cpu().contiguous().reshape(-1)  # 0-dim tensors cannot be viewed as bytes
        # the bytes in place (a memoryview, not a copy): the same digest at about twice the speed
        digest.update(memoryview(t.view(torch.uint8).numpy()) if t.numel() else b"")
    return digest.hexdigest()[:16]


def _tensor_digest(t: torch.Tensor) -> bytes:
    digest = hashlib.sha256(str((tuple(t.shape), str(t.dtype))).encode())
    flat = t.detach().contiguous().reshape(-1)
    if flat.numel():
        raw = flat.view(torch.uint8)
        for i in range(0, raw.numel(), HASH_CHUNK_BYTES):
            part = raw[i:i + HASH_CHUNK_BYTES]
            staging = _staging() if part.device.type == "cuda" else None
            if staging is not None:  # page-locked: the copy runs at the bus's speed, not pageable memory's
                part = staging[:part.numel()].copy_(part)
            digest.update(memoryview(part.cpu().numpy()))
    return digest.digest()


_local = threading.local()


def _staging() -> torch.Tensor | None:
    """This thread's page-locked buffer for chunks read from an accelerator (None where pinning fails)."""
    buffer = getattr(_local, "buffer", False)
    if buffer is False or (buffer is not None and buffer.numel() < HASH_CHUNK_BYTES):
        try:
            buffer = torch.empty(HASH_CHUNK_BYTES, dtype=torch.uint8, pin_memory=True)
        except RuntimeError:
            buffer = None
        _local.buffer = buffer
    return buffer


def _threads() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def model_hash(model: torch.nn.Module, recorded: str | None = None) -> str:
    """The model's fingerprint; ``recorded``: the one a run holds, returned when it is this model's
    hash as runs written before the per-tensor scheme recorded it."""
    tensors = [t for _, t in sorted(model.state_dict(keep_vars=True).items())]
    with ThreadPoolExecutor(_threads()) as pool:
        digests = list(pool.map(_tensor_digest, tensors))
    value = hashlib.sha256(b"".join(digests)).hexdigest()[:16]
    if recorded and recorded != value and hash_tensors(t for t in tensors) == recorded:
        return recorded
    return value


# packages whose module classes a model is built of, whose code comes with their version: their classes count by
# name (and the model's repr by their settings), a user's own classes by their code too
_LIBRARY_PACKAGES = ("torch", "transformers", "mixprec", "torchvision", "timm")


def structure_hash(model: torch.nn.Module) -> str:
    """The fingerprint of what the model computes besides its weights: its module tree as ``repr`` prints it, the
    code of every module class of the user's own (its syntax tree: comments and layout do not count), and for a
    traced model (torch.fx) its generated forward, or a TorchScript model's code. A run measured with one forward
    is not reused for another with the same weights (a bug fixed in forward, an activation changed)."""
    import ast
    import inspect
    import textwrap
    digest = hashlib.sha256()
    code = getattr(model, "code", None)  # a torch.fx GraphModule's forward, or a TorchScript model's
    if isinstance(code, str):
        digest.update(code.encode())
    try:
        digest.update(repr(model).encode())
    except Exception:  # a module whose extra_repr fails: its classes still count
        pass

    def name(cls: type) -> str:  # a user's file is imported under a name of its own each time: its classes by name
        library = cls.__module__.split(".")[0] in _LIBRARY_PACKAGES
        return f"{cls.__module__}.{cls.__qualname__}" if library else cls.__qualname__
    # every module's class and the classes it inherits from (a forward a subclass does not override is its base's)
    classes = {base for m in model.modules() for base in type(m).__mro__ if base is not object}
    for cls in sorted(classes, key=name):
        digest.update(name(cls).encode())
        if cls.__module__.split(".")[0] in _LIBRARY_PACKAGES:
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
        except (OSError, TypeError, SyntaxError, IndentationError):  # defined where no source is kept
            continue
        digest.update(ast.dump(tree).encode())
    return digest.hexdigest()[:16]


def flatten_tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for k in sorted(obj) for t in flatten_tensors(obj[k])]
    if isinstance(obj, (tuple, list)):
        return [t for v in obj for t in flatten_tensors(v)]
    return []


def data_hash(data: list) -> str:
    return hash_tensors(flatten_tensors(data))
