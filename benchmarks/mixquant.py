"""MixQuant's allocation + plain asymmetric min-max against plain asymmetric min-max at the same
model size (Kloberdanz & Le 2023's second claim), and MixQuant's allocation + BRECQ against BRECQ
at the uniform bit-width of the same size (its headline), with the exact solver beside both.

    python benchmarks/mixquant.py resnet20 --bits 2,3,4 --roundings nearest,brecq

Weight-only, asymmetric per-channel weights with min-max ranges; the first and last layer stay at
8 bits in every plan. For each uniform bit-width B: uniform wB-asym; MixQuant (roundoff error,
QEM swept exactly to the bytes of uniform wB-asym); the exact solver on the same roundoff table at
the same bytes. Every plan is evaluated on the model's whole evaluation split, once per rounding
(nearest: plain min-max; brecq: block reconstruction with the default options, on the analysis's
calibration data, wall time recorded).
Writes benchmarks/results/mixquant_<model>.json and .md.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

from mixprec import Analysis, __version__
from mixprec.errors import MissingDataError
from mixprec.plan import write_json_atomic
from mixprec.solvers import SOLVERS, Goal
from run import analysis_arguments, analyze_run

RESULTS = Path(__file__).parent / "results"
CANDIDATES = "w2-asym,w3-asym,w4-asym,w5-asym,w6-asym,w8-asym"
FIRST_LAST = {"resnet20": ("conv1", "linear"), "resnet56": ("conv1", "linear"),
              "efficientnet-lite0": ("_conv_stem.1", "_fc")}


def benchmark(model: str, bits: list[int], device: str, roundings: list[str] = ("nearest",),
              samples: int | None = None) -> dict:
    start = time.perf_counter()
    run_dir = RESULTS / "tmp" / (f"mixquant_{model}" + (f"_n{samples}" if samples else ""))
    if not (run_dir / "sensitivity.json").is_file():
        pins = [f"{layer}=w8-asym" for layer in FIRST_LAST.get(model, ())]
        analyze_run(run_dir, analysis_arguments(model, CANDIDATES, "roundoff", device, run_dir, samples, pins,
                                                weight_range="minmax"))
    analysis = Analysis.load(run_dir)
    problem = analysis.problem()
    evaluators = {r: analysis.evaluator(device=device, rounding=r) for r in roundings}
    reference = next(iter(evaluators.values())).reference()
    rows = []
    for b in bits:
        cand = f"w{b}-asym"
        uniform = problem.uniform_choice(cand)
        budget = problem.cost("bytes", uniform)
        same_bytes = Goal({"bytes": budget})
        plans = {"uniform": uniform, "mixquant": SOLVERS["mixquant"](problem, same_bytes).choice,
                 "exact (roundoff)": SOLVERS["exact"](problem, same_bytes).choice}
        row = {"bits": b, "budget_bytes": budget}
        for name, choice in plans.items():
            assignments = problem.assignments(choice)
            row[name] = {"bytes": problem.cost("bytes", choice), "candidates": sorted(set(assignments.values()))}
            for rounding, evaluator in evaluators.items():
                result = evaluator.measure(assignments)
                key = evaluator._key(assignments)
                row[name]["metric" if rounding == "nearest" else rounding] = result.value
                row[name][f"{rounding}_seconds"] = round(evaluator.seconds_of.get(key, float("nan")), 1)
                print(f"{cand:<8} {name:<17} {rounding:<8} {result.name} {result.value:.3f}  "
                      f"bytes {row[name]['bytes']:.0f}  {row[name][f'{rounding}_seconds']} s", flush=True)
        rows.append(row)
    return {"model": model, "reference": reference.to_dict(), "rows": rows, "candidates": CANDIDATES,
            "roundings": list(roundings), "calibration_samples": samples or "the model's default",
            "first_last": FIRST_LAST.get(model), "wall_seconds": round(time.perf_counter() - start, 1),
            "command": "python " + " ".join(sys.argv),
            "environment": {"mixprec": __version__, "torch": torch.__version__, "python": platform.python_version(),
                            "device": device, "threads": torch.get_num_threads()}}


def markdown(r: dict) -> str:
    ref = r["reference"]
    lines = [f"## {r['model']}: MixQuant + asymmetric min-max against asymmetric min-max", "",
             f"Weight-only, asymmetric per-channel, min-max ranges; first and last layer at 8 bits in every plan; "
             f"float {ref['name']} {ref['value']:.3f}; calibration samples: "
             f"{r.get('calibration_samples', 'the model' + chr(39) + 's default')}.", "",
             f"| bits | uniform {ref['name']} | MixQuant {ref['name']} | exact (roundoff) {ref['name']} | "
             "MixQuant candidates | MixQuant better than uniform |", "|---|---|---|---|---|---|"]
    wins = 0
    for row in r["rows"]:
        u, m = row["uniform"], row["mixquant"]
        same = m["bytes"] == u["bytes"] and m["metric"] == u["metric"]
        win = m["metric"] > u["metric"]
        wins += win
        lines.append(f"| {row['bits']} | {u['metric']:.3f} | {m['metric']:.3f} | "
                     f"{row['exact (roundoff)']['metric']:.3f} | {', '.join(m['candidates'])} | "
                     f"{'yes' if win else 'no, the same plan as uniform' if same else 'no'} |")
    env = r["environment"]
    lines += ["", f"MixQuant better than uniform at {wins} of {len(r['rows'])} sizes. Its rule (the cheapest "
              "bit-width whose round-off error is within QEM times the base error) gives every layer the same "
              "bit-width when the error ratios between bit-widths are alike across layers, as they are here; the "
              "exact solver on the same table does not have that limit. "
              f"`{r['command']}` on {env['device']}, "
              f"{env['threads']} threads, torch {env['torch']}, {r['wall_seconds']} s.", ""]
    if "brecq" in r.get("roundings", []):
        lines += brecq_table(r)
    return "\n".join(lines)


def brecq_table(r: dict) -> list[str]:
    name = r["reference"]["name"]
    lines = [f"### {r['model']}: MixQuant + BRECQ against BRECQ at the uniform bit-width of the same size", "",
             "The same plans, their weights rounded by BRECQ (mixprec's `--rounding brecq`, default options) "
             "instead of min-max nearest rounding.", "",
             f"| bits | uniform + BRECQ {name} | MixQuant + BRECQ {name} | exact (roundoff) + BRECQ {name} | "
             "BRECQ seconds (uniform plan) | MixQuant + BRECQ better than BRECQ |", "|---|---|---|---|---|---|"]
    wins = 0
    for row in r["rows"]:
        u, m, e = row["uniform"], row["mixquant"], row["exact (roundoff)"]
        same = m["candidates"] == u["candidates"] and m["brecq"] == u["brecq"]
        win = m["brecq"] > u["brecq"]
        wins += win
        lines.append(f"| {row['bits']} | {u['brecq']:.3f} | {m['brecq']:.3f} | {e['brecq']:.3f} | "
                     f"{u['brecq_seconds']} | {'yes' if win else 'no, the same plan as uniform' if same else 'no'} |")
    exact_wins = sum(row["exact (roundoff)"]["brecq"] > row["uniform"]["brecq"] for row in r["rows"])
    return lines + ["", f"MixQuant + BRECQ better than uniform BRECQ at {wins} of {len(r['rows'])} sizes; the exact "
                    f"plan + BRECQ at {exact_wins} of {len(r['rows'])}. The seconds are apply plus evaluation of "
                    "one plan.", ""]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", choices=sorted(FIRST_LAST))
    parser.add_argument("--bits", default="2,3,4")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--roundings", default="nearest", help="comma-separated: nearest (plain min-max), brecq")
    parser.add_argument("--calibration-samples", type=int, help="calibration samples (default: the model's own)")
    args = parser.parse_args()
    roundings = args.roundings.split(",")
    if "nearest" not in roundings:
        parser.error("--roundings must include nearest (the min-max comparison)")
    try:
        report = benchmark(args.model, [int(b) for b in args.bits.split(",")], args.device, roundings,
                           args.calibration_samples)
    except MissingDataError as exc:
        print(f"skipped {args.model}: {exc}")
        return 0
    write_json_atomic(RESULTS / f"mixquant_{args.model}.json", report)
    (RESULTS / f"mixquant_{args.model}.md").write_text(markdown(report))
    print(f"wrote {RESULTS / f'mixquant_{args.model}.json'} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
