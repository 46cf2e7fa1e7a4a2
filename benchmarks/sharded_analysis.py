"""Sharded analysis on several GPUs (or CPU processes) of one host: the merged table against the
one-process table, and the speed-up of the analyze phase.

    python benchmarks/sharded_analysis.py --shape 1b --nproc 2 --device cuda
    python benchmarks/sharded_analysis.py --shape tiny --nproc 2 --device cpu      # gloo, a smoke test

Runs benchmarks/llm_scale.py (random-init Llama shapes: only times and equality mean anything) once
in one process and once under `torchrun --nproc_per_node N` (NCCL on CUDA, gloo on CPU), both stopping
after solve, and compares the two sensitivity tables entry by entry. Writes
benchmarks/results/sharded_analysis_<shape>_<N>.json.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE.parent / "src"))

from mixprec.plan import write_json_atomic  # noqa: E402
from mixprec.sensitivity.table import SensitivityTable  # noqa: E402


def run(command: list[str]) -> None:
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def environment(device: str, nproc: int) -> dict:
    """The machine in words: the accelerators, the backend and the NCCL setting that matters here."""
    import os
    import torch
    if device.startswith("cuda") and torch.cuda.is_available():
        names = sorted({torch.cuda.get_device_name(i) for i in range(min(nproc, torch.cuda.device_count()))})
        machine = (f"{nproc} x {' + '.join(names)} (one host), NCCL, "
                   f"NCCL_NVLS_ENABLE={os.environ.get('NCCL_NVLS_ENABLE', 'unset')}")
    else:
        machine = f"{nproc} CPU processes, gloo"
    return {"machine": machine, "torch": torch.__version__}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="tiny")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--metric", default="kl")
    parser.add_argument("--candidates", default="w4g128,w8,fp16")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mixprec_sharded_"))
    common = ["--shape", args.shape, "--device", args.device, "--samples", str(args.samples), "--length",
              str(args.length), "--metric", args.metric, "--candidates", args.candidates, "--no-quantize"]
    script = str(HERE / "llm_scale.py")
    # both with a run directory, as `mixprec analyze --out RUN` has: the weights are hashed in each
    run([sys.executable, script, *common, "--run-dir", "--save-table", str(work / "one"), "--out",
         str(work / "one.json")])
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(args.nproc), script,
         *common, "--save-table", str(work / "many"), "--out", str(work / "many.json")])
    one, many = (json.loads((work / f"{k}.json").read_text()) for k in ("one", "many"))
    a, b = (SensitivityTable.load(work / k) for k in ("one", "many"))
    keys = [(g, c) for g in a.groups for c in a.candidates]
    diffs = []
    for key in keys:
        x, y = a[key], b[key]
        if math.isinf(x) or math.isinf(y):
            diffs.append(0.0 if x == y else math.inf)
        else:
            diffs.append(abs(x - y) / max(abs(x), abs(y), 1e-12))
    t1, tn = one["phases"]["analyze"]["seconds"], many["phases"]["analyze"]["seconds"]
    result = {
        "shape": args.shape, "processes": args.nproc, "device": args.device,
        "groups": len(a.groups), "candidates": list(a.candidates), "entries": len(keys),
        "same_groups_and_candidates": list(a.groups) == list(b.groups) and list(a.candidates) == list(b.candidates),
        "max_relative_difference": max(diffs), "entries_differing_over_1e-6": sum(d > 1e-6 for d in diffs),
        "analyze_seconds": {"1": t1, str(args.nproc): tn}, "speedup": round(t1 / tn, 3),
        "one_process": one, "sharded": many,
        "command": " ".join(["python", "benchmarks/sharded_analysis.py", *sys.argv[1:]]),
        "environment": environment(args.device, args.nproc),
    }
    out = RESULTS / f"sharded_analysis_{args.shape}_{args.nproc}.json"
    write_json_atomic(out, result)
    print(f"speed-up {result['speedup']}x on {args.nproc} processes; max relative difference of the tables "
          f"{result['max_relative_difference']:.3g} ({result['entries_differing_over_1e-6']} of {len(keys)} entries "
          f"differ by more than 1e-6); wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
