"""Reconstruction-aware allocation: refine measuring plans after BRECQ, against the plans measured
with nearest rounding and then reconstructed, at the cost of the target uniform candidate.

    python benchmarks/reconstruction_aware.py resnet20 --device cuda --rounds 1 --probes 8

Uses the analysis run of benchmarks/run.py (benchmarks/results/tmp/run_<model>/<default metric>; run
that first). At the BOPs of the target uniform candidate (first and last layer 8-bit, as there):
  - uniform target, nearest and BRECQ;
  - the exact plan, nearest and BRECQ;
  - refine with nearest measurements (as in run.py), its plan then reconstructed with BRECQ;
  - refine with BRECQ measurements (`solve --search refine --rounding brecq`): each plan and probe
    is measured after reconstruction.
Writes benchmarks/results/reconstruction_aware_<model>.json and .md.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

from mixprec import Analysis, __version__
from mixprec.plan import write_json_atomic
from mixprec.solvers import SOLVERS, Goal
from run import CONFIGS, first_last_choice

RESULTS = Path(__file__).parent / "results"


def benchmark(model: str, device: str, rounds: int, probes: int, kind: str = "bops", at: str | None = None) -> dict:
    start = time.perf_counter()
    config = CONFIGS[model]
    run_dir = RESULTS / "tmp" / f"run_{model}" / config.metrics[0]
    if not (run_dir / "sensitivity.json").is_file():
        raise SystemExit(f"no analysis in {run_dir}: run `python benchmarks/run.py {model}` first")
    analysis = Analysis.load(run_dir)
    problem = analysis.problem()
    nearest = analysis.evaluator(device=device)
    brecq = analysis.evaluator(device=device, rounding="brecq")
    at = at or config.target
    if at not in problem.candidates:
        raise SystemExit(f"--at {at}: not one of the run's candidates {list(problem.candidates)}")
    uniform = first_last_choice(problem, at)
    budget = problem.cost(kind, uniform)
    exact = SOLVERS["exact"](problem, Goal({kind: budget})).choice
    rows = []

    def add(label: str, choice, evaluations: int | None = None, seconds: float | None = None) -> None:
        a = problem.assignments(choice)
        row = {"plan": label, "cost": problem.cost(kind, choice), "nearest": nearest.measure(a).value,
               "brecq": brecq.measure(a).value, "candidates": sorted(set(a.values()))}
        if evaluations is not None:
            row.update(evaluations=evaluations, search_seconds=round(seconds, 1))
        rows.append(row)
        print(f"{label:<34} nearest {row['nearest']:.3f}  brecq {row['brecq']:.3f}", flush=True)

    def loss_by(evaluator):
        """The measured loss of a choice, its weights rounded as ``evaluator`` rounds them."""
        return lambda choice: evaluator.loss(evaluator.measure(problem.assignments(choice)))

    add(f"uniform {at}", uniform)
    add("exact", exact)
    for label, evaluator in (("refine, nearest measurements", nearest), ("refine, BRECQ measurements", brecq)):
        t = time.perf_counter()
        solution = SOLVERS["refine"](problem, Goal({kind: budget}, measure=loss_by(evaluator)), rounds=rounds,
                                     probes=probes)
        add(label, solution.choice, solution.evaluations, time.perf_counter() - t)
    return {"model": model, "kind": kind, "budget": budget, "at": at, "metric": config.metrics[0],
            "reference": nearest.reference().to_dict(), "rows": rows, "rounds": rounds, "probes": probes,
            "wall_seconds": round(time.perf_counter() - start, 1), "command": "python " + " ".join(sys.argv),
            "environment": {"mixprec": __version__, "torch": torch.__version__, "device": device,
                            "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None,
                            "python": platform.python_version(), "threads": torch.get_num_threads()}}


def markdown(r: dict) -> str:
    name = r["reference"]["name"]
    lines = [f"## {r['model']}: reconstruction-aware allocation at the {r['kind']} of {r['at']}", "",
             f"Float {name} {r['reference']['value']:.3f}; {r['metric']} table; refine with {r['rounds']} round(s) "
             f"of up to {r['probes']} probes. Each plan measured with nearest rounding and with BRECQ.", "",
             f"| plan | {r['kind']} | {name}, nearest | {name}, BRECQ | evaluations | search s | candidates |",
             "|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        lines.append(f"| {row['plan']} | {row['cost']:.4g} | {row['nearest']:.3f} | {row['brecq']:.3f} | "
                     f"{row.get('evaluations', '')} | {row.get('search_seconds', '')} | {', '.join(row['candidates'])} |")
    best = max(r["rows"], key=lambda row: row["brecq"])
    env = r["environment"]
    lines += ["", f"Best after BRECQ: {best['plan']} ({best['brecq']:.3f}). `{r['command']}` on {env['device']} "
              f"{env.get('gpu') or ''}, torch {env['torch']}, {r['wall_seconds']} s.", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", choices=sorted(CONFIGS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--probes", type=int, default=8)
    parser.add_argument("--at", help="the uniform candidate whose cost is the budget (default: the model's target)")
    args = parser.parse_args()
    report = benchmark(args.model, args.device, args.rounds, args.probes, at=args.at)
    name = f"reconstruction_aware_{args.model}" + (f"_{args.at}" if args.at else "")
    write_json_atomic(RESULTS / f"{name}.json", report)
    (RESULTS / f"{name}.md").write_text(markdown(report))
    print(f"wrote {RESULTS / name}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
