"""The sensitivity table S[group, candidate]: damage of putting only that group on that candidate."""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MixprecError
from ..atomic import write_atomic, write_json_atomic

TABLE_FORMAT = "mixprec-sensitivity"
TABLE_VERSION = 1


@dataclass
class SensitivityTable:
    groups: list[str]
    candidates: list[str]
    values: np.ndarray  # (G, C), lower is better, +inf where the measurement failed, nan = not measured
    metric: str
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.values = np.asarray(self.values, dtype=float)
        if self.values.shape != (len(self.groups), len(self.candidates)):
            raise MixprecError(f"sensitivity values have shape {self.values.shape}, expected "
                               f"({len(self.groups)}, {len(self.candidates)})")

    def __getitem__(self, key: tuple[str, str]) -> float:
        group, candidate = key
        return float(self.values[self.groups.index(group), self.candidates.index(candidate)])

    @property
    def complete(self) -> bool:
        return not np.isnan(self.values).any()

    def to_dict(self) -> dict[str, Any]:
        return {"format": TABLE_FORMAT, "version": TABLE_VERSION, "metric": self.metric,
                "groups": self.groups, "candidates": self.candidates,
                "values": [[_json_float(v) for v in row] for row in self.values], "metadata": self.metadata}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SensitivityTable":
        if data.get("format") != TABLE_FORMAT or data.get("version") != TABLE_VERSION:
            raise MixprecError(f"not a mixprec sensitivity table of version {TABLE_VERSION}")
        values = [[_from_json_float(v) for v in row] for row in data["values"]]
        return cls(list(data["groups"]), list(data["candidates"]), np.array(values, dtype=float).reshape(
            len(data["groups"]), len(data["candidates"])), data["metric"], dict(data.get("metadata", {})))

    def save(self, directory: str | Path) -> tuple[Path, Path]:
        """Write ``sensitivity.json`` and ``sensitivity.csv`` into ``directory``."""
        directory = Path(directory)
        json_path, csv_path = directory / "sensitivity.json", directory / "sensitivity.csv"
        write_json_atomic(json_path, self.to_dict())

        def write_csv(f) -> None:
            writer = csv.writer(f)
            writer.writerow(["group", *self.candidates])
            for name, row in zip(self.groups, self.values):
                writer.writerow([name, *(repr(float(v)) for v in row)])
        write_atomic(csv_path, write_csv, text=True)
        return json_path, csv_path

    @classmethod
    def load(cls, path: str | Path) -> "SensitivityTable":
        path = Path(path)
        if path.is_dir():
            path = path / "sensitivity.json"
        if not path.is_file():
            raise MixprecError(f"no sensitivity table at {path}; run `mixprec analyze` first")
        return cls.from_dict(json.loads(path.read_text()))


def _json_float(v: float) -> float | str | None:
    if math.isnan(v):
        return None
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return float(v)


def _from_json_float(v: Any) -> float:
    if v is None:
        return float("nan")
    return float(v)
