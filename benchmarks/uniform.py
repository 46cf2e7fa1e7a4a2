"""FP32 and uniform candidates on the built-in real models: metric, bytes, BOPs, bits per weight.

    python benchmarks/uniform.py resnet20 resnet56 efficientnet-lite0 minilm smollm2

Writes benchmarks/results/uniform_<model>.json and .md. Vision models keep their first and last
layer at 8 bits (the usual practice, and the reference setting of the benchmarks issue); pass
--no-pin-first-last to quantize them too.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from mixprec import __version__
from mixprec.apply import apply
from mixprec.builtin import get_builtin
from mixprec.candidates import parse_candidate
from mixprec.costs import COST_KINDS, cost_tables, format_bytes, format_count
from mixprec.errors import MissingDataError, SpecError
from mixprec.groups import discover_groups
from mixprec.plan import Plan, write_json_atomic

RESULTS = Path(__file__).parent / "results"
VISION = {"resnet20", "resnet56", "efficientnet-lite0"}
DEFAULT_CANDIDATES = {"minilm": "fp32,w8a8,w4a8,w4,w4g128,w3g128,w2g128",
                      "smollm2": "fp32,w8a8,w4a8,w4,w4g128"}


def first_last_pins(groups, candidate: str) -> dict[str, str]:
    cand = parse_candidate(candidate)
    if cand.weight is None or cand.weight_bits >= 8:
        return {}
    pin = "w8" if cand.weight_only else "w8a8"
    return {groups.groups[0].layer_names[0]: pin, groups.groups[-1].layer_names[0]: pin}


def run(name: str, candidates: list[str], pin_first_last: bool, limit: int | None, samples: int | None) -> dict:
    start = time.perf_counter()
    builtin = get_builtin(name)
    model = builtin.model()
    load_s = time.perf_counter() - start
    calibration = builtin.calibration(samples or builtin.default_calibration_samples)
    base = discover_groups(model, builtin.example_input())
    rows = []
    for cand in candidates:
        pins = first_last_pins(base, cand) if pin_first_last and name in VISION else {}
        groups = discover_groups(model, builtin.example_input(), pins=pins) if pins else base
        costs = cost_tables(groups, sorted({cand, *pins.values()}), model)
        plan = Plan.uniform(groups, cand)
        t0 = time.perf_counter()
        quantized = apply(model, plan, calibration, progress=False)
        t1 = time.perf_counter()
        result = builtin.evaluate(quantized, limit=limit)
        t2 = time.perf_counter()
        row = {"candidate": cand, "metric": result.value, "metric_name": result.name,
               "higher_is_better": result.higher_is_better, "details": result.details, "pins": pins,
               **{k: costs.total(k, plan.assignments) for k in COST_KINDS},
               "apply_seconds": round(t1 - t0, 2), "eval_seconds": round(t2 - t1, 2)}
        rows.append(row)
        print(f"{name:<18} {cand:<8} {result.name} {result.value:8.3f}  {format_bytes(row['bytes']):>10}  "
              f"{format_count(row['bops']):>9} BOPs  {row['bits_per_weight']:6.3f} b/w  "
              f"(apply {row['apply_seconds']} s, eval {row['eval_seconds']} s)", flush=True)
    return {"model": name, "description": builtin.description, "calibration": builtin.calibration_source,
            "calibration_samples": samples or builtin.default_calibration_samples,
            "evaluation": builtin.evaluation_source, "eval_limit": limit, "groups": len(base),
            "rows": rows, "load_seconds": round(load_s, 2), "wall_seconds": round(time.perf_counter() - start, 1),
            "command": "python " + " ".join(sys.argv),
            "environment": {"mixprec": __version__, "torch": torch.__version__, "python": platform.python_version(),
                            "machine": platform.machine(), "processor": platform.processor(),
                            "threads": torch.get_num_threads()}}


def markdown(report: dict) -> str:
    metric = report["rows"][0]["metric_name"]
    lines = [f"# {report['model']}: uniform candidates", "",
             f"{report['description']}. Calibration: {report['calibration']} ({report['calibration_samples']} samples). "
             f"Evaluation: {report['evaluation']}.", "",
             f"| candidate | {metric} | bytes | BOPs | bits/weight | pinned |", "|---|---|---|---|---|---|"]
    for r in report["rows"]:
        pins = ", ".join(f"{k}={v}" for k, v in r["pins"].items()) or "-"
        lines.append(f"| {r['candidate']} | {r['metric']:.2f} | {format_bytes(r['bytes'])} | {format_count(r['bops'])} "
                     f"| {r['bits_per_weight']:.3f} | {pins} |")
    env = report["environment"]
    lines += ["", f"Command: `{report['command']}`; wall time {report['wall_seconds']} s; torch {env['torch']}, "
              f"{env['machine']}, {env['threads']} threads."]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--candidates", help="comma-separated (default: fp32,w8a8,w4a8,w4; per-model for text)")
    parser.add_argument("--no-pin-first-last", action="store_true")
    parser.add_argument("--limit", type=int, help="evaluate on the first N samples only (quick check)")
    parser.add_argument("--calibration-samples", type=int)
    args = parser.parse_args()
    for name in args.models:
        cands = (args.candidates or DEFAULT_CANDIDATES.get(name, "fp32,w8a8,w4a8,w4")).split(",")
        try:
            report = run(name, cands, not args.no_pin_first_last, args.limit, args.calibration_samples)
        except (MissingDataError, SpecError) as exc:
            print(f"skipping {name}: {exc}")
            continue
        suffix = "" if args.limit is None else f"_limit{args.limit}"
        write_json_atomic(RESULTS / f"uniform_{name}{suffix}.json", report)
        (RESULTS / f"uniform_{name}{suffix}.md").write_text(markdown(report))
        print(f"wrote {RESULTS / f'uniform_{name}{suffix}.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
