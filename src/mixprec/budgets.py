"""Budgets from the command line: ``--budget KIND=VALUE[,KIND=VALUE...]``.

KIND: ``bytes``, ``bops``, ``bits`` (average bits per weight; also ``bits_per_weight``), or any
other cost table the run holds. VALUE:
- absolute, with an optional unit: ``2.5MB``, ``800KB``, ``1.2G`` (BOPs), ``4.5`` (bits);
  K/M/G/T are powers of 1000, KiB/MiB/GiB powers of 1024, a trailing ``B`` is ignored (bits per weight
  take no unit);
- the cost of a uniform candidate: ``bops=w4a8`` = the BOPs of the model all at w4a8;
- a fraction of the highest-precision plan (every group on its most expensive allowed candidate): ``0.5x``;
  in a measured table (``latency_ms=0.8x``), of that plan's measured cost: every group on its candidate of
  most bytes, the float model where fp32 is a candidate (mixprec.solvers.problem.highest_cost).
Examples: ``--budget bytes=2.5MB``, ``--budget bops=w4a8,bytes=0.3x``, ``--budget bits=4.25``.
"""
from __future__ import annotations

import re
from typing import Callable

import numpy as np

from .errors import MissingCost, MixprecError

ALIASES = {"bits": "bits_per_weight", "size": "bytes", "bpw": "bits_per_weight"}
_UNITS = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12, "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}
_NUMBER = re.compile(r"^([0-9]*\.?[0-9]+(?:e[+-]?\d+)?)\s*(ki|mi|gi|ti|k|m|g|t)?b?$", re.IGNORECASE)


def unknown_kind_hint(kind: str, known: list[str]) -> str:
    """A misspelt kind: the one meant; another name: a custom cost table brings it (--cost KIND=FILE.csv)."""
    import difflib
    close = difflib.get_close_matches(kind, known, n=1, cutoff=0.75)
    if close:
        return f"; did you mean {close[0]}?"
    return (f"; a measured cost such as {kind} comes with its table: --cost {kind}=FILE.csv (mixprec profile writes "
            "a latency one)")


def parse_budgets(text: str, kinds: list[str], uniform_cost: Callable[[str, str], float],
                  highest_cost: Callable[[str], float]) -> dict[str, float]:
    """``uniform_cost(kind, candidate)`` and ``highest_cost(kind)`` resolve the relative forms."""
    budgets: dict[str, float] = {}
    for item in [p.strip() for p in text.split(",") if p.strip()]:
        kind, sep, value = item.partition("=")
        kind = ALIASES.get(kind.strip().lower(), kind.strip().lower())
        value = value.strip()
        if not sep or not kind or not value:
            raise MixprecError(f"budget {item!r} must look like KIND=VALUE, e.g. bytes=2.5MB, bops=w4a8, bits=4.5, "
                               "bytes=0.5x")
        if kind not in kinds:
            also = [f"{a} = {k}" for a, k in ALIASES.items() if k in kinds]
            raise MixprecError(f"unknown budget kind {kind!r}; kinds here: {', '.join(kinds)}"
                               + (f" (also {', '.join(also)})" if also else "")
                               + unknown_kind_hint(kind, [*kinds, *ALIASES]))
        if kind in budgets:
            raise MixprecError(f"budget kind {kind!r} given twice")
        budgets[kind] = _value(kind, value, uniform_cost, highest_cost)
    if not budgets:
        raise MixprecError("no budget given; e.g. --budget bytes=2.5MB")
    return budgets


def _value(kind: str, value: str, uniform_cost, highest_cost) -> float:
    low = value.lower()
    try:  # a negative, zero, infinite or NaN number is a number all the same, and its own error
        number = float(low[:-1] if low.endswith("x") else low)
    except ValueError:
        number = None
        if value.lstrip().startswith("-") and _NUMBER.match(value.lstrip()[1:]):  # -5KB: a number with a unit
            number = -1.0
    if number is not None and not (np.isfinite(number) and number > 0):
        raise MixprecError(f"budget {kind}={value}: a budget must be a positive finite number (e.g. {kind}=0.5x or "
                           f"{kind}=CANDIDATE, the cost of a candidate of this run all over)")
    if low.endswith("x"):
        try:
            return float(low[:-1]) * highest_cost(kind)
        except ValueError:
            pass
    match = _NUMBER.match(value)
    if match:
        number, unit = match.groups()
        if kind == "bits_per_weight" and (unit or value.rstrip().lower().endswith("b")):
            raise MixprecError(f"budget bits={value}: bits per weight is a plain number (e.g. bits=4.5), or the bits "
                               "of a uniform candidate (bits=w4g64) or a fraction (bits=0.5x); a size in bytes is "
                               f"bytes={value}")
        return float(number) * _UNITS[(unit or "").lower()]
    try:
        cost = uniform_cost(kind, value)
    except MissingCost:
        raise
    except MixprecError as exc:
        hint = ("; several budgets are separated by commas, e.g. bytes=30KB,bops=w4a8"
                if any(c in value for c in ";: ") else "")
        raise MixprecError(f"budget value {value!r} for {kind} is neither a number (e.g. 2.5MB; units K, M, G, T "
                           f"and KiB, MiB, GiB, TiB, with or without B), a fraction (e.g. 0.5x) nor a candidate of "
                           f"this run ({exc}){hint}") from exc
    if not np.isfinite(cost):
        raise MixprecError(f"the {kind} cost of uniform {value} is unknown (no MACs were counted?)")
    return cost
