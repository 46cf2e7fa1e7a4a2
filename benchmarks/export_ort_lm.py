"""A language model exported to ONNX Runtime CPU against its simulation: perplexity, file size, latency.

    python benchmarks/export_ort_lm.py smollm2 [--windows N] [--plan plan.json]

For each plan (FP32; uniform w8, exported with MatMulNBits' accuracy_level 4 (int8 inputs per block inside
the kernel, the fast path) and 0 (float inputs, what the simulation computes); uniform w4g64 with the tied
embedding/output group at w8; any --plan files; accuracy_level 4 unless said): the simulated and the exported perplexity on the model's first N evaluation windows (the
built-in's own evaluation), the top-1 agreement of their next-token predictions, the ONNX file size,
how many layers ONNX Runtime runs in low precision, and the median latency of one forward pass of the
exported file against the FP32 export, on a full window (prefill) and on one token. The exported
graph has no KV cache, so the one-token forward is not a decoding step of a served model: it shows
the cost of the weights at one row. Rounds alternate between the files, 2 intra-op threads.
Writes benchmarks/results/export_ort_lm_<model>.json and .md.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from export_ort import RESULTS, THREADS, _counts, _cpu, _ort_version, latency_ms
from mixprec import __version__
from mixprec.builtin import get_builtin
from mixprec.export import cpu_has_vnni, export
from mixprec.groups import discover_groups
from mixprec.plan import Plan, write_json_atomic

TARGET_GAP = 0.5  # percent of perplexity: the deployability target for language models


def plans_for(groups, extra: list[str]) -> dict[str, Plan]:
    """label -> plan; a label ending in "accuracy_level 0" is exported with float inputs to MatMulNBits."""
    plans = {"fp32": Plan.uniform(groups, "fp32"), "uniform w8": Plan.uniform(groups, "w8"),
             "uniform w8, accuracy_level 0": Plan.uniform(groups, "w8")}
    four = Plan.uniform(groups, "w4g64")
    for group in groups.groups:  # the tied embedding/output group stays at 8 bits, as llama.cpp and NNCF keep it
        if any(layer.kind == "Embedding" for layer in group.layers):
            four.assignments[group.name] = "w8"
    plans["uniform w4g64, embedding/output w8"] = four
    for path in extra:
        plans[f"plan {Path(path).name}"] = Plan.load(path)
    return plans


def run(name: str, windows: int, extra: list[str], rounds: int, samples: int) -> dict:
    builtin = get_builtin(name)
    model = builtin.model()
    calibration = builtin.calibration(samples)
    groups = discover_groups(model, builtin.example_input())
    evaluate = (lambda m: builtin.evaluate(m, limit=windows))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for label, plan in plans_for(groups, extra).items():
            path = Path(tmp) / f"plan_{len(paths)}.onnx"
            start = time.perf_counter()
            level = 0 if label.endswith("accuracy_level 0") else 4  # 4: int8 inputs inside MatMulNBits
            result = export(model, plan, calibration, "ort-cpu", path, evaluate=evaluate, progress=False,
                            threads=THREADS, accuracy_level=level)
            paths[label] = path
            sim, exp = result.simulated.value, result.exported.value
            rows.append({"plan": label, "accuracy_level": level, "candidates": dict(sorted(_counts(plan).items())),
                         "simulated_ppl": sim, "exported_ppl": exp, "gap_percent": 100 * (exp - sim) / sim,
                         "agreement": result.agreement.get("evaluation"), "size_bytes": result.size_bytes,
                         "low_precision_layers": sum(1 for l in result.layers if l["low_precision"]),
                         "layers": len(result.layers), "fallback_layers": [l["layer"] for l in result.fallbacks],
                         "export_seconds": time.perf_counter() - start})
            print(f"{label}: simulated {sim:.3f}, exported {exp:.3f} ({rows[-1]['gap_percent']:+.2f}%), "
                  f"{rows[-1]['low_precision_layers']}/{len(result.layers)} layers low precision, "
                  f"{result.size_bytes:,} bytes", flush=True)
        window = calibration[0][:1]
        for shape, example, per_round in (("prefill", window, 5), ("one_token", window[:, :1], 30)):
            med = latency_ms(paths, 1, example, rounds, per_round)
            for row in rows:
                row[f"latency_ms_{shape}"] = med[row["plan"]]
                row[f"speedup_{shape}"] = med["fp32"] / med[row["plan"]]
            print(f"{shape} ({tuple(example.shape)}): " + ", ".join(f"{k} {v:.2f} ms" for k, v in med.items()),
                  flush=True)
    return {"model": name, "rows": rows, "windows": windows, "window_tokens": int(calibration[0].shape[-1]),
            "calibration_samples": samples, "rounds": rounds, "threads": THREADS,
            "command": "python benchmarks/export_ort_lm.py " + " ".join(sys.argv[1:]),
            "environment": {"mixprec": __version__, "torch": torch.__version__, "onnxruntime": _ort_version(),
                            "cpu": _cpu(), "vnni": cpu_has_vnni()}}


def markdown(r: dict) -> str:
    env = r["environment"]
    lines = [f"## Export to ONNX Runtime CPU: {r['model']} (language model)", "",
             f"Simulated against exported perplexity on the first {r['windows']} evaluation windows; agreement: "
             "next-token predictions that are the same. Latency: median of one forward pass, batch 1, "
             f"{r['threads']} threads, against the FP32 export, on a full window of {r['window_tokens']} tokens "
             "(prefill) and on one token (the graph has no KV cache: not a decoding step of a served model). "
             f"{env['cpu']} (VNNI: {'yes' if env['vnni'] else 'no'}), onnxruntime {env['onnxruntime']}. "
             f"Target: exported within {TARGET_GAP} % of simulated.", "",
             "| plan | simulated | exported | gap | agreement | size | low-precision layers | prefill ms | "
             "prefill speed-up | one token ms | one token speed-up |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        hit = "" if row["plan"] == "fp32" else (" (hit)" if abs(row["gap_percent"]) <= TARGET_GAP else " (miss)")
        lines.append(f"| {row['plan']} | {row['simulated_ppl']:.3f} | {row['exported_ppl']:.3f} | "
                     f"{row['gap_percent']:+.2f}%{hit} | {100 * row['agreement']:.2f}% | {row['size_bytes']:,} | "
                     f"{row['low_precision_layers']}/{row['layers']} | {row['latency_ms_prefill']:.1f} | "
                     f"{row['speedup_prefill']:.2f}x | {row['latency_ms_one_token']:.2f} | "
                     f"{row['speedup_one_token']:.2f}x |")
    lines += ["", f"`{r['command']}`"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--windows", type=int, default=10, help="evaluation windows (default 10)")
    parser.add_argument("--plan", action="append", default=[], help="also export this plan.json (repeatable)")
    parser.add_argument("--rounds", type=int, default=5, help="latency rounds alternating the files (default 5)")
    parser.add_argument("--calibration-samples", type=int, default=16)
    args = parser.parse_args()
    for name in args.models:
        report = run(name, args.windows, args.plan, args.rounds, args.calibration_samples)
        write_json_atomic(RESULTS / f"export_ort_lm_{name}.json", report)
        (RESULTS / f"export_ort_lm_{name}.md").write_text(markdown(report))
        print(markdown(report))


if __name__ == "__main__":
    main()
