"""Bit allocation: choose one candidate per group. Solvers know nothing of torch.

Every search is ``search(problem, goal, **options) -> Solution`` (problem.py); ``SOLVERS`` maps
the names the CLI and :meth:`mixprec.Analysis.solve` take to them, ``MEASURED`` names the searches
that evaluate plans for real with the user's evaluation (greedy-pareto does so only with a loss
bound); ``local`` measures plans too, by the output divergence on the calibration data.
"""
from __future__ import annotations

from .exact import exact_search
from .greedy import bisection_search, greedy_search
from .greedy_pareto import greedy_pareto_search
from .local_search import local_search
from .mixquant import mixquant_search
from .problem import AllocationProblem, Goal, Solution
from .refine import refine_search

SOLVERS = {"exact": exact_search, "greedy-pareto": greedy_pareto_search, "greedy": greedy_search,
           "bisection": bisection_search, "mixquant": mixquant_search, "refine": refine_search,
           "local": local_search}
MEASURED = frozenset({"greedy", "bisection", "refine"})

__all__ = ["SOLVERS", "MEASURED", "AllocationProblem", "Goal", "Solution"]
