"""Never worse than uniform? Mixed plans against the uniform plan of equal cost, before and after the
guard, with sensitivities measured alone (sqnr around the float model) and around the operating
point (the around metric, based at the uniform candidate whose cost is the budget).

    python benchmarks/never_worse.py resnet20 [--device cuda] [--calibration-samples N] [--kinds bops,bytes]
        [--rounding gptq --tables sqnr]

For every uniform candidate below the highest precision and every budget kind of the model's
configuration (benchmarks/run.py CONFIGS), at the cost of the uniform plan (for CNNs, with the first
and last groups at w8a8, the baseline users compare against):
- uniform: the uniform plan itself;
- sqnr: the exact plan on the sqnr table, unguarded, and the default (`solve`, guard on);
- around: the exact plan on the around table based at that candidate, unguarded and guarded;
- local (on either table): the measured local search (`solve --search local`), from the exact plan
  and the uniform plans within the budget, deciding by the output divergence on the calibration data.
Decisions (tables, guard) use the calibration data only; every plan is evaluated on the model's
evaluation split. "not worse" means metric >= uniform - one standard error of the uniform's
metric (binomial for top-1; for other metrics, >= uniform). Times: each analysis, and the guard's
divergence evaluations (in forward passes over the calibration data and seconds).
--rounding R: the sensitivity is measured with R-rounded weights, and every plan (uniform, mixed, the guard's
rivals) is applied with R: mixed against uniform when both are rounded so (the gap to W8A8 is then R's own).
Writes benchmarks/results/never_worse_<model>.json and .md.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from run import (CONFIGS, RESULTS, analysis_arguments, analyze_run, base_name, first_last_choice,  # noqa: E402
                 save_result, specs)

from mixprec import Analysis, __version__, analyze  # noqa: E402
from mixprec.analysis import HOLDOUT  # noqa: E402
from mixprec.errors import MissingDataError  # noqa: E402
from mixprec.rounding import rounding_config  # noqa: E402
from mixprec.plan import write_json_atomic  # noqa: E402
from mixprec.quantizers import GRID_VERSION  # noqa: E402
from mixprec.sensitivity import Around  # noqa: E402
from mixprec.solvers import SOLVERS, Goal  # noqa: E402
from mixprec.specs import prepare  # noqa: E402

import torch  # noqa: E402


KEYS = ("sqnr_exact", "sqnr_guarded", "sqnr_local", "around_exact", "around_guarded", "around_local")


def standard_error(result: dict) -> float:
    """One standard error of an evaluation: binomial for top-1 accuracy; for a Spearman correlation
    over n pairs, (1 - r^2) sqrt(1.06 / (n - 3)) (Fisher's z with Fieller's variance); 0 otherwise
    (perplexity: "not worse" then means not higher at all)."""
    details = result.get("details") or {}
    samples = details.get("samples")
    if result["name"].startswith("top") and samples:
        p = result["value"] / 100
        return 100 * math.sqrt(max(p * (1 - p), 0.0) / samples)
    pairs = details.get("pairs")
    if result["name"] == "spearman" and pairs and pairs > 3:
        r = result["value"] / 100
        return 100 * (1 - r * r) * math.sqrt(1.06 / (pairs - 3))
    return 0.0


def verdicts(result: dict) -> dict:
    """Re-derive each row's "not worse" and the summary from the saved figures (also for a run cut short:
    its rows are all that is judged, and the summary says how many there are)."""
    higher, ref = result["reference"]["higher_is_better"], result["reference"]
    for row in result["rows"]:
        row["standard_error"] = se = standard_error({**ref, "value": row["uniform"]})
        for key in [k for k in KEYS if k in row]:
            value = row[key]
            row[f"{key}_not_worse"] = bool(value >= row["uniform"] - se if higher else value <= row["uniform"] + se)
    rows = result["rows"]
    result["summary"] = {key: f"{sum(r[key + '_not_worse'] for r in rows if key in r)} of "
                              f"{sum(key in r for r in rows)}" for key in KEYS if any(key in r for r in rows)}
    return result


def sqnr_analysis(model: str, candidates: str, work: Path, device: str, samples: int | None,
                  weight_range: str = "mse", extra: tuple[str, ...] = (), rounding: str = "nearest",
                  rounding_options: dict | None = None) -> Analysis:
    """The sqnr run benchmarks/run.py makes (shared with it: the same directory and cache; another weight
    range method, ``extra`` candidates, or another rounding have their own, named as
    benchmarks/nncf_compare.py names them)."""
    run = work / ("sqnr" if weight_range == "mse" else f"sqnr_{weight_range}")
    if extra:
        run = run.parent / f"{run.name}_plus_{'_'.join(extra)}"
    if rounding != "nearest":
        options = rounding_config(rounding, **(rounding_options or {})).options()  # defaults named too
        run = run.parent / "_".join([run.name, rounding, *sorted(k for k, v in options.items() if v is True)])
    if not (run / "sensitivity.json").is_file():
        analyze_run(run, analysis_arguments(model, candidates, "sqnr", device, run, samples,
                                            weight_range=weight_range, rounding=rounding,
                                            rounding_options=rounding_options))
    return load(run, model)


def load(run: Path, model: str) -> Analysis:
    """A run of ``model``; an example's code specs named again, as its command line would name them."""
    model_spec, data_spec, eval_spec = specs(model)
    named = {"model": model_spec, "data": data_spec, "eval": eval_spec} if data_spec else None
    return Analysis.load(run, specs=named)


def _around(model: str, cand: str, candidates: str, work: Path, device: str, samples: int | None) -> Analysis:
    """The around table based at ``cand`` (cached in its own run directory)."""
    run = work / f"around_{cand}"
    if not (run / "sensitivity.json").is_file():
        arguments = analysis_arguments(model, candidates, "sqnr", device, run, samples)
        arguments.update(metric="around", around=cand, around_divergence="auto")
        model_spec, data_spec, _ = specs(model)
        net, data, _, groups = prepare(model_spec, data_spec, samples)
        analyze(net, data or [], candidates, Around(base=cand), run, groups=groups, device=device,
                model_name=model_spec, arguments=arguments)
    return load(run, model)


def benchmark(model: str, device: str, samples: int | None, kinds: list[str] | None,
              at: list[str] | None = None, tables: tuple[str, ...] = ("sqnr", "around"),
              partial: Path | None = None, local: bool = True, weight_range: str = "mse",
              guard_margin: float = 1.0, guard_divergence: str = "auto", extra: tuple[str, ...] = (),
              guard_holdout: float | None = None, rounding: str = "nearest") -> dict:
    """The result of the study; the rows a run cut short left in ``partial`` (same command) are kept, and only
    the budgets they lack are measured. rounding: the sensitivity is measured with it (analyze --rounding), and
    every plan, uniform or mixed, is applied with it for the guard and for the evaluation."""
    config = CONFIGS[model]
    work = RESULTS / "tmp" / f"run_{model}"
    if extra:  # more candidates: analyses of their own
        config = replace(config, candidates=",".join([config.candidates, *extra]))
    sqnr = sqnr_analysis(model, config.candidates, work, device, samples, weight_range, extra, rounding)
    # timings of a run that reuses the measurements of the run directories it solves on are not a fresh run's
    cached = _cached_divergences(sqnr.run.path)
    problem = sqnr.problem()
    evaluator = sqnr.evaluator(device=device, rounding=rounding)
    reference = evaluator.reference().to_dict()
    print(f"{model}: float {reference['name']} {reference['value']:.3f}", flush=True)

    def measure(assignments: dict[str, str]) -> dict:
        return evaluator.measure(assignments).to_dict()

    highest = max(problem.candidates, key=lambda c: problem.uniform_cost("bytes", c))
    rows, analyses = [], {"sqnr": sqnr.table.metadata.get("seconds")}
    command = " ".join(["python", "benchmarks/never_worse.py", *sys.argv[1:]])
    if partial is not None and partial.is_file():  # a run cut short: keep its rows, measure the rest
        earlier = json.loads(partial.read_text())
        if earlier.get("command") == command:
            rows = earlier["rows"]
            print(f"resuming {partial.name}: {len(rows)} budget(s) measured before", flush=True)
    done = {(row["at"], row["kind"]) for row in rows}
    for cand in [c for c in problem.candidates if c != highest and (not at or base_name(c) in at)]:
        studied = [("sqnr", sqnr, problem)] if "sqnr" in tables else []
        if "around" in tables:
            around = _around(model, cand, config.candidates, work / "_".join(extra) if extra else work, device,
                             samples)
            analyses[f"around_{cand}"] = around.table.metadata.get("seconds")
            cached += _cached_divergences(around.run.path)
            studied.append(("around", around, around.problem()))
        for kind in kinds or config.kinds:
            if (cand, kind) in done:
                continue
            base = first_last_choice(problem, cand) if config.pin_first_last else problem.uniform_choice(cand)
            budget = problem.cost(kind, base)
            uniform = measure(problem.assignments(base))
            row = {"at": cand, "kind": kind, "budget": budget, "uniform": uniform["value"]}
            for label, analysis, table_problem in studied:
                plain = SOLVERS["exact"](table_problem, Goal({kind: budget}))
                row[f"{label}_exact"] = measure(table_problem.assignments(plain.choice))["value"]
                checks_before = sum(len(c.results) for c in analysis._checkers.values())
                start = time.perf_counter()
                plan = analysis.solve({kind: budget}, device=device, guard_margin=guard_margin,
                                      guard_divergence=guard_divergence)
                row[f"{label}_guard_seconds"] = round(time.perf_counter() - start, 2)
                row[f"{label}_guard_evaluations"] = sum(len(c.results) for c in analysis._checkers.values()) - \
                    checks_before
                row[f"{label}_guarded"] = measure(plan.assignments)["value"]
                row[f"{label}_guard_chose"] = plan.metadata.get("guard", {}).get("chosen")
                if plan.metadata.get("guard", {}).get("paired_z"):  # the mixed plan against each rival, in SEs
                    row[f"{label}_guard_z"] = plan.metadata["guard"]["paired_z"]
                if plan.metadata.get("guard", {}).get("deciding"):  # where some divergence abstained
                    row[f"{label}_guard_deciding"] = plan.metadata["guard"]["deciding"]
                if not local:
                    continue
                start = time.perf_counter()
                local = analysis.solve({kind: budget}, search="local", device=device, guard_margin=guard_margin,
                                       guard_divergence=guard_divergence, guard_holdout=guard_holdout)
                row[f"{label}_local_seconds"] = round(time.perf_counter() - start, 2)
                row[f"{label}_local_evaluations"] = local.metadata["evaluations"]
                row[f"{label}_local"] = measure(local.assignments)["value"]
            if base_name(cand) == config.target and kind == config.kinds[0]:  # the half-gap target's upper end
                upper = first_last_choice(problem, config.upper) if config.pin_first_last else \
                    problem.uniform_choice(config.upper)
                row["upper"] = {"candidate": config.upper, "metric": measure(problem.assignments(upper))["value"]}
            rows.append(row)  # standard errors and verdicts: verdicts(), from the saved figures
            if partial is not None:  # what is done survives a run cut short
                write_json_atomic(partial, {"model": model, "reference": reference, "rows": rows,
                                            "analysis_seconds": analyses, "environment": {"device": device},
                                            "command": command,
                                            "note": f"cut short after {len(rows)} rows"})
            print(f"{kind} of {cand:<7} uniform {row['uniform']:.3f}  " + "  ".join(
                f"{key} {row[key]:.3f}" for key in KEYS if key in row), flush=True)
    note = {"note": f"{cached} divergence measurements were cached on disk by an earlier run, so the guard's and the "
                    "local search's seconds are lower than a fresh run's, and the local search, given the analysis "
                    "time, measures more plans"} if cached else {}
    return verdicts({"model": model, "reference": reference, "rows": rows, "analysis_seconds": analyses, **note,
                     "command": command,
                     "environment": {"mixprec": __version__, "device": device, "calibration_samples": samples,
                                     "guard_margin": guard_margin, "guard_divergence": guard_divergence,
                                     "guard_holdout": HOLDOUT if guard_holdout is None else guard_holdout,
                                     # the guard's consensus adds the calibration labels' cross-entropy
                                     "guard_labels": _labelled(model), "rounding": rounding,
                                     "candidates": config.candidates, "grid": GRID_VERSION,
                                     # the mixed plan is judged against the rival that would replace it
                                     "guard_rule": "best_rival"}})



def _labelled(model: str) -> bool:
    """Whether the model gives the guard its calibration labels (a classifier's consensus then has ce): a built-in's
    calibration labels, or an example's calibration items that are (inputs, integer labels) pairs."""
    from mixprec.builtin import BUILTINS, get_builtin
    if model in BUILTINS:
        return get_builtin(model).calibration_labels is not None
    from mixprec.batches import split_item
    from mixprec.specs import resolve_callable
    items = resolve_callable(specs(model)[1], "calibration data")()
    labels = split_item(items[0])[1] if items else None
    return isinstance(labels, torch.Tensor) and not labels.is_floating_point()


def _cached_divergences(run: Path) -> int:
    """Divergence measurements already on disk in the run directory ``run`` (mixprec caches the guard's and the
    local search's measurements in a run's divergences.jsonl)."""
    return sum(len(f.read_text().splitlines()) for f in run.rglob("divergences.jsonl")) if run.is_dir() else 0


def markdown(result: dict) -> str:
    ref = result["reference"]
    lines = [f"# Never worse than uniform: {result['model']}", "",
             f"`{result['command']}`; float {ref['name']} {ref['value']:.2f}. Decisions on calibration data, "
             "metrics on the evaluation split; not worse = within one standard error of uniform."
             + (f" Every plan (uniform, mixed, the guard's) rounded by {rounding}, the sensitivity measured with it."
                if (rounding := result.get("environment", {}).get("rounding", "nearest")) != "nearest" else "")
             + (f" Note: {result['note']}." if result.get("note") else ""), "",
             "| budget | uniform | sqnr exact | sqnr + guard | sqnr local | around exact | around + guard | around local "
             "| guard chose (sqnr / around) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        mark = lambda key: ("—" if key not in r else  # noqa: E731
                            f"{r[key]:.2f}" + ("" if r[key + "_not_worse"] else " (worse)"))
        lines.append(f"| {r['kind']} of {r['at']} | {r['uniform']:.2f} ± {r['standard_error']:.2f} | "
                     f"{mark('sqnr_exact')} | {mark('sqnr_guarded')} | {mark('sqnr_local')} | {mark('around_exact')} | "
                     f"{mark('around_guarded')} | {mark('around_local')} | {chose(r, 'sqnr')} / "
                     f"{chose(r, 'around')} |")
    margin = result.get("environment", {}).get("guard_margin")
    if margin is not None:
        against = ("the best uniform rival (the one it would be replaced by)"
                   if result["environment"].get("guard_rule") == "best_rival" else
                   "every uniform rival (the guard's former rule)")
        lines += ["", f"The guard returns the mixed plan only when it is lower than {against} on every "
                  f"divergence by more than {margin:g} standard error(s) of the paired per-sample difference on the "
                  "calibration data; z: the closest of those differences, in standard errors."]
    lines += ["", "Not worse than uniform: " + ", ".join(f"{k} {v}" for k, v in result["summary"].items()) + ".",
              "", "Analysis seconds: " + ", ".join(f"{k} {v}" for k, v in result["analysis_seconds"].items()) + "."]
    lines += gap_lines(result)
    lines += cost_lines(result)
    return "\n".join(lines) + "\n"


def chose(row: dict, label: str) -> str:
    """What the guard returned, with the closest paired difference (in standard errors) where measured."""
    chosen = row.get(f"{label}_guard_chose") or "—"
    deciding = row.get(f"{label}_guard_deciding") or {}  # a divergence that abstained says nothing: its z is left out
    z = [v for rival, zs in (row.get(f"{label}_guard_z") or {}).items() for i, v in enumerate(zs)
         if v is not None and (rival not in deciding or i in deciding[rival])]
    return chosen + (f" (z {max(z):+.2f})" if z else "")


def gap_lines(result: dict) -> list[str]:
    """How much of the gap between the uniform plan at the target's cost and the uniform upper candidate
    (W4A8 -> W8A8 on the CNNs) each plan recovers (the target: at least 50 % for the default plan)."""
    out = []
    for r in [r for r in result["rows"] if "upper" in r]:
        gap = r["upper"]["metric"] - r["uniform"]
        if gap == 0:
            continue
        parts = [f"{key} {100 * (r[key] - r['uniform']) / gap:.0f} %" for key in KEYS if key in r]
        out += ["", f"Gap recovered at the {r['kind']} of {r['at']} (uniform {r['uniform']:.2f} -> uniform "
                f"{r['upper']['candidate']} {r['upper']['metric']:.2f}): " + ", ".join(parts)
                + " (target: at least 50 % for the default plan, sqnr_guarded)."]
    return out


def cost_lines(result: dict) -> list[str]:
    """What the guard and the local search add per budget, in seconds and as a multiple of the sqnr
    analysis they start from (the target: at most 2x)."""
    analysis = (result.get("analysis_seconds") or {}).get("sqnr")
    rows = [r for r in result["rows"] if "sqnr_guard_seconds" in r]
    if not analysis or not rows:
        return []
    if not any("sqnr_local_seconds" in r for r in rows):  # run with --no-local
        worst = max(r["sqnr_guard_seconds"] for r in rows) / analysis
        return ["", f"The guard adds at most {worst:.2f}x the sqnr analysis time ({analysis:.1f} s; target: at most 2x); "
                "the local search was not run (--no-local)."]
    out = ["", f"Cost per budget on the sqnr table (sqnr analysis {analysis:.1f} s):", "",
           "| budget | guard s (x analysis) | local search s (x analysis), evaluations |", "|---|---|---|"]
    for r in rows:
        out.append(f"| {r['kind']} of {r['at']} | {r['sqnr_guard_seconds']:.1f} ({r['sqnr_guard_seconds'] / analysis:.2f}x) "
                   f"| {r['sqnr_local_seconds']:.1f} ({r['sqnr_local_seconds'] / analysis:.2f}x), "
                   f"{r['sqnr_local_evaluations']} |")
    worst_guard = max(r["sqnr_guard_seconds"] for r in rows) / analysis
    worst_local = max(r["sqnr_local_seconds"] for r in rows) / analysis
    out += ["", f"Worst case: the guard adds {worst_guard:.2f}x the analysis time, the local search "
            f"{worst_local:.2f}x (target: at most 2x)."]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=sorted(CONFIGS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--calibration-samples", type=int, default=None)
    parser.add_argument("--kinds", help="budget kinds (default: the model's configuration)")
    parser.add_argument("--at", help="only at the cost of these uniform candidates (default: all but the highest)")
    parser.add_argument("--tables", default="sqnr,around", help="which tables to solve on: sqnr, around or both")
    parser.add_argument("--no-local", action="store_true", help="skip the measured local search (the default "
                        "plan is exact + guard; the local search is the costly part)")
    parser.add_argument("--weight-range", choices=("mse", "minmax", "auto"), default="mse",
                        help="the analysis's weight range method (auto: chosen per candidate on the calibration data)")
    parser.add_argument("--guard-margin", type=float, default=1.0,
                        help="the guard's margin in standard errors of the paired difference (default 1, as solve)")
    parser.add_argument("--guard-divergence", default="auto",
                        help="what the guard and the local search measure (default auto, as solve)")
    parser.add_argument("--guard-holdout", type=float, default=None,
                        help="after the local search, the fraction of the calibration batches the guard decides on, "
                        "held apart from the search's (default: solve's, mixprec.analysis.HOLDOUT; 0: all batches "
                        "for both, as before)")
    parser.add_argument("--add-candidates", default="", metavar="LIST",
                        help="candidates beside the model's configuration, e.g. activation bit-widths for a CNN "
                        "(w3a6,w4a6,w5a6,w6a6,w8a6) or 5- and 6-bit weights for an LLM (w5g64,w5g128,w6g128)")
    parser.add_argument("--rounding", default="nearest",
                        help="how every plan's weights are rounded (e.g. gptq): the sensitivity is measured with it "
                        "and the uniform and mixed plans are all applied with it (default nearest); only the sqnr "
                        "table (--tables sqnr)")
    parser.add_argument("--out-suffix", default="")
    parser.add_argument("--render", action="store_true",
                        help="only re-derive the verdicts and rewrite the .md from the saved .json")
    args = parser.parse_args()
    if args.rounding != "nearest" and "around" in args.tables.split(","):
        raise SystemExit("--rounding is measured on the sqnr table only: add --tables sqnr")
    out = RESULTS / f"never_worse_{args.model}{args.out_suffix}"
    if args.render:
        result = verdicts(json.loads(out.with_suffix(".json").read_text()))
        save_result(out, result, markdown(result))
        return 0
    try:
        result = benchmark(args.model, args.device, args.calibration_samples,
                           args.kinds.split(",") if args.kinds else None, args.at.split(",") if args.at else None,
                           tuple(args.tables.split(",")), partial=out.with_suffix(".partial.json"),
                           local=not args.no_local, weight_range=args.weight_range,
                           guard_margin=args.guard_margin, guard_divergence=args.guard_divergence,
                           extra=tuple(c for c in args.add_candidates.split(",") if c),
                           guard_holdout=args.guard_holdout, rounding=args.rounding)
    except MissingDataError as exc:
        print(f"skipped: {exc}")
        return 0
    out.with_suffix(".partial.json").unlink(missing_ok=True)
    save_result(out, result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
