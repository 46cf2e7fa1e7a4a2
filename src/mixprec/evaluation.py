"""The result of evaluating a model: one main metric (with its direction) and optional details."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from .errors import EvaluationError, SpecError


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


# keys that look like a metric's direction but are not the one mixprec reads (higher_is_better)
DIRECTION_KEYS = {"lower_is_better", "higher_better", "lower_better", "is_higher_better", "greater_is_better",
                  "higherisbetter", "lowerisbetter", "maximize", "minimize"}


# words of a metric's name that mean lower is better (perplexity, loss, error rates, distances)
LOSS_WORDS = {"ppl", "perplexity", "loss", "nll", "error", "err", "mse", "mae", "rmse", "wer", "cer", "bpc", "bpb",
              "distance", "divergence", "kl"}


def _reads_as_loss(name: str) -> bool:
    """Whether a metric's name reads as lower-is-better: one of its words (split at _ - . and spaces) is a loss's."""
    return any(word in LOSS_WORDS for word in re.split(r"[_\-.\s]+", name.lower()))


def _scalar(value: Any) -> bool:
    """A numpy or torch scalar (0-d): read with ``.item()``."""
    return hasattr(value, "item") and getattr(value, "ndim", 1) == 0


def to_eval_result(value: Any, source: str = "evaluation function") -> EvalResult:
    """Accept what a user's eval function returns: an EvalResult, a float (higher is better),
    or a dict naming its main metric with key ``main`` (optional ``higher_is_better``)."""
    if isinstance(value, EvalResult):
        return _finite(value, source)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _finite(EvalResult("metric", float(value)), source)
    if _scalar(value):
        return _finite(EvalResult("metric", float(value.item())), source)
    if isinstance(value, dict):
        if "main" in value:
            main = value["main"]
            if main not in value:
                raise SpecError(f"{source} returned a dict whose 'main' is {main!r}, but it has no key {main!r}; keys: {sorted(value)}")
        else:
            numeric = [k for k, v in value.items()
                       if not isinstance(v, bool) and (isinstance(v, (int, float)) or _scalar(v))]  # numpy, torch
            if len(numeric) != 1:
                raise SpecError(f"{source} returned a dict with keys {sorted(value)}; name the main metric with "
                                "a 'main' key, e.g. {'main': 'accuracy', 'accuracy': 0.91}")
            main = numeric[0]
        higher = value.get("higher_is_better", True)
        if not isinstance(higher, bool) and not (_scalar(higher) and isinstance(higher.item(), bool)):
            raise SpecError(f"{source} returned higher_is_better={higher!r}; it must be True or False (a string such as "
                            "'False' would read as true)")
        higher = bool(higher)
        lookalike = sorted(k for k in value if isinstance(k, str) and k != "higher_is_better"
                           and k.lower().replace("-", "_") in DIRECTION_KEYS)
        if lookalike:
            raise SpecError(f"{source} returned the key {lookalike[0]!r}, which mixprec does not read: say the "
                            "direction with 'higher_is_better': True or False (default True)")
        if "higher_is_better" not in value and _reads_as_loss(str(main)):
            raise SpecError(f"{source} returned {main!r} without 'higher_is_better', and mixprec takes a metric as "
                            f"higher-is-better unless told: {main!r} reads as a loss, so add 'higher_is_better': False "
                            "to the dict (or True, if higher is better)")
        details = {str(k): _plain_detail(v) for k, v in value.items() if k not in ("main", "higher_is_better", main)}
        try:
            number = value[main].item() if hasattr(value[main], "item") else value[main]
            if isinstance(number, (str, bytes)):  # float("0.5") would take text for a measurement
                raise TypeError
            result = EvalResult(str(main), float(number), higher, details)
        except (TypeError, ValueError):
            raise EvaluationError(f"{source} returned {value[main]!r} for {main!r}; expected a number") from None
        return _finite(result, source)
    raise SpecError(f"{source} returned {type(value).__name__}; expected a float (higher is better) "
                    "or a dict with a main metric, e.g. {'main': 'accuracy', 'accuracy': 0.91}")


def _plain_detail(value: Any) -> Any:
    """An evaluation's other figure as JSON holds it (the results and logs are JSON): a tensor or numpy number as
    its number (a tensor of several values as a list), a set as a sorted list, containers element by element, and
    anything else as its text."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "tolist") and callable(value.tolist):  # torch tensors, numpy arrays and numbers
        try:
            return _plain_detail(value.tolist())
        except Exception:
            return str(value)
    if isinstance(value, dict):
        return {str(k): _plain_detail(v) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        items = [_plain_detail(v) for v in value]
        try:
            return sorted(items)
        except TypeError:
            return items
    if isinstance(value, (list, tuple)):
        return [_plain_detail(v) for v in value]
    return str(value)


def _finite(result: EvalResult, source: str) -> EvalResult:
    """NaN ranks nothing and an infinitely good metric is a broken one: both are refused. The worst
    infinity (a perplexity of inf, say) is a real measurement of a ruined model and stays."""
    best = math.inf if result.higher_is_better else -math.inf
    if math.isnan(result.value) or result.value == best:
        raise EvaluationError(f"{source} returned {result.value} for {result.name!r}; a metric must be a number "
                              "(NaN, or an infinitely good value, is not one: did the model produce NaN outputs?)")
    return result


def evaluate_model(evaluate: Callable[[nn.Module], Any], model: nn.Module,
                   source: str = "evaluation function") -> EvalResult:
    """``evaluate(model)`` as an EvalResult, with every module of ``model`` in the mode it had before the call: an
    evaluation that ends with ``model.train()`` (back to training, as a training loop does) left the model in
    training mode, and mixprec's next forwards then moved its BatchNorm statistics, changing every later figure
    and the model passed in. Said once, as a DataNote."""
    modes = [(module, module.training) for module in model.modules()] if isinstance(model, nn.Module) else []
    try:
        value = evaluate(model)
    finally:
        changed = [module for module, training in modes if module.training != training]
        left = "training" if changed and changed[0].training else "eval"
        for module, training in modes:
            module.training = training
        if changed and not _said_mode[0]:
            import warnings

            from .errors import DataNote
            _said_mode[0] = True
            warnings.warn(f"the {source} left the model in {left} mode "
                          f"({len(changed)} module(s) changed, e.g. model.train()); mixprec put it back as it was "
                          "after the call, so its later measurements and the model are unaffected; restore the "
                          "mode in the evaluation (model.eval()) to silence this", DataNote, stacklevel=3)
    return to_eval_result(value, source)


_said_mode = [False]

