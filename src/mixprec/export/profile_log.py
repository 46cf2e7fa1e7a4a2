"""What an interrupted ``profile`` keeps, so that the same command again times only what is missing.

Everything a timing depends on (the model's weights and code, the calibration data, the example's shape, the
candidates, the target and the timing settings, ONNX Runtime's version) makes the key of a log in the cache's
``profile/`` folder; each measurement is appended to it (one JSON line, flushed) as soon as it is made:

- ``graph-<key>/``: the uniform graphs of the ``graph`` method (one ONNX file per candidate, with its layers'
  kernel times from ONNX Runtime's profiler) and the random mixed plans timed as checks;
- ``layers-<key>.jsonl``: each layer's timing at each candidate (``layers`` method), the sessions' overheads and
  the whole-model timings;
- ``around-<key>.jsonl``: each move timed around a base (``--around``).

A finished profile removes its logs (its result is the table the caller saves); an interrupted one leaves them
for the next run. A torn line (a kill during an append) is skipped and measured again.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from ..errors import MixprecError


def profile_keys(model, batches: list, example: Any, names: list[str], whats: list[str], target: str, rows: int,
                 threads: int | None, repeats: int, weight_method: str, activation_method: str,
                 decode: int | None) -> dict[str, str]:
    """what -> a short hash of everything the timings of ``what`` (a method, or the base of --around) depend on;
    the model's weights and the data are hashed once for all of them (an LLM's weights take seconds)."""
    import onnxruntime

    from ..batches import describe_shape
    from ..sensitivity.store import data_hash, model_hash, structure_hash
    hashes = [model_hash(model), structure_hash(model), data_hash(list(batches)), describe_shape(example)]
    keys = {}
    for what in whats:
        key = json.dumps([*hashes, names, what, target, rows, threads, repeats, weight_method, activation_method,
                          decode, onnxruntime.__version__], default=str)
        keys[what] = hashlib.sha256(key.encode()).hexdigest()[:20]
    return keys


def profile_folder() -> Path:
    from ..cache import cache_dir
    folder = cache_dir() / "profile"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class ProfileLog:
    """The records of one profile's log at ``path`` (None: nothing is kept); ``files``: a folder of the log's
    own (the graphs it times), removed with it."""

    def __init__(self, path: Path | None, files: Path | None = None):
        from ..run_directory import read_jsonl
        self.path, self.files = path, files
        if files is not None:
            files.mkdir(parents=True, exist_ok=True)
        self.records = read_jsonl(path) if path is not None else []

    def find(self, **match: Any) -> dict | None:
        """The last record whose items include ``match``."""
        for record in reversed(self.records):
            if all(record.get(k) == v for k, v in match.items()):
                return record
        return None

    def add(self, record: dict) -> None:
        """Append ``record``; a log that cannot be written (a full disk) stops logging: the profile goes on."""
        from ..run_directory import append_jsonl
        self.records.append(record)
        if self.path is None:
            return
        try:
            append_jsonl(self.path, [record])
        except (OSError, MixprecError):
            self.path = None

    def remove(self) -> None:
        """The profile finished: its log and files are no longer needed."""
        if self.path is not None:
            self.path.unlink(missing_ok=True)
        if self.files is not None:
            shutil.rmtree(self.files, ignore_errors=True)
        self.path = None
