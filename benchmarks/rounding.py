"""Rounding back-ends at uniform candidates: metric and wall time of nearest, gptq (plain, with act-order,
with static groups, with both), adaround and brecq, at identical costs (rounding never changes the grid).

    python benchmarks/rounding.py demo-cnn --candidates w2a8,w3a8,w4a8,w3g16a8

Writes benchmarks/results/rounding_<model>.json and prints a table. Vision models keep their
first and last layer at 8 bits, as in benchmarks/uniform.py. --threads sets torch's intra-op
threads (1 is much faster for small layers on a busy machine).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

from mixprec import __version__
from mixprec.apply import apply
from mixprec.builtin import get_builtin
from mixprec.costs import cost_tables
from mixprec.groups import discover_groups
from mixprec.plan import Plan, write_json_atomic
from uniform import VISION, first_last_pins

RESULTS = Path(__file__).parent / "results"
# each gptq variant says its act-order explicitly: "gptq" is the paper's column order (mixprec's default is act-order)
ROUNDINGS = {"nearest": ("nearest", {}), "gptq": ("gptq", {"act_order": False}),
             "gptq-act-order": ("gptq", {"act_order": True}),
             "gptq-static-groups": ("gptq", {"act_order": False, "static_groups": True}),
             "gptq-act-order-static-groups": ("gptq", {"act_order": True, "static_groups": True}),
             "adaround": ("adaround", {}), "brecq": ("brecq", {})}


def run(name: str, candidates: list[str], roundings: list[str], samples: int | None, device: str,
        limit: int | None = None) -> dict:
    builtin = get_builtin(name)
    model = builtin.model().to(device)
    calibration = builtin.calibration(samples or builtin.default_calibration_samples)
    base = discover_groups(model, builtin.example_input().to(device))
    float_metric = builtin.evaluate(model, limit=limit)
    rows = []
    for cand in candidates:
        pins = first_last_pins(base, cand) if name in VISION else {}
        groups = discover_groups(model, builtin.example_input().to(device), pins=pins) if pins else base
        plan = Plan.uniform(groups, cand)
        bytes_ = int(cost_tables(groups, sorted({cand, *pins.values()}), model).total("bytes", plan.assignments))
        for label in roundings:
            method, options = ROUNDINGS[label]
            start = time.perf_counter()
            quantized = apply(model, plan, calibration, rounding=method, rounding_options=options, progress=False)
            apply_s = time.perf_counter() - start
            result = builtin.evaluate(quantized, limit=limit)
            rows.append({"candidate": cand, "rounding": label, "metric": result.value, "bytes": bytes_,
                         "pinned_8bit": sorted(pins), "apply_seconds": apply_s})
            print(f"{name:<10} {cand:<9} {label:<15} {result.name} {result.value:7.2f}  {bytes_:>9,} B  "
                  f"{apply_s:6.1f} s", flush=True)
    return {"model": name, "float": {"name": float_metric.name, "value": float_metric.value}, "rows": rows,
            "calibration_samples": samples or builtin.default_calibration_samples, "eval_limit": limit,
            "environment": {"mixprec": __version__, "torch": torch.__version__, "device": device,
                            "cpu_count": os.cpu_count(),
                            "threads": torch.get_num_threads(), "machine": platform.machine()}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--candidates", default="w2a8,w3a8,w4a8")
    parser.add_argument("--roundings", default=",".join(ROUNDINGS), help=f"any of {', '.join(ROUNDINGS)}")
    parser.add_argument("--samples", type=int, default=None, help="calibration samples (default: the model's)")
    parser.add_argument("--limit", type=int, default=None, help="evaluation samples (default: all)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out-suffix", default="", help="suffix for the result file, e.g. _brecq")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name in args.models:
        result = run(name, args.candidates.split(","), args.roundings.split(","), args.samples, args.device,
                     args.limit)
        result["command"] = "python " + " ".join(sys.argv)
        out = RESULTS / f"rounding_{name}{args.out_suffix}.json"
        write_json_atomic(out, result)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
