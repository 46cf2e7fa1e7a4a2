"""Which calibration score ranks a language model's plans as the evaluation perplexity does: KL from
the float model, or the next-token NLL of the calibration text itself? The exact plan and every
uniform rival the guard would weigh it against, at the cost of uniform candidates and at given bits
per weight, measured on the calibration windows (each score with the paired difference exact minus
rival in standard errors over the windows) and by perplexity on the evaluation windows.

    python benchmarks/guard_noise_lm.py smollm2 --device cuda --weight-range auto \
        --at w3g64,w4g64,w4g128 --pin lm_head=w8 --bits 5.048,5.098,5.246

--at budgets use the unpinned problem (as never_worse.py), --bits the pinned one (as nncf_compare.py).
Writes benchmarks/results/guard_noise_lm_<model>.json and .md.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

from nncf_compare import pin_groups  # noqa: E402
from never_worse import sqnr_analysis  # noqa: E402
from run import CONFIGS, RESULTS, save_result  # noqa: E402

from mixprec import __version__, apply  # noqa: E402
from mixprec.builtin import get_builtin  # noqa: E402
from mixprec.errors import MissingDataError  # noqa: E402
from mixprec.sensitivity.divergence import OutputDivergence  # noqa: E402
from mixprec.solvers import SOLVERS, Goal  # noqa: E402
from mixprec.solvers.guard import Sampled, paired_z  # noqa: E402
from mixprec.specs import prepare  # noqa: E402

SCORES = ("kl", "nll")


def benchmark(name: str, device: str, weight_range: str, at: list[str], pins: list[str], bits: list[float]) -> dict:
    builtin = get_builtin(name)
    model, data, _, _ = prepare(name)
    model = model.to(device).eval()
    analysis = sqnr_analysis(name, CONFIGS[name].candidates, RESULTS / "tmp" / f"run_{name}", device, None,
                             weight_range)
    scorer = OutputDivergence(model, data, "kl")
    cache: dict[tuple, dict] = {}

    def measure(problem, choice) -> dict:
        assignments = problem.assignments(choice)
        key = tuple(sorted(assignments.items()))
        if key not in cache:
            quantized = apply(model, analysis.plan(assignments), data, progress=False)
            values, samples = scorer.measure_samples(quantized, SCORES)
            cache[key] = {"values": values, "samples": samples, "perplexity": builtin.evaluate(quantized).value}
            del quantized
        return cache[key]

    def point(problem, budget: dict, label: str) -> dict:
        exact = SOLVERS["exact"](problem, Goal(budget)).choice
        e = measure(problem, exact)
        a = Sampled(tuple(e["values"][k] for k in SCORES), tuple(e["samples"][k] for k in SCORES))
        rows = {"exact": {"calibration": e["values"], "perplexity": e["perplexity"]}}
        for rival, choice in analysis.uniform_rivals(problem, budget).items():
            if np.array_equal(choice, exact):
                continue
            r = measure(problem, choice)
            b = Sampled(tuple(r["values"][k] for k in SCORES), tuple(r["samples"][k] for k in SCORES))
            rows[rival] = {"calibration": r["values"], "perplexity": r["perplexity"],
                           "z_exact_minus_this": {k: paired_z(a, b, i) for i, k in enumerate(SCORES)}}
        contenders = {k: v for k, v in rows.items() if k != "exact" and v["perplexity"] < 1e4}
        best = min(contenders, key=lambda k: rows[k]["perplexity"]) if contenders else None
        verdict = {}
        if best:
            truth = rows["exact"]["perplexity"] < rows[best]["perplexity"]
            for k in SCORES:
                verdict[k] = (rows["exact"]["calibration"][k] < rows[best]["calibration"][k]) == truth
        print(label, {k: (round(v["perplexity"], 3), v.get("z_exact_minus_this")) for k, v in rows.items()},
              flush=True)
        return {"budget": label, "budget_value": budget, "rows": rows, "best_uniform": best,
                "ranks_like_perplexity": verdict}

    problem = analysis.problem()
    points = []
    for cand in at:
        cand = problem.candidates[problem.candidate_index(cand)]
        points.append(point(problem, {"bits_per_weight": problem.cost("bits_per_weight", problem.uniform_choice(cand))},
                            f"bits_per_weight of {cand}"))
    if bits:
        pinned_problem, pinned = pin_groups(problem, pins, analysis.groups)
        analysis.pins.update(pinned)
        for b in bits:
            points.append(point(pinned_problem, {"bits_per_weight": b},
                                f"{b} bits/weight" + (f", {', '.join(pins)}" if pins else "")))
    agree = {k: sum(bool(p["ranks_like_perplexity"].get(k)) for p in points) for k in SCORES}
    return {"model": name, "points": points, "agrees_with_perplexity": agree,
            "n_points": sum(bool(p["ranks_like_perplexity"]) for p in points),
            "calibration_windows": int(len(next(iter(cache.values()))["samples"]["kl"])), "weight_range": weight_range,
            "command": " ".join(["python", "benchmarks/guard_noise_lm.py", *sys.argv[1:]]),
            "environment": {"mixprec": __version__, "device": device, "torch": torch.__version__,
                            "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None}}


def markdown(r: dict) -> str:
    env = r["environment"]
    lines = [f"## Guard scores for a language model, {r['model']}: KL from the float model or next-token NLL", "",
             f"`{r['command']}` ({env['device']}{', ' + env['gpu'] if env.get('gpu') else ''}; weight ranges "
             f"{r['weight_range']}). Calibration: {r['calibration_windows']} windows, what the guard decides on; z = "
             "(exact - uniform) in standard errors of the paired per-window difference (negative: the exact plan "
             "scores lower). Perplexity: the evaluation windows, never used for a decision.", "",
             "| budget | plan | calib. KL (z) | calib. NLL per token (z) | perplexity |", "|---|---|---|---|---|"]
    for p in r["points"]:
        for label, row in p["rows"].items():
            c, z = row["calibration"], row.get("z_exact_minus_this", {})
            show = lambda k: f"{c[k]:.4f}" + (f" ({z[k]:+.2f})" if z.get(k) is not None else "")  # noqa: E731
            lines.append(f"| {p['budget']} | {label} | {show('kl')} | {show('nll')} | {row['perplexity']:.3f} |")
    lines += ["", f"Ranks the exact plan against the best uniform plan as the perplexity does, of {r['n_points']} "
              "points: " + ", ".join(f"{k} {v}" for k, v in r["agrees_with_perplexity"].items()) + "."]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=("smollm2",), help="a built-in language model")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--weight-range", choices=("mse", "minmax", "auto"), default="mse")
    parser.add_argument("--at", default="w4g64,w4g128", help="budgets: the bits per weight of these uniform candidates")
    parser.add_argument("--pin", action="append", default=[], metavar="PATTERN=CAND", help="pins for the --bits budgets")
    parser.add_argument("--bits", default="", help="more budgets in bits per weight (pinned problem)")
    args = parser.parse_args()
    try:
        result = benchmark(args.model, args.device, args.weight_range, [a for a in args.at.split(",") if a],
                           args.pin, [float(b) for b in args.bits.split(",") if b])
    except MissingDataError as exc:
        print(f"skipped: {exc}")
        return 0
    out = RESULTS / f"guard_noise_lm_{args.model}"
    save_result(out, result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
