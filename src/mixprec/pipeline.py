"""The quantized model a plan makes, priced and evaluated; and the one-call pipeline.

    result = quantize(model, data, budget="bops=w4a8", evaluate=evaluate)   # analyze -> solve -> apply
    result = quantize_plan(model, plan, data, groups, evaluate=evaluate)    # a plan you already have
    result.model, result.plan, result.costs, result.evaluation; result.save("out/")
"""
from __future__ import annotations

import copy
import math
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

from . import __version__
from .atomic import check_output_dir, save_torch_atomic
from .batches import as_batches
from .analysis import DEFAULT_CANDIDATES, analyze
from .streaming import device_of, placed_copy, stream_blocks
from .apply import apply, plan_points
from .candidates import Candidate, parse_candidate
from .canonical import canonical
from .costs import COST_KINDS, cost_tables
from .errors import EvaluationError, MixprecError, PlanNote, SpecError, notify
from .evaluation import EvalResult, evaluate_model
from .groups import ModelGroups
from .atomic import write_json_atomic
from .hf import check_dtype
from .plan import Plan
from .specs import parse_device
from .rounding import RoundingConfig, rounding_config


@dataclass
class QuantizeResult:
    """What ``quantize`` and ``quantize_plan`` return: the quantized (fake-quant) model, the plan applied, its costs,
    the evaluation where one was given, and how its weights were rounded; ``save(dir)`` writes what
    ``mixprec quantize`` writes (model.pt, plan.json, result.json)."""
    model: nn.Module  # the quantized (simulated) model
    plan: Plan
    costs: dict[str, float]  # bytes, bops, bits_per_weight of the plan, with its point counts
    evaluation: EvalResult | None = None
    apply_seconds: float = 0.0
    eval_seconds: float | None = None
    rounding: str = "nearest"
    rounding_options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """What result.json holds (without the model and plan names, which the caller knows)."""
        out: dict[str, Any] = {"costs": self.costs, "rounding": self.rounding,
                               "rounding_options": self.rounding_options, "metric": None,
                               "apply_seconds": self.apply_seconds}
        if self.evaluation is not None:
            out.update(metric=self.evaluation.value, metric_name=self.evaluation.name,
                       higher_is_better=self.evaluation.higher_is_better, metric_details=self.evaluation.details,
                       eval_seconds=self.eval_seconds)
        return out

    def evaluate(self, evaluate: Callable[[nn.Module], Any]) -> EvalResult:
        """Measure the quantized model (sets ``evaluation`` and ``eval_seconds``)."""
        start = time.perf_counter()
        self.evaluation = evaluate_model(evaluate, self.model)
        self.eval_seconds = time.perf_counter() - start
        return self.evaluation

    def save(self, out_dir: str | Path, evaluate: Callable[[nn.Module], Any] | None = None, **extra: Any) -> Path:
        """Write ``model.pt`` (the quantized state dict), ``plan.json`` and ``result.json`` (``extra`` first).
        ``evaluate``: measured after the model and plan are written, so an evaluation that fails leaves
        them on disk (and says so)."""
        out = check_output_dir(out_dir, "save:")  # a directory that can be written, else an OutputError
        out.mkdir(parents=True, exist_ok=True)
        save_torch_atomic(self.model.state_dict(), out / "model.pt")
        self.plan.save(out / "plan.json")
        device = device_of(self.model)
        write_json_atomic(out / "result.json", {**extra, **self.to_dict(), "environment": environment(device)})
        if evaluate is not None:
            try:
                self.evaluate(evaluate)
            except (MixprecError, SystemExit) as exc:  # a bad return or a user's exit() too: the files are kept
                what = f"the evaluation called exit({exc.code})" if isinstance(exc, SystemExit) else str(exc)
                raise EvaluationError(f"{what}; the quantized model was written to {out / 'model.pt'} (with "
                                      "plan.json and result.json, not evaluated)") from exc
            write_json_atomic(out / "result.json", {**extra, **self.to_dict(), "environment": environment(device)})
        return out


def environment(device: torch.device | str = "cpu") -> dict[str, Any]:
    return {"mixprec": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "threads": torch.get_num_threads(), "device": str(device)}


def check_plan_groups(plan: Plan, groups: ModelGroups) -> None:
    """A plan fits a model when it names exactly the model's groups."""
    if not isinstance(groups, ModelGroups):
        raise SpecError(f"groups is the model's ModelGroups: analysis.model_groups, or mixprec.discover_groups(model, "
                        f"example_input) with the options the plan was made with; got {type(groups).__name__}"
                        + (" (analysis.groups maps group names to layer names)" if isinstance(groups, dict) else ""))
    only_plan, only_model = sorted(set(plan.groups) - set(groups.names)), sorted(set(groups.names) - set(plan.groups))
    if only_plan or only_model:
        parts = ([f"{len(only_plan)} of the plan's groups are not this model's (e.g. {only_plan[:3]})"] * bool(only_plan)
                 + [f"{len(only_model)} of this model's groups are not in the plan (e.g. {only_model[:3]})"]
                 * bool(only_model))
        raise SpecError(f"the plan's groups do not match this model's groups: {'; '.join(parts)}; was it made for "
                        "another model or with other --tie/--exclude options?")


def _check_groups_of(model: nn.Module, groups: ModelGroups) -> None:
    """``groups`` were found on ``model``: each layer's weight has the shape they record (another model's groups,
    with the same layer names, priced the plan with weights neither model has)."""
    for layer in groups.layers:
        try:
            weight = model.get_submodule(layer.name).weight
        except AttributeError:  # a layer canonical() makes (an attention's projections): not checked here
            continue
        # sorted: a layer canonical() makes of another (transformers' Conv1D, a Linear) holds its weight transposed
        if isinstance(weight, torch.Tensor) and sorted(weight.shape) != sorted(layer.weight_shape):
            raise SpecError(f"the groups are not this model's: layer {layer.name!r} has a weight of shape "
                            f"{tuple(weight.shape)} here and {tuple(layer.weight_shape)} in the groups; give the "
                            "model's own (analysis.model_groups of its analysis, or mixprec.discover_groups(model, "
                            "example, ...))")


def quantize_plan(model: nn.Module, plan: Plan, data: Iterable | None, groups: ModelGroups, *,
                  evaluate: Callable[[nn.Module], Any] | None = None, weight_range: str = "mse",
                  activation_range: str = "mse", rounding: str | RoundingConfig | None = None,
                  rounding_options: dict | None = None,
                  rounding_checkpoint: str | Path | None = None, device: str | torch.device | None = None,
                  progress: bool = True, inplace: bool = False, stream: bool = False) -> QuantizeResult:
    """Apply ``plan`` (mixprec.apply), price it and, with ``evaluate``, measure it. Multipoint layers take
    the plan's stored point counts, else counts chosen on ``data``; the returned plan keeps them.
    inplace: quantize ``model`` itself (apply's ``inplace``: about one model's memory instead of two).
    stream: the model's blocks wait in CPU memory and come onto ``device`` one at a time (mixprec.streaming).
    The groups' pins (discover_groups(pins=...)) are applied to ``plan``, and a plan whose costs are not those it
    records (edited after solve) gets its real costs recorded; each with a PlanNote warning (the command line
    prints it as a note; ``progress`` shows progress bars only). The plan passed in is not changed: the result's
    plan is a copy with those changes."""
    check_plan_groups(plan, groups)
    _check_groups_of(model, groups)
    plan = Plan.from_dict(copy.deepcopy(plan.to_dict()))  # the caller's plan stays as it was (reused on another model)
    for change in plan.pin(groups):
        notify(f"pin applied: {change}", False, category=PlanNote)  # the command line prints PlanNotes
    if rounding is None:  # nearest, said where the plan was chosen with another rounding (as apply says it)
        from .apply import note_plan_rounding
        note_plan_rounding(plan, "quantize_plan", stacklevel=3)
        rounding = "nearest"
    config = rounding_config(rounding, **(rounding_options or {}))
    from .formats import IntFormat
    integer = [n for n, c in plan.layer_candidates().items() if isinstance(parse_candidate(c).weight, IntFormat)]
    if config.name != "nearest" and not integer:
        notify(f"rounding {config.name} rounds integer weights, and this plan has none "
               f"({', '.join(sorted(set(plan.assignments.values())))}): nothing to round, recorded as nearest", False,
               category=PlanNote)
        config = rounding_config("nearest")
    model = canonical(model)  # the layers the groups name (attention's projections, a wrapper's inner model)
    if config.needs_data:  # the layers no back-end reconstructs, said once here (not at every plan a search applies)
        from .rounding import nearest_only
        kept = nearest_only(plan.model_layers(model), integer, config)
        if kept:
            notify(f"{len(kept)} of {len(integer)} layer(s) with integer weights are rounded by nearest, not "
                   f"{config.name} (e.g. {kept[0]!r}): embeddings and weights shared by two layers have no input of "
                   "their own to reconstruct" + (", and GPTQ has no Hessian for a transposed or 3-D convolution's "
                                                 "input" if config.name == "gptq" else ""), False, category=PlanNote)
    batches = as_batches(data, model)
    device = parse_device(device, "device") if device is not None else device_of(model)
    if stream:
        stream_blocks(model, device)
    model = placed_copy(model, device)  # the caller's model stays where it is
    check_dtype(model, device)
    counts = plan_points(model, plan, batches, weight_range, progress=progress)
    if counts:
        plan.metadata["points"] = counts
    by_candidate: dict[str, dict[str, str]] = {}
    for layer, digits in counts.items():
        by_candidate.setdefault(plan.layer_candidates()[layer], {})[layer] = digits
    tables = cost_tables(groups, sorted(set(plan.assignments.values()) | {"fp32"}), model, points=by_candidate)
    start = time.perf_counter()
    quantized = apply(model, plan, batches, weight_range=weight_range, activation_range=activation_range,
                      rounding=config, rounding_checkpoint=rounding_checkpoint,
                      points=counts, progress=progress, inplace=inplace)
    costs = {k: tables.total(k, plan.assignments) for k in COST_KINDS}
    check_recorded_costs(plan, costs, False)  # a PlanNote: the command line prints it
    result = QuantizeResult(quantized, plan, costs,
                            apply_seconds=time.perf_counter() - start, rounding=config.name,
                            rounding_options=config.options())
    if evaluate is not None:
        result.evaluate(evaluate)
    return result


def check_recorded_costs(plan: Plan, costs: dict[str, float], verbose: bool = True) -> None:
    """A plan whose costs are not the ones it records (edited by hand after solve) gets its real costs recorded
    (``metadata["predicted_costs"]``, ``metadata["edited_after_solve"]``), with a note that names any budget it
    records and now exceeds."""
    recorded, budgets = plan.metadata.get("predicted_costs"), plan.metadata.get("budgets") or {}
    if not isinstance(recorded, dict) or any(parse_candidate(c).multipoint for c in plan.assignments.values()):
        return  # nothing recorded, or point counts chosen at apply, which the prediction could not know
    def number(value) -> float:  # a cost JSON holds as "nan" (a TorchScript model's BOPs) is unknown, as NaN is
        try:
            return float(value)
        except (TypeError, ValueError):
            return math.nan

    def same(a, b) -> bool:
        a, b = number(a), number(b)
        return (not math.isfinite(a) and not math.isfinite(b)) or bool(np.isclose(a, b, rtol=1e-6))
    changed = {k: v for k, v in costs.items() if k in recorded and not same(recorded[k], v)}
    if not changed:
        return
    over = [f"{k} {costs[k]:.6g} > {budgets[k]:.6g}" for k in costs
            if isinstance(budgets.get(k), (int, float)) and costs[k] > budgets[k] * (1 + 1e-9)]
    made_for = plan.metadata.get("model")
    why = ("its pins applied" if plan.metadata.get("pinned") else
           f"edited after solve, or made for another model than this one: it records model {made_for!r}"
           if made_for else "changed after solve, or made for another model?")
    why += "; " + ", ".join(f"{k} {number(recorded[k]):.6g} recorded, {number(v):.6g} now" for k, v in changed.items())
    notify(f"this plan's costs are not those it records ({why})"
          + (f"; it exceeds the budget it records: {', '.join(over)}" if over else "")
          + "; the plan this step returns and saves records its real costs", verbose, stacklevel=4, category=PlanNote)
    plan.metadata["predicted_costs"] = {**recorded, **changed}
    plan.metadata["edited_after_solve"] = True


def quantize(model: nn.Module, data: Iterable, budget: str | dict[str, Any], *,
             candidates: str | Iterable[str | Candidate] = DEFAULT_CANDIDATES, metric: str = "sqnr",
             search: str = "exact", evaluate: Callable[[nn.Module], Any] | None = None,
             groups: ModelGroups | None = None, run_dir: str | Path | None = None, weight_range: str = "mse",
             activation_range: str = "mse", rounding: str | RoundingConfig = "nearest",
             rounding_options: dict | None = None, target: str | None = None, joins: bool | None = None,
             device: str | torch.device | None = None, progress: bool = True, **search_options: Any) -> QuantizeResult:
    """Model + calibration data + budget -> the quantized model and its plan, in one call:
    :func:`mixprec.analyze`, :meth:`Analysis.solve` (``search``, ``search_options``), then
    :func:`quantize_plan` (evaluated with ``evaluate`` when given). target: the export target the plan is for
    (``"ort-cpu"``: candidates it cannot run are never chosen, and its int8 graph's join quantizers are
    measured and applied; ``joins`` as :func:`mixprec.analyze`'s)."""
    # the model, data and evaluation as analyze resolved them (spec strings such as "hf:DIR" and "text:FILE" too)
    analysis = analyze(model, data, candidates, metric, run_dir, groups=groups, evaluate=evaluate,
                       weight_range=weight_range, activation_range=activation_range, device=device, progress=progress,
                       target=target, joins=joins)
    plan = analysis.solve(budget, search, **search_options)  # a measured search measures with the analysis's evaluate
    return quantize_plan(analysis.model, plan, analysis.data, analysis.model_groups,
                         evaluate=None if evaluate is None else analysis.evaluate,
                         weight_range=weight_range, activation_range=activation_range, rounding=rounding,
                         rounding_options=rounding_options, device=device, progress=progress)
