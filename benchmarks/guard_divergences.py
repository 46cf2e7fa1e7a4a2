"""Which label-free divergence ranks plans as the evaluation split does? The exact plan and the
uniform plan (first and last groups at w8a8 for CNNs) at the cost of each uniform candidate, measured
on the calibration data by output KL, top-1 disagreement and 1/SQNR against the float model, and by
the model's own metric on the evaluation split. A divergence "agrees" at a point when it ranks the
two plans as the evaluation metric does; "consensus" returns the mixed plan only when both
disagreement and 1/SQNR rank it lower.

    python benchmarks/guard_divergences.py resnet56 [--at w3a8,w4a8,w5a8] [--kinds bops,bytes] [--device cpu]

Writes benchmarks/results/guard_divergences_<model>.json.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from never_worse import sqnr_analysis  # noqa: E402
from run import CONFIGS, RESULTS, first_last_choice, points_main  # noqa: E402

from mixprec import __version__, apply  # noqa: E402
from mixprec.builtin import get_builtin  # noqa: E402
from mixprec.plan import write_json_atomic  # noqa: E402
from mixprec.sensitivity.divergence import OutputDivergence  # noqa: E402
from mixprec.solvers import SOLVERS, Goal  # noqa: E402
from mixprec.specs import prepare  # noqa: E402

DIVERGENCES = ("kl", "agreement", "sqnr")
CONSENSUS = ("agreement", "sqnr")


def benchmark(model_name: str, at: list[str], kinds: list[str], device: str) -> dict:
    config = CONFIGS[model_name]
    analysis = sqnr_analysis(model_name, config.candidates, RESULTS / "tmp" / f"run_{model_name}", device, None)
    problem = analysis.problem()
    model, data, _, _ = prepare(model_name)
    model = model.to(device)
    divergences = {k: OutputDivergence(model, data, k) for k in DIVERGENCES}
    builtin = get_builtin(model_name)
    points, measured = [], {}

    def measure(choice) -> dict:
        key = tuple(int(c) for c in choice)
        if key not in measured:
            quantized = apply(model, analysis.plan(problem.assignments(choice)), data, progress=False)
            measured[key] = {k: d.measure(quantized) for k, d in divergences.items()}
            measured[key]["metric"] = builtin.evaluate(quantized).value
        return measured[key]

    for cand in at:
        base = first_last_choice(problem, cand) if config.pin_first_last else problem.uniform_choice(cand)
        for kind in kinds:
            exact = SOLVERS["exact"](problem, Goal({kind: problem.cost(kind, base)})).choice
            if (exact == base).all():
                continue
            rows = {"uniform": measure(base), "exact": measure(exact)}
            better = {k: "exact" if rows["exact"][k] < rows["uniform"][k] else "uniform" for k in DIVERGENCES}
            better["metric"] = "exact" if rows["exact"]["metric"] > rows["uniform"]["metric"] else "uniform"
            better["consensus"] = "exact" if all(better[k] == "exact" for k in CONSENSUS) else "uniform"
            point = {"at": cand, "kind": kind, "rows": rows, "better_by": better}
            points.append(point)
            print(cand, kind, rows, better, flush=True)
    agree = {k: sum(p["better_by"][k] == p["better_by"]["metric"] for p in points)
             for k in (*DIVERGENCES, "consensus")}
    return {"model": model_name, "points": points, "agrees_with_metric": agree, "n_points": len(points),
            "command": " ".join(["python", "benchmarks/guard_divergences.py", *sys.argv[1:]]),
            "environment": {"mixprec": __version__, "device": device}}


def _save(model: str, result: dict) -> None:
    out = RESULTS / f"guard_divergences_{model}.json"
    write_json_atomic(out, result)
    print(f"agrees with the evaluation metric at {result['n_points']} points: {result['agrees_with_metric']}; "
          f"wrote {out}")


def main() -> int:
    return points_main(__doc__, sorted(CONFIGS), "w3a8,w4a8,w5a8", benchmark, _save)


if __name__ == "__main__":
    sys.exit(main())
