"""What every rounding config is: a back-end's options as a small frozen dataclass, checked once
when it is made (torchao's ``Int4WeightOnlyConfig`` pattern), with what the driver needs to know.

    name         the back-end's name in ROUNDINGS (``--rounding NAME``)
    needs_data   whether it reads calibration inputs (nearest does not)
    sequential   True: a layer's inputs come from the model whose earlier layers already carry their
                 rounded weights and, where the plan quantizes activations, through their calibrated
                 activation quantizers; False: from the float model
    blockwise    True: whole blocks are reconstructed at once (round_model), not layer by layer
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch

from ..errors import RoundingError


@dataclass(frozen=True)
class RoundingConfig:
    name: ClassVar[str]
    needs_data: ClassVar[bool] = True
    sequential: ClassVar[bool] = False
    blockwise: ClassVar[bool] = False

    def round_step(self, layers: dict, states: dict, formats: dict, weight_method: str) -> dict:
        """The rounded weights of one step's layers (they read the same input): each rounded alone
        (``round_layer``), unless a back-end rounds them together."""
        return {name: self.round_layer(layer, states[name], formats[name], weight_method)
                for name, layer in layers.items()}

    def options(self) -> dict[str, Any]:
        """Every option with its value (the defaults filled in)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def changed(self) -> dict[str, Any]:
        """Only the options that differ from their defaults."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != f.default}


def check_finite_input(name: str, x: torch.Tensor, method: str, what: str = "input") -> None:
    """A RoundingError where some of a layer's (or block's) calibration ``what`` values are NaN or infinite: the
    learned roundings fit them and the Hessian of GPTQ sums them, so a few bad samples ruin the rounding without
    a word (where every value is bad, the layer's own error says it saw no finite input)."""
    bad = ~torch.isfinite(x) if x.is_floating_point() else None
    if bad is not None and bool(bad.any()) and not bool(bad.all()):
        raise RoundingError(f"{'block' if what == 'output' else 'layer'} {name!r}: {int(bad.sum()):,} of "
                            f"{x.numel():,} {what} values on the calibration data are NaN or infinite (the model "
                            "computes them for some samples: a sqrt or log of a negative, a division by zero, an "
                            f"overflow); {method} rounding learns from them and cannot use them. Give calibration "
                            "data the model computes finite values for, fix the model, or round with nearest "
                            "(--rounding nearest)")
