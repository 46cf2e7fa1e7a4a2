"""Where a language model's decoding step spends its time on ONNX Runtime CPU, by op type, per plan.

    python benchmarks/decode_ops.py smollm2 [--context 256] [--runs 30]

Exports the model at FP32, uniform w8 (MatMulNBits, accuracy_level 4) and uniform w4g64 with the tied
embedding/output group at w8, as benchmarks/export_ort_lm.py does, each with ONNX Runtime's fused decoder
ops (export's default for a Llama-family model) and as the traced step (rows ending ", traced step"); times one decoding step (one token on a
KV cache of --context tokens, 2 intra-op threads, all optimisations on, no spinning) as the median of
--runs plain runs, then takes ONNX Runtime's own profile of the same number of runs and sums each op
type's kernel time per run. The matrix products (MatMul, FusedMatMul, Gemm, MatMulNBits) are what a
weight format can speed up; the rest (attention's reshapes and concatenations, the KV cache, norms, the
session's own cost between kernels) it cannot. The profiler's own cost per node inflates the kernels, so
the matrix products' share of the profiled kernel time is applied to the plain median. The bound printed
is the decode speed-up a plan would reach if its matrix products took no time at all, and the time its
matrix products would need for the issue's decode target (2.5x FP32). Writes benchmarks/results/decode_ops_<model>.json and .md.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from export_ort import RESULTS, THREADS, _cpu, _ort_version
from export_ort_lm import DECODE_SPEEDUP, TRACED, decode_inputs, plans_for
from run import save_result
from mixprec import __version__
from mixprec.builtin import get_builtin
from mixprec.errors import MissingDataError
from mixprec.export import OrtModule, cpu_has_vnni, export
from mixprec.export.ort import make_session
from mixprec.groups import discover_groups

MATMULS = ("MatMul", "FusedMatMul", "Gemm", "MatMulNBits", "MatMulInteger", "DynamicQuantizeMatMul")
PLANS = ("fp32", "uniform w8", "uniform w4g64, embedding/output w8")


def op_times(path: Path, feeds: dict, runs: int, tmp: Path) -> tuple[float, dict[str, float]]:
    """(median ms of a plain run, op type -> kernel ms per run from ONNX Runtime's profiler, warm-up runs
    included in the average)."""
    session = make_session(path, THREADS)
    for _ in range(5):
        session.run(None, feeds)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append(1000 * (time.perf_counter() - start))
    profiled = make_session(path, THREADS, profile_prefix=str(tmp / "decode"))
    for _ in range(5 + runs):
        profiled.run(None, feeds)
    events = json.loads(Path(profiled.end_profiling()).read_text())
    by_op: dict[str, float] = {}
    for event in events:
        if event.get("cat") == "Node" and str(event.get("name", "")).endswith("_kernel_time"):
            op = event.get("args", {}).get("op_name", "?")
            by_op[op] = by_op.get(op, 0.0) + event["dur"] / 1000.0
    return statistics.median(times), {op: ms / (5 + runs) for op, ms in sorted(by_op.items(), key=lambda kv: -kv[1])}


def run(name: str, context: int, runs: int) -> dict:
    builtin = get_builtin(name)
    model = builtin.model()
    calibration = builtin.calibration(16)
    groups = discover_groups(model, builtin.example_input())
    chosen = {label: plan for label, plan in plans_for(groups, []).items() if label in PLANS}
    plans = {**chosen, **{label + TRACED: plan for label, plan in chosen.items()}}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        window = calibration[0][:1]
        for label, plan in plans.items():
            path = tmp / f"plan_{len(rows)}.onnx"
            decoder = "traced" if label.endswith(TRACED) else "fused"
            result = export(model, plan, calibration, "ort-cpu", path, progress=False, threads=THREADS,
                            accuracy_level=4, decoder=decoder)
            if decoder == "fused" and not any(n.startswith("written with ONNX Runtime's fused") for n in result.notes):
                raise SystemExit(f"{label}: not written with fused decoder ops: {result.notes}")
            feeds = decode_inputs(OrtModule(path, THREADS), window, context)
            ms, ops = op_times(path, feeds, runs, tmp)
            matmul = sum(v for op, v in ops.items() if op in MATMULS)
            kernels = sum(ops.values())
            rows.append({"plan": label, "decoder": decoder, "decode_ms": ms, "kernel_ms": kernels, "matmul_ms": matmul, "ops": ops})
            print(f"{label}: decode {ms:.2f} ms; profiled kernels {kernels:.2f} ms, of which matrix products "
                  f"{matmul:.2f} ms", flush=True)
    return {"model": name, "rows": rows, "decode_context": context, "runs": runs, "threads": THREADS,
            "command": "python benchmarks/decode_ops.py " + " ".join(sys.argv[1:]),
            "environment": {"mixprec": __version__, "torch": torch.__version__, "onnxruntime": _ort_version(),
                            "cpu": _cpu(), "vnni": cpu_has_vnni()}}


def _split(row: dict) -> tuple[float, float]:
    """(matrix products, the rest) of a plain run's milliseconds: the profile's share of matrix products
    applied to the plain median (the profiler's own cost per node inflates every kernel, the many small ops
    the most, so the share is not read as milliseconds directly)."""
    share = row["matmul_ms"] / row["kernel_ms"] if row["kernel_ms"] else 0.0
    return share * row["decode_ms"], (1 - share) * row["decode_ms"]


def markdown(r: dict) -> str:
    env = r["environment"]
    base = r["rows"][0]
    lines = [f"## Decoding on ONNX Runtime CPU, {r['model']}: where the time goes", "",
             f"One decoding step (one token on a KV cache of {r['decode_context']} tokens, batch 1, {r['threads']} "
             f"threads; median of {r['runs']} runs), and ONNX Runtime's profile of the same step summed by op type "
             "per run. The profiler's own cost per node inflates every kernel (the profiled kernels add up to more "
             "than a plain run), so the matrix products' share of the profiled kernel time is applied to the plain "
             f"median. {env['cpu']} (VNNI: {'yes' if env['vnni'] else 'no'}), onnxruntime {env['onnxruntime']}. "
             f"Matrix products: {', '.join(MATMULS)}. Rows ending '{TRACED}': the step torch.onnx traces; the "
             "others: ONNX Runtime's fused decoder ops (export's default). Speed-ups against the first row.", "",
             "| plan | decode ms | speed-up | matrix products' share | matrix products ms (est.) | the rest ms (est.) | "
             "largest other ops, profiled ms |", "|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        matmul, rest = _split(row)
        others = [(op, ms) for op, ms in row["ops"].items() if op not in MATMULS][:4]
        lines.append(f"| {row['plan']} | {row['decode_ms']:.2f} | {base['decode_ms'] / row['decode_ms']:.2f}x | "
                     f"{100 * row['matmul_ms'] / row['kernel_ms']:.0f}% | {matmul:.2f} | {rest:.2f} | "
                     + ", ".join(f"{op} {ms:.2f}" for op, ms in others) + " |")
    goal = base["decode_ms"] / DECODE_SPEEDUP
    lines += ["", f"The issue's decode target, {DECODE_SPEEDUP}x FP32, is a step of {goal:.1f} ms or less."]
    for row in r["rows"][1:]:
        if row["plan"] == "fp32" + TRACED:
            continue
        matmul, rest = _split(row)
        lines.append(f"- {row['plan']}: the rest alone is about {rest:.1f} ms, so even matrix products that took no "
                     f"time would decode at most {base['decode_ms'] / rest:.2f}x FP32; {DECODE_SPEEDUP}x needs its "
                     f"matrix products at {max(goal - rest, 0):.1f} ms, against about {matmul:.1f} ms now.")
    lines += ["", f"`{r['command']}`", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="smollm2")
    parser.add_argument("--context", type=int, default=256, help="KV cache tokens before the timed step")
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    try:
        report = run(args.model, args.context, args.runs)
    except MissingDataError as exc:
        print(f"skipped {args.model}: {exc}")
        return 0
    RESULTS.mkdir(exist_ok=True)
    save_result(RESULTS / f"decode_ops_{args.model}", report, markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
