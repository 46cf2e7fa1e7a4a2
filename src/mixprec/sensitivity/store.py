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
