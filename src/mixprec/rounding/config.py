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
