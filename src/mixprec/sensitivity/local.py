"""local: the noise each layer of the group adds to its own output, on its float input, relative
to that output's energy; for models too big to run whole once per (group, candidate).

    S[g, c] = sum_{layers of g, batches} ||L_c(x) - L(x)||^2 / sum ||L(x)||^2    (x: L's float input)

L_c is the layer with quantized weight and quantized input (ctx.quantized_modules). Per chunk, one
float pass per batch; each layer's input is used inside its forward hook and dropped at once, so
memory stays that of one float forward, and torch.fx is not needed. Unlike sqnr, the metric does
not see how the error grows (or fades) through the rest of the network.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..batches import run_model
from . import Metric
from .context import MeasureContext
from .outputs import ratio_values


@dataclass(frozen=True)
class Local(Metric):
    name = "local"

    def measure(self, ctx: MeasureContext, group_indices: list[int], runner=None,
                state: None = None) -> dict[tuple[int, int], float]:
        sums = {(g, c): [0.0, 0.0] for g in group_indices for c in range(len(ctx.candidates))}
        replacements: dict[str, list] = {}  # layer -> [((g, c), quantized layer)] for the chunk's layers only
        for g in group_indices:
            for c, cand in enumerate(ctx.candidates):
                for layer, module in ctx.quantized_modules(ctx.groups.groups[g], cand).items():
                    replacements.setdefault(layer, []).append(((g, c), module))
        float_layers = {name: ctx.model.get_submodule(name) for name in replacements}

        def hook(name: str):
            def record(module, args, output):
                # A replacement wraps a shallow copy of the float layer, which shares this hook: skip its calls.
                if module is not float_layers[name]:
                    return
                ref = output.float()
                signal = float(ref.pow(2).sum())
                for key, quantized in replacements[name]:
                    sums[key][0] += float((quantized(*args).float() - ref).pow(2).sum())
                    sums[key][1] += signal
            return record

        handles = [layer.register_forward_hook(hook(name)) for name, layer in float_layers.items()]
        try:
            with torch.no_grad():
                for b in range(len(ctx.data)):
                    run_model(ctx.model, ctx.inputs(b))
        finally:
            for h in handles:
                h.remove()
        return ratio_values(ctx, sums, "layer output")
