"""GPTQ for many plans of one model: the steps shared between plans (mixprec.rounding.prefix) on and off.

    python benchmarks/prefix_rounding.py byte-gpt [--device cuda] [--moves 12]

A measured search with GPTQ (the local search with --rounding gptq, the guard's rivals, a front's evaluations)
rounds plan after plan of the same float model, each differing from the one it moves from in a group or two.
This script rounds the sequence such a search makes: the uniform plan of the benchmark configuration's
middle candidate, then ``--moves`` single moves from the current plan (a seeded random group to a seeded
random other candidate; every third move is taken, so the next moves start from it), once with the store
off and once with it on, in one process, and checks that both give the same weights, bit for bit. Seconds
are those of ``round_weights`` alone (GPTQ; no evaluation). Writes benchmarks/results/prefix_rounding_<model>.json.
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from run import CONFIGS, RESULTS, specs  # noqa: E402

from mixprec.batches import split_item, to_device  # noqa: E402
from mixprec.errors import MissingDataError  # noqa: E402
from mixprec.pipeline import environment  # noqa: E402
from mixprec.plan import Plan, write_json_atomic  # noqa: E402
from mixprec.rounding import prefix, round_weights  # noqa: E402
from mixprec.specs import prepare  # noqa: E402


def search_like(groups, candidates: list[str], moves: int) -> list[Plan]:
    """The plans a measured search rounds: a start, then single moves from the current plan, every third taken."""
    rng = random.Random(0)
    current = Plan.uniform(groups, candidates[len(candidates) // 2])
    out = [current]
    for i in range(moves):
        assignments = dict(current.assignments)
        group = rng.choice(sorted(assignments))
        assignments[group] = rng.choice([c for c in candidates if c != assignments[group]])
        plan = Plan(assignments, current.groups)
        out.append(plan)
        if i % 3 == 2:
            current = plan
    return out


def run(model_name: str, device: str, moves: int) -> dict:
    model_spec, data_spec, _ = specs(model_name)
    model, data, _, groups = prepare(model_spec, data_spec)
    model = model.to(device).eval()
    batches = [to_device(split_item(item)[0], device) for item in data]
    candidates = [c for c in CONFIGS[model_name].candidates.split(",") if c[0] == "w"]
    plans = search_like(groups, candidates, moves)
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
    results, seconds, reused = {}, {}, {}
    for mode in ("off", "on"):
        prefix.STORE = prefix.PrefixStore()
        if mode == "off":
            prefix.STORE.keep = lambda *a, **k: None
        out, times = [], []
        for plan in plans:
            sync()
            start = time.perf_counter()
            out.append(round_weights(model, plan, batches, "gptq", progress=False))
            sync()
            times.append(time.perf_counter() - start)
            print(f"  store {mode}, plan {len(times)}/{len(plans)}: {times[-1]:.2f} s", flush=True)  # a cut run shows
        results[mode], seconds[mode] = out, times
        reused[mode] = {"reused_steps": prefix.STORE.reused_steps, "rounded_steps": prefix.STORE.rounded_steps}
        print(f"store {mode}: {sum(times):.1f} s for {len(plans)} plans, {reused[mode]}", flush=True)
    identical = all(a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
                    for a, b in zip(results["off"], results["on"]))
    return {"model": model_name, "device": str(device), "plans": len(plans), "moves": moves,
            "candidates": candidates, "calibration_batches": len(batches),
            "seconds_off": seconds["off"], "seconds_on": seconds["on"],
            "total_off": sum(seconds["off"]), "total_on": sum(seconds["on"]),
            "speedup": sum(seconds["off"]) / sum(seconds["on"]), "steps": reused, "identical": identical,
            "environment": environment(str(device)),
            "command": "python benchmarks/prefix_rounding.py " + " ".join(sys.argv[1:])}


def markdown(r: dict) -> str:
    steps = r["steps"]["on"]
    return "\n".join([
        f"## GPTQ over a search's plans: shared steps, {r['model']}", "",
        f"`{r['command']}` on {r['device']} ({r['environment']['threads']} threads): {r['plans']} plans (a uniform start "
        f"and {r['moves']} single moves, every third taken), candidates {', '.join(r['candidates'])}, "
        f"{r['calibration_batches']} calibration batches.", "",
        "| steps shared | GPTQ seconds, all plans | per plan after the first | steps rounded |", "|---|---|---|---|",
        f"| off | {r['total_off']:.1f} | {sum(r['seconds_off'][1:]) / (r['plans'] - 1):.2f} | "
        f"{r['steps']['off']['rounded_steps']} |",
        f"| on | {r['total_on']:.1f} | {sum(r['seconds_on'][1:]) / (r['plans'] - 1):.2f} | "
        f"{steps['rounded_steps']} ({steps['reused_steps']} reused) |", "",
        f"{r['speedup']:.2f}x; the weights are {'identical, bit for bit' if r['identical'] else 'NOT identical'} "
        "with and without.", ""])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=sorted(CONFIGS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--moves", type=int, default=12)
    args = parser.parse_args()
    try:
        result = run(args.model, args.device, args.moves)
    except MissingDataError as exc:
        print(f"skipped: {exc}")
        return 0
    out = RESULTS / f"prefix_rounding_{args.model}"
    write_json_atomic(out.with_suffix(".json"), result)
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0 if result["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
