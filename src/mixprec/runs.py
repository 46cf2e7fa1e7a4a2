"""An analysis run directory, reopened for allocation: the sensitivity table, the cost tables
aligned with it (plus any custom cost table from CSV, e.g. latency), and which candidates each
group may take (pins, ``--candidates``, entries a custom table lacks)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .candidates import parse_candidate
from .costs import CostTables, load_cost_csv
from .errors import SpecError
from .sensitivity.table import SensitivityTable


@dataclass
class Run:
    path: Path
    table: SensitivityTable
    tables: dict[str, np.ndarray]  # kind -> (G, C), columns in the sensitivity table's order
    fixed: dict[str, float]
    allowed: np.ndarray  # (G, C) bool
    saved: dict  # costs.json: model, groups (name -> layers), pins, excluded, points (multipoint)
    notes: list[str] = field(default_factory=list)

    @property
    def groups(self) -> list[str]:
        return self.table.groups

    @property
    def candidates(self) -> list[str]:
        return self.table.candidates

    @property
    def pins(self) -> dict[str, str]:
        return self.saved.get("pins", {})

    def assignments(self, choice: np.ndarray) -> dict[str, str]:
        return {g: self.candidates[int(c)] for g, c in zip(self.groups, choice)}

    def uniform_choice(self, candidate: str) -> np.ndarray:
        """Every group on ``candidate`` except pinned groups, which keep their pin."""
        name = parse_candidate(candidate).name
        if name not in self.candidates:
            raise SpecError(f"{name} is not one of this run's candidates ({', '.join(self.candidates)})")
        j = self.candidates.index(name)
        return np.array([self.candidates.index(self.pins[g]) if g in self.pins else j for g in self.groups])

    def cost(self, kind: str, choice: np.ndarray) -> float:
        rows = np.arange(len(choice))
        return float(self.fixed.get(kind, 0.0) + self.tables[kind][rows, choice].sum())

    def uniform_cost(self, kind: str, candidate: str) -> float:
        return self.cost(kind, self.uniform_choice(candidate))

    def highest_cost(self, kind: str) -> float:
        """Cost of the most expensive allowed plan (the base of fractional budgets such as 0.5x)."""
        return float(self.fixed.get(kind, 0.0) + np.where(self.allowed, self.tables[kind], -np.inf).max(axis=1).sum())

    @property
    def points(self) -> dict[str, dict[str, str]]:
        """Multipoint candidate -> layer -> points per output channel, as the analysis chose them."""
        return self.saved.get("points", {})

    def plan_points(self, assignments: dict[str, str]) -> dict[str, str]:
        """Points per channel of every layer a plan puts on a multipoint candidate (what apply needs)."""
        return {layer: self.points[cand][layer] for g, cand in assignments.items() if cand in self.points
                for layer in self.saved["groups"][g]}

    def uniform_candidates(self) -> list[str]:
        """Candidates every unpinned group may take."""
        free = [i for i, g in enumerate(self.groups) if g not in self.pins]
        return [c for j, c in enumerate(self.candidates) if self.allowed[free, j].all()]


def open_run(path: str | Path, candidates: str | None = None, cost_files: list[str] = ()) -> Run:
    """``candidates`` restricts the choice (comma-separated); ``cost_files`` are ``KIND=FILE.csv``."""
    run = Path(path)
    if not (run / "sensitivity.json").is_file():
        raise SpecError(f"{run} is not an analysis run (no sensitivity.json); create one with "
                        f"`mixprec analyze --model ... --out {run}`")
    table = SensitivityTable.load(run)
    costs_path = run / "costs.json"
    if not costs_path.is_file():
        raise SpecError(f"{costs_path} is missing; re-run `mixprec analyze` with this version to record the costs")
    saved = json.loads(costs_path.read_text())
    costs = CostTables.from_dict(saved["costs"])
    if list(costs.groups) != table.groups:
        raise SpecError(f"{run}: the cost tables and the sensitivity table list different groups")
    col = [costs.candidates.index(c) for c in table.candidates]
    tables = {k: v[:, col] for k, v in costs.tables.items()}
    fixed = dict(costs.fixed)
    allowed = np.ones(table.values.shape, dtype=bool)
    for g, pin in saved.get("pins", {}).items():
        allowed[table.groups.index(g)] = [c == pin for c in table.candidates]
    if candidates:
        keep = {parse_candidate(c).name for c in candidates.split(",") if c.strip()}
        unknown = sorted(keep - set(table.candidates))
        if unknown:
            raise SpecError(f"--candidates names {unknown}, which this run did not measure; its candidates: "
                            f"{', '.join(table.candidates)}")
        allowed &= np.array([c in keep for c in table.candidates])[None, :]
    notes = []
    for item in cost_files:
        kind, sep, file = item.partition("=")
        kind = kind.strip().lower()
        if not sep or not kind or not file:
            raise SpecError(f"--cost {item!r} must look like KIND=FILE.csv, e.g. latency_ms=latency.csv")
        if kind in tables:
            raise SpecError(f"cost kind {kind!r} already exists; name the custom table differently")
        custom, constant = load_cost_csv(file, saved["groups"], table.candidates)
        missing = np.isnan(custom) & allowed
        if missing.any():
            notes.append(f"{file} has no {kind} for {int(missing.sum())} (group, candidate) entries; those are "
                         "not chosen")
        allowed &= ~np.isnan(custom)
        tables[kind] = np.nan_to_num(custom, nan=0.0)
        fixed[kind] = constant
    empty = [g for g, row in zip(table.groups, allowed) if not row.any()]
    if empty:
        raise SpecError(f"group(s) {empty[:3]} have no candidate left (pins, --candidates and cost tables together)")
    return Run(run, table, tables, fixed, allowed, saved, notes)
