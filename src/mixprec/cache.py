"""Where mixprec keeps things it computed once (trained demo weights, decoded datasets)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch


_UMASK = os.umask(0)
os.umask(_UMASK)


def cache_dir() -> Path:
    path = Path(os.environ.get("MIXPREC_CACHE", Path.home() / ".cache" / "mixprec"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_atomic(obj, path: Path) -> None:
    """torch.save through a temporary file, so an interrupted write never leaves a broken cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are meant to be shared like any new file
    os.close(fd)
    torch.save(obj, tmp)
    os.replace(tmp, path)
