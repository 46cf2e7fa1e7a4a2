"""Measuring plans for real: apply a plan to an analysis run's model (same model, calibration
data, groups and range settings as the analysis), evaluate it, and append the result to
``RUN/evaluations.jsonl``, so that a front or a search run again, or after a crash, measures no
plan twice."""
from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any

import numpy as np
import torch

from .apply import apply
from .errors import SpecError
from .evaluation import EvalResult
from .plan import Plan
from .runs import Run
from .sensitivity.store import read_arguments
from .specs import is_builtin, load_eval, prepare

FLOAT = "float model"


class PlanEvaluator:
    """rounding: how the measured plans' weights are rounded (mixprec.rounding; a learned one makes
    the measurements reconstruction-aware, and its work on each plan resumes from RUN/rounding/)."""

    def __init__(self, run: Run, eval_spec: str | None = None, device: str | None = None,
                 rounding: str = "nearest", rounding_options: dict | None = None):
        arguments = read_arguments(run.path)
        model = arguments.get("model")
        self.eval_spec = eval_spec or arguments.get("eval") or (model if model and is_builtin(model) else None)
        if not self.eval_spec:
            raise SpecError("measuring plans needs an evaluation: give --eval file.py:function (the model is not "
                            "built-in and the analysis had no --eval)")
        self.run = run
        self.arguments = arguments
        self.device = torch.device(device or arguments.get("device") or "cpu")
        self.settings = {k: arguments.get(k) for k in ("model", "data", "calibration_samples", "tie", "exclude",
                                                       "pin", "weight_range", "activation_range")}
        self.settings["eval"] = self.eval_spec
        self.rounding, self.rounding_options = rounding, dict(rounding_options or {})
        if rounding != "nearest":  # nearest's keys stay as they were, so older logs still count
            self.settings["rounding"] = [rounding, sorted(self.rounding_options.items())]
        self.log = run.path / "evaluations.jsonl"
        self.seconds_of: dict[str, float] = {}  # evaluation time of each logged plan, by key
        self.results = self._read_log()
        self.measured = 0  # new evaluations made by this evaluator
        self.seconds = 0.0
        self._loaded = None

    def _read_log(self) -> dict[str, EvalResult]:
        out = {}
        if self.log.is_file():
            for line in self.log.read_text().splitlines():
                try:
                    entry = json.loads(line)
                    r = entry["result"]
                    out[entry["key"]] = EvalResult(r["name"], float(r["value"]), bool(r["higher_is_better"]),
                                                   r.get("details", {}))
                    self.seconds_of[entry["key"]] = float(entry.get("seconds", 0.0))
                except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                    continue  # a line torn by a crash
        return out

    def _key(self, assignments: dict[str, str] | None) -> str:
        body = json.dumps([self.settings, sorted(assignments.items()) if assignments is not None else FLOAT],
                          sort_keys=True, default=str)
        return hashlib.sha256(body.encode()).hexdigest()[:24]

    def _load(self):
        if self._loaded is None:
            a = self.arguments
            model, data, _, groups = prepare(a["model"], a.get("data"), a.get("calibration_samples"),
                                             a.get("tie") or [], a.get("exclude") or [], a.get("pin") or [])
            if list(groups.names) != list(self.run.groups):
                raise SpecError(f"the model's groups no longer match the run {self.run.path} (did the model or the "
                                "--tie/--exclude options change?); analyze it again")
            self._loaded = (model.to(self.device).eval(), data, load_eval(self.eval_spec))
        return self._loaded

    def cached(self, assignments: dict[str, str] | None) -> EvalResult | None:
        return self.results.get(self._key(assignments))

    def measure(self, assignments: dict[str, str] | None) -> EvalResult:
        """The metric of the plan (``None``: the float model), from the log when it is there."""
        key = self._key(assignments)
        if key in self.results:
            return self.results[key]
        model, data, evaluate = self._load()
        start = time.perf_counter()
        if assignments is None:
            result = evaluate(model)
        else:
            plan = Plan(dict(assignments), self.run.saved["groups"], self.run.saved.get("excluded", []))
            quantized = apply(model, plan, data, weight_method=self.arguments.get("weight_range") or "mse",
                              activation_method=self.arguments.get("activation_range") or "mse", progress=False,
                              points=self.run.plan_points(assignments), rounding=self.rounding,
                              rounding_options=self.rounding_options,
                              rounding_checkpoint=None if self.rounding == "nearest" else self.run.path / "rounding")
            result = evaluate(quantized)
            del quantized
        seconds = time.perf_counter() - start
        self.measured += 1
        self.seconds += seconds
        self._append(key, assignments, result, seconds)
        self.results[key] = result
        self.seconds_of[key] = seconds
        return result

    def _append(self, key: str, assignments: dict[str, str] | None, result: EvalResult, seconds: float) -> None:
        entry: dict[str, Any] = {"key": key, "plan": assignments if assignments is not None else FLOAT,
                                 "result": result.to_dict(), "seconds": round(seconds, 3)}
        with self.log.open("a") as f:
            f.write(json.dumps(entry, default=float) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def reference(self) -> EvalResult:
        return self.measure(None)

    def loss(self, result: EvalResult) -> float:
        """How much worse than the float model, in the metric's units (positive = worse)."""
        ref = self.reference()
        return (ref.value - result.value) if result.higher_is_better else (result.value - ref.value)

    def loss_of_choice(self, choice: np.ndarray) -> float:
        return self.loss(self.measure(self.run.assignments(choice)))
