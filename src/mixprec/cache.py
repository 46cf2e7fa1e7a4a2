"""Where mixprec keeps things it computed once (trained demo weights, decoded datasets)."""
from __future__ import annotations

import os
from pathlib import Path

from .atomic import save_torch_atomic


def cache_dir() -> Path:
    path = Path(os.environ.get("MIXPREC_CACHE", Path.home() / ".cache" / "mixprec"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_atomic(obj, path: Path) -> None:
    """torch.save through a temporary file, so an interrupted write never leaves a broken cache."""
    save_torch_atomic(obj, path)
