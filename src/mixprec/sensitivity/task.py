"""task (AIMET AMP's phase-1 eval callback, Pandey et al. 2023, sec. 3.1): the drop of the user's
own evaluation metric with only this group quantized, against the float model.

    S[g, c] = E(float) - E(group g on c)   if higher is better, else   E(group g on c) - E(float)

The drop is kept raw, so it can be negative (quantization noise sometimes helps the metric); the
solvers take negative sensitivities. Costs one full evaluation per (group, candidate), plus one
of the float model per analysis; fp32 leaves the group float, so its drop is 0 without evaluating.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

from ..errors import MixprecError
from ..evaluation import EvalResult, evaluate_model
from . import Metric
from .context import MeasureContext, quantized_group


@dataclass(frozen=True)
class Task(Metric):
    name = "task"
    minimum = None  # quantization can improve the metric: a negative drop
    uses_evaluate = True  # the evaluation function brings its own labelled data: needs_labels stays False

    def prepare(self, ctx: MeasureContext) -> EvalResult:
        """The float model's evaluation, once per analysis."""
        if ctx.evaluate is None:
            raise MixprecError("the task metric needs --eval (a function model -> metric, e.g. file.py:evaluate) "
                               "to measure the drop of your own metric; or use a label-free metric such as "
                               "--metric sqnr")
        result = evaluate_model(ctx.evaluate, ctx.model)
        if not math.isfinite(result.value):
            raise MixprecError(f"the float model evaluates to {result}; the task metric measures drops from a "
                               "finite value: check the --eval function on the float model")
        return result

    def measure(self, ctx: MeasureContext, group_indices: list[int], runner,
                state: EvalResult) -> dict[tuple[int, int], float]:
        reference = state
        values = {}
        for g in group_indices:
            group = ctx.groups.groups[g]
            for c, cand in enumerate(ctx.candidates):
                if cand.weight is None and cand.activation is None:
                    values[(g, c)] = 0.0
                    continue
                with quantized_group(ctx.model, ctx.quantized_modules(group, cand)) as model:
                    quantized = evaluate_model(ctx.evaluate, model).value
                drop = reference.value - quantized if reference.higher_is_better else quantized - reference.value
                if math.isnan(drop):
                    warnings.warn(f"evaluation of group {group.name} at {cand.name} is NaN; recorded as +inf",
                                  RuntimeWarning, stacklevel=2)
                    drop = math.inf
                values[(g, c)] = drop
        return values

    def metadata(self, state: EvalResult) -> dict[str, Any]:
        return {"task_float_value": state.value}
