"""around: sensitivity at an operating point (the in-context measurement of ExLlamaV3). The model
is quantized by a base plan (every group on ``base``, pinned groups on their pin); each group is
moved alone to each candidate, the rest staying at the base, and the change of a label-free output
divergence from the float model is recorded:

    S[g, c] = D(base with group g on c) - D(base)        (D: kl or sqnr, mixprec.sensitivity.divergence)

S[g, base] = 0; moving a group up gives a negative entry, down a positive one. Measured around the
plan the solver will land near, the entries add up far better than single-group damage measured
around the float model, which misleads the solver most where plans mix 2/3-bit and 8-bit groups.
The moved group's activation quantizer is calibrated on its inputs in the base model, as apply
calibrates it (every weight quantized, activations float during calibration). Cost: one forward over the calibration data per (group, candidate), plus the
base model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from ..progress import tqdm

from ..batches import run_model
from ..candidates import parse_candidate
from ..capture import layer_input, on_inputs
from ..errors import MixprecError
from ..formats import IntFormat
from ..plan import Plan
from ..quantizers import ACTIVATION_SAMPLES, ActivationQuantizer, real_tokens
from ..swap import planned_model, quantized_layers
from . import Metric
from .context import MeasureContext, quantized_group
from .divergence import OutputDivergence

_PROBE = IntFormat(8, symmetric=False)  # observing keeps raw min/max and samples, whatever the format


@dataclass
class _State:
    quantized: torch.nn.Module  # the model at the base plan
    observers: dict[str, ActivationQuantizer]  # each layer's input in the base model
    divergence: OutputDivergence
    base_value: float
    base_of: dict[str, str]  # group -> its base candidate (pins keep theirs)


@dataclass(frozen=True)
class Around(Metric):
    name = "around"
    minimum = None  # a move up from the base lowers the divergence
    base: str = "w4a8"
    divergence: str = "auto"

    def __post_init__(self):
        try:
            parse_candidate(self.base)
        except MixprecError as exc:
            raise MixprecError(f"the around metric's base {self.base!r} is not a candidate ({exc}); e.g. "
                               "Around(base='w4a8')") from None
        if self.divergence not in ("auto", "kl", "sqnr"):
            raise MixprecError(f"the around metric's divergence must be auto, kl or sqnr; got {self.divergence!r}")

    def prepare(self, ctx: MeasureContext) -> _State:
        base = parse_candidate(self.base).name
        plan = Plan.uniform(ctx.groups, base)
        weights = None
        if ctx.rounding is not None:  # rounding-aware: the base's weights rounded as the moved groups' are
            wanted = {name: parse_candidate(c) for name, c in plan.layer_candidates().items()}
            for cand in set(wanted.values()):
                ctx.round_layers([n for n, c in wanted.items() if c == cand], [cand])
            weights = {name: ctx.quantized_weight(name, c) for name, c in wanted.items() if ctx.rounds(name, c)}
        quantized = planned_model(ctx.model, plan, ctx.data, ctx.weight_method, ctx.activation_method, weights)
        layers = quantized_layers(quantized)
        observers = {name: ActivationQuantizer(_PROBE, ctx.activation_method, max_samples=ACTIVATION_SAMPLES)
                     for name in layers}
        # a moved group's input quantizer is calibrated as apply calibrates it: on the pass with every
        # weight quantized and every activation still float
        saved = {name: layer.input_quantizer for name, layer in layers.items()}
        try:
            for layer in layers.values():
                layer.input_quantizer = torch.nn.Identity()
            with on_inputs(layers, lambda name, m, args, kwargs: observers[name]._observe(layer_input(args, kwargs))):
                with torch.no_grad():
                    for i in range(len(ctx.data)):
                        with real_tokens(ctx.inputs(i)):
                            run_model(quantized, ctx.inputs(i))
        finally:
            for name, layer in layers.items():
                layer.input_quantizer = saved[name]
        # a table needs small differences to show: auto is kl for classifiers here, not top-1 agreement
        divergence = OutputDivergence(ctx.model, ctx.data, "auto-smooth" if self.divergence == "auto" else self.divergence)
        return _State(quantized, observers, divergence, divergence.measure(quantized), dict(plan.assignments))

    def measure(self, ctx: MeasureContext, group_indices: list[int], runner=None,
                state: _State | None = None) -> dict[tuple[int, int], float]:
        values = {}
        todo = [(g, c) for g in group_indices for c in range(len(ctx.candidates))]
        for g, c in tqdm(todo, desc="moving groups", leave=False, disable=not ctx.nested_progress or len(todo) < 8):
            group, cand = ctx.groups.groups[g], ctx.candidates[c]
            if cand.name == state.base_of[group.name]:
                values[(g, c)] = 0.0
                continue
            with quantized_group(state.quantized, ctx.quantized_modules(group, cand, state.observers)):
                values[(g, c)] = state.divergence.measure(state.quantized) - state.base_value
        return values

    def metadata(self, state: _State | None) -> dict[str, Any]:
        if state is None:
            return {}
        return {"around": parse_candidate(self.base).name, "divergence": state.divergence.kind,
                "base_divergence": state.base_value}
