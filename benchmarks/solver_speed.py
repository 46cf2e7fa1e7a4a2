"""Exact solver speed: random instances of the size of real models and beyond.

    python benchmarks/solver_speed.py

1,000 groups x 6 candidates x 3 budgets solved to optimality (target < 1 s on 2 CPU cores), and a
50-point Pareto front on 300 groups (target < 10 s): by the integer program at every budget, and
by the Lagrangian path (each plan optimal at its own cost), with the largest gap between the two.
Writes benchmarks/results/solver_speed.json.
"""
from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import scipy

from mixprec.plan import write_json_atomic
from mixprec.solvers.exact import solve_exact
from mixprec.solvers.pareto import pareto_front


def instance(groups: int, cands: int, kinds: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    bits = np.linspace(2, 8, cands)
    params = rng.integers(1_000, 1_000_000, groups)[:, None]
    S = rng.exponential(1.0, (groups, 1)) * 4.0 ** (-bits)[None, :]  # damage falls ~4x per bit
    costs = {"bytes": params * bits / 8, "bops": params * rng.integers(1, 50, (groups, 1)) * bits * 8,
             "latency": params * (0.2 + bits / 8) * rng.uniform(0.5, 1.5, (groups, cands))}
    costs = dict(list(costs.items())[:kinds])
    budgets = {k: 0.55 * c.max(axis=1).sum() + 0.45 * c.min(axis=1).sum() for k, c in costs.items()}
    return S, costs, budgets


def main() -> int:
    rows = []
    for groups, cands, kinds in ((100, 6, 3), (300, 6, 3), (1000, 6, 3), (1000, 6, 1)):
        S, costs, budgets = instance(groups, cands, kinds)
        start = time.perf_counter()
        solution = solve_exact(S, costs, budgets)
        seconds = time.perf_counter() - start
        rows.append({"groups": groups, "candidates": cands, "budgets": kinds, "seconds": round(seconds, 4),
                     "objective": solution.objective})
        print(f"{groups:5d} groups x {cands} candidates x {kinds} budgets: {seconds:.3f} s (optimal)")
    fronts = []
    for groups, cands, points in ((300, 6, 50),):
        S, costs, _ = instance(groups, cands, 1)
        timed = {}
        for method in ("exact", "lagrangian"):
            start = time.perf_counter()
            timed[method] = pareto_front(S, costs, "bytes", points, method=method)
            seconds = time.perf_counter() - start
            print(f"{points}-point front, {groups} groups x {cands} candidates, {method}: {seconds:.3f} s, "
                  f"{len(timed[method])} non-dominated plans")
            fronts.append({"groups": groups, "candidates": cands, "points": points, "method": method,
                           "seconds": round(seconds, 4), "plans": len(timed[method])})
        # the Lagrangian plan at each budget against the exact plan at the same budget
        exact = {round(p.budget, 6): p.solution.objective for p in timed["exact"]}
        gaps = [p.solution.objective / exact[round(p.budget, 6)] - 1 for p in timed["lagrangian"]
                if round(p.budget, 6) in exact and exact[round(p.budget, 6)] > 0]
        fronts[-1]["largest_relative_gap_to_exact"] = max(gaps) if gaps else None
        print(f"  Lagrangian vs exact at the same budgets: largest relative excess sensitivity "
              f"{fronts[-1]['largest_relative_gap_to_exact']:.2%} over {len(gaps)} shared budgets")
    write_json_atomic(Path(__file__).parent / "results" / "solver_speed.json",
                      {"rows": rows, "fronts": fronts, "command": "python " + " ".join(sys.argv), "scipy": scipy.__version__,
                       "machine": platform.machine(), "cpu_count": os.cpu_count(),
                       "load_average_at_end": round(os.getloadavg()[0], 2), "mip_rel_gap": 0.0})
    return 0


if __name__ == "__main__":
    sys.exit(main())
