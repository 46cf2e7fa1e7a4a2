"""The guard: a mixed plan is returned only when it measures better than the best uniform plan
that meets the same budgets and pins (mixprec's promise: never worse than uniform).

    rivals  <- every uniform plan within the budgets (pins kept), and each one's variant with the
               first and last groups at 8 bits (the baseline users compare against)
    D(p)    <- a label-free divergence of plan p's output from the float model, on calibration data,
               or a tuple of divergences (D_1(p), ..., D_k(p)) that must agree
    best    <- argmin over rivals of D (tuples: the lowest mean rank over the divergences, ties to the
               last divergence, then to the label; a rival lower on every divergence always wins)
    return the mixed plan if, for every i, D_i(mixed) < D_i(best) by more than ``margin`` standard
           errors of the paired difference, else best (a divergence on which both measure exactly 0, both
           plans reproducing the float model there, does not decide between them; nor, among several, one
           on which the mixed plan is not higher and too few samples differ for any difference to exceed
           the margin)

The mixed plan is judged against the plan that would replace it, not against every rival: with several
divergences, a rival ranked below best that measures lower than the mixed plan on one of them would
otherwise veto it and have best returned, a plan the mixed plan measures lower than on every divergence.
With one divergence, best is the lowest rival and the two readings agree.

Ties go to uniform, and a tie is a difference within the measurement's noise: each divergence is a
sum of per-sample shares (mixprec.sensitivity.divergence), so two plans measured on the same
calibration samples give a paired difference d_s whose sum has the standard error
sqrt(n) * std(d_s). On ResNet-56 at the BOPs of W4A8 the mixed plan disagreed with the float model's
top-1 on 2 fewer of 512 calibration images than uniform (0.41 standard errors) and measured worse
on the evaluation split; without per-sample shares (``margin=0`` or a plain float), any lower
value wins. The divergence is measured, not predicted: the additive sensitivity model is
what fails near aggressive plans, so the guard does not trust it. With several divergences the
mixed plan must win on each against the best rival (a consensus): for classifiers, top-1 disagreement alone and 1/SQNR
alone each misranked one of two measured failures of the exact plan, and never both at once
(benchmarks/guard_divergences.py); given labels, the cross-entropy against them joins, since a plan
closer to the float model on both can still be less accurate (benchmarks/guard_labels.py).
"""
from __future__ import annotations

import math

from dataclasses import dataclass, field
from typing import Callable, Sequence, Union

import numpy as np

MIXED = "mixed"


@dataclass(frozen=True)
class Sampled:
    """Divergences with each one's per-sample shares (``samples[i].sum() == values[i]``), for the paired test."""
    values: tuple[float, ...]
    samples: tuple[np.ndarray, ...]


Measured = Union[float, Sequence[float], Sampled]


def _tuple(value: Measured) -> tuple[float, ...]:
    if isinstance(value, Sampled):
        return tuple(float(v) for v in value.values)
    return tuple(float(v) for v in value) if isinstance(value, (tuple, list)) else (float(value),)


def _paired(a: Measured, b: Measured, i: int) -> np.ndarray | None:
    """Divergence i's per-sample differences a - b; None without per-sample shares for both, on different
    samples, or fewer than 2 of them."""
    if not (isinstance(a, Sampled) and isinstance(b, Sampled)):
        return None
    sa, sb = np.asarray(a.samples[i], dtype=np.float64), np.asarray(b.samples[i], dtype=np.float64)
    return sa - sb if sa.shape == sb.shape and sa.size >= 2 else None


def paired_z(a: Measured, b: Measured, i: int) -> float | None:
    """(D_i(a) - D_i(b)) in standard errors of the paired difference over their shared samples; None
    without per-sample shares for both, on different samples, or fewer than 2 of them."""
    d = _paired(a, b, i)
    if d is None:
        return None
    se = np.sqrt(d.size) * d.std(ddof=1)
    total = float(d.sum())
    if se == 0:
        return 0.0 if total == 0 else float(np.sign(total)) * float("inf")
    return float(total / se)


def _unresolvable(a: Measured, b: Measured, i: int, margin: float) -> bool:
    """Whether divergence i cannot tell ``a`` from ``b`` beyond ``margin`` standard errors however its samples
    fell: their paired difference is nonzero on k of n samples, and k nonzero differences give a paired z of at
    most sqrt(k (n - 1) / (n - k)) (equal values of one sign; k = 1 gives exactly 1). False without per-sample
    shares."""
    d = _paired(a, b, i)
    if d is None:
        return False
    n, k = d.size, int(np.count_nonzero(d))
    return k < n and math.sqrt(k * (n - 1) / (n - k)) <= margin


def _finite(value: Measured):
    if isinstance(value, Sampled):
        value = list(value.values) if len(value.values) > 1 else value.values[0]
    if isinstance(value, (tuple, list)):
        return [v if np.isfinite(v) else None for v in value]
    return value if np.isfinite(value) else None


def _show(value: Measured, names: tuple[str, ...] | None = None) -> str:
    values = _tuple(value)
    if names is not None and len(names) == len(values):  # "disagreement 0.05 / 1/SQNR 0.01 / ce 0.67", "nll 2.31"
        return " / ".join(f"{name} {v:.4g}" for name, v in zip(names, values))
    return " / ".join(f"{v:.4g}" for v in values)


@dataclass(frozen=True)
class GuardResult:
    chosen: str  # MIXED or the label of the uniform rival returned
    choice: np.ndarray
    divergence: dict[str, Measured] = field(default_factory=dict)  # label -> measured divergence(s), MIXED included
    reason: str = ""
    margin: float = 0.0  # standard errors of the paired difference the mixed plan had to win by
    z: dict[str, list] = field(default_factory=dict)  # rival -> per divergence, D(mixed) - D(rival) in standard errors
    # rival -> the divergences that decided against it (the others abstained: both 0, or too few samples differ)
    deciding: dict[str, list[int]] = field(default_factory=dict)

    def to_dict(self, kind: str, data: str) -> dict:
        out = {"divergence": kind, "data": data, "chosen": self.chosen, "reason": self.reason,
               "measured": {k: _finite(v) for k, v in self.divergence.items()}, "margin_se": self.margin}
        if self.z:
            out["paired_z"] = {k: [None if v is None or not np.isfinite(v) else round(v, 3) for v in zs]
                               for k, zs in self.z.items()}
        if self.deciding and any(len(v) < len(_tuple(self.divergence[MIXED])) for v in self.deciding.values()):
            out["deciding"] = self.deciding  # only where some divergence abstained: else every one decided
        samples = [len(v.samples[0]) for v in self.divergence.values() if isinstance(v, Sampled) and v.samples]
        if samples:
            out["samples"] = samples[0]
        return out


def best_rival(rivals: dict[str, np.ndarray], measured: dict[str, Measured], rank_by: int | None = None) -> str:
    """The rival to return: with one divergence the lowest; with several, the lowest mean rank, ties to the last
    divergence (for classifiers 1/SQNR, or the labels' cross-entropy where there are labels: continuous where
    top-1 disagreement moves in whole samples), then the
    label. No divergence is privileged by its place in the tuple, and a rival lower on all of them wins."""
    labels = sorted(rivals)
    values = {label: _tuple(measured[label])[:rank_by] for label in labels}
    width = len(next(iter(values.values())))
    if width == 1:
        return min(labels, key=lambda label: (values[label], label))
    ranks = {label: 0.0 for label in labels}
    for i in range(width):
        for label in labels:  # ties share the better rank
            ranks[label] += sum(values[other][i] < values[label][i] for other in labels)
    return min(labels, key=lambda label: (ranks[label], values[label][-1], label))


def guard(choice: np.ndarray, rivals: dict[str, np.ndarray], measure: Callable[[np.ndarray], Measured],
          margin: float = 1.0, rank_by: int | None = None, names: tuple[str, ...] | None = None) -> GuardResult:
    """The mixed ``choice`` against the uniform ``rivals`` (label -> choice), by ``measure`` (lower is better;
    a tuple of divergences: the mixed plan must be lower than the best rival, the one returned otherwise, on
    every one, except those on which both measure 0; :class:`Sampled` divergences: lower by more than ``margin``
    standard errors of the paired difference). ``rank_by``: the uniform plan returned otherwise is ranked on the first
    ``rank_by`` divergences only (default all); the others only veto the mixed plan (a classifier's labels'
    cross-entropy: among uniform plans near collapse it ranked ResNet-20's W2A8 variants as the evaluation split
    did not, 21.73 over 24.61, where disagreement and 1/SQNR rank them right; benchmarks/guard_labels.py).
    ``names``: the divergences' names, for the reason (else "divergence i of n")."""
    if margin < 0 or not np.isfinite(margin):
        raise ValueError(f"the guard's margin is a number of standard errors >= 0, got {margin}")
    if not rivals:
        return GuardResult(MIXED, choice, {}, "no uniform plan meets the budget (pins kept): none to compare with",
                           margin)
    same = [label for label, rival in rivals.items() if np.array_equal(rival, choice)]
    if same:
        return GuardResult(same[0], choice, {}, f"the plan is {same[0]}", margin)
    measured = {MIXED: measure(choice)}
    for label, rival in rivals.items():
        measured[label] = measure(rival)
    best = best_rival(rivals, measured, rank_by)
    mixed = measured[MIXED]
    width = len(_tuple(mixed))
    if names is not None and len(names) != width:
        names = None

    def called(i: int) -> str:
        return f"on {names[i]}" if names is not None else f"on divergence {i + 1} of {width}"

    def show(value: Measured) -> str:
        return _show(value, names)

    z_all = {label: [paired_z(mixed, measured[label], i) for i in range(width)] for label in rivals}
    z = {label: zs for label, zs in z_all.items() if any(v is not None for v in zs)}

    def deciding_against(label: str) -> list[int]:
        """The divergences that decide against this rival: all but those on which both plans measure exactly 0
        (both reproduce the float model there, e.g. no top-1 disagreement on any calibration sample), which
        say nothing between them, and, with several divergences, those on which the mixed plan is not higher and
        too few samples differ to show any difference beyond the margin (top-1 disagreement on 0 against 1 of
        256 images: 1 standard error, whichever plan is better); none left is a tie."""
        rival = measured[label]
        return [i for i in range(width) if not (_tuple(mixed)[i] == 0 and _tuple(rival)[i] == 0) and not (
            width > 1 and _tuple(mixed)[i] <= _tuple(rival)[i] and _unresolvable(mixed, rival, i, margin))]

    def lower(label: str, i: int, noise: bool = True) -> bool:
        """The mixed plan below this rival on divergence i; beyond the noise where per-sample shares say it."""
        below = _tuple(mixed)[i] < _tuple(measured[label])[i]
        zi = z_all[label][i]
        return below and (not noise or margin <= 0 or zi is None or zi < -margin)

    deciding = {label: deciding_against(label) for label in rivals}
    # the mixed plan is judged against the plan it would be replaced by: a veto by another rival would return
    # `best`, which the mixed plan measures lower than on every divergence (so a dominated plan, not a safer one)
    against = deciding[best]
    if against and all(lower(best, i) for i in against):
        tested = f", lower by more than {margin:g} standard error(s) of the paired difference" \
            if best in z and margin > 0 else ""
        if tested and len(against) < width:  # the divergences that abstained are said, not claimed
            abstained = [i for i in range(width) if i not in against]
            tested = (f", lower by more than {margin:g} standard error(s) of the paired difference "
                      + " and ".join(called(i) for i in against) + "; " + " and ".join(called(i) for i in abstained)
                      + " cannot tell them apart (both 0, or too few samples differ) and does not decide")
        return GuardResult(MIXED, choice, measured, f"the mixed plan measures {show(mixed)} against "
                           f"{show(measured[best])} for the best uniform plan within the budget ({best}){tested}",
                           margin, z, deciding)
    if against and all(lower(best, i, noise=False) for i in against):
        # lower everywhere, but within the noise on some divergence
        close = min(((i, z[best][i]) for i in against if best in z and z[best][i] is not None
                     and not lower(best, i)), key=lambda t: -t[1], default=None)
        # rounded down: 0.998 standard errors must not read as the margin of 1 it missed
        where = ""
        if close:
            i, zi = close
            where = f" ({math.floor(abs(zi) * 100) / 100:.2f} standard errors"
            if width > 1:  # which divergence missed the margin, and what the others measured
                others = ", ".join(f"{abs(v):.2f}" + (f" on {names[k]}" if names is not None else "")
                                   for k, v in enumerate(z[best]) if k != i and v is not None)
                where += f" {called(i)}" + (f"; on the other(s): {others}" if others else "")
            where += ")"
        return GuardResult(best, rivals[best], measured, f"{best} measures {show(measured[best])}, the mixed plan "
                           f"{show(mixed)}: lower, but by no more than {margin:g} standard error(s) of the paired "
                           f"difference on the calibration samples{where}; ties go to uniform: the uniform plan is "
                           "returned", margin, z, deciding)
    # the divergence the mixed plan is not lower on
    blocking = next((i for i in against if not lower(best, i, noise=False)), None)
    where = ""
    if blocking is not None and width > 1:
        where = (f"; {called(blocking)} it measures {_tuple(mixed)[blocking]:.4g}, not lower than "
                 f"{_tuple(measured[best])[blocking]:.4g}")
        zb = z[best][blocking] if best in z else None
        if zb is not None and margin > 0 and abs(zb) <= margin:  # a tie there: more samples may tell them apart
            where += (f", a difference of {zb:+.2f} standard errors, within the noise: more calibration samples "
                      "can tell the plans apart")
    return GuardResult(best, rivals[best], measured, f"{best} measures {show(measured[best])}, the mixed plan "
                       f"{show(mixed)} (ties go to uniform"
                       + (", and the mixed plan must measure lower on every divergence" if width > 1 else "")
                       + f"{where}): the uniform plan is returned", margin, z, deciding)
