"""The mse range search, one clipping factor a pass against several factors a pass, same rows, same run.

    python benchmarks/range_search.py [--device cpu|cuda] [--repeats 5]

Every activation quantizer of every plan a search measures chooses its range by this search, on a
sample of up to 2^20 of its inputs (mixprec.quantizers.ActivationQuantizer), and small layers'
weights too: 41 factors, each a few element-wise kernels. One factor a pass is the search as it was
first written; mixprec now tries as many factors a pass as ``MSE_BATCH_ELEMENTS`` (CPU) or
``MSE_BATCH_ELEMENTS_CUDA`` (GPU) elements allow. The benchmark times both on activation-like samples
and weight-like rows, and counts the rows whose choice differs (it must be none).
Writes benchmarks/results/range_search_<device>.json and .md.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from run import RESULTS, save_result  # noqa: E402

from mixprec import __version__  # noqa: E402
from mixprec import quantizers  # noqa: E402
from mixprec.candidates import parse_candidate  # noqa: E402

SHAPES = {"activation sample, 2^20 values": (1, 1 << 20), "activation sample, 2^16 values": (1, 1 << 16),
          "conv weight 64 x 576": (64, 576), "linear weight 512 x 4096": (512, 4096)}
FORMATS = ("w4a8", "w8a8", "w3a8-asym", "fp8")


def one_factor_a_pass(rows: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, fmt) -> torch.Tensor:
    """The search as first written: one factor of MSE_GRID a pass, the first of least error kept."""
    best_err = torch.full_like(lo, float("inf"))
    choice = torch.full(lo.shape, len(quantizers.MSE_GRID), dtype=torch.uint8, device=lo.device)
    for i, alpha in enumerate(quantizers.MSE_GRID.tolist()):
        err = quantizers._squared_error(rows, alpha * lo, alpha * hi, fmt)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        choice.masked_fill_(better, i)
    return choice


def _seconds(fn, repeats: int, *args) -> float:
    times = []
    for _ in range(repeats):
        if args[0].is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn(*args)
        if args[0].is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def benchmark(device: str, repeats: int) -> dict:
    generator = torch.Generator().manual_seed(0)
    rows_out = []
    for label, shape in SHAPES.items():
        activation = shape[0] == 1
        values = torch.randn(*shape, generator=generator) * torch.rand(shape[0], 1, generator=generator) * 3
        values = (torch.relu(values) if activation else values).to(device)
        lo, hi = values.amin(dim=1, keepdim=True), values.amax(dim=1, keepdim=True)
        for name in FORMATS:
            candidate = parse_candidate(name)
            fmt = candidate.activation if activation else candidate.weight
            before, after = one_factor_a_pass(values, lo, hi, fmt), quantizers._mse_choice(values, lo, hi, fmt)
            rows_out.append({"rows": label, "format": str(name) + (" (activation)" if activation else " (weight)"),
                             "one_factor_ms": round(1e3 * _seconds(one_factor_a_pass, repeats, values, lo, hi, fmt), 3),
                             "batched_ms": round(1e3 * _seconds(quantizers._mse_choice, repeats, values, lo, hi, fmt), 3),
                             "rows_choosing_differently": int((before != after).sum()), "row_count": before.numel()})
    return {"device": device, "rows": rows_out, "repeats": repeats,
            "command": f"python benchmarks/range_search.py --device {device} --repeats {repeats}",
            "environment": {"mixprec": __version__, "torch": torch.__version__, "threads": torch.get_num_threads(),
                            "processor": platform.processor() or platform.machine(),
                            "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
                            "batch_elements": quantizers.MSE_BATCH_ELEMENTS_CUDA if device == "cuda"
                            else quantizers.MSE_BATCH_ELEMENTS}}


def markdown(result: dict) -> str:
    env = result["environment"]
    where = env["gpu"] or f"{env['processor']}, {env['threads']} threads"
    lines = [f"## The mse range search, one factor a pass against several ({result['device']})", "",
             f"`{result['command']}` ({where}; torch {env['torch']}; up to {env['batch_elements']:,} elements a pass; "
             f"best of {result['repeats']}).", "",
             "| rows | format | one factor a pass, ms | several a pass, ms | speed-up | rows choosing differently |",
             "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['rows']} | {r['format']} | {r['one_factor_ms']:.2f} | {r['batched_ms']:.2f} | "
                     f"{r['one_factor_ms'] / max(r['batched_ms'], 1e-9):.1f}x | "
                     f"{r['rows_choosing_differently']} of {r['row_count']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    result = benchmark(args.device, args.repeats)
    save_result(RESULTS / f"range_search_{args.device}", result, markdown(result))


if __name__ == "__main__":
    main()
