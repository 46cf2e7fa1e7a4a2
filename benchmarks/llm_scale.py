"""Time and memory of analyze -> solve -> quantize on Llama-shaped models with RANDOM weights.

Only the times, forward-equivalents and memory figures mean anything here: the weights are a random
initialisation of the real shape (Llama-3.2-1B, Llama-3.1-8B), the tokens are random, and so the
sensitivities, the plan and the divergences say nothing about a trained model.

    python benchmarks/llm_scale.py --shape tiny --device cpu                     # smoke test, seconds
    python benchmarks/llm_scale.py --shape 8b --device cuda --dtype bf16 --samples 16 --length 512
    torchrun --nproc_per_node 2 benchmarks/llm_scale.py --shape 8b --device cuda --dtype bf16
    python benchmarks/llm_scale.py --shape 8b --device cuda --uniform w4g128 --rounding gptq   # quantize only
    python benchmarks/llm_scale.py --shape 8b --device cuda --samples 64 --length 1024 --run-path RUN
        # a run directory kept in RUN: killed (by a time limit), the same command resumes the analysis

Phases: build (random init on the device), groups (discover_groups on one sequence), analyze (the
--metric table over N x L random tokens; its forward-equivalents and how the prefix was shared),
solve (exact plan at --budget, guard on) and quantize (apply with --rounding). Peak GPU memory is
torch.cuda.max_memory_allocated per phase. Per-block figures (parameters, bytes, seconds of each
phase per block) let larger shapes be extrapolated: with an output metric, analyze runs about
(groups x candidates) forks of a cost proportional to the blocks, so its time grows with
blocks^2 x (block MACs), and quantize with blocks x (block MACs). Under torchrun the analysis is
sharded over the processes (mixprec.sensitivity.analyze); rank 0 solves, quantizes and writes
benchmarks/results/llm_scale_<shape>[_<suffix>].json.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

import mixprec
from mixprec import __version__
from mixprec.candidates import parse_candidates
from mixprec.groups import discover_groups
from mixprec.hf import CausalLM
from mixprec.pipeline import quantize_plan
from mixprec.plan import write_json_atomic

RESULTS = Path(__file__).parent / "results"
# the published shapes: Llama-3.2-1B and Llama-3.1-8B config.json; tiny is for a CPU smoke test
SHAPES = {
    "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, tie_word_embeddings=True),
    "1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
               num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=True, rope_theta=500000.0),
    "8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
               num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False, rope_theta=500000.0),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Llama-3.1-70B's config.json: not built here (141 GB in bfloat16), only extrapolated to from a run
LLAMA_70B = dict(vocab_size=128256, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                 num_attention_heads=64, num_key_value_heads=8, tie_word_embeddings=False)


def block_params(config: dict) -> int:
    """Weights of one decoder layer: Q/K/V/O, gate/up/down and its two norms."""
    h, i = config["hidden_size"], config["intermediate_size"]
    kv = config["num_key_value_heads"] * (h // config["num_attention_heads"])
    return 2 * h * h + 2 * h * kv + 3 * h * i + 2 * h


def total_params(config: dict) -> int:
    embeddings = config["vocab_size"] * config["hidden_size"] * (1 if config.get("tie_word_embeddings") else 2)
    return config["num_hidden_layers"] * block_params(config) + embeddings + config["hidden_size"]


def extrapolate(config: dict, target: dict, phases: dict, dtype_bytes: int, rounding: str,
                streamed: bool = False) -> dict:
    """This run's times and peak memory carried over to the ``target`` shape, on the same calibration
    tokens and device: analyze (forks from a group's block to the end) grows with blocks^2 x block
    weights; nearest quantize with the weights; GPTQ with blocks x the columns its loops visit per block
    (3 hidden + intermediate: Q/K/V, O, gate/up in one loop each, down); peak memory with the model, or
    for a streamed run (``streamed``) with what stays on the device: the weights outside the blocks
    (embeddings, lm_head) and two blocks change to the target's, the rest (activations, logits) is
    kept as measured (the same tokens and vocabulary)."""
    blocks, blocks_t = config["num_hidden_layers"], target["num_hidden_layers"]
    per_block = block_params(target) / block_params(config)
    model_t = total_params(target) * dtype_bytes
    columns = lambda c: 3 * c["hidden_size"] + c["intermediate_size"]  # noqa: E731
    out = {"params": total_params(target), "model_bytes": model_t}
    if "analyze" in phases:
        out["analyze_seconds"] = round(phases["analyze"]["seconds"] * per_block * (blocks_t / blocks) ** 2, 1)
    if "quantize" in phases:
        scale = (blocks_t * columns(target)) / (blocks * columns(config)) if rounding != "nearest" else \
            total_params(target) / total_params(config)
        out["quantize_seconds"] = round(phases["quantize"]["seconds"] * scale, 1)
    # a streamed run builds the model on the device before its blocks move out: its work starts after that
    peaks = [f.get("peak_gpu_bytes") for phase, f in phases.items() if f.get("peak_gpu_bytes")
             and not (streamed and phase in ("build", "stream"))]
    if peaks and streamed:
        held = lambda c: (total_params(c) - (c["num_hidden_layers"] - 2) * block_params(c)) * dtype_bytes  # noqa: E731
        out["peak_gpu_bytes"] = round(max(peaks) - held(config) + held(target))
    elif peaks:
        ratio = max(peaks) / (total_params(config) * dtype_bytes)
        out["peak_gpu_bytes"] = round(ratio * model_t)
    return out


def _stream_figures(model) -> dict:
    """What streaming moved: blocks fetched onto the device and their bytes, over every phase."""
    from mixprec.streaming import stream_of
    stream = stream_of(model)
    if stream is None:
        return {}
    sizes = stream.block_bytes
    return {"blocks": len(sizes), "block_bytes": max(sizes), "fetches": stream.fetches,
            "fetched_bytes": stream.fetched_bytes, "fetched_models": round(stream.fetched_bytes / max(sum(sizes), 1), 2)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Phases:
    """Wall time and peak GPU memory of each phase."""

    def __init__(self, device: torch.device, verbose: bool = True):
        self.device, self.figures, self.verbose = device, {}, verbose

    def __call__(self, name: str, fn, *args, **kwargs):
        _sync(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        _sync(self.device)
        figures = {"seconds": round(time.perf_counter() - start, 3)}
        if self.device.type == "cuda":
            figures["peak_gpu_bytes"] = torch.cuda.max_memory_allocated(self.device)
            figures["gpu_bytes_after"] = torch.cuda.memory_allocated(self.device)
        self.figures[name] = figures
        if self.verbose:
                print(f"{name:<9} {figures['seconds']:9.1f} s" + (f"   peak GPU {figures['peak_gpu_bytes'] / 2**30:6.2f} GiB"
                                                            if "peak_gpu_bytes" in figures else ""), flush=True)
        return result


def build(shape: str, dtype: torch.dtype, device: torch.device, attention: str, seed: int) -> CausalLM:
    from transformers import AutoModelForCausalLM, LlamaConfig
    config = LlamaConfig(max_position_embeddings=8192, **SHAPES[shape])
    torch.manual_seed(seed)
    with torch.device(device):
        lm = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attention)
    return CausalLM(lm).eval()


def init_distributed(device: str) -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, torch.device(device)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda":
        torch.cuda.set_device(local)
    torch.distributed.init_process_group(backend="nccl" if device == "cuda" else "gloo")
    return torch.distributed.get_rank(), world, torch.device("cuda", local) if device == "cuda" else torch.device(device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=list(SHAPES), default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=list(DTYPES), default=None, help="default: bf16 on cuda, fp32 on cpu")
    parser.add_argument("--samples", type=int, default=16, help="calibration sequences (N)")
    parser.add_argument("--length", type=int, default=512, help="tokens per sequence (L)")
    parser.add_argument("--batch", type=int, default=4, help="sequences per batch")
    parser.add_argument("--candidates", default="w4g128,w8,fp16")
    parser.add_argument("--metric", default="kl", help="kl or sqnr (output metrics), or any other metric")
    parser.add_argument("--around", default=None, metavar="CAND",
                        help="measure around the uniform plan at CAND (the never-worse issue's in-context metric; "
                        "replaces --metric)")
    parser.add_argument("--prefix", choices=("auto", "blocks", "none"), default="auto",
                        help="how forks share the float prefix (auto: torch.fx, else blocks)")
    parser.add_argument("--attn", choices=("eager", "sdpa"), default="sdpa")
    parser.add_argument("--budget", default="bits=5")
    parser.add_argument("--rounding", default="nearest", help="nearest or gptq")
    parser.add_argument("--no-quantize", action="store_true", help="stop after solve")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--suffix", default="", help="added to the result file name")
    parser.add_argument("--out", help="write the JSON here instead of benchmarks/results/")
    parser.add_argument("--run-dir", action="store_true",
                        help="use a run directory in one process too (as the command line does: the weights are "
                             "hashed for its fingerprint), for a like-for-like comparison with torchrun")
    parser.add_argument("--run-path", help="the run directory to use and keep: an analysis stopped part-way resumes "
                                           "from its finished entries (their seconds are in the earlier attempt's log)")
    parser.add_argument("--uniform", help="skip analyze and solve: quantize the uniform plan of this candidate "
                                          "(e.g. the time of --rounding gptq alone)")
    parser.add_argument("--save-table", help="also save the sensitivity table in this directory (rank 0)")
    parser.add_argument("--stream", action="store_true",
                        help="stream the decoder layers from CPU memory (mixprec.streaming): the model is built on the "
                             "device, then its blocks move to page-locked CPU memory before the analysis")
    args = parser.parse_args(argv)
    rank, world, device = init_distributed(args.device)
    dtype = DTYPES[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    phases = Phases(device, verbose=rank == 0)
    model = phases("build", build, args.shape, dtype, device, args.attn, args.seed)
    if args.stream:
        from mixprec.streaming import stream_blocks
        phases("stream", stream_blocks, model, device)
    generator = torch.Generator().manual_seed(args.seed + 1)
    vocab = SHAPES[args.shape]["vocab_size"]
    tokens = torch.randint(0, vocab, (args.samples, args.length), generator=generator)
    data = list(tokens.split(args.batch))
    groups = phases("groups", discover_groups, model, tokens[:1].to(device))
    candidates = parse_candidates(args.candidates)
    # Under torchrun the ranks' entries meet in a run directory and rank 0 merges them (claiming it hashes the
    # weights, which is part of the analyze time); one process needs none.
    run_dir = None
    if args.run_path:
        run_dir = Path(args.run_path)
    elif world > 1 or args.run_dir:
        run_dir = Path(tempfile.gettempdir()) / f"mixprec_llm_scale_{args.shape}_{os.environ.get('MASTER_PORT')}"
        if rank == 0 and run_dir.exists():
            shutil.rmtree(run_dir)
        if world > 1:
            torch.distributed.barrier()
    resumed = run_dir is not None and (run_dir / "run.json").is_file()
    metric = args.metric
    if args.around:
        from mixprec.sensitivity.around import Around
        metric = Around(base=args.around)

    def analyze():
        return mixprec.analyze(model, data, candidates, metric, run_dir, groups=groups, device=device,
                               progress=rank == 0, prefix=args.prefix, stream=args.stream)
    if args.uniform:
        from mixprec.plan import Plan
        analysis, meta, plan = None, {}, Plan.uniform(groups, args.uniform)
    else:
        analysis = phases("analyze", analyze)
        meta = analysis.table.metadata
    if rank != 0:
        torch.distributed.destroy_process_group()
        return 0
    if analysis is not None:
        if args.save_table:
            analysis.table.save(args.save_table)
        plan = phases("solve", analysis.solve, args.budget)
    layers = SHAPES[args.shape]["num_hidden_layers"]
    block = model.lm.model.layers[0]
    block_params = sum(p.numel() for p in block.parameters())
    total_params = sum(p.numel() for p in model.parameters())
    if not args.no_quantize:  # in place, as `mixprec quantize` does: the float model is not needed again
        result = phases("quantize", quantize_plan, model, plan, data, groups, rounding=args.rounding, device=device,
                        progress=True, inplace=True, stream=args.stream)
        del result
    per_block = {"params": block_params, "bytes": block_params * dtype.itemsize,
                 **{f"{phase}_seconds": round(f["seconds"] / layers, 4) for phase, f in phases.figures.items()
                    if phase in ("analyze", "quantize")}}
    report = {
        "note": "random weights and random tokens: only times, forward-equivalents and memory are meaningful",
        "command": ("torchrun --nproc_per_node %d " % world if world > 1 else "python ") + " ".join(
            sys.argv[:1] + (sys.argv[1:] if argv is None else argv)),
        "shape": args.shape, "config": SHAPES[args.shape], "dtype": str(dtype).replace("torch.", ""),
        "params": total_params, "model_bytes": total_params * dtype.itemsize, "blocks": layers,
        "groups": len(groups), "candidates": args.candidates,
        "metric": f"around {args.around}" if args.around else args.metric,
        "calibration": {"sequences": args.samples, "tokens_per_sequence": args.length, "batch": args.batch},
        "processes": world, "run_directory": run_dir is not None, "phases": phases.figures,
        "offload": os.environ.get("MIXPREC_OFFLOAD", "auto"),
        "stream": _stream_figures(model) if args.stream else None,
        "resumed": resumed,
        "analyze": None if analysis is None else {"forward_equivalents": meta.get("forward_equivalents"),
                    "forward_equivalents_of": "rank 0's share of the groups" if world > 1 else "all groups",
                    "naive_forward_equivalents": len(groups) * len(candidates) * len(data),
                    "prefix_sharing": meta.get("prefix_sharing"), "fallback_reason": meta.get("fallback_reason"),
                    "table_seconds": meta.get("seconds")},
        "plan": {"budget": None if args.uniform else args.budget, "candidates_used": sorted(set(plan.assignments.values())),
                 "guard": (plan.metadata.get("guard") or {}).get("chosen")},
        "per_block": per_block, "rounding": args.rounding,
        # from the real shapes only (a tiny model's times are overheads, not per-block work)
        "extrapolated_70b": extrapolate(SHAPES[args.shape], LLAMA_70B, phases.figures, dtype.itemsize, args.rounding,
                                        args.stream)
        if args.shape in ("1b", "8b") else None,
        "environment": {"mixprec": __version__, "torch": torch.__version__, "device": str(device),
                        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
                        or platform.machine(), "cpu_count": os.cpu_count(), "threads": torch.get_num_threads()},
    }
    out = Path(args.out) if args.out else RESULTS / f"llm_scale_{args.shape}{'_' + args.suffix if args.suffix else ''}.json"
    write_json_atomic(out, report)
    fe = report["analyze"]
    print((f"analyze: {fe['forward_equivalents']:.1f} forward-equivalents ({fe['prefix_sharing']}), naive "
           f"{fe['naive_forward_equivalents']}; " if fe and fe["forward_equivalents"] is not None else "")
          + f"wrote {out}")
    if world > 1:
        torch.distributed.destroy_process_group()
    if run_dir is not None and not args.run_path:
        shutil.rmtree(run_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
