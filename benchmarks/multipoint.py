"""Multipoint quantization (Liu et al., AAAI 2021) alone and inside the allocation, at equal bytes,
against plain 4-bit and mixed 4/8-bit plans.

    python benchmarks/multipoint.py resnet20 [--device cuda] [--calibration-samples 64]

Candidates: CNNs w4a8, w4x2a8, w8a8 (8-bit activations); MiniLM weight-only w4g128, w4g128x2, w8.
One sqnr analysis (the default metric) over the three, cached under
benchmarks/results/tmp/multipoint_<model>[_n<samples>]/; it also records every channel's point
count, so every byte below is the exact cost of the plan. Plans (CNN uniform plans keep the first
and last layer at w8a8, as in benchmarks/run.py):
  - uniform 4-bit, at its own bytes B4;
  - uniform multipoint (w4x2 everywhere): its bytes B_mp;
  - at B_mp and at the midpoint (B4 + B_mp) / 2: the exact solver over {4-bit, 8-bit} and over
    {4-bit, multipoint, 8-bit}.
Every plan is evaluated on the model's whole evaluation split.
Writes benchmarks/results/multipoint_<model>.json and .md.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mixprec import Analysis, __version__
from mixprec.errors import MissingDataError
from mixprec.plan import write_json_atomic
from mixprec.solvers import SOLVERS, Goal
from run import CONFIGS, analysis_arguments, analyze_run, first_last_choice

RESULTS = Path(__file__).parent / "results"
CNN = ("w4a8", "w4x2a8", "w8a8")  # low, multipoint, high
LLM = ("w4g128", "w4g128x2", "w8")
MODELS = {"resnet20": CNN, "resnet56": CNN, "efficientnet-lite0": CNN, "minilm": LLM, "demo-cnn": CNN}


def _exact(analysis: Analysis, budget: float, names: tuple[str, ...]) -> np.ndarray:
    """The exact plan within ``budget`` bytes, every group on one of ``names``."""
    return SOLVERS["exact"](analysis.problem(candidates=names), Goal({"bytes": budget})).choice


def benchmark(model: str, device: str, samples: int | None) -> dict:
    start = time.perf_counter()
    low, multi, high = MODELS[model]
    run_dir = RESULTS / "tmp" / (f"multipoint_{model}" + (f"_n{samples}" if samples else ""))
    if not (run_dir / "sensitivity.json").is_file():
        analyze_run(run_dir, analysis_arguments(model, ",".join(MODELS[model]), "sqnr", device, run_dir, samples))
    analysis_s = time.perf_counter() - start
    analysis = Analysis.load(run_dir)
    problem = analysis.problem()
    evaluator = analysis.evaluator(device=device)
    reference = evaluator.reference()
    pin = CONFIGS[model].pin_first_last if model in CONFIGS else False

    def uniform(cand: str) -> np.ndarray:
        return first_last_choice(problem, cand) if pin else problem.uniform_choice(cand)

    b4 = problem.cost("bytes", uniform(low))
    b_mp = problem.cost("bytes", uniform(multi))
    plans = [("uniform 4-bit", b4, uniform(low)), ("uniform multipoint", b_mp, uniform(multi))]
    for label, budget in (("midpoint", (b4 + b_mp) / 2), ("multipoint bytes", b_mp)):
        plans.append((f"mixed 4/8 @ {label}", budget, _exact(analysis, budget, (low, high))))
        plans.append((f"mixed 4/multipoint/8 @ {label}", budget, _exact(analysis, budget, (low, multi, high))))
    rows = []
    for name, budget, choice in plans:
        result = evaluator.measure(problem.assignments(choice))
        objective, costs = problem.totals(choice)
        used = problem.assignments(choice).values()
        rows.append({"plan": name, "budget_bytes": budget, "bytes": costs["bytes"], "bops": costs["bops"],
                     "bits_per_weight": costs["bits_per_weight"], "predicted_sqnr": objective,
                     "metric": result.value, "groups_per_candidate": {c: list(used).count(c) for c in sorted(set(used))}})
        print(f"{name:<36} bytes {costs['bytes']:>10.0f}  {result.name} {result.value:.4g}", flush=True)
    counts = {cand: "".join(layers.values()) for cand, layers in analysis.point_counts.items()}
    return {"model": model, "candidates": list(MODELS[model]), "reference": reference.to_dict(), "rows": rows,
            "multipoint_channels": {c: {str(k): s.count(str(k)) for k in sorted(set(s))} for c, s in counts.items()},
            "first_last_w8": pin, "calibration_samples": samples or "the model's default",
            "analysis_seconds": round(analysis_s, 1), "wall_seconds": round(time.perf_counter() - start, 1),
            "command": "python " + " ".join(sys.argv),
            "environment": {"mixprec": __version__, "torch": torch.__version__, "python": platform.python_version(),
                            "machine": platform.machine(), "device": device, "threads": torch.get_num_threads(),
                            "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None}}


def markdown(r: dict) -> str:
    ref = r["reference"]
    name = ref["name"]
    lines = [f"## {r['model']}: multipoint ({r['candidates'][1]}) against 4-bit and mixed 4/8-bit at equal bytes", "",
             f"Candidates {', '.join(r['candidates'])}; sqnr sensitivity, exact solver on bytes; "
             + ("uniform plans keep the first and last layer at w8a8; " if r["first_last_w8"] else "")
             + f"float {name} {ref['value']:.4g}. Multipoint channels (points: channels): "
             + "; ".join(f"{c} " + ", ".join(f"{k}: {n}" for k, n in v.items())
                         for c, v in r["multipoint_channels"].items()) + ".", "",
             f"| plan | budget bytes | bytes | bits/weight | {name} | groups per candidate |", "|---|---|---|---|---|---|"]
    for row in r["rows"]:
        lines.append(f"| {row['plan']} | {row['budget_bytes']:.0f} | {row['bytes']:.0f} | "
                     f"{row['bits_per_weight']:.3f} | {row['metric']:.4g} | "
                     + ", ".join(f"{c}: {n}" for c, n in row["groups_per_candidate"].items()) + " |")
    by = {row["plan"]: row["metric"] for row in r["rows"]}
    better = ref.get("higher_is_better", True)

    def beats(a: str, b: str) -> str:
        x, y = round(by[a], 2), round(by[b], 2)  # compared as the table shows them
        return "ties with" if x == y else ("beats" if (x > y) == better else "loses to")

    lines += ["", f"At the multipoint plan's bytes: uniform multipoint {beats('uniform multipoint', 'mixed 4/8 @ multipoint bytes')}"
              f" the mixed 4/8-bit plan; the mixed plan with multipoint {beats('mixed 4/multipoint/8 @ multipoint bytes', 'mixed 4/8 @ multipoint bytes')}"
              f" it. At the midpoint: mixed with multipoint {beats('mixed 4/multipoint/8 @ midpoint', 'mixed 4/8 @ midpoint')}"
              f" mixed 4/8. Uniform multipoint {beats('uniform multipoint', 'uniform 4-bit')} uniform 4-bit "
              "(with more bytes).", ""]
    env = r["environment"]
    lines += [f"`{r['command']}` on {env['gpu'] or env['device']}, {env['threads']} threads, torch {env['torch']}; "
              f"calibration samples: {r['calibration_samples']}; analysis {r['analysis_seconds']} s, "
              f"total {r['wall_seconds']} s.", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", choices=sorted(MODELS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--calibration-samples", type=int, help="calibration samples (default: the model's own)")
    args = parser.parse_args()
    try:
        report = benchmark(args.model, args.device, args.calibration_samples)
    except MissingDataError as exc:
        print(f"skipped {args.model}: {exc}")
        return 0
    write_json_atomic(RESULTS / f"multipoint_{args.model}.json", report)
    (RESULTS / f"multipoint_{args.model}.md").write_text(markdown(report))
    print(markdown(report))
    print(f"wrote {RESULTS / f'multipoint_{args.model}.json'} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
