"""The allocation problem every search solves, and what a search returns.

    choose c_g for every group g   minimising   sum_g S[g, c_g]
    such that  fixed_k + sum_g C_k[g, c_g] <= B_k  for every budget k,  c_g allowed for g

:class:`AllocationProblem` holds S aligned with every cost table C_k, the constant part of each
cost (``fixed``), the allowed mask (pins, a restricted candidate list, entries a custom cost table
lacks) and the names of groups and candidates; it is the one place that prices a plan
(:meth:`AllocationProblem.cost`). :class:`Goal` says what a search aims at: budgets, and for the
measured searches a loss bound and the function that measures a plan. Every search is
``search(problem, goal, **options) -> Solution`` (``mixprec.solvers.SOLVERS``). Knows nothing of torch.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from ..errors import MissingCost, MixprecError


@dataclass(frozen=True)
class Solution:
    choice: np.ndarray  # (G,) candidate index per group
    objective: float  # total sensitivity
    costs: dict[str, float]  # total cost per budget kind (fixed part included)
    evaluations: int = 0  # real evaluations of the model the search needed (0 for the exact solver)
    measured_loss: float | None = None  # measured loss of this plan, where the search measured it
    trace: list[dict] = field(default_factory=list)  # the search's steps, for the report


def allowed_mask(sensitivity: np.ndarray, allowed: np.ndarray | None) -> np.ndarray:
    mask = np.isfinite(sensitivity)
    if allowed is not None:
        mask &= allowed
    empty = np.where(~mask.any(axis=1))[0]
    if len(empty):
        raise MixprecError(f"group(s) {empty.tolist()[:5]} have no allowed candidate with a finite sensitivity")
    return mask


def plan_costs(choice: np.ndarray, sensitivity: np.ndarray, costs: dict[str, np.ndarray],
               fixed: dict[str, float] | None = None) -> tuple[float, dict[str, float]]:
    """Total sensitivity and total cost per kind of a choice (candidate index per group):
    ``fixed_k + sum_g C_k[g, choice[g]]``."""
    rows = np.arange(len(choice))
    fixed = fixed or {}
    return (float(np.asarray(sensitivity)[rows, choice].sum()),
            {k: float(fixed.get(k, 0.0) + c[rows, choice].sum()) for k, c in costs.items()})


def min_costs(costs: dict[str, np.ndarray], fixed: dict[str, float], mask: np.ndarray) -> dict[str, float]:
    """Smallest achievable total of each cost kind on its own."""
    return {k: float(fixed.get(k, 0.0) + np.where(mask, c, np.inf).min(axis=1).sum()) for k, c in costs.items()}


def max_costs(costs: dict[str, np.ndarray], fixed: dict[str, float], mask: np.ndarray) -> dict[str, float]:
    """Cost of the most expensive allowed plan, per kind."""
    return {k: float(fixed.get(k, 0.0) + np.where(mask, c, -np.inf).max(axis=1).sum()) for k, c in costs.items()}


def highest_precision(S: np.ndarray, cost: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Each group on its most expensive allowed candidate (ties: lower sensitivity, then lower index)."""
    return np.array([max(np.flatnonzero(mask[g]), key=lambda c: (cost[g, c], -S[g, c], -c)) for g in range(len(S))])


def cheapest(S: np.ndarray, cost: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Each group on its cheapest allowed candidate (ties: lower sensitivity, then lower index)."""
    return np.array([min(np.flatnonzero(mask[g]), key=lambda c: (cost[g, c], S[g, c], c)) for g in range(len(S))])


def within(cost: float, budget: float) -> bool:
    """``cost <= budget`` up to rounding in the sums (the tolerance every search uses)."""
    return cost <= budget * (1 + 1e-12) + 1e-12


def last_passing(passes: Callable[[int], bool], good: int, bad: int) -> int:
    """The largest i with ``passes(i)``, by bisection between ``good`` (passes, or lies before the
    range) and ``bad`` (fails, or lies after it); ``passes`` must hold up to some index and fail after."""
    while bad - good > 1:
        mid = (good + bad) // 2
        if passes(mid):
            good = mid
        else:
            bad = mid
    return good


@dataclass(frozen=True)
class Goal:
    """What a search aims at. ``budgets``: kind -> largest total cost; ``kind``: the cost kind a
    single-kind search lowers when no budget names it; ``measure(choice) -> loss`` (positive = worse
    than the float model) and ``max_loss`` for the searches that measure plans."""
    budgets: dict[str, float] = field(default_factory=dict)
    kind: str | None = None
    measure: Callable[[np.ndarray], float] | None = None
    max_loss: float | None = None

    def one_kind(self, problem: "AllocationProblem", search: str) -> str:
        """The cost kind a single-budget search minimises."""
        if len(self.budgets) > 1:
            raise MixprecError(f"search {search} takes one budget; got {', '.join(self.budgets)} (use the exact "
                               "solver or refine for several budgets at once)")
        if self.budgets:
            return next(iter(self.budgets))
        if self.kind:
            if self.kind not in problem.costs:
                raise MixprecError(f"unknown cost kind {self.kind!r}; kinds: {', '.join(problem.costs)}")
            return self.kind
        return problem.default_kind


STANDARD_KINDS = ("bytes", "bops", "bits_per_weight")


def range_variant(candidate: str, candidates) -> str:
    """``candidate``, or where it is not among ``candidates`` but its range variant is (w4a8 after
    weight_range="auto": w4a8-mse or w4a8-minmax), that variant; else ``candidate`` unchanged. Written
    any way the candidate grammar reads it (W4A8, fp8e4m3), it is the run's name of it."""
    if candidate in candidates:
        return candidate
    from ..candidates import parse_candidate
    from ..errors import CandidateError
    try:
        candidate = parse_candidate(candidate).name
    except CandidateError:
        return candidate
    if candidate in candidates:
        return candidate
    return next((c for c in candidates if c in (f"{candidate}-mse", f"{candidate}-minmax")), candidate)


@dataclass(frozen=True)
class AllocationProblem:
    groups: tuple[str, ...]
    candidates: tuple[str, ...]
    sensitivity: np.ndarray  # (G, C), lower is better
    costs: dict[str, np.ndarray]  # kind -> (G, C), columns as in ``candidates``
    fixed: dict[str, float]  # kind -> constant part of the model's cost
    allowed: np.ndarray  # (G, C) bool
    pins: dict[str, str] = field(default_factory=dict)  # group -> its one candidate
    metric: str = "sensitivity"
    notes: tuple[str, ...] = ()  # what the caller should know (e.g. entries a custom cost table lacks)
    # kind -> the measured cost fractions of it are of (a latency profile's float model), where the table has one
    bases: dict[str, float] = field(default_factory=dict)
    # kind -> (G, C) bool, the entries a measured table lacks (their cost is 0 in ``costs`` and never chosen)
    unknown: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self):
        shape = (len(self.groups), len(self.candidates))
        for name, table in [("sensitivity", self.sensitivity), ("allowed", self.allowed), *self.costs.items()]:
            if np.shape(table) != shape:
                raise MixprecError(f"{name} table has shape {np.shape(table)}; expected (groups, candidates) = {shape}")

    @property
    def mask(self) -> np.ndarray:
        """Allowed entries with a finite sensitivity; every group keeps at least one."""
        return allowed_mask(self.sensitivity, self.allowed)

    @property
    def default_kind(self) -> str:
        """The kind a single-kind search lowers by default: a custom table's, else BOPs."""
        custom = [k for k in self.costs if k not in STANDARD_KINDS]
        return custom[0] if custom else "bops"

    def cost(self, kind: str, choice: np.ndarray) -> float:
        return plan_costs(choice, self.sensitivity, {kind: self.costs[kind]}, self.fixed)[1][kind]

    def totals(self, choice: np.ndarray) -> tuple[float, dict[str, float]]:
        """Total sensitivity and every total cost of a choice."""
        return plan_costs(choice, self.sensitivity, self.costs, self.fixed)

    def solution(self, choice: np.ndarray, **extra) -> Solution:
        objective, costs = self.totals(choice)
        return Solution(np.asarray(choice), objective, costs, **extra)

    def assignments(self, choice: np.ndarray) -> dict[str, str]:
        return {g: self.candidates[int(c)] for g, c in zip(self.groups, choice)}

    def candidate_index(self, candidate: str) -> int:
        """Where ``candidate`` is; a name without a range suffix (w4a8) stands for the run's variant of it
        (w4a8-minmax after weight_range="auto"), which costs the same."""
        found = range_variant(candidate, self.candidates)
        if found not in self.candidates:
            raise MixprecError(f"{candidate} is not one of the candidates here ({', '.join(self.candidates)})")
        return self.candidates.index(found)

    def uniform_choice(self, candidate: str) -> np.ndarray:
        """Every group on ``candidate`` except pinned groups, which keep their pin."""
        j = self.candidate_index(candidate)
        return np.array([self.candidates.index(self.pins[g]) if g in self.pins else j for g in self.groups])

    def uniform_cost(self, kind: str, candidate: str) -> float:
        choice = self.uniform_choice(candidate)
        if kind in self.unknown:
            lacking = [g for i, g in enumerate(self.groups) if self.unknown[kind][i, choice[i]]]
            if lacking:
                raise MissingCost(f"the {kind} table has no {self.candidates[choice[self.groups.index(lacking[0])]]} "
                                   f"entry for {len(lacking)} group(s), e.g. {lacking[:3]}, so uniform {candidate} "
                                   f"has no {kind} cost; give {kind} as a number or a fraction (0.8x), or a "
                                   "candidate the table has for every group")
        return self.cost(kind, choice)

    def uniform_candidates(self) -> list[str]:
        """Candidates every unpinned group may take."""
        free = [i for i, g in enumerate(self.groups) if g not in self.pins]
        return [c for j, c in enumerate(self.candidates) if self.allowed[free, j].all()]

    def highest_cost(self, kind: str) -> float:
        """The base of fractional budgets such as 0.5x: the cost of the most expensive allowed plan in bytes, BOPs
        and bits per weight; in a measured table (latency_ms, ...) the float model's measured cost where the table
        brings it (``bases``: a latency profile's float model), else the cost of the highest-precision plan, every
        group on its candidate of most bytes (the float model's latency, not the slowest plan's: a quantized
        kernel can be slower than the float one)."""
        if kind in self.bases:  # measured: what the table predicts of the float plan can be far from it
            return self.bases[kind]
        if kind in STANDARD_KINDS or "bytes" not in self.costs:
            return max_costs({kind: self.costs[kind]}, self.fixed, self.allowed)[kind]
        return self.cost(kind, self.highest("bytes"))

    def highest(self, kind: str) -> np.ndarray:
        """Every group on its most expensive allowed candidate in ``kind`` (ties: the less sensitive)."""
        return highest_precision(self.sensitivity, self.costs[kind], self.mask)

    def cheapest(self, kind: str) -> np.ndarray:
        """Every group on its cheapest allowed candidate in ``kind`` (ties: the less sensitive)."""
        return cheapest(self.sensitivity, self.costs[kind], self.mask)

    def least_sensitive(self) -> np.ndarray:
        """Every group on its least sensitive allowed candidate."""
        return np.where(self.mask, self.sensitivity, np.inf).argmin(axis=1)

    def with_sensitivity(self, sensitivity: np.ndarray) -> "AllocationProblem":
        return replace(self, sensitivity=np.asarray(sensitivity, dtype=float))
