"""The on-disk run directory of an analysis: what was measured, with what, and every finished entry.

``run.json`` holds the fingerprint (hashes of the model weights, of the calibration data and
of the settings) and the arguments; ``entries.rank<R>.jsonl`` is an append-only log, one
finished (group, candidate) per line, flushed and fsync'ed, so a Ctrl-C or SIGKILL loses at
most the chunk in flight. A run directory made for another model, data or settings is refused.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable

import torch

from ..errors import MixprecError
from ..plan import write_json_atomic


def hash_tensors(tensors: Iterable[torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(str((tuple(t.shape), str(t.dtype))).encode())
        t = t.detach().cpu().contiguous().reshape(-1)  # 0-dim tensors cannot be viewed as bytes
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
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


class RunStore:
    def __init__(self, directory: str | Path, fingerprint: dict[str, Any], arguments: dict[str, Any] | None = None,
                 rank: int = 0):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.fingerprint = fingerprint
        path = self.directory / "run.json"
        if path.is_file():
            existing = json.loads(path.read_text()).get("fingerprint", {})
            differs = [k for k in ("model", "data", "settings") if existing.get(k) != fingerprint.get(k)]
            if differs:
                raise MixprecError(f"{self.directory} holds an analysis of a different {' and '.join(differs)} "
                                   f"({', '.join(f'{k}: {existing.get(k)!r} there, {fingerprint.get(k)!r} now' for k in differs if k != 'settings')}"
                                   f"{'; settings differ' if 'settings' in differs else ''}); use a new --out "
                                   "directory or delete this one")
        elif rank == 0:
            write_json_atomic(path, {"fingerprint": fingerprint, "arguments": arguments or {}})
        self.log = self.directory / f"entries.rank{rank}.jsonl"

    def done(self) -> dict[tuple[str, str], float]:
        """Every finished entry of every rank; a torn last line (killed mid-write) is ignored."""
        out = {}
        for log in sorted(self.directory.glob("entries.rank*.jsonl")):
            for line in log.read_text().splitlines():
                try:
                    entry = json.loads(line)
                    out[(entry["group"], entry["candidate"])] = float(entry["value"])
                except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                    continue
        return out

    def append(self, entries: dict[tuple[str, str], float]) -> None:
        with self.log.open("a") as f:
            for (group, candidate), value in entries.items():
                f.write(json.dumps({"group": group, "candidate": candidate,
                                    "value": value if math.isfinite(value) else "inf"}) + "\n")
            f.flush()
            os.fsync(f.fileno())


def read_arguments(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / "run.json"
    if not path.is_file():
        raise MixprecError(f"{directory} is not an analysis run directory (no run.json); start one with "
                           "`mixprec analyze --model ... --out DIR`")
    return json.loads(path.read_text()).get("arguments", {})
