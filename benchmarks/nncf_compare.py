"""NNCF's weight compression side by side with mixprec at the same true bits per weight.

    pip install nncf==3.4.0      # the benchmark extra: pip install -e ".[bench]"
    python benchmarks/nncf_compare.py minilm [--grid full|small]

For each NNCF configuration (`nncf.compress_weights`, torch backend: INT4 sym/asym, group sizes
32/64/128, ratio 1.0/0.8/0.6, data-free and data-aware) the script compresses the model, measures
it with the model's own evaluation, and computes its true average bits per weight over the layers
both tools quantize (the Linear layers): the packed codes, every scale and zero-point, and the
backup-precision layers, read from the compressed model's own tensors. Then mixprec's exact plan
(default metric, from the analysis of `benchmarks/run.py MODEL`) at that same bits-per-weight
budget is applied and measured on the same data. NNCF failures are recorded verbatim.
Writes benchmarks/results/nncf_<model>.json and .md.
"""
from __future__ import annotations

import argparse
import copy
import itertools
import platform
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path

import torch

from mixprec import Analysis, __version__
from mixprec.builtin import get_builtin
from mixprec.errors import MissingDataError
from mixprec.plan import write_json_atomic
from mixprec.solvers import SOLVERS, AllocationProblem, Goal
from mixprec.solvers.exact import InfeasibleBudget

RESULTS = Path(__file__).parent / "results"


def grid(size: str) -> list[dict]:
    modes = ("INT4_SYM", "INT4_ASYM")
    groups = (32, 64, 128)
    ratios = (1.0, 0.8, 0.6)
    data = (False, True)
    if size == "small":  # every group size and ratio, data-free only
        data = (False,)
    return [{"mode": m, "group_size": g, "ratio": r, "data_aware": d}
            for m, g, r, d in itertools.product(modes, groups, ratios, data)]


def true_bits(model: torch.nn.Module, layers: list[str]) -> tuple[float, dict[str, str]]:
    """Storage bits of the given layers in an NNCF-compressed model (codes, scales, zero-points),
    and the storage dtype of each layer's weight."""
    buffers = dict(model.named_buffers())
    bits, kinds = 0.0, {}
    for name in layers:
        weight = model.get_submodule(name).weight
        tag = name.replace(".", ":") + ":weight__"
        extra = sum(t.numel() * t.element_size() for n, t in buffers.items() if tag in n)
        bits += 8 * (weight.numel() * weight.element_size() + extra)
        kinds[name] = str(weight.dtype).replace("torch.", "")
    return bits, kinds


def pin_groups(problem: AllocationProblem, pins: list[str]) -> tuple[AllocationProblem, dict[str, str]]:
    """``PATTERN=CAND`` items: matching groups may take only CAND (e.g. lm_head=w8, as NNCF keeps it).
    Returns the problem so restricted and the pinned groups."""
    import fnmatch
    from mixprec.candidates import parse_candidate
    allowed = problem.allowed.copy()
    pinned = {}
    for item in pins:
        pattern, _, cand = item.partition("=")
        cand = parse_candidate(cand).name
        if cand not in problem.candidates:
            raise SystemExit(f"--pin {item}: {cand} is not one of the run's candidates {list(problem.candidates)}")
        for i, group in enumerate(problem.groups):
            if fnmatch.fnmatch(group, pattern) or fnmatch.fnmatch(group, f"*{pattern}"):
                allowed[i] = [c == cand for c in problem.candidates]
                pinned[group] = cand
        if not any(v == cand for v in pinned.values()):
            raise SystemExit(f"--pin {item}: no group matches {pattern!r}")
    return replace(problem, allowed=allowed, pins={**problem.pins, **pinned}), pinned


def compare(model_name: str, size: str, device: str = "cpu", pins: list[str] = ()) -> dict:
    import nncf
    from run import CONFIGS
    builtin = get_builtin(model_name)
    model = builtin.model().eval()
    analysis = Analysis.load(RESULTS / "tmp" / f"run_{model_name}" / CONFIGS[model_name].metrics[0])
    evaluator = analysis.evaluator(device=device)
    problem, pinned = pin_groups(analysis.problem(), list(pins))
    layers = [layer for group in analysis.groups.values() for layer in group]
    weights = sum(model.get_submodule(name).weight.numel() for name in layers)
    weights += sum(model.get_submodule(name).weight.numel() for name in analysis.excluded)
    calibration = builtin.calibration(builtin.default_calibration_samples)
    reference = evaluator.reference()
    print(f"{model_name}: float {reference.name} {reference.value:.3f}; {len(layers)} layers, {weights:,} weights")
    rows = []
    for config in grid(size):
        label = (f"{config['mode'].lower()} g{config['group_size']} ratio {config['ratio']}"
                 f"{', data-aware (hessian_input_activation)' if config['data_aware'] else ', data-free (weight error)'}")
        row: dict = {"config": config, "label": label}
        start = time.perf_counter()
        try:
            compressed = nncf.compress_weights(
                copy.deepcopy(model), mode=getattr(nncf.CompressWeightsMode, config["mode"]),
                group_size=config["group_size"], ratio=config["ratio"],
                dataset=nncf.Dataset(calibration),  # the torch backend traces the model with it
                sensitivity_metric=(nncf.SensitivityMetric.HESSIAN_INPUT_ACTIVATION if config["data_aware"]
                                    else nncf.SensitivityMetric.WEIGHT_QUANTIZATION_ERROR))
            row["compress_seconds"] = round(time.perf_counter() - start, 1)
            bits, kinds = true_bits(compressed, layers)
            row["bits_per_weight"] = bits / weights
            row["layer_storage"] = {k: sum(1 for v in kinds.values() if v == k) for k in sorted(set(kinds.values()))}
            result = builtin.evaluate(compressed.to(device))
            row["nncf"] = result.to_dict()
            del compressed
        except Exception as exc:  # recorded verbatim: the comparison goes on
            row["nncf_error"] = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            rows.append(row)
            print(f"{label}: NNCF failed: {row['nncf_error']}")
            continue
        try:
            solution = SOLVERS["exact"](problem, Goal({"bits_per_weight": row["bits_per_weight"]}))
            assignments = problem.assignments(solution.choice)
            measured = evaluator.measure(assignments)
            row["mixprec"] = measured.to_dict()
            row["mixprec_bits_per_weight"] = solution.costs["bits_per_weight"]
            row["mixprec_candidates"] = sorted(set(assignments.values()))
        except InfeasibleBudget as exc:
            row["mixprec_error"] = str(exc)
        better = (lambda a, b: a >= b) if reference.higher_is_better else (lambda a, b: a <= b)
        if "mixprec" in row:
            row["mixprec_at_least_as_good"] = bool(better(row["mixprec"]["value"], row["nncf"]["value"]))
        rows.append(row)
        print(f"{label:<34} {row['bits_per_weight']:.3f} b/w: NNCF {row['nncf']['value']:.3f}, mixprec "
              f"{row.get('mixprec', {}).get('value', float('nan')):.3f}", flush=True)
    return {"model": model_name, "reference": reference.to_dict(), "weights": weights, "layers": len(layers),
            "mixprec_metric": problem.metric, "mixprec_candidates": list(problem.candidates), "mixprec_pins": pinned,
            "rows": rows,
            "command": "python " + " ".join(sys.argv),
            "environment": {"mixprec": __version__, "nncf": nncf.__version__, "torch": torch.__version__,
                            "device": device, "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None,
                            "python": platform.python_version(), "machine": platform.machine(),
                            "threads": torch.get_num_threads()}}


def markdown(r: dict) -> str:
    ref = r["reference"]
    lines = [f"## {r['model']}: NNCF `compress_weights` against mixprec at the same bits per weight", "",
             f"Float {ref['name']} {ref['value']:.3f}. Bits per weight over the {r['layers']} Linear layers "
             f"({r['weights']:,} weights), read from NNCF's compressed tensors (codes, scales, zero-points, "
             f"backup layers). mixprec: exact plan, {r['mixprec_metric']} sensitivity, candidates "
             f"{', '.join(r['mixprec_candidates'])}"
             f"{'; pinned: ' + ', '.join(f'{g}={c}' for g, c in r['mixprec_pins'].items()) if r.get('mixprec_pins') else ''}"
             ". NNCF also compresses the embeddings to 8 bits; mixprec leaves "
             "them in float, so in total bytes NNCF's models are smaller.", "",
             f"| NNCF configuration | bits/weight | NNCF {ref['name']} | mixprec {ref['name']} | mixprec bits/weight "
             "| mixprec at least as good |", "|---|---|---|---|---|---|"]
    wins = total = 0
    for row in r["rows"]:
        if "nncf_error" in row:
            lines.append(f"| {row['label']} | | failed: `{row['nncf_error'][:160]}` | | | |")
            continue
        m = row.get("mixprec")
        total += 1
        wins += bool(row.get("mixprec_at_least_as_good"))
        lines.append(f"| {row['label']} | {row['bits_per_weight']:.3f} | {row['nncf']['value']:.3f} | "
                     f"{m['value']:.3f} | {row['mixprec_bits_per_weight']:.3f} | "
                     f"{'yes' if row.get('mixprec_at_least_as_good') else 'no'} |" if m else
                     f"| {row['label']} | {row['bits_per_weight']:.3f} | {row['nncf']['value']:.3f} | "
                     f"{row.get('mixprec_error', '')} | | |")
    env = r["environment"]
    lines += ["", f"mixprec at least as good in {wins} of {total} configurations. `{r['command']}` — NNCF "
              f"{env['nncf']}, torch {env['torch']}, {env['threads']} threads, evaluations on "
              f"{env.get('device', 'cpu')}{' (' + env['gpu'] + ')' if env.get('gpu') else ''}, mixprec {env['mixprec']}.", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", choices=("minilm", "smollm2"))
    parser.add_argument("--grid", choices=("full", "small"), default="full")
    parser.add_argument("--device", default="cpu", help="device for the evaluations (NNCF compresses on the CPU)")
    parser.add_argument("--pin", action="append", default=[], metavar="PATTERN=CAND",
                        help="restrict mixprec's matching groups to one candidate, e.g. lm_head=w8")
    parser.add_argument("--out-suffix", default="", help="suffix for the result files, e.g. _pinned")
    args = parser.parse_args()
    try:
        import nncf  # noqa: F401
    except ImportError:
        print("skipped: nncf is not installed (pip install -e \".[bench]\")")
        return 0
    try:
        report = compare(args.model, args.grid, args.device, args.pin)
    except MissingDataError as exc:
        print(f"skipped {args.model}: {exc}")
        return 0
    name = f"nncf_{args.model}{args.out_suffix}"
    write_json_atomic(RESULTS / f"{name}.json", report)
    (RESULTS / f"{name}.md").write_text(markdown(report))
    print(f"wrote {RESULTS / f'{name}.json'} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
