"""The allocation half of the pipeline: ``analyze`` -> :class:`Analysis` -> ``solve`` / ``pareto``.

    analysis = analyze(model, data, candidates="w4a8,w8a8", metric="sqnr", run_dir="run/")
    plan = analysis.solve(budget="bops=w4a8,bytes=2MB")            # -> Plan
    front = analysis.pareto("bops", n_plans=20, evaluate=True)    # -> Front

An Analysis holds the quantizer groups, the sensitivity table S[group, candidate], the cost tables
aligned with it and the multipoint point counts. With ``run_dir`` the measurement is cached and
resumable (mixprec.run_directory), and ``Analysis.load(run_dir)`` reopens it without the model.
"""
from __future__ import annotations

import contextlib
import numbers
import math
import time
import warnings
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

from .canonical import canonical, in_eval_mode
from .batches import as_batches, split_item
from .budgets import ALIASES, parse_budgets
from .candidates import Candidate, check_distinct, parse_candidate, parse_candidates
from .costs import CostTables, cost_tables, load_cost_csv
from .errors import GuardNote, GuardSkipped, MixprecError, OutputError, SpecError
from .front import Front, FrontPlan
from .groups import ModelGroups, discover_groups, is_torchscript, one_or_many
from .plan import Plan, applied_with
from .plan_evaluation import PlanEvaluator, new_measurements
from .quantizers import GRID_VERSION
from .rounding import RoundingConfig, recorded_rounding, rounding_config, rounding_metadata
from .run_directory import RunDirectory
from .sensitivity.divergence import LABELLED, OutputDivergence
from .sensitivity.table import SensitivityTable
from .solvers import MEASURED, SOLVERS, AllocationProblem, Goal
from .solvers.exact import InfeasibleBudget
from .solvers.guard import MIXED, Sampled, guard
from .solvers.pareto import pareto_front
from .solvers.problem import STANDARD_KINDS, range_variant, within
from .specs import is_builtin, load_eval, parse_device, prepare, resolve_specs, spec_source_hash
from .streaming import device_of, place, placed_copy, stream_blocks

DEFAULT_CANDIDATES = "w4a8,w8a8,w8a16"
# the fraction of the calibration batches a guard after a local search decides on, held apart from the search
# (_held_apart). Off by default: measured (never_worse_*_holdout_*), 0.25 changed nothing on byte-gpt and
# returned worse plans at 3 of 14 budgets of ResNet-20/56
HOLDOUT = 0.0


# metrics that price the weight error itself, blind to a rounding that trades it for less output error (GPTQ)
WEIGHT_SPACE_METRICS = ("roundoff", "fisher", "hessian")


def _batches(data: Iterable | None, model: nn.Module | None = None) -> list:
    return [] if data is None else as_batches(data, model)


def _candidate_list(candidates: str | Iterable[str | Candidate] | None) -> list[Candidate]:
    if candidates is None:
        candidates = DEFAULT_CANDIDATES
    if isinstance(candidates, str):
        return parse_candidates(candidates)
    if not isinstance(candidates, Iterable):
        raise SpecError(f"candidates is a string such as 'w4a8,w8a8' or a list of candidates, got "
                        f"{type(candidates).__name__} {candidates!r}")
    return [c if isinstance(c, Candidate) else parse_candidate(c) for c in candidates]


@dataclass
class Analysis:
    """A finished sensitivity analysis: the table S[group, candidate], the exact cost tables and the groups, from
    ``mixprec.analyze(...)`` or ``Analysis.load(run_dir)``. Its methods are the allocation half of the pipeline:
    ``solve(budget)`` -> Plan (guarded against the uniform plans within the budget), ``pareto(kind, n)`` -> Front,
    ``report(front, dir)``, ``problem()`` (the AllocationProblem every search takes) and ``plan(assignments)``."""
    table: SensitivityTable
    costs: CostTables  # columns: every candidate measured (the table's)
    groups: dict[str, list[str]]  # group -> layers
    pins: dict[str, str] = field(default_factory=dict)  # group -> candidate
    excluded: list[str] = field(default_factory=list)  # layers left in float
    point_counts: dict[str, dict[str, str]] = field(default_factory=dict)  # multipoint cand -> layer -> digits
    model_name: str | None = None  # the --model spec, where there is one
    run: RunDirectory | None = None
    # what measuring plans needs, when the analysis was made in this process
    model: nn.Module | None = field(default=None, repr=False)
    data: list | None = field(default=None, repr=False)
    evaluate: Callable[[nn.Module], Any] | None = field(default=None, repr=False)
    model_groups: ModelGroups | None = field(default=None, repr=False)
    weight_range: str = "mse"
    activation_range: str = "mse"
    # measuring plans of a loaded run: specs the user named again (model, data, eval), and whether the
    # code the run names may run without that (RunDirectory.specs_to_run)
    specs: dict[str, str | None] = field(default_factory=dict)
    trust_run: bool = False
    target: str | None = None  # the export target plans are for (analyze(..., target=)); None: any
    refused: dict[str, list[str]] = field(default_factory=dict)  # group -> candidates the target cannot run
    # candidates added only because a --pin names them (not in --candidates): only their pinned groups take them
    pin_only: list[str] = field(default_factory=list)
    # the groups of the first and last layer the forward calls (ModelGroups.edges); empty: the table's first and last
    edges: list[str] = field(default_factory=list)
    _checkers: dict = field(default_factory=dict, repr=False)  # the guard's divergence evaluators
    _versions: tuple | None = field(default=None, repr=False)  # the model's weights as measured (weight_versions)

    # ---- on disk ----------------------------------------------------------------------------------
    def saved(self) -> dict[str, Any]:
        """What costs.json holds."""
        out = {"model": self.model_name, "costs": self.costs.to_dict(), "groups": self.groups, "pins": self.pins,
               "excluded": self.excluded, "points": self.point_counts}
        if self.target:
            out.update(target=self.target, refused=self.refused)
        if self.pin_only:
            out["pin_only"] = self.pin_only
        if self.edges:
            out["edges"] = self.edges
        return out

    @classmethod
    def load(cls, run_dir: str | Path | RunDirectory, specs: dict[str, str | None] | None = None,
             trust_run: bool = False, *, model: nn.Module | None = None, data: Iterable | None = None,
             evaluate: Callable | None = None) -> "Analysis":
        """Reopen an analysis run (sensitivity.json and costs.json) for allocation; no model needed.
        Measuring plans loads the model, data and evaluation the run names, except code (a .py or module
        spec, a TorchScript model): that runs only when named again in ``specs`` ({"model": ..., "data":
        ..., "eval": ...}, checked against the run's fingerprint) or with ``trust_run``. A run made from a
        model in memory names none: give ``model`` and ``data`` (and ``evaluate``) again, checked against the
        fingerprint, for the steps that measure plans (the guard, the local search, pareto's evaluation)."""
        run = run_dir if isinstance(run_dir, RunDirectory) else RunDirectory(run_dir)
        settings = run.fingerprint().get("settings") if run.exists else None
        if isinstance(settings, dict) and settings.get("grid") != GRID_VERSION:
            raise SpecError(f"{run.path} was measured with an earlier integer grid of mixprec (symmetric scales "
                            "max|x|/qmax, before signed scales): its sensitivities describe weights that apply no "
                            "longer makes; analyze again into a new directory")
        table = run.read_table()
        saved = run.read_costs()

        def damaged(exc: Exception) -> SpecError:  # costs.json read but not what analyze writes
            return SpecError(f"{run.path}/costs.json is damaged ({type(exc).__name__}: {exc}); `mixprec analyze "
                             f"--resume {run.path}` writes it again (the costs are computed from the model; the "
                             "measured entries are kept)")
        try:
            costs = CostTables.from_dict(saved["costs"])
        except (KeyError, TypeError, ValueError) as exc:
            raise damaged(exc) from exc
        if list(costs.groups) != table.groups:
            raise SpecError(f"{run.path}: the cost tables and the sensitivity table list different groups")
        arguments = run.arguments() if run.exists else {}
        try:
            analysis = cls(table, costs, dict(saved["groups"]), dict(saved.get("pins", {})),
                           list(saved.get("excluded", [])), dict(saved.get("points", {})), saved.get("model"), run,
                           weight_range=_run_weight_range(arguments),
                           activation_range=arguments.get("activation_range") or "mse", specs=dict(specs or {}),
                           trust_run=trust_run, target=saved.get("target"),
                           refused={g: list(c) for g, c in (saved.get("refused") or {}).items()},
                           pin_only=list(saved.get("pin_only") or []), edges=list(saved.get("edges") or []))
        except (KeyError, TypeError, ValueError) as exc:
            raise damaged(exc) from exc
        if model is not None:
            analysis._attach(model, data, evaluate)
        elif data is not None or evaluate is not None:
            raise SpecError("data= and evaluate= go with model=: the model the run measured, given again")
        return analysis

    def _attach(self, model: nn.Module, data: Iterable | None, evaluate: Callable | None) -> None:
        """The model and calibration data this run measured, given again in memory (checked against its
        fingerprint, prepared as the analysis prepared them), for measuring plans."""
        batches = _batches(data, model)
        if not batches:
            raise SpecError("model= needs data=: the calibration batches the run measured (plans are calibrated and "
                            "measured on them)")
        model, _, evaluate, _ = resolve_specs(model, batches, evaluate)
        self.model, self.data, self.evaluate = (self._as_measured(in_eval_mode(canonical(model), False), batches),
                                                batches, evaluate)
        self.model_groups = self._groups_of(self.model, batches)
        self._versions = weight_versions(self.model)  # as checked against the run's fingerprint just now

    def _groups_of(self, model: nn.Module, batches: list) -> ModelGroups | None:
        """The model's groups as the run recorded them (for quantize_plan): discovered again with the run's ties,
        exclusions and pins; None where they do not come out the same (give discover_groups the plan's options)."""
        arguments = self.run.arguments() if self.run is not None and self.run.exists else {}
        try:
            found = discover_groups(model, split_item(batches[0])[0], ties=list(arguments.get("tie") or []),
                                    exclude=list(self.excluded), pins=dict(self.pins))
        except MixprecError:
            return None
        same = {g.name: list(g.layer_names) for g in found} == {k: list(v) for k, v in self.groups.items()}
        return found if same else None

    def _as_measured(self, model: nn.Module, data: list | None) -> nn.Module:
        """``model`` (loaded again) as this run measured it: with its join quantizers where it had them,
        calibrated on all of ``data``, and checked against the run's fingerprint."""
        if self.joins:
            from .swap import with_join_quantizers
            model = with_join_quantizers(model.eval(), data or [], self.activation_range)
        self.run.check_loaded(model, data)
        return model

    def check_named(self, device: str | None = None) -> None:
        """Load the model and data the command line named again (``specs``) and check them against the run's
        fingerprint, as measuring a plan would: for a command that measured nothing (a guard with no rival), so
        that it never echoes another model's specs as the run's."""
        if self.model is None and self.run is not None and self.run.exists and \
                (self.specs.get("model") or self.specs.get("data")):
            self._evaluator_from_run(None, device, "nearest", None, divergence="auto").load()

    def _rounding(self, rounding: str | RoundingConfig | None, options: dict | None) -> RoundingConfig:
        """The rounding plans are measured with: the analysis's (None), or ``rounding``; a name of the analysis's
        own rounding keeps the switches it was measured with (gptq's static_groups, act_order) but the
        ``options`` given, as the run's --rounding gptq --static-groups is still meant by solve --rounding gptq."""
        own = self.rounding if isinstance(self.rounding, RoundingConfig) else None
        if rounding is None or (isinstance(rounding, str) and own is not None and rounding == own.name):
            return rounding_config(self.rounding, **(options or {}))
        return rounding_config(rounding, **(options or {}))

    # ---- the allocation problem -----------------------------------------------------------------------
    def check_unchanged(self) -> None:
        """The model in memory has the weights this analysis measured: one trained (or edited) in place since
        would be planned with the former weights' sensitivities, and its plans measured with the new ones."""
        if self.model is not None and self._versions is not None and weight_versions(self.model) != self._versions:
            raise SpecError("the model's weights changed in place since this analysis measured them (training, an "
                            "optimizer step, an in-place edit): its sensitivity table is of the former weights; "
                            "analyze the model again (the same run_dir refuses the changed model: give a new one)")

    def problem(self, candidates: str | Iterable[str] | None = None, cost_files: Iterable[str] = (),
                custom_costs: dict[str, tuple[np.ndarray, float]] | None = None) -> AllocationProblem:
        """The sensitivity aligned with every cost table, and which candidates each group may take:
        its pin, ``candidates`` (a restriction of the measured ones), and the entries every custom
        cost table has. ``cost_files``: ``KIND=FILE.csv`` (rows layer,candidate,value; see README);
        ``custom_costs``: kind -> ((G, C) array with NaN where unknown, constant for the rest)."""
        self.check_unchanged()
        cost_files = one_or_many(cost_files)
        table = self.table
        col = [self.costs.candidates.index(c) for c in table.candidates]
        tables = {k: v[:, col] for k, v in self.costs.tables.items()}
        fixed = dict(self.costs.fixed)
        allowed = np.ones(table.values.shape, dtype=bool)
        for g, pin in self.pins.items():
            allowed[table.groups.index(g)] = [c == pin for c in table.candidates]
        for g, refused in self.refused.items():  # what the target cannot run is never chosen
            if g in table.groups and g not in self.pins:
                allowed[table.groups.index(g)] &= [c not in refused for c in table.candidates]
        if self.pin_only:  # a pin's own candidate, not one of --candidates, is for the pinned groups alone
            unpinned = np.array([g not in self.pins for g in table.groups])
            allowed[unpinned] &= np.array([c not in self.pin_only for c in table.candidates])[None, :]
        if candidates:
            names = candidates.split(",") if isinstance(candidates, str) else list(candidates)
            keep = {c.name if isinstance(c, Candidate) else parse_candidate(c).name for c in names
                    if isinstance(c, Candidate) or str(c).strip()}  # Candidate objects, as analyze takes them
            # a name without a range suffix (w4) stands for the run's variant of it (w4-mse after weight_range=
            # "auto"), as in budgets and pins
            keep = {range_variant(c, table.candidates) for c in keep}
            unknown = sorted(keep - set(table.candidates))
            if unknown:
                raise SpecError(f"--candidates names {unknown}, which this run did not measure; its candidates: "
                                f"{', '.join(table.candidates)}")
            pinned = np.array([g in self.pins for g in table.groups])  # a pin holds whatever --candidates says
            allowed[~pinned] &= np.array([c in keep for c in table.candidates])[None, :]
        customs = dict(custom_costs or {})
        for item in cost_files:
            kind, sep, file = item.partition("=")
            kind = kind.strip().lower()
            if not sep or not kind or not file:
                raise SpecError(f"--cost {item!r} must look like KIND=FILE.csv, e.g. latency_ms=latency.csv")
            if kind in tables or kind in customs:
                raise SpecError(f"cost kind {kind!r} already exists; name the custom table differently")
            customs[kind] = load_cost_csv(file, self.groups, table.candidates) + (file,)
        notes = []
        bases = {}  # kind -> the float model's measured cost, where a profile's JSON lies beside its CSV
        unknown = {}  # kind -> the entries its table lacks
        for kind, (custom, constant, *source) in customs.items():
            base = _measured_float(source[0]) if source else None
            if base is not None:
                bases[kind] = base
            missing = np.isnan(custom) & allowed
            if missing.any():
                notes.append(f"{source[0] if source else kind} has no {kind} for {int(missing.sum())} (group, "
                             "candidate) entries; those are not chosen")
            allowed &= ~np.isnan(custom)
            unknown[kind] = np.isnan(custom)
            tables[kind] = np.nan_to_num(custom, nan=0.0)
            fixed[kind] = constant
        if self.joins and not table.metadata.get("integer_bias"):
            notes.append("this run was measured before mixprec simulated the int8 kernels' int32 bias rounding "
                         "(mixprec.integer_bias); its plans are applied and evaluated with it, its sensitivities are "
                         "not: analyze again into a new directory to measure them so")
        if any(self.refused.values()):
            notes.append(f"target {self.target} cannot run {sum(len(c) for c in self.refused.values())} (group, "
                         "candidate) pair(s) of this run; those are not chosen")
        empty = [g for g, row in zip(table.groups, allowed) if not row.any()]
        if empty:
            by_target = [g for g in empty if set(self.refused.get(g, ())) >= set(table.candidates)]
            if by_target:
                raise SpecError(f"target {self.target} can run none of the candidates of group(s) {by_target[:3]} "
                                f"({', '.join(table.candidates)}); add a candidate it runs there (a weight-only one such "
                                f"as w8, or fp32) to --candidates, or leave the layers float with --exclude "
                                f"{by_target[0]}")
            raise SpecError(self._nothing_left(empty, keep if candidates else None, unknown))
        return AllocationProblem(tuple(table.groups), tuple(table.candidates), table.values, tables, fixed, allowed,
                                 dict(self.pins), table.metric, tuple(notes), bases, unknown)

    def _nothing_left(self, empty: list[str], keep: set[str] | None, lacking: dict[str, np.ndarray]) -> str:
        """Why groups have no candidate left, and what to change: --candidates, a candidate measured only for the
        pinned groups, or the entries a cost table lacks."""
        table = self.table
        reasons = []
        if keep is not None:
            for_pins = sorted(keep & set(self.pin_only))
            usable = sorted(c for c in table.candidates if c not in self.pin_only)
            reasons.append(f"--candidates {','.join(sorted(keep))}" + (
                f" ({', '.join(for_pins)} {'was' if len(for_pins) == 1 else 'were'} measured only for the groups a "
                f"--pin names)" if for_pins else "") + f" leaves them none; this run's candidates for every group: "
                f"{', '.join(usable)}")
        for kind, missing in lacking.items():
            rows = [table.groups.index(g) for g in empty]
            if missing[rows].all(axis=1).any():
                reasons.append(f"the {kind} cost table has no entry for them; add rows for them to it")
        refused = [g for g in empty if self.refused.get(g)]
        if refused:
            reasons.append(f"target {self.target} cannot run {', '.join(self.refused[refused[0]])} on {refused[0]}")
        return (f"group(s) {empty[:3]}{' and more' if len(empty) > 3 else ''} have no candidate left: "
                + ("; ".join(reasons) or "the pins, --candidates and cost tables together exclude every candidate"))

    def budgets(self, budget: str | dict[str, Any], problem: AllocationProblem) -> dict[str, float]:
        """``"bops=w4a8,bytes=2MB"`` or ``{"bops": "w4a8", "bytes": 2e6}`` as kind -> value."""
        if isinstance(budget, dict):
            budget = ",".join(f"{k}={_budget_value(v)}" for k, v in budget.items())
        if not isinstance(budget, str):
            raise SpecError(f"a budget is a string such as 'bytes=2MB' or 'bops=w4a8,bytes=0.5x', or a dict such as "
                            f"{{'bytes': 2e6}}; got {type(budget).__name__} {budget!r}")
        budgets = parse_budgets(budget, list(problem.costs), problem.uniform_cost, problem.highest_cost)
        for kind in budgets:
            _check_known(problem, kind)
        return budgets

    def plan(self, assignments: dict[str, str], metadata: dict[str, Any] | None = None) -> Plan:
        """A plan of these groups; it keeps the point counts of its multipoint layers (the ones its costs assume)."""
        return Plan(dict(assignments), self.groups, self.excluded,
                    {**(metadata or {}), **applied_with(assignments, self.groups, self.joins, self.point_counts)})

    def uniform_rivals(self, problem: AllocationProblem, budgets: dict[str, float]) -> dict[str, np.ndarray]:
        """Every uniform plan within ``budgets`` (pins kept), and its variant with the first and last
        groups at 8-bit weights (the same activation format), label -> choice. First and last as the
        forward calls them (``edges``, found when the groups were made); for a run made before that was
        recorded, the table's first and last groups."""
        rivals = {}
        ends = [problem.groups.index(g) for g in self.edges if g in problem.groups] if self.edges else \
            [0, len(problem.groups) - 1]
        edges = [i for i in dict.fromkeys(ends) if problem.groups[i] not in problem.pins]
        fits = lambda choice: all(within(problem.cost(k, choice), b) for k, b in budgets.items())  # noqa: E731
        for cand in problem.uniform_candidates():
            choice = problem.uniform_choice(cand)
            if fits(choice):
                rivals[f"uniform {cand}"] = choice
            parsed = parse_candidate(cand)
            if parsed.weight is None or parsed.weight_bits >= 8:
                continue
            for i in edges:
                siblings = [j for j, c in enumerate(problem.candidates) if problem.allowed[i, j]
                            and parse_candidate(c).weight_bits == 8 and parse_candidate(c).activation == parsed.activation
                            and not parse_candidate(c).multipoint]
                if not siblings:
                    break
                choice = choice.copy()
                choice[i] = min(siblings, key=lambda j: (problem.costs["bytes"][i, j], j))
            else:
                if edges and fits(choice):
                    rivals[f"uniform {cand}, first/last {problem.candidates[choice[edges[0]]]}"] = choice
        # one plan, one rival: a variant whose first and last groups are all the groups (a model of one or two)
        # is another uniform plan, measured once and named as what it is
        unique: dict[bytes, str] = {}
        for label in sorted(rivals, key=lambda label: (", first/last" in label, label)):
            unique.setdefault(np.asarray(rivals[label]).tobytes(), label)
        return {label: choice for label, choice in rivals.items() if label in unique.values()}

    # ---- measuring plans -------------------------------------------------------------------------------
    def evaluator(self, evaluate: Callable | str | None = None, device: str | None = None,
                  rounding: str | RoundingConfig = "nearest", rounding_options: dict | None = None, *,
                  divergence: str | None = None,
                  divergence_batches: int | tuple[int, int] | None = None) -> PlanEvaluator:
        """Measures plans with ``evaluate`` (a function model -> float or dict, or a spec such as
        file.py:function), or, with ``divergence`` ("auto", "kl", "sqnr"), by the label-free output
        divergence from the float model on the calibration data (its first ``divergence_batches``
        batches, default all, which then also calibrate the plans; a pair (start, stop): batches start..stop-1,
        with the plans calibrated on all of them; mixprec.sensitivity.divergence): on the analysed
        model when this process made the analysis, else on the model and data the run's arguments
        name (the built-in model's own evaluation by default)."""
        _check_device(device)
        named = self.run is not None and self.run.exists and bool(self.specs.get("model")
                                                                   or self.run.arguments().get("model"))
        if self.model is not None and (not isinstance(evaluate, str) or not named):
            # a spec with the model in memory and a run that names none: the spec's function on this model
            spec = evaluate if isinstance(evaluate, str) else None
            fn = load_eval(spec, self.model_name) if spec is not None else evaluate or self.evaluate
            if fn is None and divergence is None:
                raise SpecError("measuring plans needs an evaluation: pass evaluate=fn (model -> float or dict)")
            from .sensitivity.store import data_hash
            # the measurements' key names the model only where they are kept (the run's log); in this
            # process they are keyed by the evaluator itself (hashing an 8B model costs seconds)
            settings = {"model": self.run.model_hash(self.model) if self.run is not None else "in memory",
                        "data": data_hash(self.data or []),
                        "weight_range": self.weight_range, "activation_range": self.activation_range,
                        "eval": _divergence_key(divergence, divergence_batches) if divergence
                        else spec or getattr(fn, "__qualname__", repr(fn))}
            if not divergence:
                settings.update(_eval_source(spec if spec is not None else fn))
            if self.joins:
                settings["joins"] = JOINS_VERSION
            model, data, score = self.model, self.data, fn
            if divergence:
                data, scored = _divergence_data(_labelled(self.model_name, data), divergence_batches)
                score = OutputDivergence(model, scored, divergence)
            return PlanEvaluator(lambda: (model, data, score), self.groups, self.excluded, settings, self.run,
                                 self.point_counts, self.weight_range, self.activation_range,
                                 device or device_of(model), rounding, rounding_options,
                                 "divergences" if divergence else "evaluations")
        return self._evaluator_from_run(evaluate, device, rounding, rounding_options, divergence, divergence_batches)

    def _evaluator_from_run(self, eval_spec: Callable | str | None, device: str | None, rounding: str,
                            rounding_options: dict | None, divergence: str | None = None,
                            divergence_batches: int | tuple[int, int] | None = None) -> PlanEvaluator:
        if self.run is None or not self.run.exists or not (self.specs.get("model") or self.run.arguments().get("model")):
            raise SpecError("measuring plans needs the model: this analysis has none in memory and its run "
                            "directory names no --model to load; reopen it with its model and data, "
                            "Analysis.load(run, model=..., data=...), or give --model/--data on the command line")
        # a function in memory scores the run's model as it is: no evaluation spec is loaded
        fn = eval_spec if eval_spec is not None and not isinstance(eval_spec, str) else None
        eval_spec = None if fn is not None else eval_spec
        # a divergence measures on the calibration data: no evaluation is loaded
        needed = ("model", "data") if divergence is not None or fn is not None else ("model", "data", "eval")
        arguments = self.run.specs_to_run({**self.specs, "eval": eval_spec or self.specs.get("eval")},
                                          self.trust_run, needed)
        model_spec = arguments.get("model")
        if divergence is None and fn is None:
            eval_spec = eval_spec or arguments.get("eval") or (model_spec if is_builtin(model_spec) else None)
            if not eval_spec:
                raise SpecError("measuring plans needs an evaluation: give --eval file.py:function (the model is "
                                "not built-in and the analysis had no --eval)")
        settings = {k: arguments.get(k) for k in ("model", "data", "calibration_samples", "tie", "exclude", "pin",
                                                  "weight_range", "activation_range")}
        settings["eval"] = _divergence_key(divergence, divergence_batches) if divergence else \
            getattr(fn, "__qualname__", repr(fn)) if fn is not None else eval_spec
        if not divergence:
            settings.update(_eval_source(fn if fn is not None else eval_spec))
        if self.joins:  # the int8 graph: join quantizers and the kernels' int32 bias rounding (integer_bias)
            settings["joins"] = JOINS_VERSION
            settings["integer_bias"] = 1
        run_groups = list(self.groups)
        device = device or _recorded_device(arguments.get("device"))

        def load():
            a = arguments
            model, data, _, groups = prepare(a["model"], a.get("data"), a.get("calibration_samples"),
                                             a.get("tie") or [], a.get("exclude") or [], a.get("pin") or [])
            model = self._as_measured(model, data)
            if a.get("stream"):  # analysed with its blocks streamed: measured the same way
                stream_blocks(model, device)
            if list(groups.names) != run_groups:
                raise SpecError(f"the model's groups no longer match the run {self.run.path} (did the model or the "
                                "--tie/--exclude options change?); analyze it again")
            if divergence:
                data, scored = _divergence_data(_labelled(a["model"], data), divergence_batches)
                score = OutputDivergence(model, scored, divergence)
            else:
                score = fn if fn is not None else load_eval(eval_spec, a["model"])
            return model, data, score
        return PlanEvaluator(load, self.groups, self.excluded, settings, self.run, self.point_counts,
                             _run_weight_range(arguments), arguments.get("activation_range") or "mse",
                             device, rounding, rounding_options,
                             "divergences" if divergence else "evaluations")

    # ---- solve -------------------------------------------------------------------------------------------
    def solve(self, budget: str | dict[str, Any] | None = None, search: str = "exact", *,
              candidates: str | Iterable[str] | None = None, cost_files: Iterable[str] = (),
              kind: str | None = None, max_drop: str | float | None = None,
              evaluate: Callable | str | None = None, device: str | None = None,
              rounding: str | RoundingConfig | None = None, rounding_options: dict | None = None,
              evaluator: PlanEvaluator | None = None, guard: bool = True, guard_divergence: str = "auto",
              guard_margin: float = 1.0, guard_holdout: float | None = None, verbose: bool = False,
              **options: Any) -> Plan:
        """One candidate per group: the least total sensitivity within every budget (``search="exact"``),
        or one of the seed papers' searches (``mixprec.solvers.SOLVERS``; their own options as keywords,
        e.g. ``qem=1.5`` for mixquant, ``rounds=2`` for refine). Searches that measure plans use
        ``evaluate`` (or the analysis's) with ``max_drop`` ("1%" or an amount in the metric's units).

        guard (default on): the plan is measured against every uniform plan within the same budgets
        (and each one's variant with the first and last groups at 8 bits) by a label-free output
        divergence on the calibration data (``guard_divergence``: auto, agreement, kl, sqnr, nll, ce, mse or
        consensus, which is agreement and sqnr together, with ce, the cross-entropy against the labels, where
        the calibration items are (inputs, labels) pairs or the built-in model has calibration labels, and
        what auto is for classifiers; for an output with float targets of its shape in the calibration items,
        consensus is sqnr and mse, the error against the targets, and auto takes it; auto is nll, the next-token
        negative log-likelihood of the calibration text, for language models); the better plan
        is returned (ties go to uniform) and ``plan.metadata["guard"]`` says which and why. A tie is a
        difference within ``guard_margin`` standard errors of the paired per-sample difference on the
        calibration data (default 1; 0: any lower measurement wins)."""
        _check_device(device)
        new_measurements()  # each call checks its evaluation's logged figures anew (plan_evaluation._verify)
        cost_files = one_or_many(cost_files)
        if search not in SOLVERS:
            raise SpecError(f"unknown search {search!r}; searches: {', '.join(SOLVERS)}")
        from .sensitivity.divergence import AUTO, DIVERGENCES, GUARD_CHOICES, TASK
        known = ("auto", *AUTO, *DIVERGENCES, *TASK, *LABELLED, "consensus")
        if guard_divergence not in known:  # checked before any work (a typo turned the guard off with a warning)
            raise SpecError(f"unknown guard divergence {guard_divergence!r}; choose one of: "
                            f"{', '.join(GUARD_CHOICES)}")
        if not isinstance(guard_margin, (int, float)) or isinstance(guard_margin, bool) or not guard_margin >= 0:
            raise SpecError(f"guard_margin must be a number of standard errors >= 0 (default 1), got {guard_margin!r}")
        _check_search_options(search, options)
        rounding = self._rounding(rounding, rounding_options)
        problem = self.problem(candidates, cost_files)
        budgets = self.budgets(budget, problem) if budget else {}
        if search in ("exact", "refine") and not budgets:
            raise SpecError(f"--search {search} needs --budget, e.g. --budget bops=w4a8 (in Python: budget='bops=w4a8')")
        measured_search = search in MEASURED or (search == "greedy-pareto" and max_drop is not None)
        if max_drop is not None and not measured_search:
            raise SpecError(f"max_drop (--max-drop) is the measured drop a measured search allows (greedy, bisection, "
                            f"refine, greedy-pareto); search {search!r} measures no plan by the evaluation, so it would "
                            "be ignored: choose one of those searches, or leave max_drop out")
        if evaluate is not None and not measured_search:
            raise SpecError(f"evaluate is the metric a measured search decides by (greedy, bisection, refine, "
                            f"greedy-pareto with max_drop); search {search!r} (and the guard, which decides on the "
                            "calibration data) measures no plan by it, so it would be ignored: measure the plan with "
                            "mixprec.quantize_plan(model, plan, data, analysis.model_groups, evaluate=fn), or leave "
                            "evaluate out")
        if rounding.name != "nearest" and not measured_search and not guard and rounding != self.rounding:
            raise SpecError(f"--rounding {rounding.name} changes how plans are measured, and --search {search} without "
                            "the guard measures none; use it with the guard, or --search refine, greedy, bisection or "
                            "greedy-pareto --max-drop")
        say = print if verbose else (lambda *_: None)
        goal = Goal(budgets, ALIASES.get(kind, kind) if kind else None)
        if measured_search:
            evaluator = evaluator or self.evaluator(evaluate, device, rounding)
            max_loss = evaluator.max_loss(max_drop if max_drop is not None else "1%")  # checked before measuring
            ref = evaluator.reference()
            say(f"float model: {ref.name} {ref.value:.4g}" + (f" (evaluations are cached in {evaluator.log})"
                                                               if evaluator.log else ""))

            searched = []  # every plan the search measured

            def measure(choice: np.ndarray) -> float:
                result = evaluator.measure(problem.assignments(choice))
                say(f"  measured plan: {result.name} {result.value:.4g} ({evaluator.measured} new evaluations)")
                searched.append(result)
                return evaluator.loss(result)
            goal = Goal(budgets, goal.kind, measure, max_loss)
        else:
            evaluator = None
        if guard_holdout and not (search == "local" and guard):  # it holds batches apart from the local search
            raise SpecError(f"guard_holdout (--guard-holdout) holds calibration batches apart from the local search "
                            f"for the guard; with search={search!r}{'' if guard else ' and no guard'} there is "
                            "nothing to hold them from: drop it"
                            + (", or use search='local' (--search local)" if search != "local" else "")
                            + (", or keep the guard (drop guard=False, --no-guard)" if not guard else ""))
        search_part, guard_part = self._held_apart(search == "local" and guard, guard_holdout)
        bar = None
        try:
            if search == "local":
                goal, options, bar = self._local_goal(problem, goal, options, guard_divergence, device, say, rounding,
                                                      search_part)
            solution = SOLVERS[search](problem, goal, **options)
        except InfeasibleBudget as exc:
            # what the problem leaves out (cost-table gaps, the target's refusals) is often why
            notes = [*_as_fractions(problem, budgets), *problem.notes]
            if notes and self.model_groups is not None:  # weights that stay float are a floor no plan lowers
                notes += [n for n in self.model_groups.notes if "stay float" in n]
            if not notes:
                raise
            raise InfeasibleBudget(f"{exc}. Note: {'; '.join(notes)}") from None
        finally:
            if bar is not None:
                bar.close()
        notes = [step["note"] for step in solution.trace if step.get("note")]
        if measured_search:
            note = _upside_down(evaluator, searched, max_loss)
            if note:
                from .errors import EvaluationNote
                notes.append(note)
                warnings.warn(note, EvaluationNote, stacklevel=2)
        searched_costs = dict(solution.costs)  # the search's own plan, before the guard
        guarded = None
        replaced = None
        skipped_note = None  # why the guard did not run, where it could not
        if guard:
            kind_of_plan = goal.kind or problem.default_kind
            # rivals of no greater cost than the plan: the budget, or the plan's own cost where a search bounded by a
            # measured drop went over it (uniform plans within the budget would be no like-for-like comparison)
            guard_budgets = {k: max(b, solution.costs[k]) if k in solution.costs else b for k, b in budgets.items()} \
                if budgets else {kind_of_plan: solution.costs[kind_of_plan]}
            guarded, guard_kind, note = self._guard(problem, solution.choice, guard_budgets, guard_divergence, device,
                                                    say, rounding, guard_margin, guard_part)
            if note:
                notes.append(note)
            if guard_kind == "sqnr" and guard_divergence == "auto" and guarded is not None and guarded.divergence:
                hint = self._class_scores_hint(device, guard_part, rounding)
                if hint:
                    notes.append(hint)
            if guarded is None and note and note.startswith("guard skipped"):
                warnings.warn(note, GuardSkipped, stacklevel=2)
                skipped_note = note
            if guarded is not None and guarded.chosen != MIXED and goal.max_loss is not None and evaluator is not None:
                # a measured search kept its plan within max_drop: a uniform rival that breaks it is no answer
                rival = evaluator.measure(problem.assignments(guarded.choice))
                own = evaluator.loss(evaluator.measure(problem.assignments(solution.choice)))  # cached: measured
                if evaluator.loss(rival) > goal.max_loss >= own:  # only a plan that keeps the limit is kept for it
                    kept = (f"guard: {guarded.chosen} measures {rival.name} {rival.value:.4g}, a drop beyond "
                            f"max_drop ({max_drop if max_drop is not None else '1%'}) that search {search} kept its "
                            "plan within; the search's plan is returned")
                    if note in notes:  # the guard's own note says it returned the uniform plan: it does not
                        notes.remove(note)
                    notes.append(kept)
                    guarded = dataclasses.replace(guarded, chosen=MIXED, choice=solution.choice,
                                                  reason=f"{guarded.reason}; but {kept}")
            if guarded is not None and guarded.chosen != MIXED:
                if note and guarded.divergence:  # measured, and replaced: Python users see it too
                    warnings.warn(note, GuardNote, stacklevel=2)
                if search == "exact" and budgets and not np.array_equal(guarded.choice, problem.least_sensitive()):
                    notes.append("a uniform plan is the answer at this budget; --search local (in Python: "
                                 "search='local') measures moves from the exact and the best uniform plans on the "
                                 "calibration data for as long as the analysis took, and can find a mixed plan "
                                 "that beats uniform")
                    notes += _one_activation_width(problem.candidates, budgets)
                replaced = problem.assignments(solution.choice)  # kept in the plan: to try it, or apply it anyway
                solution = problem.solution(guarded.choice, evaluations=solution.evaluations, trace=solution.trace)
        over = [f"{k} {solution.costs[k]:.6g} > {b:.6g}" for k, b in budgets.items()
                if k in solution.costs and not within(solution.costs[k], b)]
        if over:  # a search bounded by a measured drop, not by the budget (greedy, bisection): said, never silent
            own = [f"{k} {searched_costs[k]:.6g}" for k in budgets if k in searched_costs]
            note = (f"this plan exceeds the budget ({', '.join(over)}): search {search} stops at the measured drop "
                    "(--max-drop), not at a budget; --search exact, local or greedy-pareto meets the budget"
                    + (f"; the guard returned {guarded.chosen} in place of the search's plan ({', '.join(own)}), "
                       "as the best uniform plan of no greater cost than that plan"
                       if guarded is not None and guarded.chosen != MIXED and guarded.divergence else
                       "; the guard compares it with the uniform plans of no greater cost than the plan itself"
                       if guard else ""))
            notes.append(note)
            from .errors import BudgetNote
            warnings.warn(note, BudgetNote, stacklevel=2)
        boundaries = _unpriced_boundaries(cost_files, problem.assignments(solution.choice))
        if boundaries:
            from .errors import BudgetNote
            notes.append(boundaries)
            warnings.warn(boundaries, BudgetNote, stacklevel=2)
        measured = evaluator.measure(problem.assignments(solution.choice)) if evaluator is not None else None
        least = problem.least_sensitive()
        if budgets and all(solution.costs[k] < budgets[k] for k in budgets) and np.array_equal(solution.choice, least):
            among = ("overall" if problem.allowed.all() else
                     "that the pins, --candidates and cost tables allow" if candidates or cost_files else
                     "that the pins and the run allow")
            notes.insert(0, f"the budget does not bind: this is the least-sensitive plan {among}")
        metadata = {"kind": "solved", "search": search, "model": self.model_name, "metric": self.table.metric,
                    "budgets": budgets, "predicted_sensitivity": solution.objective,
                    "predicted_costs": solution.costs, "evaluations": solution.evaluations,
                    "measured": measured.to_dict() if measured else None, "trace": solution.trace,
                    "run": str(self.run.path.resolve()) if self.run else None}
        metadata.update(rounding_metadata(rounding))  # what the measurements assumed: apply the plan with it too
        if guarded is not None:
            metadata["guard"] = guarded.to_dict(guard_kind, "calibration data" if guard_part is None else
                                                f"calibration batches {guard_part[0] + 1}-{guard_part[1]} of "
                                                f"{guard_part[1]}, held apart from the local search's")
            if guarded.chosen != MIXED and guarded.divergence:
                metadata["guard"]["replaced_plan"] = replaced  # the mixed plan it measured and did not return
        elif guard and skipped_note:  # recorded: a plan the guard never compared is not mistaken for a guarded one
            metadata["guard"] = {"skipped": skipped_note}
        if problem.notes or notes:
            metadata["notes"] = list(problem.notes) + notes
        return self.plan(problem.assignments(solution.choice), metadata)

    @property
    def joins(self) -> bool:
        """Whether the sensitivity was measured with join quantizers (``analyze(..., joins=True)``)."""
        return bool(self.table.metadata.get("joins", False))

    @property
    def rounding(self) -> RoundingConfig:
        """The rounding the sensitivity was measured with (``analyze(..., rounding=)``; nearest by default):
        the guard and the local search measure plans with it, and so do solve's and pareto's
        measurements unless told otherwise."""
        saved = dict(self.table.metadata.get("rounding") or {"name": "nearest"})
        return recorded_rounding(saved.pop("name"), saved)  # a run of an older mixprec: its defaults

    def _checker(self, divergence: str, device: str | None, batches: int | tuple[int, int] | None = None,
                 rounding: RoundingConfig | None = None) -> PlanEvaluator:
        """The divergence evaluator the guard and the local search measure with (one per analysis and
        number of batches), rounding plans with ``rounding`` (default: as the sensitivity was measured)."""
        divergence = self._resolve_auto(divergence)
        rounding = rounding or self.rounding
        key = (divergence, str(device), batches, rounding)
        if key not in self._checkers:  # the model and float outputs load once
            self._checkers[key] = self.evaluator(device=device, divergence=divergence, divergence_batches=batches,
                                                 rounding=rounding)
        return self._checkers[key]

    def _class_scores_hint(self, device: str | None, batches: tuple[int, int] | None,
                           rounding: RoundingConfig | None) -> str | None:
        """A note where the guard's auto divergence came out as 1/SQNR alone for an output that may be class
        scores (batch, classes) with no labels beside it: the classifier's consensus must be asked for."""
        try:
            score = self._checker("auto-guard", device, batches, rounding).load()[2]
            ref = score._references()[0]  # the float outputs (one pass where the plans came from the run's log)
        except Exception:  # a hint only
            return None
        if not (isinstance(ref, torch.Tensor) and ref.ndim == 2 and ref.shape[1] >= 2 and ref.is_floating_point()):
            return None
        return (f"the guard compared the plans by 1/SQNR of the output alone: the calibration items have no labels, "
                f"so its {ref.shape[1]} outputs a sample are not known to be class scores; for a classifier, "
                "--guard-divergence consensus (in Python guard_divergence='consensus') also asks for less top-1 "
                "disagreement with the float model, and (inputs, labels) items add the labels' cross-entropy")

    def _resolve_auto(self, divergence: str) -> str:
        """A built-in model says what its output is; other models are recognised from their output and
        labels when the divergence is first measured (mixprec.sensitivity.divergence.auto_kind)."""
        if divergence not in ("auto", "auto-smooth", "auto-guard", "auto-search") or not self.model_name \
                or not is_builtin(self.model_name):
            return divergence
        from .builtin import get_builtin
        output = get_builtin(self.model_name).output
        if output == "logits":
            return {"auto-smooth": "kl", "auto-search": "kl", "auto-guard": "consensus"}.get(divergence, "agreement")
        if output == "tokens":  # the guard and the search score an LM's calibration text itself (its next tokens)
            return "nll" if divergence in ("auto-guard", "auto-search") else "kl"
        return "sqnr"

    def _held_apart(self, searched: bool, holdout: float | None) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
        """(the calibration batches a measured search decides on, those the guard decides on): after a
        local search the guard judges its plan on batches the search never measured (the search took the
        moves that measured best on its own batches, so there they measure better than they are); the last
        ``holdout`` fraction of the batches (at least one), the rest for the search. (None, None): all
        batches for both (no search, holdout 0, or fewer than 2 batches)."""
        if not searched:
            return None, None
        fraction = HOLDOUT if holdout is None else holdout
        if not isinstance(fraction, (int, float)) or isinstance(fraction, bool) or not 0 <= fraction < 1:
            raise SpecError(f"guard_holdout must be a fraction of the calibration batches in [0, 1), got {holdout!r}")
        n = self._calibration_batches()
        if not fraction or not n or n < 2:
            return None, None
        held = min(n - 1, max(1, round(n * fraction)))
        return (0, n - held), (n - held, n)

    def _local_goal(self, problem: AllocationProblem, goal: Goal, options: dict, divergence: str, device: str | None,
                    say: Callable[[str], None], rounding: RoundingConfig | None = None,
                    part: tuple[int, int] | None = None) -> tuple[Goal, dict, Any]:
        """The local search measures by the output divergence on the calibration data, and starts from the
        exact plan and every uniform plan within the budget; with the progress bar it updates (None unless the
        steps are printed), which the caller closes."""
        if not goal.budgets:
            raise SpecError("--search local needs --budget, e.g. --budget bops=w4a8 (in Python: budget='bops=w4a8')")
        seconds = self._search_seconds(options.pop("time_budget", "1x"))  # a bad one is refused before any measuring
        # moves need small differences to show: KL for classifiers, not top-1 disagreement; NLL of the
        # calibration text for language models, as the guard (benchmarks/guard_noise_lm.py)
        divergence = "auto-search" if divergence in ("auto", "consensus") else divergence
        checker = self._checker(divergence, device, part, rounding=rounding)
        where = f" (batches {part[0] + 1}-{part[1]}; the guard decides on the others)" if part else ""
        say(f"local search: measuring plans by their output divergence on the calibration data{where}")
        bar = None
        if say is print:  # a progress bar where the steps are shown: each plan is a pass over the data
            from .progress import tqdm
            limit = f"{seconds:.0f} s" if seconds is not None else "no time limit"
            bar = tqdm(total=options.get("evaluations"), desc=f"local search ({limit})", unit="plan", leave=False)

        best = [math.inf]  # the lowest divergence measured so far, shown on the bar

        def measure(choice: np.ndarray) -> float:
            value = checker.measure(problem.assignments(choice)).value
            if bar is not None:
                best[0] = min(best[0], value)
                bar.set_postfix_str(f"best {best[0]:.4g}", refresh=False)
                bar.update()
            return value
        # the exact plan and the two uniform plans the table ranks best (the others are cheaper and worse:
        # measuring them would spend evaluations on starts the search never takes)
        rivals = sorted(self.uniform_rivals(problem, goal.budgets).values(), key=lambda c: problem.totals(c)[0])
        starts = [SOLVERS["exact"](problem, goal).choice, *rivals[:2]]
        if seconds is not None:
            options = {"seconds": seconds, **options}
        batches = part[1] if part else self._calibration_batches()
        if options.pop("staged", False) and batches is not None and batches >= 4:
            # cheap to expensive: a quarter of the batches screens each round's moves, all of them decide.
            # Off by default: on ResNet-20 it found the same plan in more time (local_search_stages.py)
            screener = self._checker(divergence, device, batches // 4, rounding)
            options = {"screen": lambda choice: screener.measure(problem.assignments(choice)).value,
                       "moves_per_round": 16, **options}
        return Goal(goal.budgets, goal.kind, measure), {"starts": starts, **options}, bar

    def _search_seconds(self, budget: str | float | None) -> float | None:
        """The local search's time budget in seconds: ``"1x"`` is once the analysis's own measured time
        (None where the table does not record it), ``"90s"`` or 90 are seconds, None is no limit."""
        if budget is None:
            return None
        text = str(budget).strip().lower()
        try:
            number = float(text[:-1] if text[-1:] in ("x", "s") else text)
        except ValueError:
            number = -1.0
        if not number > 0:  # NaN too
            raise SpecError(f"--time-budget {budget!r} must be a positive multiple of the analysis time (1x, 0.5x) "
                            "or a positive number of seconds (90s, 90); to cap the search by plans measured instead, "
                            "give --evaluations N")
        if text.endswith("x"):
            analysis = self.table.metadata.get("seconds")
            return number * float(analysis) if analysis else None
        return number

    def _calibration_batches(self) -> int | None:
        """How many calibration batches the measurements run on (None where unknown without loading)."""
        if self.data is not None:
            return len(self.data)
        if self.run is not None and self.run.exists:
            return self.table.metadata.get("calibration_batches")
        return None

    def _guard(self, problem: AllocationProblem, choice: np.ndarray, budgets: dict[str, float], divergence: str,
               device: str | None, say: Callable[[str], None], rounding: RoundingConfig | None = None,
               margin: float = 1.0, batches: tuple[int, int] | None = None):
        """(GuardResult or None, the divergence measured with, a note for the user or None); measured on the
        calibration batches ``batches`` (start, stop), default all."""
        rivals = self.uniform_rivals(problem, budgets)
        if not rivals:  # recorded, so that a guard that had nothing to compare is told from one that never ran
            return guard(choice, {}, lambda c: None, margin=margin), divergence, None
        kind = [divergence]
        if not any(np.array_equal(r, choice) for r in rivals.values()):
            # auto for a classifier is a consensus: the mixed plan must disagree less with the float model's
            # top-1 AND have a lower 1/SQNR than the best uniform rival (solvers/guard.py says why)
            try:
                checker = self._checker("auto-guard" if divergence == "auto" else divergence, device, batches,
                                        rounding=rounding)
            except SpecError as exc:
                return None, divergence, f"guard skipped (the plan is not compared with uniform plans): {exc}"
            if any(checker.cached(problem.assignments(c)) is None for c in (choice, *rivals.values())):
                checker.load()  # the model given again is checked against the run before anything is shown
            say(f"guard: measuring the plan and {len(rivals)} uniform plan(s) within the budget on the calibration "
                "data")
            bar, seen = None, set()
            if say is print:  # a progress bar where the steps are shown: each plan is a pass over the data
                from .progress import tqdm
                bar = tqdm(total=len(rivals) + 1, desc="guard", unit="plan", leave=False)

            def measure(c: np.ndarray):
                result = checker.measure(problem.assignments(c))
                if bar is not None and c.tobytes() not in seen:
                    seen.add(c.tobytes())
                    bar.update(1)
                if result.details.get("consensus"):  # the consensus, from one pass
                    names = tuple(result.details["consensus"])
                    kind[0] = "+".join(names)
                    values = (result.value, *(float(result.details[n]) for n in names[1:]))
                else:
                    kind[0] = result.name  # what "auto" resolved to
                    names, values = (result.name,), (result.value,)
                samples = result.details.get("samples") or {}
                if all(n in samples for n in names):  # per-sample shares: the guard's paired test
                    return Sampled(values, tuple(np.asarray(samples[n], dtype=np.float64) for n in names))
                return values if len(values) > 1 else values[0]
            measure(choice)  # says what the divergence resolved to (the checker keeps it: guard measures it again free)
            # the labels' cross-entropy (a regression's targets' error) vetoes a mixed plan; the divergences from
            # the float model rank the uniform plans
            names = kind[0].split("+")
            rank_by = len(names) - 1 if len(names) > 1 and names[-1] in LABELLED else None
            try:
                result = guard(choice, rivals, measure, margin, rank_by=rank_by,
                               names=tuple(SHOWN.get(n, n) for n in names))
            finally:
                if bar is not None:
                    bar.close()
        else:
            result = guard(choice, rivals, lambda c: float("nan"), margin)
        note = f"guard: returned {result.chosen}: {result.reason}" if result.chosen != MIXED else None
        return result, kind[0], note

    # ---- the Pareto front ---------------------------------------------------------------------------
    def pareto(self, kind: str = "bops", n_plans: int = 30, method: str = "exact", *,
               evaluate: Callable | str | bool | None = None, candidates: str | Iterable[str] | None = None,
               cost_files: Iterable[str] = (), device: str | None = None, rounding: str | RoundingConfig | None = None,
               rounding_options: dict | None = None, guard: bool = True, guard_divergence: str = "auto",
               guard_margin: float = 1.0, progress: bool = True) -> Front:
        """The non-dominated plans for one cost kind, from the cheapest to the most expensive plan (at
        ``n_plans`` evenly spaced budgets and at the cost of every uniform candidate, where a mixed plan is compared
        with it), with every uniform candidate beside them. ``evaluate``
        (True: the analysis's own evaluation) measures the float model and every plan (cached).
        guard: each plan is compared, as in :meth:`solve`, with the uniform plans within its cost, and
        replaced by the best of them where that measures better on the calibration data."""
        _check_device(device)
        new_measurements()  # each call checks its evaluation's logged figures anew (plan_evaluation._verify)
        cost_files = one_or_many(cost_files)
        problem = self.problem(candidates, cost_files)
        rounding = self._rounding(rounding, rounding_options)
        kind = ALIASES.get(kind, kind)
        if kind not in problem.costs:
            from .budgets import unknown_kind_hint
            raise SpecError(f"unknown budget kind {kind!r}; kinds: {', '.join(problem.costs)}"
                            + unknown_kind_hint(kind, list(problem.costs)))
        _check_known(problem, kind)
        if isinstance(n_plans, bool) or not isinstance(n_plans, (int, np.integer)):
            raise SpecError(f"n_plans (--points) is a whole number of budgets, got {type(n_plans).__name__} {n_plans!r}")
        if evaluate is not None and not isinstance(evaluate, (bool, str)) and not callable(evaluate):
            raise SpecError(f"evaluate is a function model -> metric (or a spec string, or True for the analysis's "
                            f"own), got {type(evaluate).__name__} {evaluate!r}")
        if n_plans < 2:
            raise SpecError(f"n_plans (--points) must be at least 2, the cheapest and the most expensive plan, got "
                            f"{n_plans}; for one plan at one budget, solve")
        if rounding.name != "nearest" and not evaluate and rounding != self.rounding:
            raise SpecError(f"--rounding {rounding.name} is how --eval measures the plans; add --eval")
        start = time.perf_counter()
        uniform_costs = [problem.totals(problem.uniform_choice(c))[1][kind] for c in problem.uniform_candidates()]
        solved = pareto_front(problem.sensitivity, problem.costs, kind, n_plans, problem.fixed, problem.allowed,
                              method=method, extra_budgets=uniform_costs)
        solve_s = time.perf_counter() - start
        plans, replaced, skipped = [], 0, None
        from .progress import tqdm
        guard_start = time.perf_counter()
        for p in tqdm(solved, desc="guard", unit="point", leave=False, disable=not (guard and progress)):
            choice, search, guarded = p.solution.choice, method, None
            if guard:
                # against the uniform plans within the budget the point was solved at (as solve's guard), not
                # within its own cost, which can lie just below a uniform candidate's it was solved for
                guarded, guard_kind, note = self._guard(problem, choice, {kind: p.budget * (1 + 1e-12)},
                                                        guard_divergence, device, lambda *_: None, rounding,
                                                        guard_margin)
                if guarded is None and note:  # no model to measure with: the front stays unguarded
                    warnings.warn(note, GuardSkipped, stacklevel=2)
                    skipped = note
                    guard = False
            record = guarded.to_dict(guard_kind, "calibration data") if guarded else None
            if guarded is not None and guarded.chosen != MIXED and guarded.divergence:  # measured and replaced
                choice, search = guarded.choice, f"{method}, guard: {guarded.chosen}"
                record["replaced_plan"] = problem.assignments(p.solution.choice)  # as solve's plan.json keeps it
                replaced += 1
            objective, costs = problem.totals(choice)
            assignments = problem.assignments(choice)
            if any(q.assignments == assignments for q in plans):
                continue
            plans.append(FrontPlan(costs, objective, assignments, None, search, record))
        guard_s = time.perf_counter() - guard_start
        plans.sort(key=lambda q: q.costs[kind])  # a plan the guard replaced may cost less than the one before it
        uniform = {}
        for cand in problem.uniform_candidates():
            choice = problem.uniform_choice(cand)
            objective, costs = problem.totals(choice)
            uniform[cand] = FrontPlan(costs, objective, problem.assignments(choice))
        reference = None
        if evaluate:
            from .progress import tqdm
            evaluator = self.evaluator(None if evaluate is True else evaluate, device, rounding)
            reference = evaluator.reference().to_dict()
            for item in tqdm([*plans, *uniform.values()], desc="evaluating plans", unit="plan", disable=not progress):
                item.measured = evaluator.measure(item.assignments).to_dict()
        front = Front(kind, self.table.metric, method, plans, uniform, self.groups, self.excluded, reference,
                      self.model_name, str(self.run.path.resolve()) if self.run else None,
                      [_absolute_cost_file(item) for item in cost_files],  # report reads them from anywhere
                      candidates if isinstance(candidates, str) or candidates is None else
                      ",".join(c.name if isinstance(c, Candidate) else str(c) for c in candidates),
                      solve_s, {"solved": len(solved),
                                **({"guard_replaced": {"solved": len(solved), "replaced": replaced},
                                    "guard_seconds": round(guard_s, 3)} if guard else {}),
                                **({"guard_skipped": skipped} if skipped else {}), **rounding_metadata(rounding),
                                # what its plans are applied with, as the front measured them (Front.plan)
                                **({"joins": True} if self.joins else {}),
                                **({"point_counts": self.point_counts} if self.point_counts else {})})
        if evaluate and front.better_when_cheaper():
            from .errors import EvaluationNote
            from .front import INVERTED
            warnings.warn(INVERTED, EvaluationNote, stacklevel=2)
        return front

    def report(self, front: Front, out_dir: str | Path, select: int | None = None) -> Path:
        """Write report.html, pareto.png and heatmap.png for ``front`` into ``out_dir``, and the front itself
        (pareto.json), as ``front.save`` does."""
        from .report import write_report
        if Path(out_dir).exists() and not Path(out_dir).is_dir():
            raise OutputError(f"report: {out_dir} is a file; give a folder to write report.html and its plots into")
        try:
            problem = self.problem(front.candidates, front.cost_files)
        except SpecError as exc:
            if not front.cost_files:
                raise
            raise SpecError(f"{exc} (pareto.json names the cost table(s) {front.cost_files}, as pareto read them: "
                            "put them back there)") from exc
        costs = CostTables(problem.groups, problem.candidates, problem.costs, problem.fixed)
        front.save(out_dir)  # the front the report is of, beside it (`mixprec report DIR` reads it)
        return write_report(Path(out_dir), front.to_dict(), self.table, costs, select=select)

    # ---- trust ---------------------------------------------------------------------------------------
    def trust(self, evaluate: Callable | None = None, eval_name: str | None = None,
              progress: bool = True) -> list[dict[str, Any]]:
        """How well this table ranks the real metric drops: the task metric measured for every entry
        (cached in RUN/task/), and the Spearman correlation of the two tables."""
        from .sensitivity.analyze import analyze as measure_table
        from .sensitivity.trust import rank_correlation
        fn = evaluate or self.evaluate
        if self.model is None or fn is None:
            raise SpecError("the trust report measures every entry for real: it needs the model and an evaluation")
        cands = [parse_candidate(c) for c in self.table.candidates]
        eval_name = eval_name or getattr(fn, "__qualname__", repr(fn))  # part of the task run's fingerprint
        # each drop measured with the weights the table was measured with (a GPTQ-aware table against GPTQ's drops)
        rounding = self.rounding if self.rounding.name != "nearest" else None
        truth = measure_table(self.model, self.model_groups, cands, self.data or [], metric="task",
                              run_dir=self.run.task if self.run else None, weight_method=self.weight_range,
                              activation_method=self.activation_range, evaluate=fn, progress=progress,
                              arguments={"eval": eval_name}, rounding=rounding)
        return [{"metric": self.table.metric, "spearman": rank_correlation(self.table, truth),
                 "seconds": self.table.metadata["seconds"]},
                {"metric": "task", "spearman": 1.0, "seconds": truth.metadata["seconds"]}]


def analyze(model: nn.Module | str, data: Iterable | str | None,
            candidates: str | Iterable[str | Candidate] = DEFAULT_CANDIDATES, metric: str = "sqnr",
            run_dir: str | Path | RunDirectory | None = None, *,
            groups: ModelGroups | None = None, tie: Iterable[str] = (), exclude: Iterable[str] = (),
            pins: dict[str, str] | None = None, evaluate: Callable | str | None = None, weight_range: str = "mse",
            activation_range: str = "mse", chunk_size: int | None = None, use_fx: bool = True,
            device: str | torch.device | None = None, progress: bool = True, verbose: bool = False,
            model_name: str | None = None, arguments: dict[str, Any] | None = None,
            prefix: str | None = None, rounding: str | RoundingConfig | None = None,
            joins: bool | None = None, target: str | None = None, stream: bool = False) -> Analysis:
    """Measure the sensitivity of every quantizer group of ``model`` at every candidate, and price
    every (group, candidate) in bytes, BOPs and bits per weight.

    model, data, evaluate may also be spec strings, loaded as the command line loads them
    (``model="hf:DIR?dtype=bf16", data="text:FILE?windows=64&length=1024", evaluate="ppl:FILE"``).
    data: calibration batches (inputs, or (inputs, labels) pairs). candidates: "w4a8,w8a8" or a list.
    metric: a sensitivity metric (mixprec.sensitivity.METRICS; "roundoff" needs no data). groups:
    from :func:`mixprec.discover_groups` (default: discovered with ``tie``/``exclude``/``pins`` on the
    first batch). evaluate: model -> float or dict, needed by metric="task" and by measured searches
    later. prefix: how the output metrics (sqnr, kl) share the float computation before each group:
    "auto" (torch.fx where the model traces, else its stack of blocks), "fx", "blocks" or "none"
    (one full forward per entry; also use_fx=False). rounding: "gptq" (or "adaround", or a config)
    measures each candidate with the weights that rounding makes of it, for a plan that will be applied
    with it (rounding-aware measurement; :meth:`Analysis.solve`'s guard then measures with it too). run_dir: finished entries are cached there and an interrupted analysis resumes; a run
    directory of another model, data or settings is refused before anything is written.
    joins: measure with join quantizers (mixprec.joins: 8-bit quantizers on the tensors residual adds and
    concatenations read and write, as ONNX Runtime's int8 graph has them; the model must trace with
    torch.fx); every plan of this analysis then says so (``metadata["joins"]``) and apply and export use them.
    Its divergences are measured from the model with its joins quantized and its layers float. None (the
    default): on for a target whose int8 graph has them (ort-cpu) when some candidate is int8 QDQ and the
    model traces (mixprec.joins.default_joins; verbose prints why), else off.
    target: the export target the plans are for (mixprec.export.TARGETS, e.g. "ort-cpu"; a profile's
    target with --profile): the (group, candidate) pairs it cannot run are measured but never chosen.
    stream: keep the model's stack of blocks in CPU memory and bring each onto ``device`` only while it
    runs (mixprec.streaming): a model larger than the accelerator is measured in the memory of about two
    blocks plus what is outside the blocks. The stream stays on the model, so the plans the analysis
    solves and quantizes stream too.
    Under torchrun the groups are sharded over the processes; rank 0 gets the merged table.
    """
    from .hf import check_dtype
    from .multipoint import measure_points
    from .sensitivity.analyze import analyze as measure_table
    tie, exclude = one_or_many(tie), one_or_many(exclude)
    if groups is not None and (tie or exclude or pins):
        named = "=, ".join(n for n, v in (("tie", tie), ("exclude", exclude), ("pins", pins)) if v)
        raise SpecError(f"give groups= or {named}=, not both: groups already say which layers are tied, excluded "
                        f"and pinned; pass {named}= to discover_groups(model, example, ...) instead")
    from .formats import RANGE_METHODS
    for name, value, allowed in (("weight_range", weight_range, (*RANGE_METHODS, "auto")),
                                 ("activation_range", activation_range, RANGE_METHODS)):
        if value not in allowed:  # refused before the model loads
            raise SpecError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    model, data, evaluate, given = resolve_specs(model, data, evaluate)
    model = in_eval_mode(canonical(model), verbose)
    if given:
        model_name = model_name or given.get("model")
        arguments = {**given, **(arguments or {})}
    batches = _batches(data, model)
    from .sensitivity import metric_config
    config = metric_config(metric)
    if not batches and config.needs_data:  # said before the groups are looked for without an input
        raise SpecError(f"the {config.name} metric measures on calibration data, and the data is empty; give at "
                        "least one batch (or use metric='roundoff', which needs none); a generator or other iterator "
                        "is used up by one pass: give a list of batches or a DataLoader to use it again")
    device = parse_device(device, "device") if device is not None else device_of(model)
    if joins is None:
        joins = False
        if not stream:
            from .joins import default_joins
            joins, note = default_joins(model, target, _candidate_list(candidates))
            if note and verbose:
                print(f"note: {note}")
    if stream:
        if joins:
            raise SpecError("joins and stream cannot be combined: join quantizers need the whole model traced")
        stream_blocks(model, device)
    model = placed_copy(model, device).eval()  # the caller's model stays where it is
    check_dtype(model, device)
    if joins:  # a model fx cannot trace is a clear error here, before any measurement
        from .swap import with_join_quantizers
        model = with_join_quantizers(model, batches, activation_range, progress=progress and verbose)
    if groups is None:
        example = split_item(batches[0])[0] if batches else None
        groups = discover_groups(model, example, ties=list(tie), exclude=list(exclude), pins=pins)  # it checks pins
        from .batches import sizes_note
        from .errors import ModelNote
        for note in [*groups.notes, sizes_note(batches or [])]:  # what inspect prints, said to a Python user too
            if note:
                warnings.warn(note, ModelNote, stacklevel=2)
    cands = _candidate_list(candidates)
    measured_with = rounding_config(rounding) if rounding is not None else None
    if measured_with is not None and measured_with.needs_data and config.name in WEIGHT_SPACE_METRICS:
        from .errors import notify
        notify(f"the {config.name} metric prices each weight's own change, which {measured_with.name} does not "
               "lower (it moves weights further to cancel their error in the layer's output), so with "
               f"rounding={measured_with.name!r} it ranks candidates as damaged as nearest rounding, or more; an output "
               "metric (sqnr, kl, local) sees what the rounding leaves", verbose, stacklevel=3,
               category=UserWarning)
    multipoint = [c.name for c in cands if c.multipoint]
    if measured_with is not None and measured_with.needs_data and multipoint:  # before any measurement
        raise SpecError(f"rounding={measured_with.name!r} does not build multipoint weights ({', '.join(multipoint)}), "
                        "so their entries would be measured with nearest rounding and no plan of them could be "
                        "applied with it; measure them with rounding='nearest' (no --rounding), or drop them")
    if target == "ort-cpu":  # said before the measurement, not after an export
        from .export import saturation_note
        from .errors import TargetNote
        note = saturation_note(cands)
        if note:
            warnings.warn(note, TargetNote, stacklevel=2)
    if target == "gguf":  # refused before the measurement, not after it by export
        from .export.gguf import _find_causal_lm
        try:
            _find_causal_lm(model)
        except MixprecError as exc:
            raise MixprecError(f"the gguf target: {exc}. Its plans could never be exported; to simulate GGUF's "
                               "types on this model anyway, give them as candidates without the profile "
                               "(--candidates q8_0,q4_0,fp16)") from None
    if is_torchscript(model):  # refused here, as quantize would refuse the plan after the whole analysis
        quantizing = [c.name for c in cands if c.quantizes_input]
        if quantizing:
            from .errors import ModelError
            raise ModelError(f"a TorchScript model takes weight-only candidates only (e.g. w4, w8, w4g128): "
                             f"{', '.join(quantizing)} quantize activations too, which a compiled graph cannot take "
                             "new modules for. Give weight-only candidates, or the model as file.py:function")
    rank = torch.distributed.get_rank() if torch.distributed.is_available() and torch.distributed.is_initialized() \
        else 0
    run = None if run_dir is None else run_dir if isinstance(run_dir, RunDirectory) else RunDirectory(run_dir)
    given = [c.name for c in cands]
    if weight_range == "auto":  # each candidate's range method chosen by measurement (mixprec.weight_ranges)
        cands, weight_range = _resolve_weight_ranges(model, groups, cands, batches, activation_range, run,
                                                     progress and rank == 0, verbose and rank == 0)
    check_distinct(cands, weight_range, given)
    names = [c.name for c in cands]
    pin_only = sorted({g.pinned for g in groups if g.pinned and g.pinned not in names})
    for pin in pin_only:
        if verbose:
            print(f"note: adding pinned candidate {pin} to the candidates (measured for every group, chosen for the "
                  "pinned groups only)")
        cands.append(parse_candidate(pin))
    wanted = [c for c in cands if c.multipoint]
    if wanted and run is not None and run.exists:  # refuse another model's run before measuring the points
        from .sensitivity.store import data_hash, structure_hash
        run.refuse_other(run.model_hash(model), data_hash(batches), structure_hash(model))
    counts = measure_points(model, {l.name: wanted for l in groups.layers}, batches, weight_range,
                            progress=progress and rank == 0) if wanted else {}
    if verbose and rank == 0:
        for cand, layers in counts.items():
            digits = "".join(layers.values())
            print(f"multipoint {cand}: " + ", ".join(
                f"{digits.count(str(k)) / len(digits):.1%} of channels with {k} point{'s' if k > 1 else ''}"
                for k in range(1, parse_candidate(cand).points + 1)))
    with run.lock() if run is not None and rank == 0 else contextlib.nullcontext():  # one writer, check to last write
        table = measure_table(model, groups, cands, batches, metric=metric, run_dir=run, weight_method=weight_range,
                              activation_method=activation_range, evaluate=evaluate, chunk_size=chunk_size,
                              use_fx=use_fx, progress=progress and rank == 0, arguments=arguments, points=counts,
                              prefix=prefix, rounding=rounding)
        costs = cost_tables(groups, [c.name for c in cands], model, points=counts)
        analysis = Analysis(table, costs, {g.name: list(g.layer_names) for g in groups},
                            {g.name: g.pinned for g in groups if g.pinned}, [l.name for l in groups.excluded],
                            counts, model_name, run, model, batches, evaluate, groups, weight_range, activation_range)
        analysis.pin_only, analysis.edges = pin_only, list(groups.edges)
        analysis._versions = weight_versions(model)
        if target:
            analysis.target, analysis.refused = target, _refused(model, groups, cands, target)
        if run is not None and rank == 0:  # written last: the run was claimed (checked) by the measurement
            run.write_costs(analysis.saved())
    return analysis


def weight_versions(model: nn.Module) -> tuple:
    """Each parameter's identity and in-place version counter: training or an in-place edit changes it, moving a
    weight to another device and back (``.data =``) does not."""
    return tuple((id(p), p._version) for p in model.parameters())


def _budget_value(value: Any) -> str:
    """A budget dict's value as the text parse_budgets reads: a number of any kind (a numpy float64 computed
    from cost arrays, a 0-d tensor) at full precision, anything else (a candidate, '2MB', '0.5x') as written."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (numbers.Real, np.number)) or (isinstance(value, torch.Tensor) and value.numel() == 1):
        return repr(float(value))
    return str(value)


def _upside_down(evaluator, measured: list, max_loss: float) -> str | None:
    """A note where a measured search's plans scored better than the float model by more than the drop it allows
    (and by more than 1 %): a loss or error rate returned as a plain number, read as higher-is-better, makes
    the cheapest plans look best."""
    ref = evaluator.reference()
    # a loss read as a score gains far more than a plan's noise around the float model: twice the allowed drop, and
    # 5 % of the float model's score (quantized plans a few samples above float are noise, not a loss)
    margin = max(2 * max_loss, 0.05 * abs(ref.value))
    better = [r for r in measured if r.higher_is_better and -evaluator.loss(r) > margin]
    if not better or not ref.higher_is_better:
        return None
    best = max(better, key=lambda r: r.value)
    return (f"{len(better)} measured plan(s) scored better than the float model by more than {margin:.4g} (best "
            f"{best.name} {best.value:.4g} against {ref.value:.4g}): if the evaluation returns a loss or an error rate "
            "(lower is better), return {'main': 'loss', 'loss': value, 'higher_is_better': False}; read as "
            "higher-is-better it makes the cheapest plans look best")


def _as_fractions(problem: AllocationProblem, budgets: dict[str, float]) -> list[str]:
    """The budgets no plan meets, as fractions of the most expensive plan (the base of budgets such as 0.5x): what
    is kept outside the candidates (biases, norms, scales, float layers) sets a floor no fraction goes under."""
    out = []
    for kind, budget in budgets.items():
        top, low = problem.highest_cost(kind), problem.cost(kind, problem.cheapest(kind))
        if top > 0 and not within(low, budget):  # as the exact solver decides it
            base = ("the most expensive plan" if kind in STANDARD_KINDS else
                    "the float model as measured" if kind in problem.bases else "the highest-precision plan")
            out.append(f"as a fraction of {base} ({top:.6g}, the base of budgets such as 0.5x), {kind} can go down to "
                       f"{math.ceil(low / top * 1000) / 1000:.3f}x, and {budget / top:.3g}x was asked")
    return out


def _refused(model: nn.Module, groups: ModelGroups, cands: list[Candidate], target: str) -> dict[str, list[str]]:
    """Group -> the candidates ``target`` cannot run on one of its layers (its export check)."""
    from .errors import CandidateError
    from .export.checks import check_target
    from .export.targets import get_target
    from .groups import layer_kind
    get_target(target)  # an unknown target is an error naming the targets
    out: dict[str, list[str]] = {}
    for g in groups:
        for cand in cands:
            layers = {name: (layer_kind(m) or type(m).__name__, tuple(m.weight.shape), cand)
                      for name in g.layer_names for m in [model.get_submodule(name)]}
            try:
                check_target(target, layers)
            except CandidateError:
                out.setdefault(g.name, []).append(cand.name)
    return out


# plans measured with join quantizers: 2 since each plan gets its own, where apply of the model puts them and
# calibrated with its layers, as export writes them (they were the analysis's, at every join, calibrated through
# the float model); a logged measurement of the former kind is measured again
JOINS_VERSION = 2


def _check_known(problem: AllocationProblem, kind: str) -> None:
    """A budget kind whose every cost is unknown (a TorchScript model's BOPs: its MACs are not traced) is refused,
    where the solver would say "bops <= nan asked, the smallest achievable is nan"."""
    if not np.isfinite(np.asarray(problem.costs[kind], dtype=float)).any():
        raise SpecError(f"this run has no {kind} costs (unknown: a TorchScript model's MACs are not traced, so its "
                        "BOPs cannot be counted); budget bytes or bits_per_weight instead, or analyze the model as "
                        "file.py:function (an nn.Module)")


def _run_weight_range(arguments: dict) -> str:
    """The weight range method a run's plans are applied with: "auto" resolved every open candidate's range
    into its name (w4g64-minmax), and what is left is mse."""
    method = arguments.get("weight_range") or "mse"
    return "mse" if method == "auto" else method


def _resolve_weight_ranges(model: nn.Module, groups: ModelGroups, cands: list[Candidate], batches: list,
                           activation_range: str, run: RunDirectory | None, progress: bool,
                           verbose: bool) -> tuple[list[Candidate], str]:
    """weight_range="auto": the candidates with their range methods chosen on the calibration data (kept in
    the run directory), and the method for the rest (mse)."""
    from .sensitivity.store import data_hash, model_hash, structure_hash
    from .weight_ranges import choose_weight_ranges
    if not batches:
        raise SpecError("weight_range='auto' (--weight-range auto) measures each candidate's uniform plan with mse "
                        "and with minmax ranges on the calibration data; give --data, or choose mse or minmax")
    fingerprint = run.model_hash(model) if run is not None else model_hash(model)
    if run is not None and run.exists:  # another model's run is refused before anything is measured
        run.refuse_other(fingerprint, data_hash(batches), structure_hash(model))
    key = {"model": fingerprint, "data": data_hash(batches), "activation_range": activation_range,
           "grid": GRID_VERSION}
    resolved, choices = choose_weight_ranges(model, groups, cands, batches, activation_method=activation_range,
                                             run_path=run.path if run is not None else None, key=key,
                                             progress=progress)
    if verbose:
        for c in choices:
            print(f"weight range of {c.candidate}: {c.chosen} (" + ", ".join(
                f"{m} {v:.4g}" for m, v in c.divergences.items()) + f" {c.divergence} on the calibration data)")
    return resolved, "mse"


# how the guard's reasons name the divergences: what each figure is (agreement's is the share of samples whose top-1
# differs from the float model's; sqnr's the noise-to-signal ratio)
SHOWN = {"agreement": "disagreement", "sqnr": "1/SQNR", "mse": "MSE against the targets"}


def _absolute_cost_file(item: str) -> str:
    """``KIND=FILE`` with FILE made absolute, as a front records it (report may run from another directory)."""
    kind, sep, file = item.partition("=")
    return f"{kind}={Path(file).resolve()}" if sep and file else item


def _profile_beside(csv_file: str) -> dict | None:
    """The profile JSON `mixprec profile` writes beside a cost CSV, or None where there is none (a table of the
    user's own)."""
    import json
    try:
        saved = json.loads(Path(csv_file).with_suffix(".json").read_text())
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) and "float_model_ms" in saved else None


def _measured_float(csv_file: str) -> float | None:
    """The float model's measured latency in the profile JSON beside a cost CSV (the base of ``latency_ms=0.8x``),
    or None where there is none."""
    value = (_profile_beside(csv_file) or {}).get("float_model_ms")
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) and value > 0 else None


def _check_device(device: str | None) -> None:
    """A device asked for is one this torch runs on (a SpecError saying what it has, else), said before anything
    is measured, whether or not the call comes to measure on it."""
    if device is not None:
        from .specs import parse_device
        parse_device(device, "device=")


def _recorded_device(recorded: str | None) -> str:
    """The device the run was analysed on, where plans are measured by default; the CPU, with a note, where this
    machine lacks it (a run made on a GPU machine, solved on a laptop)."""
    if not recorded:
        return "cpu"
    try:
        parse_device(recorded, "--device")
    except SpecError:
        from .errors import TargetNote
        warnings.warn(f"the run was analysed on {recorded}, which this machine lacks: plans are measured on the cpu "
                      "(give --device, device= in Python, to choose)", TargetNote, stacklevel=4)
        return "cpu"
    return recorded


def _unpriced_boundaries(cost_files: Iterable[str], assignments: dict[str, str]) -> str | None:
    """A note where a latency table `mixprec profile` timed without ``--around`` prices a plan that mixes float and
    integer-input groups: each entry was timed inside a graph of one uniform candidate, so the quantize/dequantize
    pairs at the plan's float/integer boundaries (and the integer kernels a float neighbour prevents) are in no
    entry, and the plan can run slower than the table predicts. None where no such table or plan."""
    from .formats import is_static_integer
    integer = sum(is_static_integer(parse_candidate(c).activation) for c in assignments.values())
    if integer in (0, len(assignments)):
        return None
    for item in cost_files:
        kind, _, file = item.partition("=")
        saved = _profile_beside(file)
        if saved is None or saved.get("moves"):  # not a profile, or one timed around an operating point
            continue
        return (f"{kind.strip()} comes from {file}, which `mixprec profile` timed without --around: each entry was "
                f"timed in a graph of one uniform candidate, and this plan mixes {len(assignments) - integer} "
                f"group(s) with float (or dynamically quantized) inputs and {integer} with statically quantized "
                "integer ones, whose boundaries (quantize/dequantize pairs, integer kernels a float neighbour "
                "prevents) no entry prices, so it can run slower than predicted; profile with --around CAND (the "
                "plan's main integer candidate) to time each group's move with its boundaries, or time the exported "
                "file")
    return None


def _check_search_options(search: str, options: dict) -> None:
    """Keywords solve passes to the search: each one the search takes, else an error naming solve's own keywords and
    the search's (a misspelt ``guard_margn=0`` reached the solver as a bare TypeError)."""
    import inspect
    accepted = [name for name, param in inspect.signature(SOLVERS[search]).parameters.items()
                if name not in ("problem", "goal") and param.kind is not param.VAR_POSITIONAL]
    if search == "local":
        accepted += ["time_budget", "staged"]  # read by solve itself for the local search
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        own = [name for name in inspect.signature(Analysis.solve).parameters if name not in ("self", "options")]
        raise SpecError(f"solve got unknown keyword(s) {', '.join(unknown)}: solve takes {', '.join(own)}, and "
                        f"search {search!r} takes {', '.join(accepted) or 'no options of its own'}")


def _eval_source(evaluate: Callable | str | None) -> dict[str, str]:
    """What the measurements' key adds for the evaluation's code, so an edited one measures anew (the key holds
    only its name otherwise): the sha256 (16 hex digits) of a ``file.py:function`` spec's file; for a function in
    memory, of its file and the values bound to it (mixprec.fingerprint: two closures of one factory are two keys),
    or a token of this process where those values cannot be hashed; nothing for a built-in name, ``ppl:`` or a
    module's function named by a spec."""
    if isinstance(evaluate, str) or evaluate is None:
        source = spec_source_hash(evaluate)
    else:
        from .fingerprint import key
        source = key(evaluate)
    return {} if source is None else {"eval_source": source}


def _one_activation_width(candidates: list[str], budgets: dict[str, float]) -> list[str]:
    """A note where a BOPs budget meets candidates that all quantize activations to one width: a mixed plan can then
    move only weight bits, and activation candidates are often the cheaper damage (BENCHMARKS.md, "Activation
    bit-widths": ResNet-20/56 at the BOPs of w4a8 close 81 % and 115 % of the gap to w8a8 with 6-bit ones, 0 % without)."""
    if "bops" not in budgets:
        return []
    from .formats import IntFormat
    integer = [c for c in parse_candidates(list(candidates)) if isinstance(c.activation, IntFormat)]
    widths = {c.activation_bits for c in integer}
    if len(widths) != 1:  # none (weight-only or float formats) or several already
        return []
    width = widths.pop()
    if width < 6:  # nothing narrower worth suggesting
        return []
    return [f"every candidate here quantizes activations to {width} bits, so at a BOPs budget (weight bits x "
            f"activation bits) a mixed plan can only move weight bits; candidates with fewer activation bits "
            f"(e.g. w4a{width - 2},w5a{width - 2},w8a{width - 2}; --profile int-cnn-a6) let it trade them instead, "
            "which often costs less accuracy"]


def _labelled(model_spec: str | None, data: list | None) -> list | None:
    """The guard's data: a built-in classifier's own calibration batches with its labels beside them
    (Builtin.labelled); any other data as it is."""
    if not data or not model_spec or not is_builtin(model_spec):
        return data
    from .builtin import get_builtin
    return get_builtin(model_spec).labelled(data)


def _divergence_key(divergence: str, batches: int | tuple[int, int] | None) -> str:
    """What a logged divergence is keyed by: an auto kind names its rule, so a rule change is a new key."""
    rules = {"auto": "auto(classifier=agreement,lm=kl,other=sqnr)", "auto-smooth": "auto(classifier=kl,lm=kl,other=sqnr)",
             "auto-guard": "auto(classifier=agreement+sqnr+ce-given-labels,lm=nll,"
                           "other=sqnr+mse-given-float-targets-else-sqnr)",
             "auto-search": "auto(classifier=kl,lm=nll,other=sqnr)",
             "consensus": "consensus(agreement+sqnr+ce-given-labels-per-sample-or-pixel,"
                          "float-targets=sqnr+mse)"}
    # per-sample: the logged result carries each sample's share (the guard's paired test); older entries lack them
    if isinstance(batches, tuple):
        part = f":batches{batches[0]}-{batches[1]}"
    else:
        part = f":first{batches}" if batches else ""
    return f"divergence:{rules.get(divergence, divergence)}{part}:per-sample"


def _divergence_data(data: list | None, batches: int | tuple[int, int] | None) -> tuple[list, list]:
    """(the batches that calibrate a measured plan, the batches its divergence is scored on): all and all
    (None); the first N for both (N: a screen); all and batches start..stop-1 ((start, stop): a part of the
    calibration data held apart from another decision's, the plans calibrated as they deploy)."""
    data = list(data or [])
    if isinstance(batches, tuple):
        return data, data[batches[0]:batches[1]]
    if batches:
        return data[:batches], data[:batches]
    return data, data
