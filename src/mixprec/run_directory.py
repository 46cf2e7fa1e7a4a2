"""The run directory of an analysis, and the one owner of every file in it.

    run.json                 fingerprint (hashes of the model weights, of the calibration data, of the
                             settings) and the arguments that made the run
    entries.rank<R>.jsonl    append-only log of finished (group, candidate) entries, one per line,
                             flushed and fsync'ed: a Ctrl-C or SIGKILL loses at most the chunk in flight
    costs.json               the cost tables, the groups (name -> layers), pins, excluded layers and the
                             multipoint point counts the costs were computed with
    sensitivity.json, .csv   the finished sensitivity table
    evaluations.jsonl        append-only log of measured plans (mixprec.plan_evaluation), user's metric
    divergences.jsonl        the same for the guard's output divergences on the calibration data
    rounding/                checkpoints of learned roundings of measured plans
    task/                    the trust report's own run (the task metric), a run directory itself

A run made for another model, data or settings is refused before anything is written to it.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from .errors import MixprecError, SpecError
from .atomic import write_json_atomic
from .sensitivity.table import SensitivityTable


class RunDirectory:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDirectory({str(self.path)!r})"

    # run.json -------------------------------------------------------------------------------
    @property
    def exists(self) -> bool:
        return (self.path / "run.json").is_file()

    def _run_json(self) -> dict[str, Any]:
        path = self.path / "run.json"
        if not path.is_file():
            raise SpecError(f"{self.path} is not an analysis run directory (no run.json); start one with "
                            "`mixprec analyze --model ... --out DIR`")
        return json.loads(path.read_text())

    def arguments(self) -> dict[str, Any]:
        """The arguments of the analysis that made the run."""
        return self._run_json().get("arguments", {})

    def claim(self, fingerprint: dict[str, Any], arguments: dict[str, Any] | None = None, rank: int = 0) -> None:
        """Check that the run is new or made for this ``fingerprint`` (else refuse, writing nothing);
        a new run records the fingerprint and the arguments (rank 0 only)."""
        path = self.path / "run.json"
        if path.is_file():
            existing = json.loads(path.read_text()).get("fingerprint", {})
            differs = [k for k in ("model", "data", "settings") if existing.get(k) != fingerprint.get(k)]
            if differs:
                raise MixprecError(f"{self.path} holds an analysis of a different {' and '.join(differs)} "
                                   f"({', '.join(f'{k}: {existing.get(k)!r} there, {fingerprint.get(k)!r} now' for k in differs if k != 'settings')}"
                                   f"{'; settings differ' if 'settings' in differs else ''}); use a new --out "
                                   "directory or delete this one")
        elif rank == 0:
            self.path.mkdir(parents=True, exist_ok=True)
            write_json_atomic(path, {"fingerprint": fingerprint, "arguments": arguments or {}})
        else:
            self.path.mkdir(parents=True, exist_ok=True)

    # entries.rank<R>.jsonl -----------------------------------------------------------------------
    def entries(self) -> dict[tuple[str, str], float]:
        """Every finished entry of every rank; a torn last line (killed mid-write) is ignored."""
        out = {}
        for log in sorted(self.path.glob("entries.rank*.jsonl")):
            for line in log.read_text().splitlines():
                try:
                    entry = json.loads(line)
                    out[(entry["group"], entry["candidate"])] = float(entry["value"])
                except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                    continue
        return out

    def append_entries(self, entries: dict[tuple[str, str], float], rank: int = 0) -> None:
        _append_lines(self.path / f"entries.rank{rank}.jsonl",
                      [{"group": group, "candidate": candidate, "value": value if math.isfinite(value) else "inf"}
                       for (group, candidate), value in entries.items()])

    # costs.json ------------------------------------------------------------------------------------
    def write_costs(self, saved: dict[str, Any]) -> None:
        write_json_atomic(self.path / "costs.json", saved)

    def read_costs(self) -> dict[str, Any]:
        path = self.path / "costs.json"
        if not path.is_file():
            raise SpecError(f"{path} is missing; re-run `mixprec analyze` with this version to record the costs")
        return json.loads(path.read_text())

    # sensitivity.json / .csv -----------------------------------------------------------------------
    def write_table(self, table: SensitivityTable) -> None:
        table.save(self.path)

    def read_table(self) -> SensitivityTable:
        if not (self.path / "sensitivity.json").is_file():
            raise SpecError(f"{self.path} is not an analysis run (no sensitivity.json); create one with "
                            f"`mixprec analyze --model ... --out {self.path}`")
        return SensitivityTable.load(self.path)

    # evaluations.jsonl, rounding/, task/ -----------------------------------------------------------
    @property
    def evaluations_log(self) -> Path:
        return self.log_path("evaluations")

    def log_path(self, name: str = "evaluations") -> Path:
        """evaluations (the user's metric) or divergences (the guard's)."""
        return self.path / f"{name}.jsonl"

    def evaluations(self, name: str = "evaluations") -> list[dict[str, Any]]:
        """Every logged plan evaluation; lines torn by a crash are skipped."""
        out = []
        if self.log_path(name).is_file():
            for line in self.log_path(name).read_text().splitlines():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return out

    def append_evaluation(self, entry: dict[str, Any], name: str = "evaluations") -> None:
        _append_lines(self.log_path(name), [entry])

    @property
    def rounding_checkpoints(self) -> Path:
        return self.path / "rounding"

    @property
    def task(self) -> "RunDirectory":
        """The run of the trust report's task metric."""
        return RunDirectory(self.path / "task")


def _append_lines(path: Path, items: list[dict[str, Any]]) -> None:
    with path.open("a") as f:
        for item in items:
            f.write(json.dumps(item, default=float) + "\n")
        f.flush()
        os.fsync(f.fileno())
