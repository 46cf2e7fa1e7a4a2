"""Fingerprints of what an analysis measured with: hashes of the model weights and of the
calibration data (the run directory, mixprec.run_directory, keeps them in run.json)."""
from __future__ import annotations

import hashlib
from typing import Any, Iterable

import torch


def hash_tensors(tensors: Iterable[torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(str((tuple(t.shape), str(t.dtype))).encode())
        t = t.detach().cpu().contiguous().reshape(-1)  # 0-dim tensors cannot be viewed as bytes
        # the bytes in place (a memoryview, not a copy): the same digest at about twice the speed
        digest.update(memoryview(t.view(torch.uint8).numpy()) if t.numel() else b"")
    return digest.hexdigest()[:16]


def flatten_tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for k in sorted(obj) for t in flatten_tensors(obj[k])]
    if isinstance(obj, (tuple, list)):
        return [t for v in obj for t in flatten_tensors(v)]
    return []


def model_hash(model: torch.nn.Module) -> str:
    return hash_tensors(t for _, t in sorted(model.state_dict().items()))


def data_hash(data: list) -> str:
    return hash_tensors(flatten_tensors(data))
