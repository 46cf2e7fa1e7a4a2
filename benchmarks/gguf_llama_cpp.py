"""SmolLM2 exported to GGUF for llama.cpp: uniform Q8_0, uniform Q4_0 and one mixed plan, against
mixprec's simulation.

    python benchmarks/gguf_llama_cpp.py [--windows 20] [--threads 2] [--budget bits=6]

Plans: uniform fp16 (F16, the float reference llama.cpp runs), uniform q8_0, uniform q4_0, and a mixed
plan of the profile gguf (q8_0/q4_0/fp16) that mixprec solves at --budget with the data-free roundoff
sensitivity. For each: the export (file size, GGUF types, read-back against the simulation) and how many
codes differ from what gguf.quants' own quantizer makes of the same float weights (ties and near ties:
mixprec rounds half to even, ggml half away from zero); mixprec's simulated perplexity on the built-in
evaluation windows (the first N windows of 512 tokens of WikiText-2 test, each alone); and, where
``llama_cpp`` (llama-cpp-python) imports, llama.cpp's perplexity on the same token ids (fed as ids, each
window in a fresh context, all logits) and its speed: prompt tokens/s over those windows and generation
tokens/s (64 greedy tokens after a 64-token prompt). Without llama_cpp it says so and writes the rest.
Writes benchmarks/results/gguf_llama_cpp.json.
"""
from __future__ import annotations

import argparse
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mixprec import __version__, analyze
from mixprec.apply import apply
from mixprec.builtin import get_builtin
from mixprec.builtin import smollm2
from mixprec.candidates import parse_candidate
from mixprec.export.gguf import export_gguf, gguf_type
from mixprec.groups import discover_groups
from mixprec.plan import Plan, write_json_atomic
from mixprec.profiles import PROFILES

RESULTS = Path(__file__).parent / "results"
GGUF_TYPES = {"q8_0": "Q8_0", "q4_0": "Q4_0"}


def llama_cpp_or_reason():
    try:
        import llama_cpp
        return llama_cpp, None
    except Exception as exc:  # ImportError, or a shared library that does not load
        return None, (f"llama_cpp does not import ({type(exc).__name__}: {exc}); llama-cpp-python is a source "
                      "build (pip install llama-cpp-python); export sizes and the read-back are still measured")


def gguf_quants_differences(model, quantized, plan: Plan) -> dict:
    """Codes of the export that differ from gguf.quants.quantize on the same float weights (ties, near ties)."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize, quantize
    differ = total = 0
    for layer, cand in plan.layer_candidates().items():
        if cand not in GGUF_TYPES:
            continue
        qtype = GGMLQuantizationType[GGUF_TYPES[cand]]
        float_weight = model.get_submodule(layer).weight.detach().float().numpy()
        ref = dequantize(quantize(float_weight, qtype), qtype)
        sim = quantized.get_submodule(layer).layer.weight.detach().numpy()
        differ += int((ref != sim).sum())
        total += sim.size
    return {"weights": total, "differ": differ}


def llama_cpp_measure(llama_cpp, path: Path, windows: torch.Tensor, threads: int) -> dict:
    """Perplexity on ``windows`` (each alone, as mixprec's text_perplexity) and prompt / generation speed."""
    count, length = windows.shape
    llm = llama_cpp.Llama(str(path), n_ctx=length, n_batch=length, n_ubatch=length, logits_all=True,
                          n_threads=threads, n_threads_batch=threads, verbose=False)
    nll, predicted, prompt_s = 0.0, 0, 0.0
    for row in windows.tolist():
        llm.reset()
        start = time.perf_counter()
        llm.eval(row)
        prompt_s += time.perf_counter() - start
        logits = np.asarray(llm.scores[: length - 1], np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        nll -= float(logp[np.arange(length - 1), row[1:]].sum())
        predicted += length - 1
    llm.reset()
    llm.eval(windows[0, :64].tolist())
    start, generated = time.perf_counter(), 0
    for _ in range(64):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        llm.eval([token])
        generated += 1
    generate_s = time.perf_counter() - start
    del llm
    return {"perplexity": math.exp(nll / predicted), "tokens": predicted,
            "prompt_tokens_per_s": count * length / prompt_s, "generate_tokens_per_s": generated / generate_s}


def mixed_plan(model, data, budget: str) -> Plan:
    analysis = analyze(model, data, candidates=",".join(PROFILES["gguf"]), metric="roundoff", progress=False)
    return analysis.solve(budget=budget)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=20, help="evaluation windows of 512 tokens (at most 40)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--budget", default="bits=6", help="the mixed plan's budget (solve's syntax)")
    parser.add_argument("--out", default=str(RESULTS / "gguf_llama_cpp.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    builtin = get_builtin("smollm2")
    model = builtin.model()
    data = builtin.calibration(8)
    llama_cpp, reason = llama_cpp_or_reason()
    if reason:
        print(reason)
    windows = smollm2.token_ids()[: smollm2.WINDOW * args.windows].view(args.windows, smollm2.WINDOW)
    source = smollm2.gguf_path()
    import gguf
    pre = gguf.GGUFReader(str(source)).fields["tokenizer.ggml.pre"].contents()
    groups = discover_groups(model, data[0])
    plans = {name: Plan.uniform(groups, name) for name in ("fp16", "q8_0", "q4_0")}
    plans[f"mixed {args.budget}"] = mixed_plan(model, data, args.budget)

    start = time.perf_counter()
    float_ppl = builtin.evaluate(model, limit=args.windows).value
    rows = [{"plan": "float32 (PyTorch)", "simulated_perplexity": float_ppl, "seconds": time.perf_counter() - start}]
    print(f"float32 model: perplexity {float_ppl:.4f} on {args.windows} windows")
    with tempfile.TemporaryDirectory() as tmp:
        for name, plan in plans.items():
            quantized = apply(model, plan, None, progress=False)
            path = Path(tmp) / f"smollm2-{name.split()[0]}.gguf"
            start = time.perf_counter()
            result = export_gguf(model, plan, path, quantized=quantized, tokenizer=smollm2.tokenizer(),
                                 tokenizer_pre=pre, progress=False)
            row = {"plan": name, "export_seconds": time.perf_counter() - start, "size_bytes": result.size_bytes,
                   "types": result.type_counts(), "readback": {k: result.readback[k] for k in ("tensors", "exact")},
                   "bits_per_weight": plan.metadata.get("predicted_costs", {}).get("bits_per_weight"),
                   "gguf_quants": gguf_quants_differences(model, quantized, plan)}
            row["simulated_perplexity"] = builtin.evaluate(quantized, limit=args.windows).value
            if llama_cpp is not None:
                row["llama_cpp"] = llama_cpp_measure(llama_cpp, path, windows, args.threads)
            rows.append(row)
            lc = row.get("llama_cpp", {})
            print(f"{name:>14}: {result.size_bytes / 2**20:7.1f} MiB  types {row['types']}  read-back "
                  f"{row['readback']['exact']}/{row['readback']['tensors']} exact  codes unlike gguf.quants "
                  f"{row['gguf_quants']['differ']}/{row['gguf_quants']['weights']}  simulated ppl "
                  f"{row['simulated_perplexity']:.4f}"
                  + (f"  llama.cpp ppl {lc['perplexity']:.4f}, prompt {lc['prompt_tokens_per_s']:.0f} tok/s, "
                     f"generate {lc['generate_tokens_per_s']:.1f} tok/s" if lc else ""))
            del quantized
    out = {"model": "smollm2", "windows": args.windows, "window_tokens": smollm2.WINDOW, "threads": args.threads,
           "budget": args.budget, "mixed_metric": "roundoff",
           "llama_cpp": None if llama_cpp is None else getattr(llama_cpp, "__version__", "?"),
           "llama_cpp_missing": reason, "mixprec": __version__, "torch": torch.__version__,
           "gguf": _version("gguf"), "machine": platform.machine(), "processor": platform.processor(),
           "python": sys.version.split()[0], "rows": rows,
           "plans": {name: plan.assignments for name, plan in plans.items() if name.startswith("mixed")}}
    write_json_atomic(args.out, out)
    print(f"wrote {args.out}")
    return 0


def _version(package: str) -> str:
    from importlib.metadata import version
    return version(package)


if __name__ == "__main__":
    sys.exit(main())
