"""Sensitivity measurement cost: the shared float prefix (torch.fx where the model traces, else the
stack of blocks; --prefix picks) against the naive loop (one full forward per group x candidate x
batch), in one run, on the same data.

    python benchmarks/sensitivity_speed.py efficientnet-lite0 resnet56
    python benchmarks/sensitivity_speed.py minilm smollm2 --samples 8 --out sensitivity_speed_blocks.json

Prints and writes benchmarks/results/sensitivity_speed.json: forward-equivalents (MACs executed
/ MACs of one forward, per batch), wall time, and the max relative difference of the two tables.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mixprec import __version__
from mixprec.batches import to_device
from mixprec.builtin import get_builtin
from mixprec.candidates import parse_candidates
from mixprec.groups import discover_groups
from mixprec.plan import write_json_atomic
from mixprec.sensitivity.analyze import analyze
from mixprec.sensitivity.blocks import BlockForward

RESULTS = Path(__file__).parent / "results"


def run(name: str, samples: int, candidates: str, metric: str, prefix: str = "auto", device: str = "cpu",
        rounds: int = 1) -> dict:
    builtin = get_builtin(name)
    model = builtin.model().to(device)
    data = [to_device(batch, device) for batch in builtin.calibration(samples)]
    groups = discover_groups(model, to_device(builtin.example_input(), device))
    cands = parse_candidates(candidates)
    out = {"model": name, "groups": len(groups), "candidates": candidates, "calibration_samples": samples,
           "batches": len(data), "metric": metric, "device": device, "rounds": rounds}
    tables = {}
    # the first analysis of a process also pays for one-off work (quantized weights, kernels' first calls):
    # with --rounds N both arms run N times, alternately, and the seconds are those of the last round
    for r in range(rounds):
        for label, mode in (("forked", prefix), ("naive", "none")):
            start = time.perf_counter()
            table = analyze(model, groups, cands, data, metric=metric, prefix=mode, progress=False)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            tables[label] = table.values
            sharing = table.metadata["prefix_sharing"]
            out[label] = {"seconds": round(seconds, 2),
                          "forward_equivalents": round(table.metadata["forward_equivalents"], 2),
                          "traced": sharing == "fx", "prefix_sharing": sharing,
                          "seconds_per_round": out.get(label, {}).get("seconds_per_round", []) + [round(seconds, 2)]}
            print(f"{name:<18} {label:<7} round {r + 1}: {seconds:8.1f} s  "
                  f"{table.metadata['forward_equivalents']:8.1f} forward-equivalents  (prefix sharing: {sharing})",
                  flush=True)
    if out["forked"]["prefix_sharing"] == "blocks":  # what bounds block-level sharing: the blocks' share of MACs
        blocks = BlockForward(model, {l.name: l.macs or 0 for l in groups.layers})
        share = sum(blocks.block_macs) / blocks.full_macs
        n = len(blocks.modules)
        # a fork from block i runs blocks i..n-1 and everything after them: on average over the blocks,
        # share x (n + 1) / 2n + (1 - share) of a forward
        out["blocks"] = {"count": n, "macs_share": round(share, 4),
                         "mean_fork_cost": round(share * (n + 1) / (2 * n) + (1 - share), 4)}
    a, b = tables["forked"], tables["naive"]
    out["max_relative_difference"] = float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-30)))
    out["forward_equivalent_ratio"] = round(out["forked"]["forward_equivalents"] / out["naive"]["forward_equivalents"], 4)
    out["wall_time_ratio"] = round(out["forked"]["seconds"] / out["naive"]["seconds"], 4)
    print(f"{name:<18} ratio: {out['forward_equivalent_ratio']:.3f} of the naive forward-equivalents, "
          f"{out['wall_time_ratio']:.3f} of its wall time; max relative table difference {out['max_relative_difference']:.2e}")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=["efficientnet-lite0", "resnet56"])
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--candidates", default="w4a8,w8a8,w8a16")
    parser.add_argument("--metric", default="sqnr")
    parser.add_argument("--prefix", choices=("auto", "fx", "blocks"), default="auto",
                        help="how the shared run shares the float prefix (auto: torch.fx, else blocks)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run both arms this many times, alternately; seconds are the last round's")
    parser.add_argument("--note", default="", help="what the reader should know of the run (kept in the JSON)")
    parser.add_argument("--out", default="sensitivity_speed.json", help="file name under benchmarks/results/")
    args = parser.parse_args()
    report = {"command": "python " + " ".join(sys.argv), "results": [run(m, args.samples, args.candidates, args.metric,
                                                                         args.prefix, args.device, args.rounds)
                                                                     for m in args.models],
              "environment": {"mixprec": __version__, "torch": torch.__version__, "machine": platform.machine(),
                              "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                              "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
                              "note": args.note}}
    write_json_atomic(RESULTS / args.out, report)
    print(f"wrote {RESULTS / args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
