"""The built-in demo: the whole pipeline on a small CNN trained on scikit-learn's digits, through the
Python API: analyze (sensitivity of every group at every candidate) -> pareto (the exact front over
BOPs, every plan and every uniform candidate evaluated for real) -> report (HTML + PNG)."""
from __future__ import annotations

import time
from pathlib import Path

DEMO_CANDIDATES = "w2a8,w3a8,w4a8,w6a8,w8a8"


def run_demo(out: Path | None = None, candidates: str = DEMO_CANDIDATES, n_plans: int = 12) -> int:
    from .analysis import analyze
    from .builtin import get_builtin
    from .costs import format_bytes, format_count
    from .specs import prepare

    start = time.perf_counter()
    out = Path(out) if out is not None else Path("mixprec-demo")
    builtin = get_builtin("demo-cnn")
    print(f"mixprec demo: {builtin.description}\n  calibration: {builtin.calibration_source}\n"
          f"  evaluation: {builtin.evaluation_source}\n  output: {out}/")
    model, data, _, groups = prepare("demo-cnn")  # the built-in model, its calibration set, pins and excludes
    print(f"\n== 1/3 sensitivity analysis (cached in {out / 'run'})")
    analysis = analyze(model, data, candidates, "sqnr", out / "run", groups=groups, evaluate=builtin.evaluate,
                       model_name="demo-cnn", arguments={"model": "demo-cnn", "candidates": candidates,
                                                         "metric": "sqnr"})  # a later solve/pareto loads it
    print(f"sqnr sensitivity of {len(analysis.groups)} groups x {len(analysis.table.candidates)} candidates "
          f"in {analysis.table.metadata['seconds']:.1f} s")
    print("\n== 2/3 Pareto front over BOPs, every plan evaluated")
    front = analysis.pareto("bops", n_plans, evaluate=True)
    report = analysis.report(front, out)  # writes pareto.json beside it
    replaced = sum(1 for p in front.plans if p.search and "guard: " in p.search)
    print(f"{len(front.plans)} plans on the front" + (f" ({replaced} put in by the guard: uniform plans that measured "
          "better on the calibration data than the plan solved at their budget)" if replaced else "")
          + f"; wrote {out / 'pareto.json'}, {out / 'pareto.png'} and {report}")
    print("\n== 3/3 report")
    ref = front.reference
    print(f"float model: {ref['name']} {ref['value']:.2f}")
    print(f"{'plan':<32} {'BOPs':>9} {'bytes':>9} {ref['name']:>8}")
    rows = [(f"uniform {c}", u) for c, u in front.uniform.items()]
    def label(p) -> str:
        if p.search and "guard: " in p.search:
            return p.search.split("guard: ")[1].replace(", first/last", " +8-bit ends")
        same = next((c for c, u in front.uniform.items() if u.assignments == p.assignments), None)
        return f"uniform {same}" if same else "mixed"
    rows += [(f"#{i} {label(p)}", p) for i, p in enumerate(front.plans)]
    for name, item in sorted(rows, key=lambda r: r[1].costs["bops"]):
        print(f"{name:<32} {format_count(item.costs['bops']):>9} {format_bytes(item.costs['bytes']):>9} "
              f"{item.measured['value']:>8.2f}")
    print(f"\nreport: {report.resolve()}")
    print(f"({time.perf_counter() - start:.1f} s; BOPs per image; bytes include every scale and zero-point)")
    return 0
