"""Measuring plans for real: apply a plan to the analysed model (same model, calibration data,
groups and range settings as the analysis), evaluate it, and append the result to the run's
``evaluations.jsonl``, so that a front or a search run again, or after a crash, measures no plan
twice. The key of a logged result hashes the settings that decide it (what the model and data
are, the evaluation, the range methods, the rounding) and the plan."""
from __future__ import annotations

import hashlib
import math
import json
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .apply import applied_beside
from .joins import passthrough
from .errors import SpecError
from .quantizers import GRID_VERSION
from .evaluation import EvalResult, evaluate_model
from .plan import Plan, plan_point_counts
from .rounding import RoundingConfig, rounding_config
from .run_directory import RunDirectory
from .canonical import in_eval_mode
from .streaming import placed_copy

FLOAT = "float model"

# what measuring needs, made only when a plan is not in the log: (model, calibration data, evaluate)
Loader = Callable[[], "tuple[nn.Module, list | None, Callable[[nn.Module], Any]]"]


KEPT_CHECKPOINTS = 2


def prune_checkpoints(directory: Path, keep: int = KEPT_CHECKPOINTS) -> None:
    """Only the ``keep`` newest rounding checkpoints of a run stay. A measured plan's result is in the run's log
    once it is measured, so its rounded weights (a copy of the planned weights, each) only speed up measuring it
    again; a search measures dozens of plans, and an LLM's copies would fill the disk. The newest stay: the
    plan just measured, and one being rounded by another process."""
    try:
        files = sorted(directory.glob("*.pt"), key=lambda f: f.stat().st_mtime, reverse=True)
    except OSError:
        return
    for old in files[keep:]:
        try:
            old.unlink()
        except OSError:  # gone already (another process pruning), or not ours to remove: it stays
            pass


# (log, key) of the float models evaluated since new_measurements(): the evaluators check their logs against it once
_MEASURED_NOW: set[tuple[str, str]] = set()


def new_measurements() -> None:
    """Start of a call that measures plans (Analysis.solve, Analysis.pareto): its evaluators check the logged
    figures against the float model evaluated anew, once for the call (in a notebook, an evaluation's data or a
    global changed between two calls is then seen, as between two commands)."""
    _MEASURED_NOW.clear()


class PlanEvaluator:
    """groups, excluded: the analysis's groups (name -> layers) and float layers; point_counts:
    multipoint candidate -> layer -> points per channel; settings: what the log key hashes besides
    the plan; rounding: how the measured plans' weights are rounded (mixprec.rounding; a learned one
    makes the measurements reconstruction-aware, and its work on each plan resumes from RUN/rounding/)."""

    def __init__(self, load: Loader, groups: dict[str, list[str]], excluded: list[str], settings: dict[str, Any],
                 run: RunDirectory | None = None, point_counts: dict[str, dict[str, str]] | None = None,
                 weight_range: str = "mse", activation_range: str = "mse", device: str | torch.device = "cpu",
                 rounding: str | RoundingConfig = "nearest", rounding_options: dict | None = None,
                 log_name: str = "evaluations"):
        self._load_fn = load
        self.groups, self.excluded = groups, list(excluded)
        self.point_counts = point_counts or {}
        self.weight_range, self.activation_range = weight_range or "mse", activation_range or "mse"
        self.device = torch.device(device)
        self.settings = {**dict(settings), "grid": GRID_VERSION}  # plans measured on another grid are not reused
        self.rounding = rounding_config(rounding, **(rounding_options or {}))
        if self.rounding.name != "nearest":  # nearest's keys stay as they were, so older logs still count
            self.settings["rounding"] = [self.rounding.name, sorted(self.rounding.options().items())]
        self.run, self.log_name = run, log_name
        self.log = run.log_path(log_name) if run is not None else None
        self.seconds_of: dict[str, float] = {}  # evaluation time of each logged plan, by key
        self.results = self._read_log()
        self.measured = 0  # new evaluations made by this evaluator
        self.seconds = 0.0
        self._loaded = None
        self._verified = False

    def _read_log(self) -> dict[str, EvalResult]:
        """The logged measurements; a line no measurement writes (torn, NaN, or for the divergences' log a
        negative value or share, which no divergence has) is not one: it is measured again, as an entry is."""
        out = {}
        for entry in self.run.evaluations(self.log_name) if self.run is not None else []:
            try:
                r = entry["result"]
                result = EvalResult(r["name"], float(r["value"]), bool(r["higher_is_better"]), r.get("details", {}))
            except (KeyError, TypeError, ValueError):
                continue
            if not self._possible(result):
                continue
            out[entry["key"]] = result
            try:
                self.seconds_of[entry["key"]] = float(entry.get("seconds", 0.0))
            except (TypeError, ValueError):
                pass
        return out

    def _possible(self, result: EvalResult) -> bool:
        """Whether a logged result is one a measurement can give: a number that is not NaN (an evaluation giving
        NaN is refused), and for the label-free divergences (the guard's log) never below 0, nor any of the
        per-sample shares or the consensus's figures beside it."""
        if math.isnan(result.value):
            return False
        if self.log_name != "divergences":
            return True
        numbers = [result.value]
        details = result.details if isinstance(result.details, dict) else {}
        for name, value in details.items():
            if name == "samples" and isinstance(value, dict):
                numbers += [x for shares in value.values() if isinstance(shares, list) for x in shares]
            elif isinstance(value, (int, float)) and not isinstance(value, bool) and name != "count":
                numbers.append(value)
        try:
            return all(not math.isnan(float(x)) and float(x) >= 0 for x in numbers)
        except (TypeError, ValueError):
            return False

    def _key(self, assignments: dict[str, str] | None) -> str:
        body = json.dumps([self.settings, sorted(assignments.items()) if assignments is not None else FLOAT],
                          sort_keys=True, default=str)
        return hashlib.sha256(body.encode()).hexdigest()[:24]

    def load(self):
        """(model, data, evaluate), loaded on first use: a model that is not the run's fails here."""
        if self._loaded is None:
            model, data, evaluate = self._load_fn()
            # on the device without moving the caller's model there (a copy made there, where it lies elsewhere),
            # and in eval mode without switching it (a copy sharing its parameters, where it trains)
            placed = in_eval_mode(placed_copy(model, self.device), False)
            if getattr(evaluate, "float_model", None) is model and getattr(evaluate, "reference", True) is None:
                evaluate.float_model = placed  # a divergence from this model: its reference outputs made there too
            self._loaded = (placed, data, evaluate)
        return self._loaded

    def plan(self, assignments: dict[str, str]) -> Plan:
        return Plan(dict(assignments), self.groups, self.excluded)

    def plan_point_counts(self, assignments: dict[str, str]) -> dict[str, str]:
        return plan_point_counts(assignments, self.groups, self.point_counts)

    def cached(self, assignments: dict[str, str] | None) -> EvalResult | None:
        return self.results.get(self._key(assignments))

    def measure(self, assignments: dict[str, str] | None) -> EvalResult:
        """The metric of the plan (``None``: the float model), from the log when it is there."""
        key = self._key(assignments)
        if key in self.results:  # the float model's figure too: a changed evaluation gives it anew
            self._verify()
        if key in self.results:
            return self.results[key]
        if assignments is not None and self.log_name != "divergences" and self._key(None) not in self.results:
            self.measure(None)  # logged beside the plans: what a later run checks its evaluation against
        model, data, evaluate = self.load()
        start = time.perf_counter()
        if assignments is None:
            with passthrough(model):  # the float model, join quantizers (mixprec.joins) off
                result = evaluate_model(evaluate, model)
        else:
            checkpoints = None if self.rounding.name == "nearest" or self.run is None else self.run.rounding_checkpoints
            # beside the float model: on a GPU, its replaced weights wait in CPU memory meanwhile, so an
            # evaluation that also reads the float model (an output divergence) takes what it needs first
            getattr(evaluate, "prepare", lambda: None)()
            with applied_beside(model, self.plan(assignments), data, weight_method=self.weight_range,
                                activation_method=self.activation_range, progress=False,
                                points=self.plan_point_counts(assignments), rounding=self.rounding,
                                rounding_checkpoint=checkpoints) as quantized:
                result = evaluate_model(evaluate, quantized)
                del quantized  # gone before the float weights come back
        seconds = time.perf_counter() - start
        self.measured += 1
        self.seconds += seconds
        if self.run is not None:
            self.run.append_evaluation({"key": key, "plan": assignments if assignments is not None else FLOAT,
                                        "result": result.to_dict(), "seconds": round(seconds, 3)}, self.log_name)
            if assignments is not None and self.rounding.name != "nearest":
                prune_checkpoints(self.run.rounding_checkpoints)
        self.results[key] = result
        self.seconds_of[key] = seconds
        if assignments is None:
            _MEASURED_NOW.add((str(self.log), key))
        return result

    def _verify(self) -> None:
        """Once, before the log serves a plan's result: the model and data are loaded (``load`` checks them against
        the run's fingerprint: a retrained model named again by the same spec was served its predecessor's
        figures), and, for an evaluation, the float model is evaluated again: a figure other than the logged one
        means the evaluation changed in a way its key cannot see (the data file it reads, a global it takes from
        the command line, a helper outside its folder), and every logged plan is measured again."""
        if self._verified:
            return
        self._verified = True
        self.load()
        ref_key = self._key(None)
        if self.log_name == "divergences" or (str(self.log), ref_key) in _MEASURED_NOW:
            return  # a divergence of the float model is 0; one evaluated since new_measurements() is checked
        logged = self.results.pop(ref_key, None)
        fresh = self.measure(None)  # measured now, and logged again
        if logged is not None and not math.isclose(logged.value, fresh.value, rel_tol=1e-6, abs_tol=1e-12):
            self.results = {ref_key: fresh}
            import warnings

            from .errors import DataNote
            warnings.warn(f"the float model now evaluates to {fresh.value:.6g}, and the log of this run has "
                          f"{logged.value:.6g} for it: the evaluation changed in a way its key cannot see (the data "
                          "it reads, a global or a helper outside its folder), so the plans in its log are measured "
                          "again", DataNote, stacklevel=3)

    def reference(self) -> EvalResult:
        return self.measure(None)

    def loss(self, result: EvalResult) -> float:
        """How much worse than the float model, in the metric's units (positive = worse)."""
        ref = self.reference()
        return (ref.value - result.value) if result.higher_is_better else (result.value - ref.value)

    def max_loss(self, max_drop: str | float) -> float:
        """``"1%"``: 1 % of the float model's metric; ``0.5`` or ``"0.5"``: 0.5 in the metric's units."""
        text = str(max_drop).strip()
        try:
            number = float(text[:-1] if text.endswith("%") else text)
        except ValueError:
            number = float("nan")
        if not number >= 0 or number == float("inf"):  # NaN, negative, infinite: refused before any measurement
            raise SpecError(f"--max-drop {text!r} must be a percentage of the float model's metric (1%) or an "
                            "amount in the metric's units (0.5), at least 0")
        return number / 100 * abs(self.reference().value) if text.endswith("%") else number
