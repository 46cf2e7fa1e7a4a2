"""What the measured local search (`solve --search local`) reaches at the BOPs of W4A8 as it is given more
time and more calibration data: the plan's top-1 on the evaluation split, the share of the
W4A8 -> W8A8 gap it closes, how many plans it measured and what the guard chose.

    python benchmarks/search_time.py resnet20 [--device cuda] [--samples 512,1000] [--budgets 1x,4x,10x]

Everything mixprec decides here it decides on calibration data (the local search on its batches, the
guard on the batches held apart from it); the evaluation split only reports. `gap_bound.py` is the same
search deciding on half of the evaluation split's labels instead: how far plans of these candidates go.
Writes benchmarks/results/search_time_<model><suffix>.json and .md (rows are saved as they are measured;
the same command resumes).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from never_worse import sqnr_analysis  # noqa: E402
from run import CONFIGS, RESULTS, first_last_choice, save_result  # noqa: E402

from mixprec import __version__  # noqa: E402
from mixprec.errors import MissingDataError  # noqa: E402
from mixprec.plan import write_json_atomic  # noqa: E402


def gap_share(value: float, low: float, high: float) -> float | None:
    """The share of the gap from ``low`` to ``high`` that ``value`` closes (None where there is no gap)."""
    return None if high <= low else (value - low) / (high - low)


def study(model: str, device: str, samples: list[int | None], budgets: list[str], at: str, kind: str,
          partial: Path, divergence: str = "auto") -> dict:
    config = CONFIGS[model]
    command = " ".join(["python", "benchmarks/search_time.py", *sys.argv[1:]])
    rows = []
    if partial.is_file():
        earlier = json.loads(partial.read_text())
        if earlier.get("command") == command:
            rows = earlier["rows"]
            print(f"resuming {partial.name}: {len(rows)} row(s) measured before", flush=True)
    done = {(r["samples"], r["time_budget"]) for r in rows}
    references = {}
    for n in samples:
        work = RESULTS / "tmp" / f"run_{model}" / f"samples_{n or 'default'}"
        analysis = sqnr_analysis(model, config.candidates, work, device, n)
        problem = analysis.problem()
        evaluator = analysis.evaluator(device=device)
        base = first_last_choice(problem, at)
        budget = problem.cost(kind, base)
        uniform = evaluator.measure(problem.assignments(base)).value
        upper = evaluator.measure(problem.assignments(first_last_choice(problem, config.upper))).value
        references[str(n or "default")] = {"uniform": uniform, "upper": upper,
                                          "analysis_seconds": analysis.table.metadata.get("seconds"),
                                          "calibration_batches": analysis.table.metadata.get("calibration_batches")}
        print(f"{model} samples {n or 'default'}: analysis {analysis.table.metadata.get('seconds')} s; uniform "
              f"{at} {uniform:.2f}, {config.upper} {upper:.2f}", flush=True)
        for time_budget in budgets:
            if (n, time_budget) in done:
                continue
            start = time.perf_counter()
            plan = analysis.solve({kind: budget}, search="local", device=device, time_budget=time_budget,
                                  guard_divergence=divergence)
            seconds = time.perf_counter() - start
            value = evaluator.measure(plan.assignments).value
            stop = [s for s in plan.metadata["trace"] if s.get("role") == "stop"]
            rows.append({"samples": n, "time_budget": time_budget, "seconds": round(seconds, 1),
                         "evaluations": plan.metadata["evaluations"], "metric": value,
                         "gap": gap_share(value, uniform, upper),
                         "moves": sum(s.get("role") == "accepted" for s in plan.metadata["trace"]),
                         "guard": (plan.metadata.get("guard") or {}).get("chosen"),
                         "stop": stop[0].get("reason") if stop else None,
                         "candidates_used": sorted(set(plan.assignments.values()))})
            r = rows[-1]
            print(f"  time budget {time_budget}: {seconds:.0f} s, {r['evaluations']} plans, {r['moves']} moves, "
                  f"guard {r['guard']}: top-1 {value:.2f} ({100 * (r['gap'] or 0):.0f} % of the gap)", flush=True)
            write_json_atomic(partial, {"model": model, "rows": rows, "references": references, "command": command})
    return {"model": model, "at": at, "kind": kind, "rows": rows, "references": references, "command": command,
            "environment": {"mixprec": __version__, "device": device}, "divergence": divergence}


def markdown(result: dict) -> str:
    lines = [f"### The local search's time and calibration data: {result['model']}, {result['kind']} of "
             f"{result['at']}", "",
             f"`{result['command']}` ({result['environment']['device']}). `solve --search local` (exact plan on the "
             "sqnr table and the uniform plans as starts; " + (
                 "KL from the float model on the calibration batches, and the guard's consensus"
                 if result.get("divergence", "auto") == "auto" else
                 f"`--guard-divergence {result['divergence']}`: the search and the guard both decide on it, on the "
                 "calibration batches") + "); top-1 on the evaluation split, which decides nothing. The rows ran one after another in one "
             "process, and a plan an earlier row measured on the same calibration data is read from the run's cache: "
             "a later row's plans measured include those, its seconds do not.", "",
             "| calibration samples | analysis s | time budget | search + guard s | plans measured | moves | guard "
             "| top-1 | uniform | w8a8 | gap closed |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        ref = result["references"][str(r["samples"] or "default")]
        gap = "—" if r["gap"] is None else f"{100 * r['gap']:.0f} %"
        lines.append(f"| {r['samples'] or 'default'} | {ref['analysis_seconds']} | {r['time_budget']} | {r['seconds']} "
                     f"| {r['evaluations']} | {r['moves']} | {r['guard']} | {r['metric']:.2f} | {ref['uniform']:.2f} "
                     f"| {ref['upper']:.2f} | {gap} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=("resnet20", "resnet56", "efficientnet-lite0", "demo-cnn"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--samples", default="default", help="calibration sample counts, e.g. default,1000")
    parser.add_argument("--budgets", default="1x,4x,10x", help="the local search's time budgets (solve's "
                                                                "--time-budget)")
    parser.add_argument("--at", default="w4a8")
    parser.add_argument("--kind", default="bops")
    parser.add_argument("--divergence", default="auto", help="solve's --guard-divergence, which the local search "
                                                              "decides on too (ce: the calibration labels)")
    parser.add_argument("--out-suffix", default="")
    args = parser.parse_args()
    samples = [None if s == "default" else int(s) for s in args.samples.split(",")]
    name = f"search_time_{args.model}{args.out_suffix}"
    partial = RESULTS / f"{name}.partial.json"
    try:
        result = study(args.model, args.device, samples, args.budgets.split(","), args.at, args.kind, partial,
                       args.divergence)
    except MissingDataError as exc:
        sys.exit(f"skipped: {exc}")
    save_result(RESULTS / name, result, markdown(result))
    partial.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
