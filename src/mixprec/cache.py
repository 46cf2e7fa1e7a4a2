"""Where mixprec keeps things it computed once (trained demo weights, decoded datasets)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .atomic import save_torch_atomic


def cache_dir() -> Path:
    path = Path(os.environ.get("MIXPREC_CACHE", Path.home() / ".cache" / "mixprec"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_atomic(obj, path: Path) -> None:
    """torch.save through a temporary file, so an interrupted write never leaves a broken cache."""
    save_torch_atomic(obj, path)


def trained(name: str, model: nn.Module, train: Callable[[], nn.Module]) -> nn.Module:
    """``model`` (in eval mode) with the weights cached as ``name`` in the cache folder; where there are none, or
    the file is damaged, the model ``train()`` makes, its weights cached for the next call."""
    path = cache_dir() / name
    if path.is_file():
        try:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return model.eval()
        except (RuntimeError, EOFError):
            path.unlink()  # a damaged cache is rebuilt
    model = train()
    save_atomic(model.state_dict(), path)
    return model.eval()
