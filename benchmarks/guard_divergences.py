"""Which label-free divergence ranks plans as the evaluation split does? The exact plan and the
uniform plan (first and last groups at w8a8) at the cost of one uniform candidate, measured by
output KL and by top-1 agreement with the float model on the calibration data, and by the model's
own metric on the evaluation split.

    python benchmarks/guard_divergences.py resnet56 [--at w4a8] [--kind bops] [--device cpu]

Writes benchmarks/results/guard_divergences_<model>.json.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from never_worse import sqnr_analysis  # noqa: E402
from run import CONFIGS, RESULTS, first_last_choice  # noqa: E402

from mixprec import __version__, apply  # noqa: E402
from mixprec.builtin import get_builtin  # noqa: E402
from mixprec.errors import MissingDataError  # noqa: E402
from mixprec.plan import write_json_atomic  # noqa: E402
from mixprec.sensitivity.divergence import OutputDivergence  # noqa: E402
from mixprec.solvers import SOLVERS, Goal  # noqa: E402
from mixprec.specs import prepare  # noqa: E402


def benchmark(model_name: str, at: str, kind: str, device: str) -> dict:
    config = CONFIGS[model_name]
    analysis = sqnr_analysis(model_name, config.candidates, RESULTS / "tmp" / f"run_{model_name}", device, None)
    problem = analysis.problem()
    base = first_last_choice(problem, at) if config.pin_first_last else problem.uniform_choice(at)
    exact = SOLVERS["exact"](problem, Goal({kind: problem.cost(kind, base)})).choice
    model, data, _, _ = prepare(model_name)
    model = model.to(device)
    divergences = {k: OutputDivergence(model, data, k) for k in ("kl", "agreement")}
    builtin = get_builtin(model_name)
    rows = {}
    for label, choice in (("uniform", base), ("exact", exact)):
        quantized = apply(model, analysis.plan(problem.assignments(choice)), data, progress=False)
        rows[label] = {k: d.measure(quantized) for k, d in divergences.items()}
        rows[label]["metric"] = builtin.evaluate(quantized).value
        print(label, rows[label], flush=True)
    ranks = {k: "exact" if rows["exact"][k] < rows["uniform"][k] else "uniform" for k in divergences}
    ranks["metric"] = "exact" if rows["exact"]["metric"] > rows["uniform"]["metric"] else "uniform"
    return {"model": model_name, "at": at, "kind": kind, "rows": rows, "better_by": ranks,
            "command": " ".join(["python", "benchmarks/guard_divergences.py", *sys.argv[1:]]),
            "environment": {"mixprec": __version__, "device": device}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=sorted(CONFIGS))
    parser.add_argument("--at", default="w4a8")
    parser.add_argument("--kind", default="bops")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    try:
        result = benchmark(args.model, args.at, args.kind, args.device)
    except MissingDataError as exc:
        print(f"skipped: {exc}")
        return 0
    out = RESULTS / f"guard_divergences_{args.model}.json"
    write_json_atomic(out, result)
    print(f"better by: {result['better_by']}; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
