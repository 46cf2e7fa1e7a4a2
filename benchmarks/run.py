"""Mixed vs uniform vs the seed papers' searches on one real model, all measured in one run.

    python benchmarks/run.py resnet20 [--device cuda] [--points 16]
    python benchmarks/run.py resnet20 --render     # only rewrite the .md and .png from the .json

Phases, each timed: sensitivity analysis with every metric of the model's configuration
(cached and resumable under benchmarks/results/tmp/run_<model>/); FP32 and every uniform
candidate; exact mixed plans (default metric) at the cost of every uniform candidate, for each
budget kind; the evaluated Pareto front; the searches (greedy-pareto, greedy, bisection, mixquant,
refine) at the cost of the target uniform candidate; the metrics compared by the plans the exact
solver gives with each (hessian + exact = a HAWQ-V3-style plan). Every plan is evaluated on the
model's whole evaluation split; results are appended to RUN/evaluations.jsonl as they finish.
Writes benchmarks/results/run_<model>.json, run_<model>.md and run_<model>_pareto.png.
"""
from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy
import torch

from mixprec import Analysis, __version__, analyze as analyze_model
from mixprec.costs import format_bytes, format_count
from mixprec.errors import MissingDataError
from mixprec.plan import write_json_atomic
from mixprec.plan_evaluation import PlanEvaluator
from mixprec.rounding import rounding_config
from mixprec.run_directory import RunDirectory
from mixprec.solvers import SOLVERS, AllocationProblem, Goal
from mixprec.specs import prepare

RESULTS = Path(__file__).parent / "results"
CNN = "w2a8,w3a8,w4a8,w5a8,w6a8,w8a8"
LLM = "w2g64,w3g64,w4g64,w4g128,w8,fp16"


@dataclass(frozen=True)
class Config:
    candidates: str
    kinds: tuple[str, ...]  # the first is the front's kind and the searches' kind
    target: str  # the uniform candidate whose cost the searches get
    upper: str  # the uniform candidate the half-gap target measures against
    metrics: tuple[str, ...]  # the first is the default metric
    pin_first_last: bool  # uniform points keep the first and last group at 8 bits


CONFIGS = {
    "demo-cnn": Config("w2a8,w3a8,w4a8,w6a8,w8a8", ("bops", "bytes"), "w3a8", "w8a8",
                       ("sqnr", "fisher", "hessian", "roundoff"), True),
    "resnet20": Config(CNN, ("bops", "bytes"), "w4a8", "w8a8", ("sqnr", "fisher", "hessian", "roundoff"), True),
    "resnet56": Config(CNN, ("bops", "bytes"), "w4a8", "w8a8", ("sqnr", "fisher", "hessian", "roundoff"), True),
    "efficientnet-lite0": Config(CNN, ("bops", "bytes"), "w4a8", "w8a8", ("sqnr", "fisher", "hessian", "roundoff"),
                                 True),
    "minilm": Config(LLM, ("bits_per_weight", "bytes"), "w4g128", "w8", ("sqnr", "fisher", "roundoff", "local"),
                     False),
    "smollm2": Config(LLM, ("bits_per_weight", "bytes"), "w4g128", "w8", ("sqnr", "local", "roundoff"), False),
}


# models written as a user writes them (examples/), given to mixprec as file.py:function specs
EXAMPLES = {"vit-digits": "vit_digits.py", "byte-gpt": "byte_gpt.py", "se-digits": "se_digits.py"}
CONFIGS["vit-digits"] = Config("w2a8,w3a8,w4a8,w6a8,w8a8", ("bops", "bytes"), "w4a8", "w8a8", ("sqnr",), True)
CONFIGS["se-digits"] = Config("w2a8,w3a8,w4a8,w6a8,w8a8", ("bops", "bytes"), "w4a8", "w8a8", ("sqnr",), True)
CONFIGS["byte-gpt"] = Config("w2g32,w3g32,w4g32,w8,fp16", ("bits_per_weight", "bytes"), "w4g32", "w8", ("sqnr",),
                             False)


def specs(model: str) -> tuple[str, str | None, str | None]:
    """(model, data, eval) specs of a benchmark's model name: a built-in name and no other spec, or an
    example's file.py:build, :calibration and :evaluate."""
    if model not in EXAMPLES:
        return model, None, None
    path = Path(__file__).resolve().parents[1] / "examples" / EXAMPLES[model]
    return f"{path}:build", f"{path}:calibration", f"{path}:evaluate"


def analysis_arguments(model: str, candidates: str, metric: str, device: str, run_dir: Path,
                       samples: int | None = None, pins: list[str] = (), weight_range: str = "mse",
                       rounding: str = "nearest", joins: bool = False, rounding_options: dict | None = None) -> dict:
    """The arguments `mixprec analyze --model ...` records in run.json: a run's evaluator loads the
    model, data and evaluation they name, and its cache keys hash them."""
    model_spec, data_spec, eval_spec = specs(model)
    return {"model": model_spec, "data": data_spec, "calibration_samples": samples, "tie": [], "exclude": [],
            "pin": list(pins), "candidates": candidates, "profile": None, "metric": metric, "around": None,
            "around_divergence": "auto", "rounding": rounding,
            "act_order": (rounding_options or {}).get("act_order"),
            "static_groups": bool((rounding_options or {}).get("static_groups")), "eval": eval_spec,
            "weight_range": weight_range, "activation_range": "mse", "chunk_size": None, "no_fx": False,
            "device": device, "out": str(run_dir), "joins": joins, "stream": False,
            **({"rounding_options": dict(rounding_options)} if rounding_options else {})}


def analyze_run(run_dir: Path, arguments: dict) -> Analysis:
    """Analyse a built-in model into ``run_dir`` as `mixprec analyze` does; a run interrupted before
    its table was written resumes with the arguments it recorded."""
    run = RunDirectory(run_dir)
    a = run.arguments() if run.exists else arguments
    model, data, _, groups = prepare(a["model"], a.get("data"), a.get("calibration_samples"), a.get("tie") or [],
                                     a.get("exclude") or [], a.get("pin") or [])
    return analyze_model(model, data or [], a["candidates"], a["metric"], run, groups=groups,
                         weight_range=a.get("weight_range") or "mse",
                         activation_range=a.get("activation_range") or "mse", chunk_size=a.get("chunk_size"),
                         use_fx=not a.get("no_fx"), device=a.get("device") or "cpu", model_name=a["model"],
                         arguments=a, rounding=rounding_config(a.get("rounding") or "nearest",
                                                               **(a.get("rounding_options") or {})),
                         joins=bool(a.get("joins")))


def analyze(model: str, config: Config, work: Path, device: str, samples: int | None) -> dict[str, float]:
    seconds = {}
    for metric in config.metrics:
        run = work / metric
        if (run / "sensitivity.json").is_file():
            seconds[metric] = json.loads((run / "sensitivity.json").read_text()).get("metadata", {}).get("seconds")
            continue
        start = time.perf_counter()
        analyze_run(run, analysis_arguments(model, config.candidates, metric, device, run, samples))
        seconds[metric] = round(time.perf_counter() - start, 1)
    return seconds


class Measured:
    """Plans measured through the run's evaluator; a search's cost is the sum of the evaluation
    times of the distinct plans it asked for (from the log, so a cached rerun reports the same)."""

    def __init__(self, evaluator: PlanEvaluator):
        self.evaluator = evaluator
        self.seconds = evaluator.seconds_of
        self.used: set[str] = set()  # plans asked for since the last phase() call

    def __call__(self, assignments: dict[str, str] | None) -> tuple[dict, float]:
        key = self.evaluator._key(assignments)
        result = self.evaluator.measure(assignments)
        self.used.add(key)
        return result.to_dict(), self.seconds[key]

    def phase(self) -> dict:
        """Distinct plans evaluated since the last call, and their evaluation seconds (from the log)."""
        out = {"plans": len(self.used), "evaluation_seconds": round(sum(self.seconds[k] for k in self.used), 1)}
        self.used = set()
        return out


def save_result(out: Path, result: dict, text: str) -> None:
    """Write a benchmark's ``result`` as out.json (atomically) and its markdown ``text`` as out.md, and show it."""
    write_json_atomic(out.with_suffix(".json"), result)
    out.with_suffix(".md").write_text(text)
    print(text)
    print(f"wrote {out}.json and .md")


def replay_main(doc: str, replay, markdown, name: str) -> int:
    """The command line of a study that replays the stored guard decisions: [--margin Z]; writes RESULTS/name."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--margin", type=float, default=1.0, help="the guard's margin in standard errors")
    args = parser.parse_args()
    result = replay(args.margin)
    save_result(RESULTS / name, result, markdown(result))
    return 0


def points_main(doc: str, models, default_at: str, benchmark, save) -> int:
    """The command line of a study of plans at the cost of uniform candidates: MODEL [--at CANDS]
    [--kinds KINDS] [--device DEV]; ``benchmark(model, at, kinds, device)`` makes the result and
    ``save(model, result)`` writes it; missing data skips with its message."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("model", choices=models)
    parser.add_argument("--at", default=default_at)
    parser.add_argument("--kinds", default=None, help="budget kinds (default: the model's configuration)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    kinds = args.kinds.split(",") if args.kinds else list(CONFIGS[args.model].kinds)
    try:
        result = benchmark(args.model, args.at.split(","), kinds, args.device)
    except MissingDataError as exc:
        print(f"skipped: {exc}")
        return 0
    save(args.model, result)
    return 0


def base_name(candidate: str) -> str:
    """The candidate without the range suffix weight_range="auto" gives it (w4a8-minmax -> w4a8)."""
    return re.sub(r"-(minmax|mse)$", "", candidate)


def first_last_choice(problem: AllocationProblem, candidate: str) -> np.ndarray:
    choice = problem.uniform_choice(candidate)
    weight_bits = int(candidate[1]) if candidate[0] == "w" and candidate[1].isdigit() else 16
    if weight_bits < 8 and any(base_name(c) == "w8a8" for c in problem.candidates):
        choice[[0, -1]] = problem.candidate_index("w8a8")
    return choice


def row(problem: AllocationProblem, choice: np.ndarray, measured: dict, **extra) -> dict:
    objective, costs = problem.totals(choice)
    return {"costs": costs, "predicted_sensitivity": objective, "metric": measured["value"],
            "candidates_used": sorted(set(problem.assignments(choice).values())), **extra}


def same_problem(problem: AllocationProblem, other: AllocationProblem, metric: str) -> AllocationProblem:
    """``problem`` with the sensitivity of ``other`` (another metric's run of the same model)."""
    if (other.groups, other.candidates) != (problem.groups, problem.candidates):
        raise SystemExit(f"the {metric} run has other groups or candidates than the default metric's; analyse again")
    return problem.with_sensitivity(other.sensitivity)


def benchmark(model: str, device: str, points: int, samples: int | None = None) -> dict:
    config = CONFIGS[model]
    work = RESULTS / "tmp" / f"run_{model}"
    phases = {}
    start = time.perf_counter()
    phases["analysis_seconds"] = analyze(model, config, work, device, samples)
    main_metric = config.metrics[0]
    analysis = Analysis.load(work / main_metric)
    problem = analysis.problem()
    evaluator = analysis.evaluator(device=device)
    measure = Measured(evaluator)
    kind = config.kinds[0]
    exact = SOLVERS["exact"]

    measure.phase()
    t = time.perf_counter()
    reference, _ = measure(None)
    higher = reference["higher_is_better"]
    better = (lambda a, b: a >= b) if higher else (lambda a, b: a <= b)
    uniform = {}
    for cand in problem.candidates:
        choice = first_last_choice(problem, cand) if config.pin_first_last else problem.uniform_choice(cand)
        result, seconds = measure(problem.assignments(choice))
        uniform[cand] = row(problem, choice, result, eval_seconds=round(seconds, 2))
        print(f"uniform {cand:<8} {result['name']} {result['value']:.3f}", flush=True)
    phases["uniform"] = {**measure.phase(), "wall_seconds": round(time.perf_counter() - t, 1)}

    t = time.perf_counter()
    mixed = []
    for k in config.kinds:
        for cand, u in uniform.items():
            solution = exact(problem, Goal({k: u["costs"][k]}))
            result, _ = measure(problem.assignments(solution.choice))
            mixed.append(row(problem, solution.choice, result, kind=k, at=cand, budget=u["costs"][k],
                             not_worse=bool(better(result["value"], u["metric"]))))
            print(f"mixed at {k} of {cand:<8} {result['value']:.3f} (uniform {u['metric']:.3f})", flush=True)
    phases["mixed"] = {**measure.phase(), "wall_seconds": round(time.perf_counter() - t, 1)}

    t = time.perf_counter()
    front = []
    pareto = analysis.pareto(kind, points, progress=False)  # solved here, measured below through `measure`
    for p in pareto.plans:
        result, _ = measure(p.assignments)
        front.append({"costs": p.costs, "predicted_sensitivity": p.predicted_sensitivity, "metric": result["value"],
                      "candidates_used": sorted(set(p.assignments.values()))})
    phases["front"] = {**measure.phase(), "wall_seconds": round(time.perf_counter() - t, 1)}
    phases["front_solve_seconds"] = round(pareto.solve_seconds, 3)

    t = time.perf_counter()
    budget = uniform[config.target]["costs"][kind]
    max_loss = 0.01 * abs(reference["value"])
    roundoff = (same_problem(problem, Analysis.load(work / "roundoff").problem(), "roundoff")
                if "roundoff" in config.metrics else problem)
    searches = []

    def loss(choice: np.ndarray) -> float:
        value = measure(problem.assignments(choice))[0]["value"]
        return (reference["value"] - value) if higher else (value - reference["value"])

    within_budget, measured_loss = Goal({kind: budget}), Goal({}, kind, tracked(loss), max_loss)
    for name, call in (
            ("exact", lambda: exact(problem, within_budget)),
            ("greedy-pareto", lambda: SOLVERS["greedy-pareto"](problem, within_budget)),
            ("greedy-pareto, 1% drop", lambda: SOLVERS["greedy-pareto"](problem, measured_loss)),
            # Schaefer et al. search between two precisions: the target and the highest
            (f"greedy to {config.target}, 1% drop", lambda: SOLVERS["greedy"](problem, measured_loss,
                                                                               low=config.target)),
            (f"bisection to {config.target}, 1% drop", lambda: SOLVERS["bisection"](problem, measured_loss,
                                                                                     low=config.target)),
            ("mixquant (roundoff)", lambda: SOLVERS["mixquant"](roundoff, within_budget)),
            ("refine", lambda: SOLVERS["refine"](problem, Goal({kind: budget}, measure=tracked(loss)))),
    ):
        asked.clear()
        before = time.perf_counter()
        solution = call()
        wall = time.perf_counter() - before
        result, _ = measure(problem.assignments(solution.choice))
        eval_s = sum(measure.seconds.get(evaluator._key(problem.assignments(np.array(c))), 0.0) for c in asked)
        searches.append(row(problem, solution.choice, result, search=name, evaluations=len(asked),
                            search_seconds=round(wall, 2), evaluation_seconds=round(eval_s, 1),
                            within_budget=bool(solution.costs[kind] <= budget * (1 + 1e-9))))
        print(f"search {name:<24} {result['value']:.3f}  {kind} {solution.costs[kind]:.4g} (budget {budget:.4g}), "
              f"{len(asked)} evaluations", flush=True)
    phases["search"] = {**measure.phase(), "wall_seconds": round(time.perf_counter() - t, 1)}

    t = time.perf_counter()
    metrics = []
    for metric in config.metrics:
        other = same_problem(problem, Analysis.load(work / metric).problem(), metric)
        for k in config.kinds:
            b = uniform[config.target]["costs"][k]
            solution = exact(other, Goal({k: b}))
            result, _ = measure(problem.assignments(solution.choice))
            metrics.append(row(problem, solution.choice, result, sensitivity_metric=metric, kind=k, budget=b))
            print(f"metric {metric:<9} at {k} of {config.target}: {result['value']:.3f}", flush=True)
    phases["metrics"] = {**measure.phase(), "wall_seconds": round(time.perf_counter() - t, 1)}

    return {"model": model, "config": config.__dict__, "groups": len(problem.groups),
            "candidates": list(problem.candidates),
            "calibration_samples": analysis.run.arguments().get("calibration_samples") or "the model's default",
            "reference": reference, "uniform": uniform, "mixed": mixed, "front": front, "front_kind": kind,
            "searches": searches, "search_budget": {"kind": kind, "value": budget, "at": config.target},
            "max_drop": max_loss, "metrics": metrics, "phases": phases,
            "evaluations": len(evaluator.results), "wall_seconds": round(time.perf_counter() - start, 1),
            "command": "python " + " ".join(sys.argv),
            "environment": {"mixprec": __version__, "torch": torch.__version__, "scipy": scipy.__version__,
                            "python": platform.python_version(), "machine": platform.machine(),
                            "device": device, "threads": torch.get_num_threads(),
                            "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None}}


asked: list[tuple] = []


def targets(r: dict) -> list[dict]:
    """The benchmark issue's targets, from a report (recomputed whenever it is rendered)."""
    config, uniform = r["config"], r["uniform"]
    higher = r["reference"]["higher_is_better"]
    better = (lambda a, b: a >= b) if higher else (lambda a, b: a <= b)
    out = []
    for k in config["kinds"]:
        low, high = uniform[config["target"]]["metric"], uniform[config["upper"]]["metric"]
        m = next(x for x in r["mixed"] if x["kind"] == k and x["at"] == config["target"])["metric"]
        gap = high - low
        meaningful = better(high, low) and high != low
        recovered = (m - low) / gap if gap else float("nan")
        out.append({"target": f"half the {config['target']}->{config['upper']} gap at the {k} of {config['target']}",
                    "mixed": m, "uniform_low": low, "uniform_high": high, "recovered": recovered,
                    "met": bool(recovered >= 0.5) if meaningful else None,
                    **({} if meaningful else {"note": f"uniform {config['upper']} is not better than uniform "
                                                      f"{config['target']}: there is no gap to recover"})})
    worse = [x for x in r["mixed"] if not better(x["metric"], uniform[x["at"]]["metric"])]
    out.append({"target": "a mixed plan is never worse than the uniform candidate of equal cost",
                "met": not worse, "violations": [{"kind": x["kind"], "at": x["at"], "mixed": x["metric"],
                                                  "uniform": uniform[x["at"]]["metric"]} for x in worse]})
    return out


def tracked(loss):
    """Record the distinct plans a search asks to measure."""
    def measure(choice):
        key = tuple(int(c) for c in choice)
        if key not in asked:
            asked.append(key)
        return loss(choice)
    return measure


def fmt_cost(kind: str, value: float) -> str:
    return format_bytes(value) if kind == "bytes" else format_count(value) if kind == "bops" else f"{value:.3f}"


def markdown(r: dict) -> str:
    ref = r["reference"]
    name = ref["name"]
    kinds = r["config"]["kinds"]
    lines = [f"## {r['model']}: mixed vs uniform vs searches", "",
             f"{r['groups']} groups; candidates {', '.join(r['candidates'])}; default metric "
             f"{r['config']['metrics'][0]}; float model {name} {ref['value']:.3f}. "
             f"{'Uniform CNN points keep the first and last layer at w8a8. ' if r['config']['pin_first_last'] else ''}"
             f"{r['evaluations']} distinct plans evaluated (each once; the run's log caches them).", "",
             "| uniform | " + " | ".join(kinds) + (" | bits/weight" if "bits_per_weight" not in kinds else "")
             + f" | {name} |", "|---|" + "---|" * (len(kinds) + 1 + ("bits_per_weight" not in kinds))]
    for cand, u in r["uniform"].items():
        lines.append(f"| {cand} | " + " | ".join(fmt_cost(k, u["costs"][k]) for k in kinds)
                     + (f" | {u['costs']['bits_per_weight']:.3f}" if "bits_per_weight" not in kinds else "")
                     + f" | {u['metric']:.3f} |")
    lines += ["", f"Exact mixed plan ({r['config']['metrics'][0]}) at the cost of each uniform candidate:", "",
              "| at the cost of | " + " | ".join(f"mixed, {k}" for k in kinds) + " | uniform |",
              "|---|" + "---|" * (len(kinds) + 1)]
    for cand, u in r["uniform"].items():
        cells = []
        for k in kinds:
            m = next(x for x in r["mixed"] if x["kind"] == k and x["at"] == cand)
            cells.append(f"{m['metric']:.3f}{'' if m['not_worse'] else ' (worse)'}")
        lines.append(f"| {cand} | " + " | ".join(cells) + f" | {u['metric']:.3f} |")
    b = r["search_budget"]
    lines += ["", f"Searches at the {b['kind']} of uniform {b['at']} ({fmt_cost(b['kind'], b['value'])}); the "
              f"1 % drop bound is {r['max_drop']:.3g} {name}:", "",
              f"| search | {name} | {b['kind']} | within budget | evaluations | evaluation time s |",
              "|---|---|---|---|---|---|"]
    for s in r["searches"]:
        lines.append(f"| {s['search']} | {s['metric']:.3f} | {fmt_cost(b['kind'], s['costs'][b['kind']])} | "
                     f"{'yes' if s['within_budget'] else 'no'} | {s['evaluations']} | {s['evaluation_seconds']} |")
    lines += ["", f"Sensitivity metrics compared by the exact plan each gives at the cost of uniform "
              f"{r['config']['target']} (hessian + exact is the HAWQ-V3-style plan):", "",
              "| metric | " + " | ".join(kinds) + " | analysis s |", "|---|" + "---|" * (len(kinds) + 1)]
    for metric in r["config"]["metrics"]:
        cells = [f"{next(x for x in r['metrics'] if x['sensitivity_metric'] == metric and x['kind'] == k)['metric']:.3f}"
                 for k in kinds]
        lines.append(f"| {metric} | " + " | ".join(cells) + f" | {r['phases']['analysis_seconds'].get(metric)} |")
    lines += ["", "Targets:", ""]
    for t in targets(r):
        status = "met" if t["met"] else ("n/a" if t["met"] is None else "**missed**")
        detail = (f": {t['note']}, mixed {t['mixed']:.3f}, uniform {t['target'].split()[2].split('->')[0]} "
                  f"{t['uniform_low']:.3f}, {t['target'].split()[2].split('->')[1]} {t['uniform_high']:.3f}"
                  if t.get("note") else
                  f": mixed {t['mixed']:.3f}, uniform {t['uniform_low']:.3f} -> {t['uniform_high']:.3f}, "
                  f"{t['recovered']:.0%} of the gap recovered" if "recovered" in t else
                  f": violations {t['violations']}" if t.get("violations") else "")
        lines.append(f"- {t['target']}: {status}{detail}")
    p = r["phases"]
    env = r["environment"]
    samples = ref.get("details", {}).get("samples")
    if samples and name.startswith("top"):
        se = 100 * (ref["value"] / 100 * (1 - ref["value"] / 100) / samples) ** 0.5
        lines += ["", f"Resolution: one standard error of a top-1 figure near the float model's is {se:.2f} points "
                  f"({samples:,} evaluation images); differences below that are noise."]
    lines += ["", "| phase | distinct plans | evaluation s (when first measured) |", "|---|---|---|"]
    for phase in ("uniform", "mixed", "front", "search", "metrics"):
        if isinstance(p.get(phase), dict):
            lines.append(f"| {phase} | {p[phase]['plans']} | {p[phase]['evaluation_seconds']} |")
    analysis = ", ".join(f"{k} {v:.1f} s" for k, v in p["analysis_seconds"].items() if v is not None)
    lines += ["", f"Analysis: {analysis}; front solved in {p['front_solve_seconds']} s. `{r['command']}` on "
              f"{env['device']}{' (' + env['gpu'] + ')' if env.get('gpu') else ''}, torch {env['torch']}, "
              f"scipy {env['scipy']}, mixprec {env['mixprec']}; calibration samples: "
              f"{r.get('calibration_samples', 'default')}.", ""]
    return "\n".join(lines)


def plot(r: dict, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    kind, name = r["front_kind"], r["reference"]["name"]
    fig = Figure(figsize=(8, 5.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    xs = [p["costs"][kind] for p in r["front"]]
    ax.plot(xs, [p["metric"] for p in r["front"]], "o-", color="tab:blue", ms=4, label="exact Pareto front (measured)")
    for cand, u in r["uniform"].items():
        ax.plot(u["costs"][kind], u["metric"], "s", color="tab:orange", ms=7)
        ax.annotate(cand, (u["costs"][kind], u["metric"]), textcoords="offset points", xytext=(4, -10), fontsize=8)
    ax.plot([], [], "s", color="tab:orange", label="uniform")
    markers = "*^vD<>P"
    for s, m in zip(r["searches"], markers):
        ax.plot(s["costs"][kind], s["metric"], m, ms=9, label=f"{s['search']} ({s['evaluations']} evals)")
    ax.axhline(r["reference"]["value"], ls="--", color="grey", label=f"float {r['reference']['value']:.2f}")
    values = [p["metric"] for p in r["front"]] + [u["metric"] for u in r["uniform"].values()]
    ref = r["reference"]["value"]
    higher = r["reference"]["higher_is_better"]
    if not higher and max(values) > 10 * ref:  # perplexity-like: log scale, collapsed plans clipped
        ax.set_yscale("log")
        ax.set_ylim(0.95 * ref, min(max(values), 100 * ref))
    else:
        span = max(abs(ref - v) for v in values)
        near = sorted(abs(ref - v) for v in values)[len(values) // 2]
        if span > 8 * near:  # one collapsed point would flatten the rest: zoom on the informative range
            pad = 4 * near
            ax.set_ylim((ref - pad, ref + 0.2 * pad) if higher else (ref - 0.2 * pad, ref + pad))
    ax.set_xlabel({"bops": "BOPs per sample", "bytes": "bytes", "bits_per_weight": "bits per weight"}.get(kind, kind))
    ax.set_ylabel(name)
    ax.set_title(f"{r['model']}: measured {name} against {kind}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right" if r["reference"]["higher_is_better"] else "upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def render(report: dict) -> None:
    model = report["model"]
    (RESULTS / f"run_{model}.md").write_text(markdown(report))
    plot(report, RESULTS / f"run_{model}_pareto.png")
    print(f"wrote {RESULTS / f'run_{model}.md'} and run_{model}_pareto.png")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", choices=sorted(CONFIGS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--points", type=int, default=16, help="budgets on the front (default 16)")
    parser.add_argument("--calibration-samples", type=int, help="calibration samples (default: the model's own)")
    parser.add_argument("--render", action="store_true", help="only rewrite the .md and .png from the .json")
    args = parser.parse_args()
    path = RESULTS / f"run_{args.model}.json"
    if args.render:
        render(json.loads(path.read_text()))
        return 0
    try:
        report = benchmark(args.model, args.device, args.points, args.calibration_samples)
    except MissingDataError as exc:
        print(f"skipped {args.model}: {exc}")
        return 0
    write_json_atomic(path, report)
    print(f"wrote {path}")
    try:
        render(report)
    except ImportError as exc:
        print(f"not rendered ({exc}); run with --render where matplotlib is installed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
