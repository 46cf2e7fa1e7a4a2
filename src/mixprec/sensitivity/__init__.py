"""Sensitivity metrics: one file each, one registry, the same table out.

A metric is a small frozen dataclass config (``SQNR()``, ``Hessian(samples=16)``): its fields are
its options, validated once when it is made; ``analyze`` calls it in three steps:

    state = metric.prepare(ctx)                           # once per analysis (e.g. Hessian traces)
    metric.measure(ctx, group_indices, runner, state)     # per chunk -> {(g, c): value}
    metric.metadata(state)                                # what the table records about the run
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from ..errors import MixprecError


class Metric:
    """What every metric config has; the subclasses are frozen dataclasses, one per metric file."""

    name: ClassVar[str]
    needs_data: ClassVar[bool] = True  # measures on calibration batches (roundoff does not)
    needs_labels: ClassVar[bool] = False  # every batch must be an (inputs, labels) pair
    needs_grad: ClassVar[bool] = False  # differentiates the loss w.r.t. weights and layer inputs
    needs_outputs: ClassVar[bool] = False  # compares network outputs: analyze gives it an OutputRunner
    uses_evaluate: ClassVar[bool] = False  # its values depend on the user's evaluation function
    minimum: ClassVar[float | None] = 0.0  # the least value an entry can have (None: any; a drop can be negative)

    def prepare(self, ctx) -> Any:
        """State shared by every chunk of one analysis (computed once, before the first chunk)."""
        return None

    def measure(self, ctx, group_indices: list[int], runner, state) -> dict[tuple[int, int], float]:
        raise NotImplementedError

    def metadata(self, state) -> dict[str, Any]:
        """Entries for the table's metadata, from the state ``prepare`` made."""
        return {}

    def changed_options(self) -> dict[str, Any]:
        """The options that differ from their defaults (what a run directory's fingerprint records)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) != f.default}

    def check_int(self, option: str, minimum: int, maximum: int | None = None) -> None:
        """For __post_init__: raise a MixprecError unless the option is an int in [minimum, maximum]."""
        value = getattr(self, option)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum or \
                (maximum is not None and value > maximum):
            bound = f"an integer >= {minimum}" if maximum is None else f"an integer in [{minimum}, {maximum}]"
            default = next(f.default for f in dataclasses.fields(self) if f.name == option)
            raise MixprecError(f"the {self.name} metric's option {option}={value!r} must be {bound}; "
                               f"e.g. {type(self).__name__}({option}={default!r}), the default")


from .around import Around  # noqa: E402  (the metric files import Metric from here)
from .fisher import Fisher  # noqa: E402
from .hessian import Hessian  # noqa: E402
from .kl import KL  # noqa: E402
from .local import Local  # noqa: E402
from .roundoff import Roundoff  # noqa: E402
from .sqnr import SQNR  # noqa: E402
from .task import Task  # noqa: E402

METRICS: dict[str, type[Metric]] = {cls.name: cls for cls in (Roundoff, SQNR, KL, Task, Local, Hessian, Fisher,
                                                                      Around)}
DEFAULT_METRIC = "sqnr"


def metric_config(metric: str | Metric = DEFAULT_METRIC, **options) -> Metric:
    """The config of ``metric`` (a name of METRICS, or a config) with ``options`` set, validated."""
    if isinstance(metric, Metric):
        cls, base = type(metric), metric
    elif isinstance(metric, str) and metric in METRICS:
        cls, base = METRICS[metric], None
    elif isinstance(metric, str):
        raise MixprecError(f"unknown sensitivity metric {metric!r}; metrics: {', '.join(METRICS)}")
    else:
        raise MixprecError(f"a sensitivity metric is a name ({', '.join(METRICS)}) or a config such as "
                           f"mixprec.sensitivity.Hessian(samples=16), not {metric!r}")
    fields = {f.name: f.default for f in dataclasses.fields(cls)}
    unknown = [k for k in options if k not in fields]
    if unknown:
        known = ", ".join(f"{k}={v!r}" for k, v in fields.items()) or "none"
        raise MixprecError(f"unknown option {', '.join(map(repr, unknown))} of the {cls.name} metric; "
                           f"its options (with defaults): {known}")
    if base is None:
        return cls(**options)
    return dataclasses.replace(base, **options) if options else base


__all__ = ["Metric", "METRICS", "DEFAULT_METRIC", "metric_config", "Roundoff", "SQNR", "KL", "Task", "Local",
           "Hessian", "Fisher", "Around"]
