"""Schaefer et al.'s experiment on ONNX Runtime CPU: plans under a measured latency budget, deployed and re-measured.

    python benchmarks/latency_budget.py resnet20 [--batch-sizes 1,32] [--points 5] [--limit 2000]

For a built-in model: the sensitivity analysis (sqnr, with join quantizers where torch.fx traces the model,
candidates: the target's int8 candidate and fp32); per batch size, `mixprec profile --around INT8` (each
layer's kernel timed inside the whole uniform int8 graph by ONNX Runtime's profiler, and each group's move to
float timed as a whole, entered at its measured change plus 2 standard errors of its paired timing);
then the plans `solve` gives at latency budgets from the fastest plan the table predicts up to what it
predicts for the float model, each exported, its metric measured on the exported ONNX file (evaluation split,
the first --limit samples) and its latency measured against the float and the uniform int8 files (median of rounds that
alternate the files; 2 intra-op threads, no spinning). Beside each, the plan a BOPs budget gives at the same
BOPs, deployed and measured the same way. The int8 candidate is w7a8 on a CPU without VNNI (ONNX Runtime's
u8 x s8 kernels saturate with 8-bit weights there) and w8a8 with VNNI. Writes
benchmarks/results/latency_budget_<model>.json and .md.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from export_ort import _cpu, _ort_version, latency_ms, traceable
from run import save_result
from mixprec import __version__, analyze
from mixprec.builtin import get_builtin
from mixprec.errors import MissingDataError
from mixprec.export import cpu_has_vnni, export
from mixprec.export.latency import move_counts, profile, save_profile
from mixprec.groups import discover_groups
from mixprec.plan import Plan

RESULTS = Path(__file__).parent / "results"
THREADS = 2
DROP = 1.0  # top-1 points: "within 1 % of float", Schaefer et al.'s accuracy constraint
SPEED_TARGET = 1.5  # the target against FP32 on EfficientNet-Lite0 and MiniLM


def _key(plan: Plan) -> tuple:
    return tuple(sorted(plan.layer_candidates().items()))


def run(name: str, batch_sizes: list[int], points: int, limit: int | None, samples: int, rounds: int) -> dict:
    builtin = get_builtin(name)
    model = builtin.model().eval()
    calibration = builtin.calibration(samples)
    groups = discover_groups(model, builtin.example_input())
    int8 = "w8a8" if cpu_has_vnni() else "w7a8"
    joins = traceable(model)  # join quantizers (integer residual adds) where torch.fx traces the model
    start = time.perf_counter()
    analysis = analyze(model, calibration, f"{int8},fp32", "sqnr", progress=False, joins=joins)
    analysis_seconds = time.perf_counter() - start
    evaluate = (lambda m: builtin.evaluate(m, limit=limit))
    measured: dict[tuple, dict] = {}  # plan -> exported top-1, its file (one export per distinct plan)
    out: dict = {"model": name, "int8": int8, "joins": joins, "analysis_seconds": analysis_seconds, "batches": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)

        def deploy(plan: Plan) -> dict:
            key = _key(plan)
            if key not in measured:
                path = tmp / f"plan_{len(measured)}.onnx"
                result = export(model, plan, calibration, "ort-cpu", path, evaluate=evaluate, progress=False,
                                threads=THREADS)
                out["metric"] = result.exported.name
                measured[key] = {"path": path, "simulated_top1": result.simulated.value,
                                 "exported_top1": result.exported.value,
                                 "low_precision_layers": sum(1 for l in result.layers if l["low_precision"]),
                                 "layers": len(result.layers)}
                print(f"  exported {len(measured)}: {result.exported.name} {result.exported.value:.2f}", flush=True)
            return measured[key]

        float_plan = Plan.uniform(groups, "fp32")
        int8_plan = Plan.uniform(groups, int8, {"joins": True} if joins else None)
        base = {"fp32": deploy(float_plan), "uniform " + int8: deploy(int8_plan)}
        for batch in batch_sizes:
            start = time.perf_counter()
            prof = profile(model, calibration, f"{int8},fp32", batch_size=batch, threads=THREADS, around=int8,
                           checks=0, progress=False)
            profile_seconds = time.perf_counter() - start
            csv = save_profile(prof, tmp / f"latency_b{batch}.csv")[0]
            # from the fastest plan the table knows (each layer at its fastest entry) up to what it predicts for
            # the float model (above that the float plan fits: no sensitivity), or for uniform int8 where that
            # is the slower
            fast = prof.rest_ms + sum(min(v for v in row.values() if v == v) for row in prof.layers.values())
            slow = max(prof.predicted_ms({n: c for n in prof.layers}) for c in ("fp32", int8))
            budgets = [fast + (slow - fast) * k / points for k in range(points + 1)]
            rows = []
            for budget in budgets:
                plan = analysis.solve(f"latency_ms={budget!r}", cost_files=[f"latency_ms={csv}"])
                bops = plan.metadata["predicted_costs"]["bops"]
                bops_plan = analysis.solve(f"bops={bops!r}")
                rows.append({"budget_ms": budget, "latency_plan": plan, "bops_plan": bops_plan})
            labels = {"fp32": base["fp32"]["path"], "uniform": base["uniform " + int8]["path"]}
            for i, row in enumerate(rows):
                labels[f"latency {i}"] = deploy(row["latency_plan"])["path"]
                labels[f"bops {i}"] = deploy(row["bops_plan"])["path"]
            files = {str(path): path for path in dict.fromkeys(labels.values())}  # each distinct file timed once
            example = calibration[0][0] if isinstance(calibration[0], (tuple, list)) else calibration[0]
            per_round = 30 if batch == 1 else 2
            by_file = latency_ms(files, batch, example, rounds, per_round)
            times = {label: by_file[str(path)] for label, path in labels.items()}
            table = []
            for i, row in enumerate(rows):
                entry = {"budget_ms": row["budget_ms"]}
                for kind in ("latency", "bops"):
                    plan = row[f"{kind}_plan"]
                    m = measured[_key(plan)]
                    counts: dict[str, int] = {}
                    for cand in plan.layer_candidates().values():
                        counts[cand] = counts.get(cand, 0) + 1
                    entry[kind] = {"candidates": counts, "assignments": plan.layer_candidates(),
                                   "exported_top1": m["exported_top1"],
                                   "simulated_top1": m["simulated_top1"],
                                   "predicted_ms": prof.predicted_ms(plan.layer_candidates()),
                                   "measured_ms": times[f"{kind} {i}"],
                                   "speedup": times["fp32"] / times[f"{kind} {i}"],
                                   "guard": (plan.metadata.get("guard") or {}).get("chosen", ""),
                                   "low_precision_layers": m["low_precision_layers"], "layers": m["layers"]}
                table.append(entry)
            out["batches"].append({
                "batch_size": batch, "profile_seconds": profile_seconds, "profile": prof.to_dict(),
                "fp32_ms": times["fp32"], "uniform_ms": times["uniform"],
                "uniform_speedup": times["fp32"] / times["uniform"], "rows": table})
            print(f"batch {batch}: fp32 {times['fp32']:.3f} ms, uniform {int8} {times['uniform']:.3f} ms", flush=True)
    out["fp32_top1"] = base["fp32"]["exported_top1"]
    out["uniform_top1"] = base["uniform " + int8]["exported_top1"]
    out.update({"evaluation_images": limit, "calibration_samples": samples, "threads": THREADS, "rounds": rounds,
                "command": "python benchmarks/latency_budget.py " + " ".join(sys.argv[1:]),
                "environment": {"mixprec": __version__, "torch": torch.__version__, "onnxruntime": _ort_version(),
                                "cpu": _cpu(), "vnni": cpu_has_vnni()}})
    return out


def _move_rule(r: dict) -> str:
    moves = [m for b in r["batches"] for m in b["profile"].get("moves") or []]
    if not moves:
        return ""
    if all(m.get("entered") for m in moves):
        return f"; each move entered at its {moves[0]['entered']} of its paired timing, what it may cost"
    return "; a saving within 2 standard errors of its paired timing entered as no change"


def best_within(r: dict, batch: dict, kind: str) -> dict | None:
    """The fastest measured plan of ``kind`` whose exported top-1 is within DROP points of float."""
    ok = [row[kind] for row in batch["rows"] if row[kind]["exported_top1"] >= r["fp32_top1"] - DROP]
    return max(ok, key=lambda e: e["speedup"]) if ok else None


def markdown(r: dict) -> str:
    env = r["environment"]
    metric = r.get("metric", "top1")
    limit = f"the first {r['evaluation_images']:,}" if r["evaluation_images"] else "all"
    limit += " evaluation images" if metric == "top1" else " evaluation samples (or all, if fewer)"
    lines = [f"## Latency budgets on ONNX Runtime CPU: {r['model']}", "",
             f"Schaefer et al.'s experiment: plans of {r['int8']} and fp32 layers chosen by `solve` under a latency "
             f"budget from `mixprec profile --around {r['int8']}` (each layer's kernel in the whole int8 graph, by ONNX "
             f"Runtime's profiler, and each group's move to float timed as a whole"
             + (_move_rule(r))
             + f"), exported and re-measured: {metric} "
             f"of the exported ONNX file on {limit}, latency as the median of rounds alternating "
             f"the files ({r['threads']} threads; {env['cpu']}, VNNI {'yes' if env['vnni'] else 'no'}, onnxruntime "
             f"{env['onnxruntime']}). Beside each, the plan a BOPs budget gives at the same BOPs. Float {metric} "
             f"{r['fp32_top1']:.2f}; uniform {r['int8']} {r['uniform_top1']:.2f}. Predicted: the profile's table "
             "(its speed-up against the float model timed in the same profile); measured: minutes later, all files "
             "in one alternating measurement. On this shared 2-core machine a file's median moved by up to a third "
             "between the two, so compare speed-ups, and plans within one measurement.", ""]
    for batch in r["batches"]:
        lines += [f"Batch {batch['batch_size']}: fp32 {batch['fp32_ms']:.3f} ms, uniform {r['int8']} "
                  f"{batch['uniform_ms']:.3f} ms ({batch['uniform_speedup']:.2f}x); profile {batch['profile_seconds']:.0f} s.",
                  "", f"| budget ms | latency plan | {metric} | predicted ms | predicted speed-up | measured ms | speed-up | "
                  f"BOPs plan | {metric} | measured ms | speed-up |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        profiled_float = batch["profile"]["float_model_ms"]
        for row in batch["rows"]:
            a, b = row["latency"], row["bops"]
            desc = lambda e: ", ".join(f"{n} {c}" for c, n in sorted(e["candidates"].items()))  # noqa: E731
            lines.append(f"| {row['budget_ms']:.3f} | {desc(a)} | {a['exported_top1']:.2f} | {a['predicted_ms']:.3f} | "
                         f"{profiled_float / a['predicted_ms']:.2f}x | {a['measured_ms']:.3f} | {a['speedup']:.2f}x | "
                         f"{desc(b)} | {b['exported_top1']:.2f} | {b['measured_ms']:.3f} | {b['speedup']:.2f}x |")
        moves = batch["profile"].get("moves") or []
        if moves:
            if all(m.get("entered") for m in moves):  # entered at the upper end of the timing interval
                faster, noise = move_counts(moves)
                rule = moves[0]["entered"]
                lines += ["", f"Moves to fp32 timed around uniform {r['int8']}: {len(moves)}, each entered at its "
                          f"{rule}; surely faster than the base (entered as a saving): {faster}; measured faster by "
                          f"less (entered as a cost): {noise}."]
            else:  # profiles made before: a saving within 2 standard errors entered as no change
                faster = sum(1 for m in moves if m["entered_ms"] < 0)
                noise = sum(1 for m in moves if m["entered_ms"] != m["change_ms"])
                lines += ["", f"Moves to fp32 timed around uniform {r['int8']}: {len(moves)}; surely faster than the "
                          f"base (a saving of at least 2 standard errors): {faster}; faster by less, entered as no "
                          f"change: {noise}."]
        differ = [row for row in batch["rows"] if row["latency"]["assignments"] != row["bops"]["assignments"]]
        faster = sum(1 for row in differ if row["latency"]["measured_ms"] < row["bops"]["measured_ms"])
        lines += ["", f"Where the two plans differ ({len(differ)} of {len(batch['rows'])} budgets), the latency plan "
                  f"measured faster in {faster}."]
        best = best_within(r, batch, "latency")
        target = "" if r["model"] not in ("efficientnet-lite0", "minilm") else (
            f" (target {SPEED_TARGET}x: {'met' if best and best['speedup'] >= SPEED_TARGET else 'missed'})")
        lines += ["", f"Fastest latency-budgeted plan within {DROP:g} point of float: "
                  + (f"{best['speedup']:.2f}x at {best['exported_top1']:.2f} {metric}{target}." if best else
                     f"none{target}."), ""]
    lines += [f"`{r['command']}`", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--batch-sizes", default="1,32")
    parser.add_argument("--points", type=int, default=4, help="latency budgets between int8 and float (default 4)")
    parser.add_argument("--limit", type=int, default=2000, help="evaluation images (default 2,000)")
    parser.add_argument("--calibration-samples", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    RESULTS.mkdir(exist_ok=True)
    for name in args.models:
        try:
            report = run(name, [int(b) for b in args.batch_sizes.split(",")], args.points, args.limit,
                         args.calibration_samples, args.rounds)
        except MissingDataError as exc:
            print(f"skipped {name}: {exc}")
            continue
        save_result(RESULTS / f"latency_budget_{name}", report, markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
