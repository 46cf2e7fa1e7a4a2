"""The symmetric integer grid: signed scale (all 2^B levels) against max|x| / qmax (2^B - 1 levels).

    python benchmarks/symmetric_grid.py smollm2 [--limit 10] [--candidates w4g64,w3g64] [--nncf]
    python benchmarks/symmetric_grid.py resnet20 [--candidates w4a8,w3a8]

mixprec's symmetric formats use a signed scale (mixprec.quantizers.int_qparams): the end of the
range of larger magnitude lands on qmin = -2^(B-1), so all 2^B codes are used. The former grid,
scale = max|x| / qmax, left qmin unused. This script applies the uniform plan of each candidate
(for LLMs with lm_head and its tied embedding at w8, as NNCF keeps them; for CNNs with the first
and last groups at w8a8) with both grids and both weight range methods (minmax, mse), on the same
weights and data, and evaluates each on the model's evaluation split (its first ``--limit``
windows or images). The former grid is this file's ``unsigned_qparams``, swapped in for the run.
With --nncf (and nncf installed), NNCF's INT4_SYM (data-free, ratio 1.0) at the same group size
is evaluated on the same windows. Writes benchmarks/results/symmetric_grid_<model>.json and .md.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

import mixprec
import mixprec.quantizers as quantizers
from mixprec.batches import split_item
from mixprec.builtin import get_builtin
from mixprec.errors import MissingDataError
from mixprec.pipeline import environment
from mixprec.plan import write_json_atomic

RESULTS = Path(__file__).parent / "results"
signed_qparams = quantizers.int_qparams


def unsigned_qparams(lo, hi, fmt):
    """The former symmetric grid: scale = max|x| / qmax, zero-point 0 (code qmin never used)."""
    if not fmt.symmetric:
        return signed_qparams(lo, hi, fmt)
    scale = torch.maximum(-lo, hi).clamp_min(0) / fmt.qmax
    scale = torch.where(scale > torch.finfo(torch.float32).tiny, scale, torch.ones_like(scale))
    return scale, torch.zeros_like(scale)


@contextmanager
def grid(kind: str):
    """Every module that bound int_qparams at import sees the chosen grid for the duration."""
    from mixprec.export import onnx_graph
    from mixprec.rounding import gptq
    modules = (quantizers, gptq, onnx_graph)
    fn = signed_qparams if kind == "signed" else unsigned_qparams
    saved = [m.int_qparams for m in modules]
    for m in modules:
        m.int_qparams = fn
    try:
        yield
    finally:
        for m, f in zip(modules, saved):
            m.int_qparams = f


def plan_for(groups, candidate: str, llm: bool):
    plan = mixprec.Plan.uniform(groups, candidate)
    if llm:
        for g in groups:
            if any(name.endswith("lm_head") for name in g.layer_names):
                plan.assignments[g.name] = "w8"
    else:
        names = [g.name for g in groups]
        plan.assignments[names[0]] = plan.assignments[names[-1]] = "w8a8"
    return plan


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--candidates", default=None)
    parser.add_argument("--limit", type=int, default=None, help="evaluate on the first N windows or images")
    parser.add_argument("--calibration-samples", type=int, default=None)
    parser.add_argument("--nncf", action="store_true")
    args = parser.parse_args()
    try:
        builtin = get_builtin(args.model)
        model = builtin.model().eval()
        data = builtin.calibration(args.calibration_samples or builtin.default_calibration_samples)
    except MissingDataError as exc:
        print(f"skipped {args.model}: {exc}")
        return 0
    llm = builtin.output == "tokens"
    candidates = (args.candidates or ("w4g64,w3g64" if llm else "w4a8,w3a8")).split(",")
    groups = mixprec.discover_groups(model, split_item(data[0])[0])
    evaluate = (lambda m: builtin.evaluate(m, limit=args.limit)) if args.limit else builtin.evaluate
    reference = evaluate(model)
    print(f"{args.model}: float {reference}", flush=True)
    rows = []
    for cand in candidates:
        plan = plan_for(groups, cand, llm)
        for method in ("minmax", "mse"):
            for kind in ("unsigned", "signed"):
                start = time.perf_counter()
                with grid(kind):
                    quantized = mixprec.apply(model, plan, data, weight_method=method, progress=False)
                    result = evaluate(quantized)
                rows.append({"candidate": cand, "weight_range": method, "grid": kind, "metric": result.to_dict(),
                             "seconds": round(time.perf_counter() - start, 1)})
                print(f"{cand:<8} {method:<7} {kind:<9} {result}", flush=True)
                del quantized
    nncf_rows = []
    if args.nncf and llm:
        try:
            import nncf
        except ImportError:
            print("nncf not installed: no NNCF row")
        else:
            for cand in candidates:
                fmt = mixprec.parse_candidate(cand).weight
                if fmt.bits != 4 or fmt.granularity != "group":
                    continue
                compressed = nncf.compress_weights(copy.deepcopy(model), mode=nncf.CompressWeightsMode.INT4_SYM,
                                                   group_size=fmt.group_size, ratio=1.0, dataset=nncf.Dataset(data))
                result = evaluate(compressed)
                nncf_rows.append({"config": f"INT4_SYM g{fmt.group_size} ratio 1.0, data-free",
                                  "metric": result.to_dict(), "nncf": nncf.__version__})
                print(f"NNCF INT4_SYM g{fmt.group_size}: {result}", flush=True)
    report = {"model": args.model, "reference": reference.to_dict(), "limit": args.limit, "rows": rows,
              "nncf": nncf_rows, "pinned": "lm_head (and its tied embedding) at w8" if llm else "first and last at w8a8",
              "command": "python " + " ".join(["benchmarks/symmetric_grid.py", *sys.argv[1:]]),
              "environment": environment("cpu")}
    out = RESULTS / f"symmetric_grid_{args.model}.json"
    write_json_atomic(out, report)
    out.with_suffix(".md").write_text(markdown(report))
    print(f"wrote {out} and .md")
    return 0


def markdown(r: dict) -> str:
    ref = r["reference"]
    lines = [f"## Symmetric grid, {r['model']}: signed scale against max|x| / qmax", "",
             f"Uniform plans ({r['pinned']}); float {ref['name']} {ref['value']:.4g}"
             f"{' on the first ' + str(r['limit']) + ' evaluation items' if r.get('limit') else ''}.", "",
             "| candidate | weight range | max\\|x\\|/qmax (former) | signed scale (now) |", "|---|---|---|---|"]
    by = {(x["candidate"], x["weight_range"], x["grid"]): x["metric"]["value"] for x in r["rows"]}
    for cand, method in dict.fromkeys((x["candidate"], x["weight_range"]) for x in r["rows"]):
        lines.append(f"| {cand} | {method} | {by[(cand, method, 'unsigned')]:.4g} | {by[(cand, method, 'signed')]:.4g} |")
    for row in r.get("nncf", []):
        lines.append(f"| NNCF {row['config']} | | | {row['metric']['value']:.4g} |")
    env = r["environment"]
    lines += ["", f"`{r['command']}` — {env['device']}, {env['threads']} threads, torch {env['torch']}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
