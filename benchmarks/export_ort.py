"""Exported against simulated, on ONNX Runtime CPU: top-1, agreement, file size, latency against FP32.

    python benchmarks/export_ort.py resnet20 [--limit N] [--budget bits=6]

For each plan (uniform w8a8; uniform w7a8, the 7-bit weights of onnxruntime's reduce_range, with and
without join quantizers; a mixed plan of w4a8/w7a8 solved by mixprec at --budget, analysed with join
quantizers): the simulated and the exported top-1 on the evaluation split,
the fraction of images whose top-1 prediction agrees, the ONNX file size, how many layers ONNX Runtime runs
in low precision, and the median latency of the exported file and of the FP32 export at batch 1 and 64
(warm-up, then rounds alternating between the two files; 2 intra-op threads, no spinning).
Writes benchmarks/results/export_ort_<model>.json and .md.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from mixprec import __version__, analyze
from mixprec.builtin import get_builtin
from mixprec.export import cpu_has_vnni, export, noise_bound
from mixprec.errors import ModelError
from mixprec.export.latency import _feed, _resize
from mixprec.export.ort import make_session
from mixprec.joins import trace
from mixprec.groups import discover_groups
from mixprec.plan import Plan, write_json_atomic

RESULTS = Path(__file__).parent / "results"
THREADS = 2
TARGET_GAP = 0.1  # top-1 points: the deployability target


def latency_ms(paths: dict[str, Path], batch: int, example, rounds: int, per_round: int) -> dict:
    """Median latency per file on ``batch`` rows of ``example`` (a tensor, or a dict of them: a tokenized batch;
    its rows sliced or repeated, as `mixprec profile --batch-size` does)."""
    make = {k: (lambda p=p: make_session(p, threads=THREADS)) for k, p in paths.items()}
    x = _resize(example[:1] if isinstance(example, torch.Tensor) else example, batch)
    return latency_feeds(make, {k: _feed(m(), x) for k, m in make.items()}, rounds, per_round)


def traceable(model) -> bool:
    """Whether torch.fx traces ``model``: join quantizers (integer residual adds) need it."""
    try:
        trace(model)
    except ModelError:
        return False
    return True


def latency_feeds(make: dict, feeds: dict, rounds: int, per_round: int) -> dict:
    """Median milliseconds of each file's session (``make[k]()`` makes one) on ``feeds[k]``. Rounds alternate
    between the files, so that load on the machine hits all of them, and each round makes every session anew
    in an order rotated by one file: of two sessions made one after the other, the one made first measured
    slower (FP32 made before int8 gave MiniLM 1.67x-1.86x at batch 1, made after it 1.60x-1.70x, on a
    2-core Xeon), so a fixed order would favour the files made last. ``rounds`` is raised to a whole number of
    rotations, so that each file is made at each place equally often."""
    keys = list(make)
    times: dict[str, list[float]] = {k: [] for k in keys}
    for r in range(-(-max(rounds, 1) // len(keys)) * len(keys)):
        order = keys[r % len(keys):] + keys[:r % len(keys)]
        sessions = {k: make[k]() for k in order}
        for k in order:  # warm-up
            for _ in range(max(3, per_round // 4)):
                sessions[k].run(None, feeds[k])
        for k in order:
            for _ in range(per_round):
                start = time.perf_counter()
                sessions[k].run(None, feeds[k])
                times[k].append(1000 * (time.perf_counter() - start))
        del sessions
    return {k: statistics.median(v) for k, v in times.items()}


def mixed_plan(model, calibration, example, budget: str, joins: bool) -> Plan:
    analysis = analyze(model, calibration, "w4a8,w7a8", "sqnr", progress=False, joins=joins)
    plan = analysis.solve(budget)
    plan.metadata["budget"] = budget
    return plan


def run(name: str, limit: int | None, budget: str, samples: int, rounds: int, joins: bool = True) -> dict:
    builtin = get_builtin(name)
    model = builtin.model()
    calibration = builtin.calibration(samples)
    example = calibration[0]
    groups = discover_groups(model, builtin.example_input())
    joins = joins and traceable(model)
    # joins: the int8 plans carry join quantizers (8-bit residual adds, mixprec.joins); one plan without them
    # shows what they change
    plans = {"fp32": Plan.uniform(groups, "fp32"), "uniform w8a8": Plan.uniform(groups, "w8a8", {"joins": joins}),
             "uniform w7a8": Plan.uniform(groups, "w7a8", {"joins": joins})}
    if joins:
        plans["uniform w7a8, no joins"] = Plan.uniform(groups, "w7a8", {"joins": False})
    start = time.perf_counter()
    plans[f"mixed w4a8/w7a8 ({budget})"] = mixed_plan(model, calibration, example, budget, joins)
    mixed_seconds = time.perf_counter() - start
    evaluate = (lambda m: builtin.evaluate(m, limit=limit))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for label, plan in plans.items():
            path = Path(tmp) / f"{label.split()[0]}_{len(paths)}.onnx"
            result = export(model, plan, calibration, "ort-cpu", path, evaluate=evaluate, progress=False,
                            threads=THREADS)
            paths[label] = path
            metric = result.exported.name
            low = sum(1 for l in result.layers if l["low_precision"])
            rows.append({"plan": label, "candidates": dict(sorted(_counts(plan).items())),
                         "joins": bool(plan.metadata.get("joins")), "join_ops": len(result.joins),
                         "join_ops_low_precision": sum(1 for j in result.joins if j["low_precision"]),
                         "simulated_top1": result.simulated.value, "exported_top1": result.exported.value,
                         "gap": result.exported.value - result.simulated.value,
                         "agreement": result.agreement.get("evaluation"), "size_bytes": result.size_bytes,
                         "evaluation_samples": result.exported.details.get("samples"),
                         "low_precision_layers": low, "layers": len(result.layers),
                         "fallback_layers": [l["layer"] for l in result.fallbacks]})
            print(f"{label}: simulated {result.simulated.value:.2f}, exported {result.exported.value:.2f}, "
                  f"agreement {100 * result.agreement.get('evaluation', float('nan')):.2f}%, "
                  f"{low}/{len(result.layers)} layers low precision, {rows[-1]['join_ops_low_precision']}/"
                  f"{len(result.joins)} joins, {result.size_bytes:,} bytes", flush=True)
        for batch, per_round in ((1, 50), (64, 3)):
            med = latency_ms(paths, batch, example, rounds, per_round)
            for row in rows:
                row[f"latency_ms_b{batch}"] = med[row["plan"]]
                row[f"speedup_b{batch}"] = med["fp32"] / med[row["plan"]]
            print(f"batch {batch}: " + ", ".join(f"{k} {v:.3f} ms" for k, v in med.items()), flush=True)
    samples_eval = int(rows[0]["evaluation_samples"]) if rows and rows[0].get("evaluation_samples") else limit
    return {"model": name, "metric": metric, "rows": rows, "evaluation_images": samples_eval, "calibration_samples": samples,
            "mixed_plan_seconds": mixed_seconds, "rounds": rounds, "threads": THREADS,
            "command": "python benchmarks/export_ort.py " + " ".join(sys.argv[1:]),
            "environment": {"mixprec": __version__, "torch": torch.__version__, "onnxruntime": _ort_version(),
                            "python": platform.python_version(), "cpu": _cpu(), "cpu_count": os.cpu_count(),
                            "vnni": cpu_has_vnni()}}


def _counts(plan: Plan) -> dict[str, int]:
    out: dict[str, int] = {}
    for cand in plan.layer_candidates().values():
        out[cand] = out.get(cand, 0) + 1
    return out


def _ort_version() -> str:
    import onnxruntime
    return onnxruntime.__version__


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gap_noise(row: dict, samples: int | None) -> float | None:
    """An upper bound, in points, on the standard error of a top-1 gap that is rounding noise: the gap is
    (images only the exported model gets right - images only the simulated one gets right) / N; both counts come
    from the D images whose predictions differ, so with no side favoured its standard error is at most
    sqrt(D) / N = sqrt(disagreement / N)."""
    return noise_bound(row.get("agreement"), samples)


def markdown(r: dict) -> str:
    env = r["environment"]
    metric = r.get("metric", "top1")
    count = format(r['evaluation_images'], ',') if r['evaluation_images'] else 'all'
    what = (f"top-1 on {count} evaluation images; agreement: images whose top-1 prediction is the same"
            if metric == "top1" else
            f"{metric} on {count} evaluation samples; agreement: output rows whose largest entry is at the same index")
    lines = [f"## Export to ONNX Runtime CPU: {r['model']}", "",
             f"Simulated against exported {what}. Latency: median, {r['threads']} threads, batch 1 and 64, against "
             f"the FP32 export. {env['cpu']} ({env['cpu_count']} cores, VNNI: {'yes' if env['vnni'] else 'no'}), "
             f"onnxruntime {env['onnxruntime']}. Target: exported within {TARGET_GAP} point of simulated.", "",
             "Joins: the residual adds (and concatenations) ONNX Runtime runs as integer kernels, where the plan has "
             "join quantizers (mixprec.joins); without them the layers that feed an add stay float.", "",
             "Noise: an upper bound on the standard error of a gap that is rounding noise, sqrt(disagreement / "
             "images) (`gap_noise`): the int8 kernels round the bias and requantize in their own order, and each code "
             "that differs by a step moves the codes after it (`int8_divergence_*`).", "",
             "| plan | simulated | exported | gap | noise | agreement | size | low-precision layers | integer joins "
             "| b1 ms | b1 speed-up | b64 ms | b64 speed-up |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        hit = "" if row["plan"] == "fp32" else (" (hit)" if abs(row["gap"]) <= TARGET_GAP else " (miss)")
        noise = gap_noise(row, r["evaluation_images"]) if metric == "top1" and row["plan"] != "fp32" else None
        lines.append(f"| {row['plan']} | {row['simulated_top1']:.2f} | {row['exported_top1']:.2f} | "
                     f"{row['gap']:+.2f}{hit} | {'—' if noise is None else f'±{noise:.2f}'} | "
                     f"{100 * row['agreement']:.2f}% | {row['size_bytes']:,} | "
                     f"{row['low_precision_layers']}/{row['layers']} | "
                     f"{row.get('join_ops_low_precision', 0)}/{row.get('join_ops', 0)} | {row['latency_ms_b1']:.3f} | "
                     f"{row['speedup_b1']:.2f}x | {row['latency_ms_b64']:.1f} | {row['speedup_b64']:.2f}x |")
    lines += ["", f"`{r['command']}`"]
    if r.get("note"):
        lines += ["", f"Note: {r['note']}"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--limit", type=int, default=None, help="evaluation images (default all 9,000)")
    parser.add_argument("--budget", default="bits=6", help="budget of the mixed plan (default bits=6)")
    parser.add_argument("--calibration-samples", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=7, help="latency rounds alternating the files (default 7)")
    parser.add_argument("--no-joins", action="store_true", help="plans without join quantizers (as before they existed)")
    parser.add_argument("--out-suffix", default="", help="appended to the result's name (e.g. _avx2 for a CPU "
                        "without VNNI, kept beside a run on one with it)")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    RESULTS.mkdir(exist_ok=True)
    for name in args.models:
        report = run(name, args.limit, args.budget, args.calibration_samples, args.rounds, not args.no_joins)
        write_json_atomic(RESULTS / f"export_ort_{name}{args.out_suffix}.json", report)
        (RESULTS / f"export_ort_{name}{args.out_suffix}.md").write_text(markdown(report))
        print(markdown(report))


if __name__ == "__main__":
    main()
