"""SmolLM2 exported to GGUF for llama.cpp: uniform Q8_0, uniform Q4_0 and one mixed plan, against
mixprec's simulation.

    python benchmarks/gguf_llama_cpp.py [--windows 20] [--threads 2] [--budget bits=6] [--no-repack] [--tiny]

Plans: uniform fp16 (F16, the float reference llama.cpp runs), uniform q8_0, uniform q4_0, and a mixed
plan of the profile gguf (q8_0/q4_0/fp16) that mixprec solves at --budget with the data-free roundoff
sensitivity. For each: the export (file size, GGUF types, read-back against the simulation) and how many
codes differ from what gguf.quants' own quantizer makes of the same float weights (ties and near ties:
mixprec rounds half to even, ggml half away from zero); mixprec's simulated perplexity on the built-in
evaluation windows (the first N windows of 512 tokens of WikiText-2 test, each alone); and, where
``llama_cpp`` (llama-cpp-python) imports, llama.cpp's perplexity on the same token ids (fed as ids, each
window in a fresh context, all logits) and its speed: prompt tokens/s over those windows and generation
tokens/s (64 greedy tokens after a 64-token prompt). Without llama_cpp it says so and writes the rest.
--no-repack: llama.cpp's CPU repacking of weights off (its --no-repack); --tiny: a Llama of width 128
trained here instead of SmolLM2. Writes benchmarks/results/gguf_llama_cpp[_tiny][_norepack].json.
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
from mixprec.export.gguf import export_gguf
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


def llama_cpp_measure(llama_cpp, path: Path, windows: torch.Tensor, threads: int, repack: bool = True) -> dict:
    """Perplexity on ``windows`` (each alone, as mixprec's text_perplexity) and prompt / generation speed.
    repack=False: llama.cpp's CPU weight repacking off (its --no-repack: model parameter use_extra_bufts)."""
    count, length = windows.shape
    import llama_cpp.llama as binding
    defaults = binding.llama_cpp.llama_model_default_params

    def params():
        p = defaults()
        p.use_extra_bufts = repack
        return p
    binding.llama_cpp.llama_model_default_params = params  # read once, as the model loads
    try:
        llm = llama_cpp.Llama(str(path), n_ctx=length, n_batch=length, n_ubatch=length, logits_all=True,
                              n_threads=threads, n_threads_batch=threads, verbose=False)
    finally:
        binding.llama_cpp.llama_model_default_params = defaults
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


TINY_STEPS = 150


def tiny_llama():
    """A LlamaForCausalLM of width 128 (3 blocks, 4 heads, 2 KV heads, tied embeddings) on SmolLM2's tokenizer,
    trained for TINY_STEPS steps of 16 x 128 tokens (AdamW, lr 3e-3, seed 0) on the calibration end of the text
    (the evaluation windows are its first tokens)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from mixprec.hf import CausalLM
    ids = smollm2.token_ids()
    train = ids[smollm2.WINDOW * smollm2.EVAL_WINDOWS:]
    config = LlamaConfig(vocab_size=len(smollm2.tokenizer()), hidden_size=128, intermediate_size=256,
                         num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, tie_word_embeddings=True)
    torch.manual_seed(0)
    lm = LlamaForCausalLM(config)
    optimizer = torch.optim.AdamW(lm.parameters(), 3e-3)
    lm.train()
    for _ in range(TINY_STEPS):
        starts = torch.randint(0, len(train) - 129, (16,))
        x = torch.stack([train[i:i + 128] for i in starts])
        loss = lm(input_ids=x, labels=x).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return CausalLM(lm.eval()).eval()


def mixed_plan(model, data, budget: str) -> Plan:
    analysis = analyze(model, data, candidates=",".join(PROFILES["gguf"]), metric="roundoff", progress=False)
    return analysis.solve(budget=budget)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=20, help="evaluation windows of 512 tokens (at most 40)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--budget", default="bits=6", help="the mixed plan's budget (solve's syntax)")
    parser.add_argument("--no-repack", action="store_true",
                        help="llama.cpp's CPU weight repacking off (its --no-repack), as it runs them otherwise")
    parser.add_argument("--tiny", action="store_true",
                        help="instead of SmolLM2, a Llama of width 128 (3 blocks, SmolLM2's tokenizer) trained here "
                             f"for {TINY_STEPS} steps on the text before the evaluation windows' end")
    parser.add_argument("--out", default=None, help="default: benchmarks/results/gguf_llama_cpp[_tiny][_norepack].json")
    args = parser.parse_args(argv)
    args.out = args.out or str(RESULTS / ("gguf_llama_cpp" + ("_tiny" if args.tiny else "")
                                          + ("_norepack" if args.no_repack else "") + ".json"))
    torch.set_num_threads(args.threads)
    builtin = get_builtin("smollm2")
    model = tiny_llama() if args.tiny else builtin.model()
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
                row["llama_cpp"] = llama_cpp_measure(llama_cpp, path, windows, args.threads, not args.no_repack)
            rows.append(row)
            lc = row.get("llama_cpp", {})
            print(f"{name:>14}: {result.size_bytes / 2**20:7.1f} MiB  types {row['types']}  read-back "
                  f"{row['readback']['exact']}/{row['readback']['tensors']} exact  codes unlike gguf.quants "
                  f"{row['gguf_quants']['differ']}/{row['gguf_quants']['weights']}  simulated ppl "
                  f"{row['simulated_perplexity']:.4f}"
                  + (f"  llama.cpp ppl {lc['perplexity']:.4f}, prompt {lc['prompt_tokens_per_s']:.0f} tok/s, "
                     f"generate {lc['generate_tokens_per_s']:.1f} tok/s" if lc else ""))
            del quantized
    out = {"model": f"tiny llama (width 128, {TINY_STEPS} steps)" if args.tiny else "smollm2",
           "repack": not args.no_repack, "windows": args.windows, "window_tokens": smollm2.WINDOW, "threads": args.threads,
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
