"""The result of evaluating a model: one main metric (with its direction) and optional details."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .errors import SpecError


@dataclass(frozen=True)
class EvalResult:
    name: str
    value: float
    higher_is_better: bool = True
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "higher_is_better": self.higher_is_better,
                "details": dict(self.details)}

    def __str__(self) -> str:
        return f"{self.name}={self.value:.4g}"


def to_eval_result(value: Any, source: str = "evaluation function") -> EvalResult:
    """Accept what a user's eval function returns: an EvalResult, a float (higher is better),
    or a dict naming its main metric with key ``main`` (optional ``higher_is_better``)."""
    if isinstance(value, EvalResult):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return EvalResult("metric", float(value))
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return EvalResult("metric", float(value.item()))
    if isinstance(value, dict):
        if "main" in value:
            main = value["main"]
            if main not in value:
                raise SpecError(f"{source} returned a dict whose 'main' is {main!r}, but it has no key {main!r}; keys: {sorted(value)}")
        else:
            numeric = [k for k, v in value.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
            if len(numeric) != 1:
                raise SpecError(f"{source} returned a dict with keys {sorted(value)}; name the main metric with "
                                "a 'main' key, e.g. {'main': 'accuracy', 'accuracy': 0.91}")
            main = numeric[0]
        higher = bool(value.get("higher_is_better", True))
        details = {k: v for k, v in value.items() if k not in ("main", "higher_is_better", main)}
        result = EvalResult(str(main), float(value[main]), higher, details)
        if math.isnan(result.value):
            raise SpecError(f"{source} returned NaN for {main!r}")
        return result
    raise SpecError(f"{source} returned {type(value).__name__}; expected a float (higher is better) "
                    "or a dict with a main metric, e.g. {'main': 'accuracy', 'accuracy': 0.91}")
