"""Time from a model to its Pareto front on this machine: sensitivity analysis (default metric)
plus solving a front of exact plans (not evaluated), in a fresh run directory.

    python benchmarks/front_speed.py efficientnet-lite0 --points 30

Writes benchmarks/results/front_speed_<model>.json (the target for EfficientNet-Lite0: under
10 minutes on 2 CPU cores).
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

from mixprec import Analysis, __version__
from mixprec.builtin import get_builtin
from mixprec.plan import write_json_atomic
from run import CONFIGS, analysis_arguments, analyze_run

RESULTS = Path(__file__).parent / "results"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", choices=sorted(CONFIGS))
    parser.add_argument("--points", type=int, default=30)
    parser.add_argument("--calibration-samples", type=int, default=None)
    args = parser.parse_args()
    config = CONFIGS[args.model]
    samples = args.calibration_samples or get_builtin(args.model).default_calibration_samples
    work = RESULTS / "tmp" / f"front_speed_{args.model}"
    shutil.rmtree(work, ignore_errors=True)
    start = time.perf_counter()
    run = work / "run"
    analyze_run(run, analysis_arguments(args.model, config.candidates, config.metrics[0], "cpu", run, samples))
    analyzed = time.perf_counter()
    # as `mixprec pareto RUN --out FRONT` does: reopen the run, solve the front, write pareto.json and the report
    analysis = Analysis.load(run)
    front = analysis.pareto(config.kinds[0], args.points)
    front.save(work / "front")
    analysis.report(front, work / "front")
    done = time.perf_counter()
    report = {"model": args.model, "metric": config.metrics[0], "candidates": config.candidates,
              "calibration_samples": samples, "points": args.points, "kind": config.kinds[0],
              "analysis_seconds": round(analyzed - start, 1), "front_seconds": round(done - analyzed, 1),
              "total_seconds": round(done - start, 1), "command": "python " + " ".join(sys.argv),
              "environment": {"mixprec": __version__, "torch": torch.__version__, "cpu_count": os.cpu_count(),
                              "threads": torch.get_num_threads(), "machine": platform.machine(),
                              "load_average_at_end": round(os.getloadavg()[0], 2)}}
    write_json_atomic(RESULTS / f"front_speed_{args.model}.json", report)
    print(f"{args.model}: analysis {report['analysis_seconds']} s + front of {args.points} points "
          f"{report['front_seconds']} s = {report['total_seconds']} s ({samples} calibration samples)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
