"""FP32 reference accuracy of the vision built-ins on their full evaluation sets.

These are the baselines every quantized result is compared with, so they must reproduce the
figures in ../shared/data/README.md. Usage:

    python benchmarks/fp32_vision.py [resnet20 resnet56 efficientnet-lite0]

Prints a table and writes benchmarks/results/fp32_vision.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from mixprec.builtin import cifar_resnet, get_builtin
from mixprec.errors import MixprecError

NAMES = ("resnet20", "resnet56", "efficientnet-lite0")
RESULTS = Path(__file__).resolve().parent / "results" / "fp32_vision.json"


def measure(name: str) -> dict:
    start = time.perf_counter()
    b = get_builtin(name)
    model = b.model()
    b.evaluate(model, limit=1)  # loads (or decodes and caches) the data: eval_s is inference only
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    result = b.evaluate(model)
    row = {"metric": result.name, "value": result.value, **result.details,
           "evaluation_source": b.evaluation_source, "load_s": round(load_s, 2),
           "eval_s": round(time.perf_counter() - start, 2)}
    if name in cifar_resnet.WEIGHTS:
        # README figures are on all 10,000 test images (evaluation split + calibration pool)
        start = time.perf_counter()
        full = cifar_resnet.evaluate_all_test(model)
        row.update(all_test_top1=full.value, all_test_samples=full.details["samples"],
                   all_test_eval_s=round(time.perf_counter() - start, 2))
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"built-in models to evaluate (default: {' '.join(NAMES)})")
    args = parser.parse_args(argv)
    args.names = args.names or list(NAMES)
    unknown = sorted(set(args.names) - set(NAMES))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(NAMES)}")
    load_before = os.getloadavg()[0]  # other processes inflate the wall times; record it
    rows = {}
    for name in args.names:
        try:
            rows[name] = measure(name)
        except MixprecError as exc:
            print(f"{name}: skipped: {exc}")
    print(f"{'model':<20}{'split':<26}{'samples':>8}{'top1 %':>9}{'top5 %':>9}{'eval s':>9}")
    for name, r in rows.items():
        top5 = f"{r['top5']:9.2f}" if "top5" in r else f"{'':>9}"
        print(f"{name:<20}{'evaluation':<26}{r['samples']:>8}{r['value']:9.2f}{top5}{r['eval_s']:9.1f}")
        if "all_test_top1" in r:
            print(f"{'':<20}{'all test (eval + calib)':<26}{r['all_test_samples']:>8}"
                  f"{r['all_test_top1']:9.2f}{'':>9}{r['all_test_eval_s']:9.1f}")
    report = {"results": rows, "torch": torch.__version__, "threads": torch.get_num_threads(),
              "machine": {"processor": platform.processor() or platform.machine(),
                          "cpu_count": os.cpu_count(), "platform": platform.platform(),
                          "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)]},
              "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0 if rows else 1


if __name__ == "__main__":
    raise SystemExit(main())
