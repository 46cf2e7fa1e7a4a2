"""How much of the W4A8 -> W8A8 gap can any plan of these candidates close at the BOPs of W4A8? Not a
method: a measured local search that decides on half of the evaluation split itself (top-1 on every other
image of each class), reported on that half and on the other half, which it never saw.

    python benchmarks/gap_bound.py resnet20 [--at w4a8] [--kind bops] [--device cuda] [--seconds 300] \
        [--add-candidates w3a6,w4a6,w5a6,w6a6,w8a6]

mixprec decides on calibration data only (the guard, the local search); this script looks at the labels
the plans are judged on, so what it finds is what a search with those labels reaches in its time, and its
figure on the held half says how much of that is real. It is a bound only as far as the search went: a
short search that leaves the gap open proves nothing about plans it did not measure.

The search is mixprec's local search (mixprec.solvers.local_search: single moves and paired moves within
the budget, in the order the sqnr table ranks them, the first better one taken), started from the uniform
plan with the first and last layers at w8a8, the plain uniform plan and the exact plan on the sqnr table.
Writes benchmarks/results/gap_bound_<model><suffix>.json and .md.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from run import CONFIGS, RESULTS, base_name, first_last_choice, save_result  # noqa: E402

import torch  # noqa: E402

from mixprec import __version__  # noqa: E402
from mixprec.errors import MissingDataError  # noqa: E402
from mixprec.solvers import SOLVERS, Goal  # noqa: E402
from mixprec.solvers.local_search import local_search  # noqa: E402

MODELS = ("resnet20", "resnet56")  # built-ins whose evaluation split this script can halve


def half_mask(labels: torch.Tensor, parity: int) -> torch.Tensor:
    """Every other image of each class (its 1st, 3rd, ... for parity 0; 2nd, 4th, ... for 1): two halves with
    every class in the same share. (Every other image of the split would not do: it interleaves the classes
    round-robin, so that half would hold every other class.)"""
    seen: dict[int, int] = {}
    rank = []
    for label in labels.tolist():
        rank.append(seen.get(label, 0))
        seen[label] = rank[-1] + 1
    return torch.tensor(rank) % 2 == parity


def _half(model, parity: int):
    from mixprec.builtin.cifar_resnet import _dataset, top1
    images, labels = _dataset()[:2]
    mask = half_mask(labels, parity)
    return top1(model, images[mask], labels[mask])


def searched_half(model):
    """Top-1 on every other image of each class in the evaluation split: what the bound's search decides on."""
    return _half(model, 0)


def held_half(model):
    """Top-1 on the other images of each class: never seen by the search."""
    return _half(model, 1)


_FLOAT: dict[str, torch.Tensor] = {}  # the float model's log-probabilities on the searched half, per model name


def _log_probs(model, images: torch.Tensor) -> torch.Tensor:
    from mixprec.builtin.cifar_resnet import EVAL_BATCH, output_tensor, preprocess
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.no_grad():
            for i in range(0, len(images), EVAL_BATCH):
                logits = output_tensor(model(preprocess(images[i:i + EVAL_BATCH]).to(device)))
                out.append(torch.log_softmax(logits.float(), 1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(out)


DECIDERS = {  # what a label-free search can minimise on the searched half, against the float model
    "kl": "KL from the float model's class probabilities",
    "pseudo": "cross-entropy against the float model's top-1 class (its predictions as labels)",
    "agreement": "the share of images whose top-1 differs from the float model's",
}


def searched_half_divergence(model, name: str, decide: str = "kl"):
    """A label-free divergence from the float model on the searched half (``DECIDERS``), as mixprec's local search
    decides on calibration data, here on the 4,500 images of the searched half: mean KL(float || plan), mean
    cross-entropy against the float model's top-1 class, or the percentage of top-1 predictions that differ."""
    from mixprec.builtin.cifar_resnet import _dataset
    from mixprec.evaluation import EvalResult
    images, labels = _dataset()[:2]
    images = images[half_mask(labels, 0)]
    if name not in _FLOAT:  # the float model of the built-in ``name``
        from mixprec.builtin.cifar_resnet import load_model
        _FLOAT[name] = _log_probs(load_model(name).to(next(model.parameters()).device), images)
    ref, got = _FLOAT[name], _log_probs(model, images)
    top = ref.argmax(1)
    if decide == "kl":
        value = (ref.exp() * (ref - got)).sum(1).mean().item()
    elif decide == "pseudo":
        value = -got.gather(1, top[:, None]).mean().item()
    else:
        value = 100.0 * (got.argmax(1) != top).float().mean().item()
    return EvalResult(decide, value, False, details={"samples": len(images)})


def benchmark(model: str, at: str, kind: str, device: str, seconds: float, extra: tuple[str, ...],
              decide: str = "top1") -> dict:
    from never_worse import sqnr_analysis
    config = CONFIGS[model]
    candidates = ",".join([config.candidates, *extra])
    work = RESULTS / "tmp" / f"run_{model}"
    sqnr = sqnr_analysis(model, candidates, work, device, None, extra=extra)
    problem = sqnr.problem()
    here = Path(__file__).resolve()
    searched = sqnr.evaluator(f"{here}:searched_half", device=device)

    def divergence_on_searched_half(net):
        return searched_half_divergence(net, model, decide)
    decider = sqnr.evaluator(divergence_on_searched_half, device=device) if decide in DECIDERS else None
    held = sqnr.evaluator(f"{here}:held_half", device=device)
    full = sqnr.evaluator(device=device)
    at_name = next(c for c in problem.candidates if base_name(c) == at)
    upper_name = next(c for c in problem.candidates if base_name(c) == config.upper)
    base = first_last_choice(problem, at_name)
    budget = problem.cost(kind, base)
    measured = []

    def error(choice) -> float:  # top-1 error (or a divergence from the float model) on the searched half, lower is better
        value = decider.measure(problem.assignments(choice)).value if decider is not None else \
            100.0 - searched.measure(problem.assignments(choice)).value
        measured.append(value)
        if len(measured) % 10 == 0:
            print(f"{len(measured)} plans measured, best {decide if decide in DECIDERS else 'top-1 error'} on the searched half "
                  f"{min(measured):.4g}", flush=True)
        return value

    goal = Goal({kind: budget}, measure=error)
    exact = SOLVERS["exact"](problem, Goal({kind: budget})).choice
    starts = [base, problem.uniform_choice(at_name), exact]
    start = time.perf_counter()
    found = local_search(problem, goal, starts, seconds=seconds)
    seconds = time.perf_counter() - start

    def figures(choice) -> dict:
        assignments = problem.assignments(choice)
        return {"searched_half": searched.measure(assignments).value, "held_half": held.measure(assignments).value,
                "evaluation_split": full.measure(assignments).value, "costs": problem.totals(choice)[1],
                "candidates_used": sorted(set(assignments.values()))}

    plans = {"uniform": figures(base), "exact": figures(exact), "bound": figures(found.choice),
             "upper": figures(first_last_choice(problem, upper_name))}
    plans["bound"]["assignments"] = problem.assignments(found.choice)
    gaps = {}
    for split in ("searched_half", "held_half", "evaluation_split"):
        low, high = plans["uniform"][split], plans["upper"][split]
        gaps[split] = {name: (plans[name][split] - low) / (high - low) if high != low else None
                       for name in ("exact", "bound")}
    note = next((step["note"] for step in found.trace if step["role"] == "stop"), "")
    return {"model": model, "at": at, "kind": kind, "budget": budget, "upper": config.upper,
            "candidates": problem.candidates, "plans": plans, "gap_recovered": gaps,
            "search": {"evaluations": found.evaluations, "seconds": round(seconds, 1), "note": note,
                       "decides_on": decide},
            "command": " ".join(["python", "benchmarks/gap_bound.py", *sys.argv[1:]]),
            "environment": {"mixprec": __version__, "device": device}}


def markdown(r: dict) -> str:
    p, g = r["plans"], r["gap_recovered"]
    pct = lambda x: "—" if x is None else f"{x:.0%}"  # noqa: E731
    lines = [f"### How much of the gap can any plan close? {r['model']}, {r['kind']} of {r['at']}", "",
             f"`{r['command']}` ({r['environment']['device']}); candidates {', '.join(r['candidates'])}. Not a method, "
             "and a bound only as far as its search went: the search decides on half of the evaluation split (" + (
                 DECIDERS[r["search"]["decides_on"]] + ", label-free as mixprec's local search, on"
                 if r["search"].get("decides_on") in DECIDERS else "top-1 on") + " every other image of each "
             "class), and the other half says how much of what it found holds on images it never saw. Uniform plans keep the first and last "
             "layers at w8a8.", "",
             "| plan | searched half | held half | evaluation split | gap recovered, held half | "
             "gap recovered, searched half |", "|---|---|---|---|---|---|"]
    for name, label in (("uniform", f"uniform {r['at']}"), ("exact", "exact plan on the sqnr table"),
                        ("bound", "the search's best plan"), ("upper", f"uniform {r['upper']}")):
        # the gap's ends by definition: uniform closes none of it, the upper plan all
        gap, gap_a = ({"uniform": 0.0, "upper": 1.0}[name] if name in ("uniform", "upper") else g[split][name]
                      for split in ("held_half", "searched_half"))
        lines.append(f"| {label} | {p[name]['searched_half']:.2f} | {p[name]['held_half']:.2f} | "
                     f"{p[name]['evaluation_split']:.2f} | {pct(gap)} | {pct(gap_a)} |")
    lines += ["", f"The search's best plan uses {', '.join(p['bound']['candidates_used'])}. {r['search']['note']}.", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=MODELS)
    parser.add_argument("--at", default="w4a8")
    parser.add_argument("--kind", default="bops")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seconds", type=float, default=300, help="how long the search may measure plans")
    parser.add_argument("--add-candidates", default="", metavar="LIST")
    parser.add_argument("--decide", choices=("top1", *DECIDERS), default="top1",
                        help="what the search minimises on the searched half: top-1 error against its labels, or "
                             "a label-free divergence from the float model: " + "; ".join(
                                 f"{k}: {v}" for k, v in DECIDERS.items()))
    parser.add_argument("--out-suffix", default="")
    args = parser.parse_args()
    extra = tuple(c for c in args.add_candidates.split(",") if c)
    try:
        result = benchmark(args.model, args.at, args.kind, args.device, args.seconds, extra, args.decide)
    except MissingDataError as exc:
        print(f"skipped: {exc}")
        return 0
    save_result(RESULTS / f"gap_bound_{args.model}{args.out_suffix}", result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
