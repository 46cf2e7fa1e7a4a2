"""The built-in demo: every uniform candidate on a small CNN trained on scikit-learn's digits."""
from __future__ import annotations

import json
import time
from pathlib import Path

from .apply import apply
from .builtin import get_builtin
from .candidates import parse_candidates
from .costs import cost_tables, format_bytes, format_count
from .groups import discover_groups
from .plan import Plan, write_json_atomic


def run_demo(out: Path | None = None, candidates: str = "fp32,w8a8,w4a8") -> int:
    start = time.perf_counter()
    builtin = get_builtin("demo-cnn")
    print(f"mixprec demo: {builtin.description}")
    model = builtin.model()
    calibration = builtin.calibration(builtin.default_calibration_samples)
    groups = discover_groups(model, builtin.example_input())
    cands = parse_candidates(candidates)
    costs = cost_tables(groups, [c.name for c in cands], model)
    print(f"{len(groups)} quantizer groups, {sum(g.params for g in groups):,} weights; calibration: "
          f"{builtin.calibration_source}; evaluation: {builtin.evaluation_source}")
    rows = []
    for cand in cands:
        quantized = apply(model, Plan.uniform(groups, cand.name), calibration, progress=False)
        result = builtin.evaluate(quantized)
        rows.append({"candidate": cand.name, "top1": result.value,
                     **{k: costs.uniform(k, cand.name) for k in ("bytes", "bops", "bits_per_weight")}})
    header = f"{'candidate':<10} {'top-1 %':>8} {'bytes':>10} {'BOPs':>9} {'bits/weight':>11}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['candidate']:<10} {r['top1']:>8.2f} {format_bytes(r['bytes']):>10} "
              f"{format_count(r['bops']):>9} {r['bits_per_weight']:>11.3f}")
    elapsed = time.perf_counter() - start
    print(f"({elapsed:.1f} s; bytes include every scale and zero-point; BOPs per image)")
    if out is not None:
        write_json_atomic(out / "demo.json", {"rows": rows, "seconds": elapsed})
        print(f"wrote {out / 'demo.json'}")
    return 0
