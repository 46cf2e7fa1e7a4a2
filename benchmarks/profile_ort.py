"""Latency on ONNX Runtime CPU, layer by layer and whole: how well the per-layer sum predicts the model.

    python benchmarks/profile_ort.py resnet20 [--candidates w8a8,w4a8,w7a8] [--batch-sizes 1,32] [--threads 2]
        [--method graph|layers] [--around CAND]

Runs `mixprec profile` (mixprec.export.latency.profile) on a built-in model at each batch size and
writes, per uniform candidate, the per-layer sum (layers + the rest of the float model) beside the
whole exported model's median, both against the float model (with --method graph, the default, the
uniform plans are predicted exactly by construction, and random mixed plans are timed against the table
too). Writes
benchmarks/results/profile_ort_<model>.json and .md.
"""
from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path


from mixprec.builtin import get_builtin
from mixprec.errors import MissingDataError
from mixprec.export import cpu_has_vnni
from mixprec.export.latency import profile
from mixprec.pipeline import environment
from mixprec.plan import write_json_atomic

RESULTS = Path(__file__).parent / "results"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--candidates", default="w8a8,w7a8,w4a8")
    parser.add_argument("--batch-sizes", default="1,32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calibration-samples", type=int, default=64)
    parser.add_argument("--method", choices=("graph", "layers"), default="graph")
    parser.add_argument("--around", default=None)
    parser.add_argument("--checks", type=int, default=3)
    args = parser.parse_args()
    try:
        builtin = get_builtin(args.model)
        model, data = builtin.model().eval(), builtin.calibration(args.calibration_samples)
    except MissingDataError as exc:
        print(f"skipped {args.model}: {exc}")
        return 0
    runs = []
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        result = profile(model, data, args.candidates, batch_size=batch, threads=args.threads, method=args.method,
                         around=args.around, checks=args.checks)
        runs.append(result.to_dict())
        for cand, row in result.whole.items():
            print(f"batch {batch} {cand}: per-layer sum {row['predicted_ms']:.3f} ms, whole {row['measured_ms']:.3f} ms, "
                  f"float {result.float_model_ms:.3f} ms", flush=True)
        for check in result.checks:
            print(f"batch {batch} mixed: table {check['predicted_ms']:.3f} ms, whole {check['measured_ms']:.3f} ms",
                  flush=True)
    report = {"model": args.model, "candidates": args.candidates, "runs": runs,
              "command": "python " + " ".join(["benchmarks/profile_ort.py", *sys.argv[1:]]),
              "environment": {**environment("cpu"), "onnxruntime": __import__("onnxruntime").__version__,
                              "vnni": cpu_has_vnni(), "processor": platform.processor() or platform.machine(),
                              "threads": args.threads}}  # ONNX Runtime's threads, not torch's
    out = RESULTS / f"profile_ort_{args.model}.json"
    write_json_atomic(out, report)
    out.with_suffix(".md").write_text(markdown(report))
    print(f"wrote {out} and .md")
    return 0


def markdown(r: dict) -> str:
    env = r["environment"]
    methods = sorted({run.get("method", "layers") for run in r["runs"]})
    how = {"layers": "every layer timed alone at the candidate + the rest of the float model",
           "graph": "each layer's kernel inside the whole uniform graph (ONNX Runtime's profiler) + the rest, "
                    "exact for uniform plans by construction"}
    lines = [f"## Latency on ONNX Runtime CPU, {r['model']}: per-layer sum against the whole model", "",
             f"`mixprec profile` at each batch size ({env['threads']} threads, onnxruntime {env['onnxruntime']}, "
             f"VNNI {'yes' if env['vnni'] else 'no'}; method {', '.join(methods)}). Per-layer sum = "
             + "; ".join(how.get(m.split()[0], m) for m in methods)
             + "; whole = the exported model; speed-up = float whole / whole. Mixed rows: random mixed plans.", "",
             "| batch | plan | per-layer sum ms | whole ms | sum / whole | speed-up over float |",
             "|---|---|---|---|---|---|"]
    for run in r["runs"]:
        rows = [(f"uniform {cand}", row) for cand, row in run["whole"].items()]
        rows += [(f"mixed {i}", check) for i, check in enumerate(run.get("checks", []), 1)]
        for label, row in rows:
            lines.append(f"| {run['batch_size']} | {label} | {row['predicted_ms']:.3f} | {row['measured_ms']:.3f} | "
                         f"{row['predicted_ms'] / row['measured_ms']:.2f} | "
                         f"{run['float_model_ms'] / row['measured_ms']:.2f}x |")
    lines += ["", f"`{r['command']}`", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
