"""The local search with and without cheap-to-expensive data stages, at one budget, same run.

    python benchmarks/local_search_stages.py resnet20 [--at w4a8] [--kind bops] [--device cpu]

Staged: each round's 16 best-predicted moves are screened on a quarter of the calibration batches
(the plans calibrated on those batches too) and the 2 that screen best are measured on all of them;
full: each round's 8 best-predicted moves are measured on all the calibration data. Both start from
the exact plan and the uniform plans within the budget (sqnr table of benchmarks/run.py's run), and
decide on the calibration data only; the returned plans are evaluated on the evaluation split.
Writes benchmarks/results/local_search_stages_<model>.json.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from never_worse import sqnr_analysis  # noqa: E402
from run import CONFIGS, RESULTS, first_last_choice  # noqa: E402

from mixprec import __version__  # noqa: E402
from mixprec.errors import MissingDataError  # noqa: E402
from mixprec.plan import write_json_atomic  # noqa: E402


def benchmark(model: str, at: str, kind: str, device: str, samples: int | None) -> dict:
    config = CONFIGS[model]
    analysis = sqnr_analysis(model, config.candidates, RESULTS / "tmp" / f"run_{model}", device, samples)
    problem = analysis.problem()
    base = first_last_choice(problem, at) if config.pin_first_last else problem.uniform_choice(at)
    budget = problem.cost(kind, base)
    evaluator = analysis.evaluator(device=device)
    rows = {"uniform": {"metric": evaluator.measure(problem.assignments(base)).value}}
    for label, staged in (("staged", True), ("full", False)):
        analysis._checkers.clear()  # each variant pays for its own divergence evaluators
        start = time.perf_counter()
        plan = analysis.solve({kind: budget}, search="local", staged=staged, device=device)
        seconds = time.perf_counter() - start
        screened = next((s["plans"] for s in plan.metadata["trace"] if s.get("role") == "screened"), 0)
        rows[label] = {"seconds": round(seconds, 1), "full_evaluations": plan.metadata["evaluations"],
                       "screened": screened, "metric": evaluator.measure(plan.assignments).value,
                       "assignments": plan.assignments}
        print(f"{label}: {rows[label]['metric']:.3f} in {seconds:.1f} s, {plan.metadata['evaluations']} full "
              f"evaluations, {screened} screened", flush=True)
    return {"model": model, "at": at, "kind": kind, "budget": budget, "rows": rows,
            "calibration_batches": analysis.table.metadata.get("calibration_batches"),
            "command": " ".join(["python", "benchmarks/local_search_stages.py", *sys.argv[1:]]),
            "environment": {"mixprec": __version__, "device": device}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=sorted(CONFIGS))
    parser.add_argument("--at", default="w4a8")
    parser.add_argument("--kind", default="bops")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--calibration-samples", type=int, default=None)
    args = parser.parse_args()
    try:
        result = benchmark(args.model, args.at, args.kind, args.device, args.calibration_samples)
    except MissingDataError as exc:
        print(f"skipped: {exc}")
        return 0
    out = RESULTS / f"local_search_stages_{args.model}.json"
    write_json_atomic(out, result)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
