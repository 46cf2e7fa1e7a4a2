"""weight_range="auto": each candidate's weight range method chosen by measurement.

The best clipping range for a weight format depends on the model. Ranges that minimise each weight's
squared error (mse, the default) won at ResNet-20 w3a8 and lost at SmolLM2 w4g64, where plain
min/max ranges measured far better (benchmarks/symmetric_grid.py). So for every integer candidate
whose range is not already fixed (by a ``-minmax``/``-mse`` suffix, or by its format, as GGUF's are),
the uniform plan at that candidate (pins kept) is applied once with each method, and its output
divergence from the float model on the calibration data is measured (KL for classifiers and
language models, else 1/SQNR). The candidate becomes the variant that measured lower, ties to mse:
``w4g64`` -> ``w4g64-minmax``. The analysis then measures the resolved candidates, so tables, plans,
the guard's uniform rivals and exports all name the range they use.

Cost: two plan applications and two passes over the calibration data per candidate. With a run
directory the choice is kept in ``weight_ranges.json`` (keyed by the model, the data and the
candidates) and an interrupted or repeated analysis reads it back.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from torch import nn
from .progress import tqdm

from .apply import applied_beside
from .candidates import Candidate, parse_candidate
from .formats import IntFormat
from .groups import ModelGroups
from .plan import Plan, write_json_atomic

METHODS = ("mse", "minmax")  # the first wins ties
FILE = "weight_ranges.json"


@dataclass(frozen=True)
class RangeChoice:
    candidate: str  # as given
    chosen: str  # the resolved candidate, e.g. w4g64-minmax
    divergences: dict[str, float]  # method -> divergence of the uniform plan (lower is better)
    divergence: str  # which divergence (kl, sqnr, ...)

    def to_dict(self) -> dict:
        return {"candidate": self.candidate, "chosen": self.chosen, "divergences": self.divergences,
                "divergence": self.divergence}


def open_range(candidate: Candidate) -> bool:
    """Whether the candidate's weight range is left to the caller (an integer weight, no fixed method)."""
    return isinstance(candidate.weight, IntFormat) and candidate.weight.range_method is None \
        and not candidate.multipoint


def variant(candidate: Candidate, method: str) -> Candidate:
    return parse_candidate(f"{candidate.name}-{method}")


def choose_weight_ranges(model: nn.Module, groups: ModelGroups, candidates: list[Candidate], data: list, *,
                         activation_method: str = "mse", run_path: str | Path | None = None, key: dict | None = None,
                         progress: bool = True) -> tuple[list[Candidate], list[RangeChoice]]:
    """(the candidates with every open range resolved, what was measured for each). ``run_path`` and
    ``key`` (what the choice depends on: model and data hashes) keep the choice on disk."""
    from .sensitivity.divergence import OutputDivergence
    todo = [c for c in candidates if open_range(c)]
    names = [c.name for c in candidates]
    saved = _read(run_path, key, names)
    if saved is None and todo:
        divergence = OutputDivergence(model, data, kind="auto-smooth")
        divergence.prepare()  # the float outputs, before any plan moves the float weights (applied_beside)
        choices = []
        bar = tqdm(total=len(todo) * len(METHODS), desc="choosing weight ranges", unit="plan", disable=not progress)
        for cand in todo:
            measured = {}
            for method in METHODS:
                plan = Plan.uniform(groups, variant(cand, method).name)
                with applied_beside(model, plan, data, activation_method=activation_method, progress=False) as q:
                    measured[method] = float(divergence.measure(q))
                    del q
                bar.update()
            best = min(METHODS, key=lambda m: (measured[m], METHODS.index(m)))
            choices.append(RangeChoice(cand.name, variant(cand, best).name, measured, divergence.kind))
        bar.close()
        saved = choices
        if run_path is not None:
            Path(run_path).mkdir(parents=True, exist_ok=True)
            write_json_atomic(Path(run_path) / FILE, {"key": key, "candidates": names,
                                                      "choices": [c.to_dict() for c in choices]})
    chosen = {c.candidate: c.chosen for c in saved or []}
    return [parse_candidate(chosen[c.name]) if c.name in chosen else c for c in candidates], list(saved or [])


def _read(run_path: str | Path | None, key: dict | None, names: list[str]) -> list[RangeChoice] | None:
    if run_path is None:
        return None
    path = Path(run_path) / FILE
    try:
        saved = json.loads(path.read_text())
        if saved.get("key") != key or saved.get("candidates") != names:
            return None
        return [RangeChoice(c["candidate"], c["chosen"], {k: float(v) for k, v in c["divergences"].items()},
                            c["divergence"]) for c in saved["choices"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
