"""One forward pass of a model over a calibration batch, which a hook may end early."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..batches import describe_shape, run_model, to_device
from ..errors import ModelError


class StopForward(BaseException):
    """Raised by a hook to end a forward pass once it has what it needs (BaseException: model
    code that catches Exception must not swallow it)."""


def forward(model: nn.Module, inputs: Any, index: int, device: torch.device) -> Any:
    """The model's output on calibration batch ``index``, or None where a hook stopped the pass.

    Gradients follow the caller's grad mode."""
    try:
        return run_model(model, to_device(inputs, device))
    except StopForward:
        return None
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        raise ModelError(f"the model failed on calibration batch {index} of shape {describe_shape(inputs)}: "
                         f"{str(exc).splitlines()[0]}") from exc
