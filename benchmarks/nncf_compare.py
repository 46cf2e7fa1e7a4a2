"""NNCF's weight compression side by side with mixprec at the same true bits per weight.

    pip install nncf==3.4.0      # the benchmark extra: pip install -e ".[bench]"
    python benchmarks/nncf_compare.py minilm [--grid full|small|awq] [--rounding gptq] [--pin lm_head=w8]

For each NNCF configuration (`nncf.compress_weights`, torch backend: INT4 sym/asym, group sizes
32/64/128, ratio 1.0/0.8/0.6, data-free and data-aware) the script compresses the model, measures
it with the model's own evaluation, and computes its true average bits per weight over the layers
both tools quantize (the Linear layers): the packed codes, every scale and zero-point, and the
backup-precision layers, read from the compressed model's own tensors. Then mixprec's exact plan
(default metric, from the analysis of `benchmarks/run.py MODEL`) at that same bits-per-weight
budget is applied and measured on the same data, twice: the exact plan alone, and mixprec's default
plan (`solve`: the exact plan guarded against the uniform plans within the budget, on the
calibration data). The verdict is the default plan's. NNCF failures are recorded verbatim.

--rounding gptq: mixprec measures the sensitivity with GPTQ-rounded weights (analyze --rounding
gptq), its guard compares plans rounded by GPTQ, and every mixprec plan is applied with GPTQ: the
data-aware mixprec against NNCF's data-aware rows. --grid awq adds NNCF's strongest data-aware
settings (AWQ and scale estimation) at ratio 1.0 and 0.8 to the full grid.
Rows are saved as they finish, so an interrupted run keeps what it measured (``partial``).
Writes benchmarks/results/nncf_<model><suffix>.json and .md.
"""
from __future__ import annotations

import argparse
import copy
import itertools
import json
import platform
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path

import torch

from mixprec import Analysis, __version__
from mixprec.builtin import get_builtin
from mixprec.errors import MissingDataError, MixprecError
from mixprec.plan import write_json_atomic
from mixprec.solvers import SOLVERS, AllocationProblem, Goal
from mixprec.solvers.exact import InfeasibleBudget

RESULTS = Path(__file__).parent / "results"


def nncf_side(row: dict, model, config: dict, calibration, layers: list[str], weights: int, builtin,
              device: str) -> None:
    """Compress with NNCF and measure: row gets compress_seconds, bits_per_weight, layer_storage and nncf,
    or nncf_error (recorded verbatim: the comparison goes on)."""
    import nncf
    start = time.perf_counter()
    try:
        compressed = nncf.compress_weights(
            copy.deepcopy(model), mode=getattr(nncf.CompressWeightsMode, config["mode"]),
            group_size=config["group_size"], ratio=config["ratio"],
            dataset=nncf.Dataset(calibration),  # the torch backend traces the model with it
            sensitivity_metric=(nncf.SensitivityMetric.HESSIAN_INPUT_ACTIVATION if config["data_aware"]
                                else nncf.SensitivityMetric.WEIGHT_QUANTIZATION_ERROR),
            **({"awq": True, "scale_estimation": True} if config.get("awq") else {}))
        row["compress_seconds"] = round(time.perf_counter() - start, 1)
        bits, kinds = true_bits(compressed, layers)
        row["bits_per_weight"] = bits / weights
        row["layer_storage"] = {k: sum(1 for v in kinds.values() if v == k) for k in sorted(set(kinds.values()))}
        row["nncf"] = builtin.evaluate(compressed.to(device)).to_dict()
        del compressed
    except Exception as exc:
        row["nncf_error"] = "".join(traceback.format_exception_only(type(exc), exc)).strip()


def grid_index(config: dict) -> int:
    """Where ``config`` sits in the largest grid (the order rows are shown in)."""
    full = grid("awq")
    return full.index(config) if config in full else len(full)


def grid(size: str) -> list[dict]:
    modes = ("INT4_SYM", "INT4_ASYM")
    groups = (32, 64, 128)
    ratios = (1.0, 0.8, 0.6)
    data = (False, True)
    if size == "small":  # every group size and ratio, data-free only
        data = (False,)
    rows = [{"mode": m, "group_size": g, "ratio": r, "data_aware": d}
            for m, g, r, d in itertools.product(modes, groups, ratios, data)]
    if size in ("awq", "ratio1"):  # NNCF's strongest data-aware settings on top
        rows += [{"mode": m, "group_size": g, "ratio": r, "data_aware": True, "awq": True, "scale_estimation": True}
                 for m, g, r in itertools.product(modes, (32, 64), (1.0, 0.8))]
    if size == "ratio1":  # every layer in 4 bits (NNCF's default), the group sizes the model's widths allow
        rows = [r for r in rows if r["ratio"] == 1.0 and r["group_size"] in (32, 64)]
    return rows


def row_label(config: dict) -> str:
    return (f"{config['mode'].lower()} g{config['group_size']} ratio {config['ratio']}"
            f"{', data-aware (hessian_input_activation)' if config['data_aware'] else ', data-free (weight error)'}"
            f"{' + AWQ + scale estimation' if config.get('awq') else ''}")


def wanted(label: str, rows_like: str | None) -> bool:
    """Whether --rows TEXT (alternatives separated by |) selects the row ``label``."""
    return not rows_like or any(t in label for t in rows_like.split("|"))


def true_bits(model: torch.nn.Module, layers: list[str]) -> tuple[float, dict[str, str]]:
    """Storage bits of the given layers in an NNCF-compressed model (codes, scales, zero-points),
    and the storage dtype of each layer's weight."""
    buffers = dict(model.named_buffers())
    bits, kinds, seen = 0.0, {}, set()
    for name in layers:
        weight = model.get_submodule(name).weight
        if weight.data_ptr() in seen:  # a tied weight (lm_head = embedding) is stored once
            continue
        seen.add(weight.data_ptr())
        tag = name.replace(".", ":") + ":weight__"
        extra = sum(t.numel() * t.element_size() for n, t in buffers.items() if tag in n)
        bits += 8 * (weight.numel() * weight.element_size() + extra)
        kinds[name] = str(weight.dtype).replace("torch.", "")
    return bits, kinds


def pin_groups(problem: AllocationProblem, pins: list[str],
               layers: dict[str, list[str]] | None = None) -> tuple[AllocationProblem, dict[str, str]]:
    """``PATTERN=CAND`` items: groups whose name or one of whose layers (``layers``: group -> layer names)
    matches may take only CAND (e.g. lm_head=w8, as NNCF keeps it; a tied lm_head pins its embedding
    too). Returns the problem so restricted and the pinned groups."""
    import fnmatch
    from mixprec.candidates import parse_candidate
    allowed = problem.allowed.copy()
    pinned = {}
    for item in pins:
        pattern, _, cand = item.partition("=")
        cand = parse_candidate(cand).name
        try:  # w8 stands for the run's w8-minmax after weight_range="auto"
            cand = problem.candidates[problem.candidate_index(cand)]
        except MixprecError:
            raise SystemExit(f"--pin {item}: {cand} is not one of the run's candidates {list(problem.candidates)}")
        for i, group in enumerate(problem.groups):
            names = [group, *(layers or {}).get(group, [])]
            if any(fnmatch.fnmatch(n, pattern) or fnmatch.fnmatch(n, f"*{pattern}") for n in names):
                allowed[i] = [c == cand for c in problem.candidates]
                pinned[group] = cand
        if not any(v == cand for v in pinned.values()):
            raise SystemExit(f"--pin {item}: no group matches {pattern!r}")
    return replace(problem, allowed=allowed, pins={**problem.pins, **pinned}), pinned


def mixprec_analysis(model_name: str, device: str, rounding: str, weight_range: str = "mse",
                     extra: tuple[str, ...] = ()) -> Analysis:
    """The default metric's analysis of ``model_name`` (benchmarks/run.py's run directory; analysed here
    when missing), measured with ``rounding``; ``extra`` candidates beside the configuration's get a run
    directory of their own."""
    from run import CONFIGS, analysis_arguments, analyze_run
    config = CONFIGS[model_name]
    metric = config.metrics[0]
    run = RESULTS / "tmp" / f"run_{model_name}" / metric
    if rounding != "nearest":
        run = RESULTS / "tmp" / f"run_{model_name}_{rounding}" / metric
    if weight_range != "mse":  # as benchmarks/never_worse.py names it
        run = run.parent / f"{metric}_{weight_range}"
    if extra:
        run = run.parent / f"{run.name}_plus_{'_'.join(extra)}"
    if not (run / "sensitivity.json").is_file():
        start = time.perf_counter()
        analyze_run(run, analysis_arguments(model_name, ",".join([config.candidates, *extra]), metric, device, run,
                                            rounding=rounding, weight_range=weight_range))
        print(f"analysed {model_name} ({metric}, rounding {rounding}) in {time.perf_counter() - start:.0f} s", flush=True)
    return Analysis.load(run)


def _nncf_version(nncf_from: dict | None) -> str | None:
    """The installed NNCF's version, else the one whose results ``nncf_from`` reuses."""
    try:
        import nncf
        return nncf.__version__
    except ImportError:
        return (nncf_from or {}).get("environment", {}).get("nncf")


def compare(model_name: str, size: str, device: str = "cpu", pins: list[str] = (), rounding: str = "nearest",
            save=None, part: tuple[int, int] = (0, 1), done: list | None = None, weight_range: str = "mse",
            nncf_from: dict | None = None, guard_margin: float = 1.0, extra: tuple[str, ...] = (),
            search: str = "exact", rows_like: str | None = None) -> dict:
    """part (k, n): only the grid's rows i with i % n == k; done: rows of an earlier run cut short, kept
    (by label) and not measured again; nncf_from: an earlier result of the same model, grid and evaluation
    device whose NNCF side (compression, bits, metric, failures) is reused, so that only mixprec's side is
    measured again (NNCF need not be installed then). search: mixprec's default plan is ``solve(search=...)``
    (exact, or local: the measured local search); rows_like: only the grid's rows whose label contains it."""
    builtin = get_builtin(model_name)
    model = builtin.model().eval()
    analysis = mixprec_analysis(model_name, device, rounding, weight_range, extra)
    evaluator = analysis.evaluator(device=device, rounding=rounding)
    problem, pinned = pin_groups(analysis.problem(), list(pins), analysis.groups)
    analysis.pins.update(pinned)  # the default plan (solve) sees the same restriction
    layers = [layer for group in analysis.groups.values() for layer in group]
    tensors = {id(model.get_submodule(name).weight): model.get_submodule(name).weight
               for name in [*layers, *analysis.excluded]}  # a tied weight counts once, as mixprec's costs count it
    weights = sum(t.numel() for t in tensors.values())
    calibration = builtin.calibration(builtin.default_calibration_samples)
    reference = evaluator.reference()
    print(f"{model_name}: float {reference.name} {reference.value:.3f}; {len(layers)} layers, {weights:,} weights")
    def report(rows: list, partial: bool) -> dict:
        return {"model": model_name, "reference": reference.to_dict(), "weights": weights, "layers": len(layers),
                "mixprec_metric": problem.metric, "mixprec_candidates": list(problem.candidates), "mixprec_pins": pinned,
                "mixprec_rounding": rounding, "mixprec_weight_range": weight_range, "rows": rows, "partial": partial,
                "grid": size, "guard_margin": guard_margin, "search": search, "rows_like": rows_like,
                **({"nncf_from": nncf_from["command"]} if nncf_from else {}),
                "command": "python " + " ".join(sys.argv),
                "environment": {"mixprec": __version__, "nncf": _nncf_version(nncf_from), "torch": torch.__version__,
                            "device": device, "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None,
                            "python": platform.python_version(), "machine": platform.machine(),
                            "threads": torch.get_num_threads()}}

    earlier = {row["label"]: row for row in done or []}
    reused = {row["label"]: row for row in (nncf_from or {}).get("rows", [])}
    rows = []
    for index, config in enumerate(grid(size)):
        label = row_label(config)
        if index % part[1] != part[0] or not wanted(label, rows_like):
            continue
        if label in earlier:
            rows.append(earlier[label])
            continue
        row: dict = {"config": config, "label": label}
        if label in reused:  # NNCF's side as measured before: only mixprec's is measured again
            row.update({k: v for k, v in reused[label].items()
                        if k in ("compress_seconds", "bits_per_weight", "layer_storage", "nncf", "nncf_error")})
            row["nncf_reused"] = True
        else:
            nncf_side(row, model, config, calibration, layers, weights, builtin, device)
        if "nncf_error" in row:
            rows.append(row)
            print(f"{label}: NNCF failed: {row['nncf_error']}")
            continue
        same = next((r for r in rows if r.get("bits_per_weight") == row["bits_per_weight"] and "mixprec" in r), None)
        if same is not None and search != "exact":  # the same budget: the same plan, not a search resumed
            row.update({k: v for k, v in same.items() if k.startswith("mixprec") or k == "guard_seconds"})
            row["mixprec_same_budget_as"] = same["label"]
        else:
            try:
                solution = SOLVERS["exact"](problem, Goal({"bits_per_weight": row["bits_per_weight"]}))
                assignments = problem.assignments(solution.choice)
                row["mixprec_exact"] = evaluator.measure(assignments).to_dict()
                row["mixprec_exact_candidates"] = sorted(set(assignments.values()))
                start = time.perf_counter()
                plan = analysis.solve(budget={"bits_per_weight": row["bits_per_weight"]}, device=device,
                                      guard_margin=guard_margin, search=search)
                row["mixprec_search"] = search
                if search == "local":
                    trace = plan.metadata["trace"]
                    row["mixprec_search_evaluations"] = plan.metadata["evaluations"]
                    row["mixprec_search_accepted"] = sum(step["role"] == "accepted" for step in trace)
                    row["mixprec_search_stop"] = next((step.get("reason") for step in reversed(trace)
                                                       if step["role"] == "stop"), None)
                    row["mixprec_search_losses"] = [step["loss"] for step in trace if step["role"] in ("start", "accepted")]
                row["guard_seconds"] = round(time.perf_counter() - start, 1)
                row["mixprec"] = evaluator.measure(plan.assignments).to_dict()
                row["mixprec_bits_per_weight"] = plan.metadata["predicted_costs"]["bits_per_weight"]
                row["mixprec_candidates"] = sorted(set(plan.assignments.values()))
                row["mixprec_guard"] = plan.metadata.get("guard", {}).get("chosen", "mixed")
            except InfeasibleBudget as exc:
                row["mixprec_error"] = str(exc)
        better = (lambda a, b: a >= b) if reference.higher_is_better else (lambda a, b: a <= b)
        if "mixprec" in row:
            row["mixprec_at_least_as_good"] = bool(better(row["mixprec"]["value"], row["nncf"]["value"]))
            row["mixprec_exact_at_least_as_good"] = bool(better(row["mixprec_exact"]["value"], row["nncf"]["value"]))
        rows.append(row)
        print(f"{label:<34} {row['bits_per_weight']:.3f} b/w: NNCF {row['nncf']['value']:.3f}, mixprec default "
              f"{row.get('mixprec', {}).get('value', float('nan')):.3f} ({row.get('mixprec_guard')}), exact "
              f"{row.get('mixprec_exact', {}).get('value', float('nan')):.3f}", flush=True)
        if save is not None:
            save(report(rows, partial=True))
    return report(rows, partial=False)


def markdown(r: dict) -> str:
    ref = r["reference"]
    if "mixprec_rounding" not in r:  # written before the default (guarded) plan was measured
        return _markdown_exact_only(r)
    lines = [f"## {r['model']}: NNCF `compress_weights` against mixprec at the same bits per weight", "",
             f"Float {ref['name']} {ref['value']:.3f}. Bits per weight over the {r['layers']} quantized layers "
             f"({r['weights']:,} weights), read from NNCF's compressed tensors (codes, scales, zero-points, "
             f"backup layers). mixprec: {r['mixprec_metric']} sensitivity, candidates "
             f"{', '.join(r['mixprec_candidates'])}"
             f"{'; pinned: ' + ', '.join(f'{g}={c}' for g, c in r['mixprec_pins'].items()) if r.get('mixprec_pins') else ''}"
             f"; weights rounded by {r.get('mixprec_rounding', 'nearest')} (measurement, guard and the applied plans)."
             + (" Default = the plan `solve --search local` returns (the measured local search from the exact and "
                "the best uniform plans, deciding by the NLL of the calibration text within its time budget of 1x the "
                "analysis, then guarded against the uniform plans within the budget)"
                if r.get("search") == "local" else
                " Default = the plan `solve` returns (the exact plan, guarded against the uniform plans within the "
                "budget on the calibration data)")
             + "; exact = the exact plan alone. Verdict: the default plan."
             + (f" Only the grid's rows whose label holds {r['rows_like']!r} were run." if r.get("rows_like") else "")
             + (f" Note: {r['note']}." if r.get("note") else ""), "",
             f"| NNCF configuration | bits/weight | NNCF {ref['name']} | mixprec default {ref['name']} | guard chose "
             f"| mixprec exact {ref['name']} | mixprec bits/weight | default at least as good |",
             "|---|---|---|---|---|---|---|---|"]
    wins = total = exact_wins = 0
    for row in r["rows"]:
        if "nncf_error" in row:
            lines.append(f"| {row['label']} | | failed: `{' '.join(row['nncf_error'].split())[:160]}` | | | | | |")
            continue
        m = row.get("mixprec")
        total += 1
        wins += bool(row.get("mixprec_at_least_as_good"))
        exact_wins += bool(row.get("mixprec_exact_at_least_as_good"))
        exact = row.get("mixprec_exact") or {}
        lines.append(f"| {row['label']} | {row['bits_per_weight']:.3f} | {row['nncf']['value']:.3f} | "
                     f"{m['value']:.3f} | {row.get('mixprec_guard', '')} | {exact.get('value', float('nan')):.3f} | "
                     f"{row['mixprec_bits_per_weight']:.3f} | "
                     f"{'yes' if row.get('mixprec_at_least_as_good') else 'no'} |" if m else
                     f"| {row['label']} | {row['bits_per_weight']:.3f} | {row['nncf']['value']:.3f} | "
                     f"{row.get('mixprec_error', '')} | | | | |")
    env = r["environment"]
    lines += ["", f"mixprec's default plan at least as good in {wins} of {total} configurations (the exact plan "
              f"alone: {exact_wins}){' (partial: the run was cut short)' if r.get('partial') else ''}. "
              f"`{r['command']}` — NNCF "
              f"{env['nncf']}, torch {env['torch']}, {env['threads']} threads, evaluations on "
              f"{env.get('device', 'cpu')}{' (' + env['gpu'] + ')' if env.get('gpu') else ''}, mixprec {env['mixprec']}."
              + (f" The guard's margin: {r['guard_margin']:g} standard error(s) of the paired difference."
                 if "guard_margin" in r else "")
              + (f" NNCF's columns are reused from `{r['nncf_from']}` (same model, grid and evaluation; NNCF is "
                 "deterministic here), only mixprec's side was measured again." if r.get("nncf_from") else ""), ""]
    return "\n".join(lines)


def _markdown_exact_only(r: dict) -> str:
    """The table of a result file that measured the exact plan only."""
    ref = r["reference"]
    lines = [f"## {r['model']}: NNCF `compress_weights` against mixprec's exact plan at the same bits per weight", "",
             f"Float {ref['name']} {ref['value']:.3f}; {r['layers']} layers ({r['weights']:,} weights). mixprec: the "
             f"exact plan alone (unguarded, nearest rounding), {r['mixprec_metric']} sensitivity"
             f"{'; pinned: ' + ', '.join(f'{g}={c}' for g, c in r['mixprec_pins'].items()) if r.get('mixprec_pins') else ''}"
             ". Measured before embeddings became groups.", "",
             f"| NNCF configuration | bits/weight | NNCF {ref['name']} | mixprec {ref['name']} | mixprec bits/weight "
             "| mixprec at least as good |", "|---|---|---|---|---|---|"]
    wins = total = 0
    for row in r["rows"]:
        m = row.get("mixprec")
        if "nncf_error" in row or not m:
            continue  # NNCF failures are listed in the result file
        total += 1
        wins += bool(row.get("mixprec_at_least_as_good"))
        lines.append(f"| {row['label']} | {row['bits_per_weight']:.3f} | {row['nncf']['value']:.3f} | {m['value']:.3f} | "
                     f"{row['mixprec_bits_per_weight']:.3f} | {'yes' if row.get('mixprec_at_least_as_good') else 'no'} |")
    failed = [row for row in r["rows"] if "nncf_error" in row]
    if failed:
        lines += ["", f"NNCF failed on {len(failed)} configuration(s), e.g. {failed[0]['label']}: "
                  f"`{failed[0]['nncf_error'].splitlines()[0][:140]}`."]
    env = r["environment"]
    lines += ["", f"mixprec's exact plan at least as good in {wins} of {total} configurations. `{r['command']}` — "
              f"NNCF {env['nncf']}, torch {env['torch']}, evaluations on {env.get('device', 'cpu')}"
              f"{' (' + env['gpu'] + ')' if env.get('gpu') else ''}.", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", choices=("minilm", "smollm2"))
    parser.add_argument("--grid", choices=("full", "small", "awq", "ratio1"), default="full",
                        help="full: 36 NNCF settings; small: data-free only; awq: full plus AWQ + scale estimation; "
                        "ratio1: ratio 1.0 only, group sizes 32 and 64, with and without AWQ")
    parser.add_argument("--rounding", choices=("nearest", "gptq"), default="nearest",
                        help="mixprec's rounding: measurement, guard and applied plans (default nearest)")
    parser.add_argument("--device", default="cpu", help="device for the evaluations (NNCF compresses on the CPU)")
    parser.add_argument("--pin", action="append", default=[], metavar="PATTERN=CAND",
                        help="restrict mixprec's matching groups to one candidate, e.g. lm_head=w8")
    parser.add_argument("--out-suffix", default="", help="suffix for the result files, e.g. _pinned")
    parser.add_argument("--weight-range", choices=("mse", "minmax", "auto"), default="mse",
                        help="mixprec's weight range method (auto: chosen per candidate on the calibration data)")
    parser.add_argument("--part", default="0/1", metavar="K/N",
                        help="only the grid's rows i with i %% N == K (run the N parts at once, one per GPU; each "
                        "writes <name>_partK); rows a cut-short run saved are kept and not measured again")
    parser.add_argument("--nncf-from", metavar="FILE", help="reuse NNCF's side (compression, bits, metric) from this "
                        "earlier result of the same model and grid; only mixprec's side is measured")
    parser.add_argument("--guard-margin", type=float, default=1.0,
                        help="mixprec's guard margin in standard errors (default 1, as solve)")
    parser.add_argument("--add-candidates", default="", metavar="LIST",
                        help="candidates beside the model's configuration, e.g. w8-asym (NNCF keeps lm_head in int8 "
                        "asymmetric: --add-candidates w8-asym --pin lm_head=w8-asym compares like with like)")
    parser.add_argument("--search", choices=("exact", "local"), default="exact",
                        help="mixprec's default plan: solve's exact plan (guarded), or its measured local search")
    parser.add_argument("--rows", metavar="TEXT", help="only the grid's rows whose label contains TEXT, e.g. 'ratio 1.0'")
    parser.add_argument("--merge", type=int, metavar="N",
                        help="only merge the N part files (_part0 .. _partN-1) into one result, in grid order")
    args = parser.parse_args()
    k, n = (int(x) for x in args.part.split("/"))
    if not 0 <= k < n:
        raise SystemExit(f"--part K/N needs 0 <= K < N, got {args.part}")
    if not args.nncf_from and not args.merge and _nncf_version(None) is None:
        print("skipped: nncf is not installed (pip install -e \".[bench]\")")
        return 0
    name = f"nncf_{args.model}{args.out_suffix}"
    if args.merge:
        parts = [json.loads((RESULTS / f"{name}_part{i}.json").read_text()) for i in range(args.merge)]
        labels = [row["label"] for row in sorted((r for p in parts for r in p["rows"]),
                                                  key=lambda r: grid_index(r["config"]))]
        by_label = {r["label"]: r for p in parts for r in p["rows"]}
        merged = {**parts[0], "rows": [by_label[x] for x in labels],
                  "partial": any(p["partial"] for p in parts) or len(labels) < sum(
                      wanted(row_label(c), parts[0].get("rows_like")) for c in grid(parts[0]["grid"])),
                  "command": " ; ".join(p["command"] for p in parts)}
        write_json_atomic(RESULTS / f"{name}.json", merged)
        (RESULTS / f"{name}.md").write_text(markdown(merged))
        print(markdown(merged))
        return 0
    if n > 1:
        name += f"_part{k}"
    previous = RESULTS / f"{name}.json"
    done = json.loads(previous.read_text())["rows"] if previous.is_file() and \
        json.loads(previous.read_text()).get("partial") else []

    def save(report: dict) -> None:
        write_json_atomic(RESULTS / f"{name}.json", report)
        (RESULTS / f"{name}.md").write_text(markdown(report))
    try:
        nncf_from = json.loads(Path(args.nncf_from).read_text()) if args.nncf_from else None
        if nncf_from and (nncf_from.get("model") != args.model or nncf_from.get("grid") != args.grid):
            raise SystemExit(f"--nncf-from {args.nncf_from} is {nncf_from.get('model')} on grid {nncf_from.get('grid')}, "
                             f"not {args.model} on {args.grid}")
        save(compare(args.model, args.grid, args.device, args.pin, args.rounding, save, (k, n), done, args.weight_range,
                     nncf_from, args.guard_margin, tuple(c for c in args.add_candidates.split(",") if c),
                     args.search, args.rows))
    except MissingDataError as exc:
        print(f"skipped {args.model}: {exc}")
        return 0
    print(f"wrote {RESULTS / f'{name}.json'} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
