"""Nearest rounding: every weight to the closest point of its grid (swap.nearest_weight); needs no data."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .config import RoundingConfig


@dataclass(frozen=True)
class Nearest(RoundingConfig):
    """Round every weight to the nearest level of its grid (the default; no calibration data needed)."""
    name: ClassVar[str] = "nearest"
    needs_data: ClassVar[bool] = False
