"""Is the mixed plan's lead over uniform beyond the noise, and does being closer to the float model
mean a better top-1? The exact plan (unguarded) and the uniform plans of the same candidate (all
groups, and first/last at w8a8) at the cost of each uniform candidate, measured:
- on the calibration data (what the guard sees): KL, top-1 disagreement and 1/SQNR against the float
  model, and the paired difference of each, mixed minus uniform, in standard errors (the guard's z);
- on the evaluation split (what it never sees): top-1, disagreement and KL against the float model,
  and the flips against the float model's predictions (right -> wrong, wrong -> right); the top-1
  difference with its paired (McNemar) standard error.

    python benchmarks/guard_noise.py resnet56 [--at w4a8,w5a8] [--kinds bops,bytes] [--device cpu]

CIFAR-10 models only (their evaluation inputs are read beside the labels). Writes
benchmarks/results/guard_noise_<model>.json and .md.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from never_worse import sqnr_analysis  # noqa: E402
from run import CONFIGS, RESULTS, first_last_choice, points_main, save_result  # noqa: E402

from mixprec import __version__, apply  # noqa: E402
from mixprec.sensitivity.divergence import OutputDivergence  # noqa: E402
from mixprec.solvers import SOLVERS, Goal  # noqa: E402
from mixprec.solvers.guard import Sampled, paired_z  # noqa: E402
from mixprec.specs import prepare  # noqa: E402

KINDS = ("agreement", "sqnr", "kl")
CIFAR = ("resnet20", "resnet56")


def evaluation_split(device: str) -> tuple[torch.Tensor, torch.Tensor]:
    from mixprec.builtin import cifar_resnet
    images, labels, _, _ = cifar_resnet._dataset()
    return cifar_resnet.preprocess(images).to(device), labels.to(device)


@torch.no_grad()
def logits(model, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([model(x[i:i + 500]).float() for i in range(0, len(x), 500)])


def on_evaluation(y: torch.Tensor, ref: torch.Tensor, labels: torch.Tensor) -> dict:
    pred, fp = y.argmax(1), ref.argmax(1)
    log_p, log_q = torch.log_softmax(ref, 1), torch.log_softmax(y, 1)
    return {"top1": 100 * float((pred == labels).float().mean()),
            "disagreement": 100 * float((pred != fp).float().mean()),
            "kl": float((log_p.exp() * (log_p - log_q)).sum(1).mean()),
            "right_to_wrong": int(((fp == labels) & (pred != labels)).sum()),
            "wrong_to_right": int(((fp != labels) & (pred == labels)).sum())}


def benchmark(model_name: str, at: list[str], kinds: list[str], device: str) -> dict:
    if model_name not in CIFAR:
        raise SystemExit(f"guard_noise.py reads the evaluation inputs of the CIFAR-10 models only ({', '.join(CIFAR)})")
    config = CONFIGS[model_name]
    analysis = sqnr_analysis(model_name, config.candidates, RESULTS / "tmp" / f"run_{model_name}", device, None)
    problem = analysis.problem()
    model, data, _, _ = prepare(model_name)
    model = model.to(device).eval()
    calibration = OutputDivergence(model, data, "agreement")
    x, labels = evaluation_split(device)
    ref = logits(model, x)
    cache: dict[tuple, dict] = {}

    def measure(choice) -> dict:
        key = tuple(int(c) for c in choice)
        if key not in cache:
            quantized = apply(model, analysis.plan(problem.assignments(choice)), data, progress=False)
            values, samples = calibration.measure_samples(quantized, KINDS)
            y = logits(quantized, x)
            cache[key] = {"calibration": values, "samples": samples, "pred": y.argmax(1),
                          "evaluation": on_evaluation(y, ref, labels)}
        return cache[key]

    points = []
    for cand in at:
        for kind in kinds:
            base = first_last_choice(problem, cand) if config.pin_first_last else problem.uniform_choice(cand)
            budget = problem.cost(kind, base)
            exact = SOLVERS["exact"](problem, Goal({kind: budget})).choice
            rivals = {label: c for label, c in analysis.uniform_rivals(problem, {kind: budget}).items()
                      if label.startswith(f"uniform {cand}")}
            if any((exact == c).all() for c in rivals.values()):
                continue
            mixed = measure(exact)
            rows = {"mixed": {"calibration": mixed["calibration"], "evaluation": mixed["evaluation"]}}
            for label, choice in rivals.items():
                r = measure(choice)
                a = Sampled(tuple(mixed["calibration"][k] for k in KINDS), tuple(mixed["samples"][k] for k in KINDS))
                b = Sampled(tuple(r["calibration"][k] for k in KINDS), tuple(r["samples"][k] for k in KINDS))
                only_mixed = int(((mixed["pred"] == labels) & (r["pred"] != labels)).sum())
                only_rival = int(((mixed["pred"] != labels) & (r["pred"] == labels)).sum())
                rows[label] = {"calibration": r["calibration"], "evaluation": r["evaluation"],
                               "paired_z": {k: paired_z(a, b, i) for i, k in enumerate(KINDS)},
                               "top1_difference": 100 * (only_mixed - only_rival) / len(labels),
                               "top1_paired_se": 100 * math.sqrt(only_mixed + only_rival) / len(labels)}
            points.append({"at": cand, "kind": kind, "budget": budget, "rows": rows})
            print(cand, kind, {k: (v["evaluation"]["top1"], v.get("paired_z")) for k, v in rows.items()}, flush=True)
    return {"model": model_name, "points": points, "calibration_samples": int(len(mixed["samples"]["kl"])),
            "evaluation_samples": int(len(labels)),
            "command": " ".join(["python", "benchmarks/guard_noise.py", *sys.argv[1:]]),
            "environment": {"mixprec": __version__, "device": device, "torch": torch.__version__}}


def markdown(result: dict) -> str:
    lines = [f"## Guard noise, {result['model']}: closer to the float model, better top-1?", "",
             f"`{result['command']}` ({result['environment']['device']}). Calibration: "
             f"{result['calibration_samples']} images, what the guard decides on; z = (mixed - uniform) in standard "
             f"errors of the paired per-sample difference (negative: the mixed plan is closer to the float model). "
             f"Evaluation: {result['evaluation_samples']} images, never used for a decision; flips are against the "
             "float model's predictions; top-1 difference with its paired (McNemar) standard error.", "",
             "| budget | plan | calib. disagreement (z) | calib. 1/SQNR (z) | calib. KL (z) | eval. top-1 | "
             "eval. disagreement | eval. KL | flips right->wrong / wrong->right | top-1 mixed - this |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for p in result["points"]:
        for label, r in p["rows"].items():
            c, e, z = r["calibration"], r["evaluation"], r.get("paired_z", {})
            show = lambda k: f"{c[k]:.4f}" + (f" ({z[k]:+.2f})" if z.get(k) is not None else "")  # noqa: E731
            diff = (f"{r['top1_difference']:+.2f} ± {r['top1_paired_se']:.2f}" if "top1_difference" in r else "")
            lines.append(f"| {p['kind']} of {p['at']} | {label} | {show('agreement')} | {show('sqnr')} | {show('kl')} | "
                         f"{e['top1']:.2f} | {e['disagreement']:.2f} % | {e['kl']:.4f} | "
                         f"{e['right_to_wrong']} / {e['wrong_to_right']} | {diff} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    return points_main(__doc__, CIFAR, "w4a8,w5a8", benchmark,
                       lambda model, result: save_result(RESULTS / f"guard_noise_{model}", result, markdown(result)))


if __name__ == "__main__":
    sys.exit(main())
