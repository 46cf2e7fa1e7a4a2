"""FP32 reference figures of the text built-ins on their full evaluation sets.

These are the baselines every quantized result is compared with, so they must reproduce
../shared/data/README.md: MiniLM STS-B test Spearman 82.03; SmolLM2 WikiText-2 perplexity 23.53
on the first 20 windows of 1,024 tokens (the adapter's own evaluation, 40 x 512, gives 29.0).
Usage:

    python benchmarks/fp32_text.py [minilm smollm2]

Prints a table and writes benchmarks/results/fp32_text.json.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import time
from pathlib import Path

import torch

from mixprec.builtin import get_builtin, minilm, smollm2
from mixprec.errors import MixprecError

NAMES = ("minilm", "smollm2")
REFERENCE = {("minilm", "STS-B test"): 82.03, ("smollm2", "WikiText-2 20x1024"): 23.53}
RESULTS = Path(__file__).resolve().parent / "results" / "fp32_text.json"


def timed(fn, *args):
    start = time.perf_counter()
    value = fn(*args)
    return value, round(time.perf_counter() - start, 2)


def prepare(name: str):
    """(builtin, model, seconds to make the model, seconds to make the data), timed apart."""
    b = get_builtin(name)
    if name == "smollm2":  # a cold cache converts the GGUF here, so it is timed on its own
        _, convert_s = timed(smollm2.converted_dir)
    model, load_s = timed(b.model)
    data = smollm2.token_ids if name == "smollm2" else lambda: minilm.pairs(minilm.TEST)
    _, data_s = timed(data)
    timings = {"load_s": load_s, "data_s": data_s}
    if name == "smollm2":
        timings["convert_or_cache_s"] = convert_s
    return b, model, timings


def measure(name: str) -> list[dict]:
    b, model, timings = prepare(name)
    rows = []
    if name == "minilm":
        result, eval_s = timed(b.evaluate, model)
        rows.append({"split": "STS-B test", "metric": result.name, "value": result.value,
                     "samples": result.details["pairs"], "eval_s": eval_s})
    else:
        result, eval_s = timed(b.evaluate, model)
        rows.append({"split": "WikiText-2 40x512", "metric": result.name, "value": result.value,
                     "samples": result.details["windows"], "tokens": result.details["tokens"], "eval_s": eval_s})
        (ppl, tokens), eval_s = timed(smollm2.perplexity, model, smollm2.token_ids(), 1024, 20)
        rows.append({"split": "WikiText-2 20x1024", "metric": "perplexity", "value": ppl,
                     "samples": 20, "tokens": tokens, "eval_s": eval_s})
    params = sum(p.numel() for p in model.parameters())
    for row in rows:
        row.update(model=name, parameters=params, reference=REFERENCE.get((name, row["split"])), **timings)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"built-in models to evaluate (default: {' '.join(NAMES)})")
    args = parser.parse_args(argv)
    args.names = args.names or list(NAMES)
    unknown = sorted(set(args.names) - set(NAMES))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(NAMES)}")
    load_before = os.getloadavg()[0]  # other processes inflate the wall times; record it
    rows = []
    for name in args.names:
        try:
            rows += measure(name)
        except MixprecError as exc:
            print(f"{name}: skipped: {exc}")
    print(f"{'model':<10}{'split':<22}{'metric':<12}{'value':>9}{'reference':>10}{'load s':>8}{'eval s':>8}")
    for r in rows:
        reference = f"{r['reference']:10.2f}" if r["reference"] is not None else f"{'':>10}"
        print(f"{r['model']:<10}{r['split']:<22}{r['metric']:<12}{r['value']:9.2f}{reference}"
              f"{r['load_s']:8.1f}{r['eval_s']:8.1f}")
    report = {"results": rows, "torch": torch.__version__, "transformers": importlib.metadata.version("transformers"),
              "threads": torch.get_num_threads(),
              "machine": {"processor": platform.processor() or platform.machine(),
                          "cpu_count": os.cpu_count(), "platform": platform.platform(),
                          "python": platform.python_version(),
                          "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)]},
              "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0 if rows else 1


if __name__ == "__main__":
    raise SystemExit(main())
