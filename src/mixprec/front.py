"""A Pareto front as data: the non-dominated plans for one cost kind, the uniform plans beside them,
and, where they were evaluated, the measured metric of each. ``to_dict``/``from_dict`` give the
``pareto.json`` schema that ``mixprec report`` reads (its key ``points`` holds the front's plans)."""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import SpecError
from .atomic import check_output_dir, write_json_atomic

# What Front.better_when_cheaper() means for the user (the command line and the HTML report say it).
INVERTED = ("the cheapest plan scores best and the dearest ones (or the float model) worst: a plain "
            "number from the evaluation function is read as higher-is-better; if it is a loss or an error rate, "
            "return {'main': 'loss', 'loss': value, 'higher_is_better': False} (or an EvalResult with "
            "higher_is_better=False), or the front's flags and the measured searches read it upside down")

if TYPE_CHECKING:
    from .plan import Plan


@dataclass
class FrontPlan:
    """One plan of a front (or a uniform candidate beside it): its costs, predicted sensitivity, assignments, the
    measured metric where evaluated, how it was found and the guard's comparison."""
    costs: dict[str, float]
    predicted_sensitivity: float
    assignments: dict[str, str] | None = None  # group -> candidate (kept in pareto.json for the front's plans)
    measured: dict[str, Any] | None = None  # EvalResult.to_dict() once evaluated
    search: str | None = None  # how the plan was found (exact, lagrangian; "exact, guard: uniform w4a8")
    guard: dict[str, Any] | None = None  # the guard's comparison with the uniform plans within its cost

    def to_dict(self) -> dict[str, Any]:
        """The point as pareto.json holds it."""
        out: dict[str, Any] = {"costs": self.costs, "predicted_sensitivity": self.predicted_sensitivity}
        if self.assignments is not None:
            out["assignments"] = self.assignments
        out["measured"] = self.measured
        if self.search is not None:
            out["search"] = self.search
        if self.guard is not None:
            out["guard"] = self.guard
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FrontPlan":
        """The point ``data`` (to_dict's) holds."""
        return cls(dict(data["costs"]), float(data["predicted_sensitivity"]), data.get("assignments"),
                   data.get("measured"), data.get("search"), data.get("guard"))


# what report writes beside pareto.json (mixprec.report.write_report)
REPORT_FILES = ("report.html", "pareto.png", "heatmap.png", "predicted_vs_measured.png")


def _check_numbers(item: Any, where: str) -> None:
    """A plan of pareto.json as pareto writes it: costs that are numbers >= 0 and a predicted sensitivity that is a
    number (no NaN); an edited or damaged one is refused before anything is written from it."""
    costs = item.get("costs") if isinstance(item, dict) else None
    if not isinstance(costs, dict):
        raise SpecError(f"{where} has no 'costs'; regenerate pareto.json with `mixprec pareto`")
    for kind, value in costs.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 or math.isinf(value):
            raise SpecError(f"{where}: its {kind} cost {value!r} is no cost (a finite number >= 0): pareto.json "
                            "was edited or damaged; regenerate it with `mixprec pareto`")
    value = item.get("predicted_sensitivity")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise SpecError(f"{where}: its predicted_sensitivity {value!r} is not a number: pareto.json was edited or "
                        "damaged; regenerate it with `mixprec pareto`")


@dataclass
class Front:
    """The Pareto front of one cost kind (``Analysis.pareto``): the non-dominated plans, cheapest first, each
    guarded like solve's plans, and every uniform candidate beside them; measured where an evaluation was given.
    ``plan(i)`` is point i as a Plan; ``save(dir)`` writes pareto.json, ``Front.load(dir)`` reads it back."""
    kind: str  # the cost kind the front spans
    metric: str  # the sensitivity metric of the predictions
    method: str  # exact or lagrangian
    plans: list[FrontPlan]  # cheapest first
    uniform: dict[str, FrontPlan]  # candidate -> every group on it (pins keep theirs)
    groups: dict[str, list[str]]  # group -> layers
    excluded: list[str] = field(default_factory=list)
    reference: dict[str, Any] | None = None  # the float model's measured metric
    model: str | None = None
    run: str | None = None  # the analysis run directory
    cost_files: list[str] = field(default_factory=list)  # KIND=FILE.csv custom cost tables used
    candidates: str | None = None  # the restriction of the run's candidates used, if any
    solve_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)  # other keys of pareto.json (e.g. a benchmark's searches)

    def to_dict(self) -> dict[str, Any]:
        """The front as pareto.json holds it: its points, the uniform candidates, the float model's metric."""
        uniform = {}
        for cand, plan in self.uniform.items():
            item = plan.to_dict()
            item.pop("assignments", None)
            uniform[cand] = item
        return {"kind": self.kind, "metric": self.metric, "method": self.method,
                "points": [p.to_dict() for p in self.plans], "uniform": uniform, "reference": self.reference,
                "groups": self.groups, "excluded": self.excluded, "model": self.model, "run": self.run,
                "cost_files": list(self.cost_files), "candidates": self.candidates,
                "solve_seconds": self.solve_seconds, **self.extra}

    @classmethod
    def from_dict(cls, data: Any, source: str = "pareto.json") -> "Front":
        """The front ``data`` (to_dict's) holds, checked (a clear error naming ``source`` where it is edited)."""
        if not isinstance(data, dict) or not isinstance(data.get("points"), list) or "kind" not in data:
            raise SpecError(f"{source} is not a mixprec Pareto front (it needs 'kind' and a list 'points'); make "
                            "one with `mixprec pareto RUN --out DIR`")
        for where, item in [*((f"point {i}", p) for i, p in enumerate(data["points"])),
                            *((f"uniform {c}", u) for c, u in (data.get("uniform") or {}).items())]:
            _check_numbers(item, f"{source} {where}")
        known = {"kind", "metric", "method", "points", "uniform", "reference", "groups", "excluded", "model", "run",
                 "cost_files", "candidates", "solve_seconds"}
        return cls(data["kind"], data.get("metric") or "", data.get("method") or "exact",
                   [FrontPlan.from_dict(p) for p in data["points"]],
                   {str(c): FrontPlan.from_dict(u) for c, u in (data.get("uniform") or {}).items()},
                   dict(data.get("groups") or {}), list(data.get("excluded") or []), data.get("reference"),
                   data.get("model"), data.get("run"), list(data.get("cost_files") or []), data.get("candidates"),
                   float(data.get("solve_seconds") or 0.0), {k: v for k, v in data.items() if k not in known})

    def uniform_above_front(self) -> list[str]:
        """Uniform candidates that measure better than every plan of the front costing no more: the
        front does not improve on them there (measured plans only)."""
        out = []
        for cand, u in self.uniform.items():
            if u.measured is None:
                continue
            higher = u.measured.get("higher_is_better", True)
            rivals = [p.measured["value"] for p in self.plans
                      if p.measured is not None and p.costs[self.kind] <= u.costs[self.kind] * (1 + 1e-12)]
            best = (max if higher else min)(rivals) if rivals else None
            if best is None or (u.measured["value"] > best if higher else u.measured["value"] < best):
                out.append(cand)
        return out

    def below_cheaper(self) -> list[tuple[int, int]]:
        """(i, j): front plan i measures worse than plan j, which costs less. The sensitivities predicted i better
        (it is on the front), the measurement says otherwise: a plan the user should not pick (measured plans
        only; j is the best-measured cheaper plan)."""
        out = []
        for i, p in enumerate(self.plans):
            if p.measured is None:
                continue
            higher = p.measured.get("higher_is_better", True)
            cheaper = [(q.measured["value"], j) for j, q in enumerate(self.plans)
                       if q.measured is not None and q.costs[self.kind] < p.costs[self.kind]]
            if not cheaper:
                continue
            value, j = (max if higher else min)(cheaper)
            if value > p.measured["value"] if higher else value < p.measured["value"]:
                out.append((i, j))
        return out

    def better_when_cheaper(self) -> bool:
        """The measurements read as higher-is-better (a plain number from the evaluation function) get better as
        plans get cheaper: the cheapest measured plan scores best and the dearest worst (and the float model, where
        it was measured, no better), with at least three measured; or the cheapest scores best and the float model
        worst of all (the dearest plans, near the float model, may swap places by noise); or the cheapest scores
        better than the float model by more than all the other plans differ, and the values fall with cost by rank
        (Spearman's rho <= -0.7: the dearest plans on either side of the float model by noise). Quantization makes
        a model worse, so the number
        is most likely a loss or an error rate that the function should return with higher_is_better=False."""
        measured = [p for p in self.plans if p.measured is not None]
        if len(measured) < 3 or not all(p.measured.get("higher_is_better", True) for p in measured):
            return False
        values = [value for _, value in sorted((p.costs[self.kind], p.measured["value"]) for p in measured)]
        floor = self.reference["value"] if self.reference and self.reference.get("higher_is_better", True) else None
        if not values[0] == max(values) > min(values):
            return False
        if floor is not None and floor <= min(values):  # the float model worst of all: whatever the dearest plans
            return True  # do among themselves (two near the float model can swap by noise)
        if values[-1] == min(values) and (floor is None or floor <= values[-1]):
            return True
        # the dearest plans, near the float model, on either side of it by noise: the cheapest plan beating the
        # float model by more than all the other plans differ, and the values falling with cost by rank
        # (Spearman's rho <= -0.7), tell
        if floor is None or values[0] - floor <= max(values[1:]) - min(values[1:]):
            return False
        ranks = np.argsort(np.argsort(values)).astype(float)
        n = len(values)
        rho = 1 - 6 * float(((ranks - np.arange(n)) ** 2).sum()) / (n * (n * n - 1))
        return rho <= -0.7

    def plan(self, index: int) -> "Plan":
        """Front point ``index`` (0: the cheapest) as a Plan, to quantize or export: its assignments, with its
        costs, predicted sensitivity, search and guard in the metadata."""
        from .plan import Plan, applied_with
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise SpecError(f"a front point is a whole number, 0 (the cheapest) to {len(self.plans) - 1}; got "
                            f"{type(index).__name__} {index!r}")
        if not -len(self.plans) <= index < len(self.plans):
            raise SpecError(f"front point {index} does not exist: the front has {len(self.plans)} points, 0 (the "
                            f"cheapest) to {len(self.plans) - 1}")
        point = self.plans[index]
        if point.assignments is None:
            raise SpecError(f"front point {index} holds no assignments (a pareto.json of an older mixprec?): solve at "
                            f"its cost instead, --budget {self.kind}={point.costs[self.kind]:.6g}")
        metadata = {"front_point": index % len(self.plans), "kind": self.kind, "method": self.method,
                    "predicted_costs": dict(point.costs), "predicted_sensitivity": point.predicted_sensitivity,
                    "search": point.search or self.method, "model": self.model, "run": self.run}
        if point.guard is not None:
            metadata["guard"] = point.guard
        if point.measured is not None:
            metadata["measured"] = point.measured
        # measured with a learned rounding (mixprec.rounding.rounding_metadata): quantize and export apply it too
        metadata.update({k: self.extra[k] for k in ("rounding", "rounding_options") if k in self.extra})
        # applied as the front measured it: with its join quantizers, its multipoint layers' point counts
        metadata.update(applied_with(point.assignments, self.groups, bool(self.extra.get("joins")),
                                     self.extra.get("point_counts") or {}))
        return Plan(dict(point.assignments), {g: list(v) for g, v in self.groups.items()}, list(self.excluded),
                    metadata)

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write ``out_dir``/pareto.json, and remove the report files beside it unless they are this front's (an
        earlier front's report and plots are never left beside this one; ``Analysis.report`` writes pareto.json
        with its report, so saving the front after its report keeps the report)."""
        out = check_output_dir(out_dir, "save:")  # a directory that can be written, else an OutputError
        out.mkdir(parents=True, exist_ok=True)
        if not self._saved_in(out):
            for name in REPORT_FILES:
                (out / name).unlink(missing_ok=True)
        write_json_atomic(out / "pareto.json", self.to_dict())
        return out / "pareto.json"

    def _saved_in(self, out: Path) -> bool:
        """Whether ``out``/pareto.json is this front already (as JSON reads it back)."""
        from .atomic import finite_json
        try:
            return json.loads((out / "pareto.json").read_text()) == json.loads(
                json.dumps(finite_json(self.to_dict()), default=str))
        except (OSError, ValueError):
            return False

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Front":
        """The front saved at ``path`` (a folder holding pareto.json, or the file), checked as from_dict checks it."""
        path = Path(path)
        file = path / "pareto.json" if path.is_dir() else path
        if not file.is_file():
            if path.is_dir() and (path / "run.json").is_file():  # an analysis run, not a pareto directory
                raise SpecError(f"{path} is an analysis run, not a pareto directory; make a front of it with "
                                f"`mixprec pareto {path} --out FRONT_DIR` (a directory of its own), then `mixprec "
                                "report FRONT_DIR`")
            raise SpecError(f"{file} not found; make it with `mixprec pareto RUN --out {path}`")
        try:
            return cls.from_dict(json.loads(file.read_bytes().decode("utf-8")), str(file))
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SpecError(f"{file} is not a readable pareto.json ({type(exc).__name__}: {exc}); it may be "
                            f"truncated or edited: write it again with `mixprec pareto RUN --out {path}`") from exc
