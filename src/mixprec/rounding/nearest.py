"""Nearest rounding: every weight to the closest point of its grid (quantize_weight); needs no data."""
from __future__ import annotations

import torch
from torch import nn

from ..formats import IntFormat
from ..quantizers import quantize_weight

NEEDS_DATA = False
SEQUENTIAL = False
OPTIONS: dict = {}


def check_options(options: dict) -> dict:
    return dict(options)


def observe(state, layer: nn.Module, x: torch.Tensor):
    return state


def round_layer(layer: nn.Module, state, fmt: IntFormat, weight_method: str) -> torch.Tensor:
    return quantize_weight(layer.weight.detach(), fmt, weight_method)
