"""Measuring many plans of one model: the nearest-weight cache (mixprec.weight_cache) on and off.

    python benchmarks/weight_cache.py resnet20 [--device cuda] [--plans 8]

A search that measures plans (the guard's uniform rivals, the local search's moves, a Pareto front's
evaluations) applies plan after plan to the same float model. This script applies the same sequence
of plans (every uniform candidate of the model's benchmark configuration, then seeded random mixes of
them) twice in one process: with ``MIXPREC_WEIGHT_CACHE_MB=0`` (every weight's range chosen afresh)
and with the cache on, and checks that both give the same quantized weights, bit for bit. Seconds
are for ``apply`` (weights and activation calibration), the part of measuring a plan the cache
changes. Writes benchmarks/results/weight_cache_<model>.json.
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from run import CONFIGS, RESULTS  # noqa: E402

from mixprec import apply  # noqa: E402
from mixprec.batches import to_device  # noqa: E402
from mixprec.errors import MissingDataError  # noqa: E402
from mixprec.pipeline import environment  # noqa: E402
from mixprec.plan import Plan, write_json_atomic  # noqa: E402
from mixprec.specs import prepare  # noqa: E402
from mixprec.weight_cache import NEAREST  # noqa: E402


def plans(groups, candidates: list[str], n: int) -> list[Plan]:
    out = [Plan.uniform(groups, c) for c in candidates]
    rng = random.Random(0)
    while len(out) < n:
        base = Plan.uniform(groups, candidates[0])
        out.append(Plan({g: rng.choice(candidates) for g in base.assignments}, base.groups, base.excluded,
                        {"kind": "random mix"}))
    return out[:n]


def run(model_name: str, device: str, n: int) -> dict:
    model, data, _, groups = prepare(model_name, None, None, [], [], [])
    model = model.to(device)
    data = [to_device(item, device) for item in data]
    candidates = [c for c in CONFIGS[model_name].candidates.split(",") if c not in ("fp16", "fp32")]
    sequence = plans(groups, candidates, n)
    seconds, states = {}, {}
    for mode, limit in (("off", "0"), ("on", None)):
        if limit is None:
            os.environ.pop("MIXPREC_WEIGHT_CACHE_MB", None)
        else:
            os.environ["MIXPREC_WEIGHT_CACHE_MB"] = limit
        NEAREST.clear()
        times, last = [], []
        for plan in sequence:
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            q = apply(model, plan, data, progress=False)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(round(time.perf_counter() - start, 3))
            last.append({k: v.detach().cpu() for k, v in q.state_dict().items() if k.endswith("weight")})
            del q
        seconds[mode] = times
        states[mode] = last
        print(f"cache {mode}: " + " ".join(f"{t:.2f}" for t in times) + f"  total {sum(times):.1f} s", flush=True)
    equal = all(torch.equal(a[k], b[k]) for a, b in zip(states["off"], states["on"]) for k in a)
    return {"model": model_name, "plans": len(sequence),
            "uniform_candidates": candidates, "seconds": seconds,
            "total_seconds": {m: round(sum(t), 2) for m, t in seconds.items()},
            "speedup": round(sum(seconds["off"]) / max(sum(seconds["on"]), 1e-9), 2),
            "weights_equal": equal, "cache": {"hits": NEAREST.hits, "misses": NEAREST.misses,
                                              "megabytes": round(NEAREST.bytes / 2**20, 1)},
            "command": " ".join(["python", "benchmarks/weight_cache.py", *sys.argv[1:]]),
            "environment": environment(device)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=sorted(CONFIGS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--plans", type=int, default=8)
    parser.add_argument("--out-suffix", default="")
    args = parser.parse_args()
    try:
        result = run(args.model, args.device, args.plans)
    except MissingDataError as exc:
        print(f"skipped: {exc}")
        return 0
    out = RESULTS / f"weight_cache_{args.model}{args.out_suffix}.json"
    write_json_atomic(out, result)
    print(f"{args.model}: {result['total_seconds']['off']} s without the cache, {result['total_seconds']['on']} s with "
          f"it ({result['speedup']}x); weights equal: {result['weights_equal']}; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
