"""The default plan at one budget, against every uniform plan that fits it, on the evaluation split.

    python benchmarks/at_budget.py smollm2 --budget bits_per_weight=5.1 [--device cuda] [--weight-range auto]
        [--add-candidates w5g64,w5g128,w6g128] [--search local [--time-budget 300s] [--evaluations N]] [--rounding gptq [--rounding-aware]]
        [--final-samples N [--final-only]]

The sqnr analysis is benchmarks/never_worse.py's (the same run directory, so one analysis serves both);
the plan is what `mixprec solve RUN --budget ...` returns (exact solver, guard on, decisions on the
calibration data); every uniform candidate whose plan fits the budget (for CNNs also with the first
and last groups at w8a8) is measured beside it. --rounding gptq: the guard and every plan, the default
and the uniform ones, are applied with GPTQ (mixed+GPTQ against uniform+GPTQ at the same budget);
with --rounding-aware the sensitivity is measured with GPTQ-rounded weights too (analyze --rounding
gptq). --final-samples N: the default plan and the uniform ones measured again with their weights
rounded and ranges calibrated on N calibration samples (the deployment step; the plan stays the one
chosen on the analysis's); --final-only adds that to the saved result of the same arguments. Writes
benchmarks/results/at_budget_<model><suffix>.json and .md.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from never_worse import sqnr_analysis  # noqa: E402
from run import CONFIGS, EXAMPLES, RESULTS, first_last_choice, save_result, specs  # noqa: E402

from mixprec import __version__  # noqa: E402
from mixprec.errors import MissingDataError  # noqa: E402
from mixprec.plan_evaluation import PlanEvaluator  # noqa: E402
from mixprec.rounding import rounding_config  # noqa: E402
from mixprec.specs import load_eval, prepare  # noqa: E402


def analysed(model: str, device: str, weight_range: str, extra: tuple[str, ...], rounding: str, aware: bool,
             rounding_options: dict | None):
    """The sqnr analysis the benchmark starts from (made, or reopened from its run directory), and the rounding."""
    candidates = ",".join([CONFIGS[model].candidates, *extra])
    analysis = sqnr_analysis(model, candidates, RESULTS / "tmp" / f"run_{model}", device, None, weight_range, extra,
                             rounding if aware else "nearest", rounding_options if aware else None)
    return analysis, rounding_config(rounding, **dict(rounding_options or {}))


def add_final(result: dict, model: str, device: str, weight_range: str, extra: tuple[str, ...], rounding: str,
              aware: bool, rounding_options: dict | None, samples: int) -> dict:
    """A saved result's default plan and uniform plans measured again at the deployment step with ``samples``
    calibration samples (final_evaluator), added to it as each one's ``final``."""
    if "assignments" not in result["plan"]:
        raise SystemExit("this result does not hold its plan's assignments (made before they were saved): run the "
                         "benchmark again")
    analysis, rounding = analysed(model, device, weight_range, extra, rounding, aware, rounding_options)
    problem = analysis.problem()
    final = final_evaluator(model, analysis, analysis.evaluator(device=device, rounding=rounding), samples, device)
    result["plan"]["metric"]["final"] = final.measure(result["plan"]["assignments"]).to_dict()["value"]
    print(f"  default plan, {samples} calibration samples: {result['plan']['metric']['final']:.3f}", flush=True)
    for u in result["uniform"]:
        choice = (first_last_choice(problem, u["candidate"]) if "first/last" in u["variant"]
                  else problem.uniform_choice(u["candidate"]))
        u["final"] = final.measure(problem.assignments(choice)).to_dict()["value"]
        print(f"  {u['variant']}, {samples} calibration samples: {u['final']:.3f}", flush=True)
    result["final_calibration_samples"] = samples
    if result.get("calibration_samples") is None:  # results saved before it was recorded
        result["calibration_samples"] = calibration_samples(model, analysis)
    result["final_command"] = " ".join(["python", "benchmarks/at_budget.py", *sys.argv[1:]])
    return result


def calibration_samples(model: str, analysis) -> int | None:
    """The calibration samples the analysis measured on: as asked, else the built-in model's default."""
    asked = analysis.run.arguments().get("calibration_samples") if analysis.run else None
    if asked is None and model not in EXAMPLES:
        from mixprec.builtin import get_builtin
        asked = get_builtin(model).default_calibration_samples
    return asked


def final_evaluator(model: str, analysis, evaluator: PlanEvaluator, samples: int, device: str) -> PlanEvaluator:
    """Measures plans as ``evaluator`` does (the same groups, ranges and rounding), with the plan's weights
    rounded and its ranges calibrated on ``samples`` calibration samples instead of the analysis's: the
    deployment step `mixprec quantize --plan ... --calibration-samples N` (GPTQ's Hessians on more tokens)."""
    model_spec, data_spec, eval_spec = specs(model)

    def load():
        net, data, _, _ = prepare(model_spec, data_spec, samples)
        return net, data, load_eval(eval_spec or model_spec, model_spec)
    return PlanEvaluator(load, analysis.groups, analysis.excluded, {"calibration_samples": samples}, None,
                         analysis.point_counts, evaluator.weight_range, evaluator.activation_range, device,
                         evaluator.rounding)


def benchmark(model: str, budget: str, device: str, weight_range: str, extra: tuple[str, ...],
              search: str | None, rounding: str = "nearest", aware: bool = False,
              time_budget: str | None = None, rounding_options: dict | None = None,
              final_samples: int | None = None, evaluations: int | None = None) -> dict:
    config = CONFIGS[model]
    start = time.perf_counter()
    analysis, rounding = analysed(model, device, weight_range, extra, rounding, aware, rounding_options)
    options_used = {k: getattr(rounding, k) for k in ("act_order", "static_groups") if hasattr(rounding, k)}
    analysis_seconds = time.perf_counter() - start
    problem = analysis.problem()
    budgets = analysis.budgets(budget, problem)  # kind -> limit
    evaluator = analysis.evaluator(device=device, rounding=rounding)
    reference = evaluator.reference().to_dict()
    start = time.perf_counter()
    options = {"search": search} if search else {}
    if time_budget:
        options["time_budget"] = time_budget
    if evaluations:
        options["evaluations"] = evaluations
    plan = analysis.solve(budgets, device=device, rounding=rounding, **options)
    seconds = time.perf_counter() - start
    measured = evaluator.measure(plan.assignments).to_dict()
    costs = plan.metadata["predicted_costs"]
    print(f"{model} at {budget}: default plan {measured['name']} {measured['value']:.3f} "
          f"({plan.metadata.get('guard', {}).get('chosen', 'mixed')})", flush=True)
    final = final_evaluator(model, analysis, evaluator, final_samples, device) if final_samples else None
    if final is not None:
        measured["final"] = final.measure(plan.assignments).to_dict()["value"]
        print(f"  default plan, {final_samples} calibration samples: {measured['final']:.3f}", flush=True)
    uniform = []
    for cand in problem.candidates:
        choices = [(f"uniform {cand}", problem.uniform_choice(cand))]
        if config.pin_first_last and (first_last_choice(problem, cand) != choices[0][1]).any():
            choices.append((f"uniform {cand}, first/last w8a8", first_last_choice(problem, cand)))
        for label, choice in choices:
            _, cost = problem.totals(choice)
            if all(cost[kind] <= limit * (1 + 1e-9) for kind, limit in budgets.items()):
                value = evaluator.measure(problem.assignments(choice)).to_dict()["value"]
                uniform.append({"candidate": cand, "variant": label, "costs": cost, "metric": value})
                if final is not None:
                    uniform[-1]["final"] = final.measure(problem.assignments(choice)).to_dict()["value"]
                print(f"  {label}: {value:.3f}" + (f" ({uniform[-1]['final']:.3f} with {final_samples} samples)"
                                                   if final is not None else ""), flush=True)
    return {"model": model, "budget": budget, "reference": reference,
            "plan": {"metric": measured, "costs": costs, "candidates_used": sorted(set(plan.assignments.values())),
                     "assignments": plan.assignments,
                     "guard": plan.metadata.get("guard", {}).get("chosen", "mixed"), "solve_seconds": round(seconds, 1),
                     "search": search or "exact", "time_budget": time_budget, "evaluations": evaluations,
                     "search_notes": [step["note"] for step in plan.metadata.get("trace") or []
                                      if isinstance(step, dict) and step.get("note")]},
            "uniform": uniform, "candidates": list(problem.candidates),
            "command": " ".join(["python", "benchmarks/at_budget.py", *sys.argv[1:]]),
            "environment": {"mixprec": __version__, "device": device, "weight_range": weight_range},
            "rounding": rounding.name, "rounding_options": options_used, "rounding_aware": aware,
            "analysis_seconds": round(analysis_seconds, 1), "final_calibration_samples": final_samples,
            "calibration_samples": calibration_samples(model, analysis)}


def markdown(result: dict) -> str:
    ref, plan = result["reference"], result["plan"]
    higher = ref["higher_is_better"]
    best = max if higher else min
    lines = [f"# {result['model']} at {result['budget']}", "",
             f"`{result['command']}`; float {ref['name']} {ref['value']:.2f}; weights rounded by "
             f"{result.get('rounding', 'nearest')}"
             + "".join(f" {k.replace('_', '-')}" for k, v in (result.get("rounding_options") or {}).items() if v)
             + " (the guard and every plan; the sensitivity "
             f"{'too' if result.get('rounding_aware') or result.get('rounding', 'nearest') == 'nearest' else 'with nearest'}); "
             "candidates "
             f"{', '.join(result['candidates'])}. Decisions on calibration data, metric on the evaluation split.", "",
             "| plan | candidates used | costs | metric |", "|---|---|---|---|",
             f"| default ({plan['search']} + guard: {plan['guard']}) | {', '.join(plan['candidates_used'])} | "
             + ", ".join(f"{k} {v:.4g}" for k, v in plan["costs"].items()) + f" | **{plan['metric']['value']:.2f}** |"]
    for u in result["uniform"]:
        lines.append(f"| {u['variant']} | {u['candidate']} | "
                     + ", ".join(f"{k} {v:.4g}" for k, v in u["costs"].items()) + f" | {u['metric']:.2f} |")
    if result["uniform"]:
        top = best(result["uniform"], key=lambda u: u["metric"])
        lines += ["", f"Best uniform plan within the budget: {top['variant']}, {top['metric']:.2f}."]
    lines += [f"The {note}." for note in plan.get("search_notes") or []]
    n = result.get("final_calibration_samples")
    if n:
        final = [(f"default ({plan['guard']})", plan["metric"]["final"])] + [
            (u["variant"], u["final"]) for u in result["uniform"]]
        lines += ["", f"The deployment step with {n} calibration samples instead of the analysis's "
                  f"{result.get('calibration_samples') or 'default'} (each plan's weights rounded and ranges calibrated "
                  f"on them; the plan unchanged, chosen on the analysis's): "
                  + ", ".join(f"{label} {value:.2f}" for label, value in final) + "."
                  + (f" `{result['final_command']}`" if result.get("final_command") else "")]
    if result.get("note"):
        lines += ["", f"Note: {result['note']}"]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=sorted(CONFIGS))
    parser.add_argument("--budget", required=True, help="as `mixprec solve --budget`, e.g. bits_per_weight=5.1")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--weight-range", choices=("mse", "minmax", "auto"), default="mse")
    parser.add_argument("--add-candidates", default="", metavar="LIST",
                        help="candidates beside the model's configuration (as benchmarks/never_worse.py)")
    parser.add_argument("--search", help="solve --search (default: the exact solver)")
    parser.add_argument("--rounding", choices=("nearest", "gptq"), default="nearest",
                        help="rounding of the measurement, the guard and every applied plan (default nearest)")
    parser.add_argument("--rounding-aware", action="store_true",
                        help="with --rounding gptq: measure the sensitivity with GPTQ-rounded weights too")
    parser.add_argument("--act-order", action=argparse.BooleanOptionalAction, default=None,
                        help="with --rounding gptq: GPTQ's act-order (mixprec's default; --no-act-order: off)")
    parser.add_argument("--static-groups", action="store_true", help="with --rounding gptq: static groups")
    parser.add_argument("--time-budget", help="with --search local: as `mixprec solve --time-budget` (default 1x)")
    parser.add_argument("--evaluations", type=int, metavar="N",
                        help="with --search local: as `mixprec solve --evaluations` (plans measured at most; with a "
                             "--time-budget that is never reached, the search no longer depends on the machine's speed)")
    parser.add_argument("--final-samples", type=int, metavar="N",
                        help="also measure the default plan and every uniform plan with their weights rounded and "
                             "ranges calibrated on N calibration samples (the deployment step; the plan is still "
                             "chosen on the analysis's)")
    parser.add_argument("--final-only", action="store_true",
                        help="with --final-samples: add those measurements to the saved result of the same arguments "
                             "(its plan as saved), without solving again")
    parser.add_argument("--out-suffix", default="")
    args = parser.parse_args()
    out = RESULTS / f"at_budget_{args.model}{args.out_suffix.replace('.', 'p')}"
    options = {k: getattr(args, k) for k in ("act_order", "static_groups") if getattr(args, k) is not None
               and (k == "act_order" or getattr(args, k))}
    extra = tuple(c for c in args.add_candidates.split(",") if c)
    if args.final_only:
        if not args.final_samples:
            parser.error("--final-only needs --final-samples N")
        result = add_final(json.loads(out.with_suffix(".json").read_text()), args.model, args.device,
                           args.weight_range, extra, args.rounding, args.rounding_aware, options, args.final_samples)
        save_result(out, result, markdown(result))
        return 0
    try:
        result = benchmark(args.model, args.budget, args.device, args.weight_range, extra, args.search, args.rounding,
                           args.rounding_aware, args.time_budget, options, args.final_samples,
                           args.evaluations)
    except MissingDataError as exc:
        print(f"skipped: {exc}")
        return 0
    # save_result adds .json/.md with Path.with_suffix: no dot may stand in the name (5.1 -> 5p1)
    save_result(out, result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
