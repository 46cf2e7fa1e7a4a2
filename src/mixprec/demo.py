"""The built-in demo: the whole pipeline on a small CNN trained on scikit-learn's digits.

analyze (sensitivity of every group at every candidate) -> pareto (the exact front over BOPs,
every plan and every uniform candidate evaluated for real) -> report (HTML + PNG)."""
from __future__ import annotations

import json
import time
from pathlib import Path

DEMO_CANDIDATES = "w2a8,w3a8,w4a8,w6a8,w8a8"


def run_demo(out: Path | None = None, candidates: str = DEMO_CANDIDATES, points: int = 12) -> int:
    from .builtin import get_builtin
    from .cli import main

    start = time.perf_counter()
    out = Path(out) if out is not None else Path("mixprec-demo")
    builtin = get_builtin("demo-cnn")
    print(f"mixprec demo: {builtin.description}\n  calibration: {builtin.calibration_source}\n"
          f"  evaluation: {builtin.evaluation_source}\n  output: {out}/")
    run = out / "run"
    steps = [
        ("1/3 sensitivity analysis", ["analyze", "--model", "demo-cnn", "--candidates", candidates,
                                      "--out", str(run)] + (["--resume", str(run)] if (run / "run.json").is_file()
                                                            else [])),
        ("2/3 Pareto front over BOPs, every plan evaluated", ["pareto", str(run), "--budget-kind", "bops",
                                                               "--points", str(points), "--eval", "--out", str(out)]),
    ]
    for title, argv in steps:
        print(f"\n== {title}: mixprec {' '.join(argv)}")
        code = main(argv)
        if code:
            return code
    print("\n== 3/3 report")
    pareto = json.loads((out / "pareto.json").read_text())
    ref = pareto["reference"]
    print(f"float model: {ref['name']} {ref['value']:.2f}")
    print(f"{'plan':<14} {'BOPs':>9} {'bytes':>9} {ref['name']:>8}")
    rows = [(f"uniform {c}", u) for c, u in pareto["uniform"].items()]
    rows += [(f"mixed #{i}", p) for i, p in enumerate(pareto["points"])]
    from .costs import format_bytes, format_count
    for name, item in sorted(rows, key=lambda r: r[1]["costs"]["bops"]):
        print(f"{name:<14} {format_count(item['costs']['bops']):>9} {format_bytes(item['costs']['bytes']):>9} "
              f"{item['measured']['value']:>8.2f}")
    print(f"\nreport: {(out / 'report.html').resolve()}")
    print(f"({time.perf_counter() - start:.1f} s; BOPs per image; bytes include every scale and zero-point)")
    return 0
