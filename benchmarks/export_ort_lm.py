"""A language model exported to ONNX Runtime CPU against its simulation: perplexity, file size, latency.

    python benchmarks/export_ort_lm.py smollm2 [--windows 40] [--plan plan.json] [--decoder fused|traced]
        [--only LABEL ...] [--out-suffix S]

For each plan (FP32; uniform w8, exported with MatMulNBits' accuracy_level 4 (int8 inputs per block inside
the kernel, the fast path) and 0 (float inputs, what the simulation computes); uniform w4g64 with the tied
embedding/output group at w8; the same formats with the kernel's int8 inputs simulated (w8a8d32, w8a8d128,
w4g64a8d64 with w8a8d32 outside the blocks: always accuracy_level 4); any --plan files; accuracy_level 4
unless said; each written as --decoder says, fused by default: ONNX Runtime's fused decoder ops, and then
FP32 and uniform w8a8d128 also as the traced step, to compare the two graphs): the simulated and the
exported perplexity on the model's first N evaluation windows (the built-in's own evaluation), the top-1
agreement of their next-token predictions, the ONNX file size, how many layers ONNX Runtime runs in low
precision, and the median latency of the exported file against the FP32 export: a prompt of a full window
(prefill, empty KV cache) and one decoding step (one new token on a KV cache of --context tokens, the
cache returned too: what a server runs per generated token). Rounds alternate between the files,
2 intra-op threads. Writes benchmarks/results/export_ort_lm_<model><suffix>.json and .md.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from export_ort import RESULTS, THREADS, _counts, _cpu, _ort_version, latency_feeds
from mixprec import __version__
from mixprec.builtin import get_builtin
from mixprec.export import DECODERS, OrtModule, cpu_has_vnni, export
from mixprec.export.ort import make_session
from mixprec.groups import discover_groups
from mixprec.plan import Plan, write_json_atomic

TARGET_GAP = 0.5  # percent of perplexity: the deployability target for language models
DECODE_SPEEDUP, DECODE_PPL = 2.5, 5  # the decode target: tokens/s against FP32, within this % perplexity


TRACED = ", traced step"  # a label ending so is exported with decoder="traced"


def plans_for(groups, extra: list[str], decoder: str = "fused") -> dict[str, Plan]:
    """label -> plan; a label ending in "accuracy_level 0" is exported with float inputs to MatMulNBits, one
    ending in TRACED as the traced step."""
    plans = {"fp32": Plan.uniform(groups, "fp32"), "uniform w8": Plan.uniform(groups, "w8"),
             "uniform w8, accuracy_level 0": Plan.uniform(groups, "w8")}
    four = Plan.uniform(groups, "w4g64")
    for group in groups.groups:  # the tied embedding/output group stays at 8 bits, as llama.cpp and NNCF keep it
        if any(layer.kind == "Embedding" for layer in group.layers):
            four.assignments[group.name] = "w8"
    plans["uniform w4g64, embedding/output w8"] = four
    # the same formats with MatMulNBits' int8 inputs in the simulation (a8d<N>): what accuracy_level 4 computes
    plans["uniform w8a8d32"] = Plan.uniform(groups, "w8a8d32")
    plans["uniform w8a8d128"] = Plan.uniform(groups, "w8a8d128")
    dynamic = Plan.uniform(groups, "w4g64a8d64")
    for group in groups.groups:
        if any(layer.kind == "Embedding" for layer in group.layers):
            dynamic.assignments[group.name] = "w8a8d32"
    plans["uniform w4g64a8d64, embedding/output w8a8d32"] = dynamic
    for path in extra:
        plans[f"plan {Path(path).name}"] = Plan.load(path)
    if decoder == "fused":  # the former graph beside it, for its speed
        plans["fp32" + TRACED] = plans["fp32"]
        plans["uniform w8a8d128" + TRACED] = plans["uniform w8a8d128"]
    return plans


def decode_inputs(module: OrtModule, window: torch.Tensor, context: int) -> dict:
    """One decoding step: token ``context`` of ``window`` on the KV cache its first ``context`` tokens leave."""
    if not 0 < context < window.shape[1]:
        raise SystemExit(f"--context must be between 1 and {window.shape[1] - 1}, got {context}")
    prompt = window[:, :context]
    _, *present = module.session.run(None, module.prompt_inputs(prompt) | {"input_ids": prompt.numpy()})
    return {"input_ids": window[:, context:context + 1].numpy(), "position_ids": np.array([[context]]),
            "attention_mask": np.ones((1, context + 1), dtype=np.int64), **dict(zip(module.kv_cache["past"], present))}


def run(name: str, windows: int, extra: list[str], rounds: int, samples: int, context: int,
        decoder: str = "fused", only: list[str] = ()) -> dict:
    builtin = get_builtin(name)
    model = builtin.model()
    calibration = builtin.calibration(samples)
    groups = discover_groups(model, builtin.example_input())
    evaluate = (lambda m: builtin.evaluate(m, limit=windows))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        plans = plans_for(groups, extra, decoder)
        unknown = sorted(set(only) - set(plans))
        if unknown:
            raise SystemExit(f"--only {unknown[0]!r}: no such plan; the plans are {sorted(plans)}")
        for label, plan in plans.items():
            if only and label != "fp32" and label not in only:
                continue
            path = Path(tmp) / f"plan_{len(paths)}.onnx"
            start = time.perf_counter()
            level = 0 if label.endswith("accuracy_level 0") else 4  # 4: int8 inputs inside MatMulNBits
            graph = "traced" if label.endswith(TRACED) else decoder
            result = export(model, plan, calibration, "ort-cpu", path, evaluate=evaluate, progress=False,
                            threads=THREADS, accuracy_level=level, decoder=graph)
            paths[label] = path
            sim, exp = result.simulated.value, result.exported.value
            rows.append({"plan": label, "accuracy_level": level, "decoder": graph,
                         "candidates": dict(sorted(_counts(plan).items())),
                         "simulated_ppl": sim, "exported_ppl": exp, "gap_percent": 100 * (exp - sim) / sim,
                         "agreement": result.agreement.get("evaluation"), "size_bytes": result.size_bytes,
                         "low_precision_layers": sum(1 for l in result.layers if l["low_precision"]),
                         "layers": len(result.layers), "fallback_layers": [l["layer"] for l in result.fallbacks],
                         "export_seconds": time.perf_counter() - start})
            print(f"{label}: simulated {sim:.3f}, exported {exp:.3f} ({rows[-1]['gap_percent']:+.2f}%), "
                  f"{rows[-1]['low_precision_layers']}/{len(result.layers)} layers low precision, "
                  f"{result.size_bytes:,} bytes", flush=True)
        window = calibration[0][:1]
        modules = {label: OrtModule(path, THREADS) for label, path in paths.items()}
        for module in modules.values():
            if module.kv_cache is None:
                raise SystemExit(f"{module.path} was exported without a KV cache: no decoding step to time")
        prefill = {label: m.prompt_inputs(window) | {"input_ids": window.numpy()} for label, m in modules.items()}
        decode = {label: decode_inputs(m, window, context) for label, m in modules.items()}
        for shape, feeds, per_round in (("prefill", prefill, 5), ("decode", decode, 30)):
            make = {k: (lambda p=paths[k]: make_session(p, THREADS)) for k in modules}
            med = latency_feeds(make, feeds, rounds, per_round)
            for row in rows:
                row[f"latency_ms_{shape}"] = med[row["plan"]]
                row[f"speedup_{shape}"] = med["fp32"] / med[row["plan"]]
            print(f"{shape}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in med.items()), flush=True)
    return {"model": name, "rows": rows, "windows": windows, "window_tokens": int(calibration[0].shape[-1]),
            "decode_context": context, "decoder": decoder,
            "calibration_samples": samples, "rounds": rounds, "threads": THREADS,
            "command": "python benchmarks/export_ort_lm.py " + shlex.join(sys.argv[1:]),
            "environment": {"mixprec": __version__, "torch": torch.__version__, "onnxruntime": _ort_version(),
                            "cpu": _cpu(), "vnni": cpu_has_vnni()}}


def unsimulated(row: dict) -> bool:
    """Weight-only layers exported at accuracy_level 4: MatMulNBits quantizes their inputs to int8, which their
    simulation leaves out (export says so); the a8d candidates simulate it."""
    return row.get("accuracy_level") == 4 and any(c.startswith("w") and "a" not in c for c in row["candidates"])


def fastest_decode_within(r: dict) -> dict | None:
    """The plan that decodes fastest within DECODE_PPL % of FP32's exported perplexity (None if none is)."""
    base = next(row for row in r["rows"] if row["plan"] == "fp32")
    within = [row for row in r["rows"] if row["plan"] != "fp32"
              and row["exported_ppl"] <= (1 + DECODE_PPL / 100) * base["exported_ppl"]]
    return max(within, key=lambda row: row["speedup_decode"], default=None)


def markdown(r: dict) -> str:
    env = r["environment"]
    lines = [f"## Export to ONNX Runtime CPU: {r['model']} (language model)", "",
             f"Simulated against exported perplexity on the first {r['windows']} evaluation windows; agreement: "
             "next-token predictions that are the same. Latency: median of one forward pass, batch 1, "
             f"{r['threads']} threads, against the FP32 export: a prompt of {r['window_tokens']} tokens (prefill, "
             f"empty KV cache) and one decoding step (one token on a KV cache of {r['decode_context']} tokens). "
             f"{env['cpu']} (VNNI: {'yes' if env['vnni'] else 'no'}), onnxruntime {env['onnxruntime']}. "
             + ("Graph: ONNX Runtime's fused decoder ops (GroupQueryAttention, SkipSimplifiedLayerNormalization; "
                f"export's default), except the rows ending '{TRACED}' (the step torch.onnx traces, as before). "
                if r.get("decoder") == "fused" else "Graph: the step torch.onnx traces. " if r.get("decoder") else "")
             + f"Target: exported within {TARGET_GAP} % of simulated.", "",
             "| plan | simulated | exported | gap | agreement | size | low-precision layers | prefill ms | "
             "prefill speed-up | decode ms | decode speed-up |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        hit = ("" if row["plan"] == "fp32" else " (int8 inputs not simulated)" if unsimulated(row)
               else " (hit)" if abs(row["gap_percent"]) <= TARGET_GAP else " (miss)")
        lines.append(f"| {row['plan']} | {row['simulated_ppl']:.3f} | {row['exported_ppl']:.3f} | "
                     f"{row['gap_percent']:+.2f}%{hit} | {100 * row['agreement']:.2f}% | {row['size_bytes']:,} | "
                     f"{row['low_precision_layers']}/{row['layers']} | {row['latency_ms_prefill']:.1f} | "
                     f"{row['speedup_prefill']:.2f}x | {row['latency_ms_decode']:.2f} | "
                     f"{row['speedup_decode']:.2f}x |")
    lines += ["", f"`{r['command']}`"]
    base = next((row for row in r["rows"] if row["plan"] == "fp32"), None)
    if base is not None and "speedup_decode" in base:
        best = fastest_decode_within(r)
        lines += ["", f"Decode target: at least {DECODE_SPEEDUP}x FP32's decoding speed at batch 1 within "
                  f"{DECODE_PPL} % of FP32's perplexity: "
                  + (f"best here {best['plan']}, {best['speedup_decode']:.2f}x at {best['exported_ppl']:.3f} "
                     f"({100 * (best['exported_ppl'] / base['exported_ppl'] - 1):+.2f} %): "
                     f"**{'met' if best['speedup_decode'] >= DECODE_SPEEDUP else 'missed'}**."
                     if best else "no exported plan here is within that perplexity: **missed**.")]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--windows", type=int, default=40, help="evaluation windows (default 40: the built-in's "
                        "whole evaluation; on fewer, rounding noise moves the gaps of the a8d plans by tenths of a per cent)")
    parser.add_argument("--plan", action="append", default=[], help="also export this plan.json (repeatable)")
    parser.add_argument("--rounds", type=int, default=5, help="latency rounds alternating the files (default 5)")
    parser.add_argument("--calibration-samples", type=int, default=16)
    parser.add_argument("--context", type=int, default=256, help="KV cache tokens before the timed decoding step")
    parser.add_argument("--decoder", choices=DECODERS, default="fused",
                        help="the graph of every plan (export's decoder); fused adds FP32 and uniform w8a8d128 traced")
    parser.add_argument("--out-suffix", default="", help="appended to the result files' names")
    parser.add_argument("--only", action="append", default=[], help="export only this plan label, and FP32 "
                        "(repeatable; default: every plan)")
    args = parser.parse_args()
    for name in args.models:
        report = run(name, args.windows, args.plan, args.rounds, args.calibration_samples, args.context,
                     args.decoder, args.only)
        write_json_atomic(RESULTS / f"export_ort_lm_{name}{args.out_suffix}.json", report)
        (RESULTS / f"export_ort_lm_{name}{args.out_suffix}.md").write_text(markdown(report))
        print(markdown(report))


if __name__ == "__main__":
    main()
