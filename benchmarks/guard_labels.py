"""Is closer to the float model more accurate? The exact plan against every uniform rival the guard
compares it with, at the cost of each uniform candidate (for CNNs with the first and last groups at
w8a8): paired z, in standard errors of the per-sample difference, of top-1 disagreement with the float
model, 1/SQNR and the cross-entropy against the labels, on the calibration data (what the guard decides
on) and on the evaluation split (never used for a decision; there also the top-1 error). Negative z: the
exact plan is lower. The guard's verdict (margin 1) from the calibration figures, without and with the
labels' cross-entropy in its consensus (where it only vetoes the mixed plan: disagreement and 1/SQNR rank
the uniform plans), and the evaluation's top-1 of what each verdict returns.

    python benchmarks/guard_labels.py resnet56 [--at w4a8,w5a8] [--kinds bops,bytes] [--device cpu]

Writes benchmarks/results/guard_labels_<model>.json.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))

from never_worse import sqnr_analysis  # noqa: E402
from run import CONFIGS, RESULTS, base_name, first_last_choice, points_main, save_result  # noqa: E402

from mixprec import __version__, apply  # noqa: E402
from mixprec.builtin import get_builtin  # noqa: E402
from mixprec.solvers import SOLVERS, Goal  # noqa: E402
from mixprec.solvers.guard import best_rival  # noqa: E402
from mixprec.specs import prepare  # noqa: E402

KINDS = ("agreement", "sqnr", "ce")
MARGIN = 1.0


def evaluation_split(model_name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(preprocessed images, labels) of the built-in classifier's evaluation split, as its evaluate reads it."""
    if model_name in ("resnet20", "resnet56"):
        from mixprec.builtin import cifar_resnet as cr
        images, labels, _, _ = cr._dataset()
        return cr.preprocess(images), labels
    if model_name == "efficientnet-lite0":
        from mixprec.builtin import efficientnet_lite as el
        _, images, labels = el.validation_set()
        return el.preprocess(images), labels
    raise SystemExit(f"guard_labels measures the built-in image classifiers, not {model_name}")


@torch.no_grad()
def outputs(model, batches, device) -> torch.Tensor:
    return torch.cat([model(x.to(device)).float().cpu() for x in batches])


def shares(out: torch.Tensor, ref: torch.Tensor, labels: torch.Tensor) -> dict[str, np.ndarray]:
    """Per sample: top-1 disagreement with the float model, squared output error, cross-entropy, top-1 error."""
    return {"agreement": (out.argmax(1) != ref.argmax(1)).double().numpy(),
            "sqnr": (out - ref).pow(2).sum(1).double().numpy(),
            "ce": F.cross_entropy(out, labels, reduction="none").double().numpy(),
            "error": (out.argmax(1) != labels).double().numpy()}


def paired_z(a: np.ndarray, b: np.ndarray) -> float:
    d = a - b
    se = np.sqrt(d.size) * d.std(ddof=1)
    return float(d.sum() / se) if se > 0 else 0.0


def verdict(rivals: dict, z: dict, values: dict, kinds: tuple[str, ...]) -> str:
    """What the guard returns from the calibration figures: the mixed plan when it is lower than every rival on
    every divergence by more than MARGIN standard errors, else the best rival (solvers/guard.py's ranking)."""
    if all(z[label][k] < -MARGIN for label in rivals for k in kinds):
        return "mixed"
    # as the library: ce only vetoes the mixed plan, disagreement and 1/SQNR rank the uniform plans
    return best_rival(rivals, {label: tuple(values[label][k] for k in KINDS[:2]) for label in rivals})


def benchmark(model_name: str, at: list[str], kinds: list[str], device: str) -> dict:
    config = CONFIGS[model_name]
    analysis = sqnr_analysis(model_name, config.candidates, RESULTS / "tmp" / f"run_{model_name}", device, None)
    problem = analysis.problem()
    model, data, _, _ = prepare(model_name)
    model = model.to(device).eval()
    builtin = get_builtin(model_name)
    labels = torch.cat(builtin.calibration_labels(sum(len(x) for x in data)))
    eval_images, eval_labels = evaluation_split(model_name)
    eval_batches = eval_images.split(250)
    ref = {"calibration": outputs(model, data, device), "evaluation": outputs(model, eval_batches, device)}
    truth = {"calibration": labels, "evaluation": eval_labels}
    measured: dict = {}

    def measure(choice) -> dict:
        key = tuple(int(c) for c in choice)
        if key not in measured:
            quantized = apply(model, analysis.plan(problem.assignments(choice)), data, progress=False)
            measured[key] = {split: shares(outputs(quantized, data if split == "calibration" else eval_batches, device),
                                           ref[split], truth[split]) for split in ref}
        return measured[key]

    points = []
    for cand in [c for c in problem.candidates if base_name(c) in at]:
        base = first_last_choice(problem, cand) if config.pin_first_last else problem.uniform_choice(cand)
        for kind in kinds:
            budget = problem.cost(kind, base)
            exact = SOLVERS["exact"](problem, Goal({kind: budget})).choice
            rivals = analysis.uniform_rivals(problem, {kind: budget})
            if any(np.array_equal(exact, r) for r in rivals.values()):
                continue
            start = time.perf_counter()
            mixed = measure(exact)
            rows, cal_z, cal_values = {}, {}, {}
            for label, choice in rivals.items():
                other = measure(choice)
                rows[label] = {split: {k: paired_z(mixed[split][k], other[split][k])
                                       for k in (KINDS if split == "calibration" else (*KINDS, "error"))}
                               for split in ref}
                rows[label]["top1"] = 100 * (1 - other["evaluation"]["error"].mean())
                cal_z[label] = rows[label]["calibration"]
                cal_values[label] = {k: other["calibration"][k].mean() for k in KINDS}
            top1 = {label: rows[label]["top1"] for label in rivals}
            top1["mixed"] = 100 * (1 - mixed["evaluation"]["error"].mean())
            chosen = {name: verdict(rivals, cal_z, cal_values, ks)
                      for name, ks in (("agreement+sqnr", KINDS[:2]), ("agreement+sqnr+ce", KINDS))}
            uniform_label = next(label for label, r in rivals.items() if np.array_equal(r, base))
            point = {"at": cand, "kind": kind, "rivals": rows, "top1": top1, "uniform": uniform_label,
                     "chosen": chosen, "chosen_top1": {k: top1[v] for k, v in chosen.items()},
                     "seconds": round(time.perf_counter() - start, 1)}
            points.append(point)
            print(f"{kind} of {cand}: exact {top1['mixed']:.2f}, {uniform_label} {top1[uniform_label]:.2f}; guard "
                  + ", ".join(f"{k} -> {v} ({top1[v]:.2f})" for k, v in chosen.items()), flush=True)
    return {"model": model_name, "points": points, "calibration_samples": int(labels.numel()),
            "evaluation_samples": int(eval_labels.numel()), "margin": MARGIN,
            "command": " ".join(["python", "benchmarks/guard_labels.py", *sys.argv[1:]]),
            "environment": {"mixprec": __version__, "device": device, "torch": torch.__version__,
                            "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None}}


def markdown(r: dict) -> str:
    lines = [f"## Is closer to the float model more accurate? {r['model']}", "",
             f"`{r['command']}` ({r['environment'].get('gpu') or r['environment']['device']}); paired z of the exact "
             f"plan against each uniform rival (negative: the exact plan is lower) on the {r['calibration_samples']} "
             f"calibration images the guard decides on and on the {r['evaluation_samples']} evaluation images; "
             "top-1 error only on the evaluation split. The guard's verdict (margin 1 standard error) from the "
             "calibration figures without and with the labels' cross-entropy (ce). Rivals at the point's own "
             "candidate (the JSON holds every rival the guard compares).", "",
             "| budget | rival | calibration z: disagreement / 1/SQNR / ce | evaluation z: disagreement / 1/SQNR / "
             "ce / top-1 error | evaluation top-1 exact / rival |", "|---|---|---|---|---|"]
    for p in r["points"]:
        for label, row in [(k, v) for k, v in p["rivals"].items() if k.split(",")[0] == f"uniform {p['at']}"]:
            c, e = row["calibration"], row["evaluation"]
            lines.append(f"| {p['kind']} of {p['at']} | {label} | {c['agreement']:+.2f} / {c['sqnr']:+.2f} / "
                         f"{c['ce']:+.2f} | {e['agreement']:+.2f} / {e['sqnr']:+.2f} / {e['ce']:+.2f} / "
                         f"{e['error']:+.2f} | {p['top1']['mixed']:.2f} / {row['top1']:.2f} |")
    lines += ["", "| budget | uniform (the never-worse baseline) | guard without ce returns | guard with ce returns |",
              "|---|---|---|---|"]
    for p in r["points"]:
        without, with_ce = p["chosen"]["agreement+sqnr"], p["chosen"]["agreement+sqnr+ce"]
        lines.append(f"| {p['kind']} of {p['at']} | {p['uniform']} {p['top1'][p['uniform']]:.2f} | {without} "
                     f"{p['top1'][without]:.2f} | {with_ce} {p['top1'][with_ce]:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    return points_main(__doc__, ("resnet20", "resnet56", "efficientnet-lite0"), "w2a8,w3a8,w4a8,w5a8,w6a8", benchmark,
                       lambda model, result: save_result(RESULTS / f"guard_labels_{model}", result, markdown(result)))


if __name__ == "__main__":
    sys.exit(main())
