"""NNCF's ratio-1.0 compression against mixprec's uniform plan of the same format, code by code.

    pip install nncf==3.4.0      # the benchmark extra: pip install -e ".[bench]"
    python benchmarks/nncf_codes.py smollm2 [--device cpu] [--windows 40]

At ratio 1.0 NNCF puts every Linear layer on one 4-bit format (INT4_SYM or INT4_ASYM, groups of 32,
or 64 here) and the embedding/lm_head on INT8_ASYM per channel: a uniform plan. mixprec's uniform plan
of the same formats (w4gG-minmax or w4gG-asym-minmax, embedding/lm_head w8-asym-minmax) should give
the same model. For each configuration this script compresses with NNCF, reads back NNCF's integer
codes and scales from its decompressors, and compares them with mixprec's, layer by layer:

- codes: how many of the weights' integer codes differ;
- scales: the largest relative difference of a scale (NNCF keeps its scales in float16);
- the dequantized weights: NNCF multiplies codes by float16 scales in float16;
- perplexity of NNCF's model, of mixprec's uniform plan, of mixprec's plan with the 4-bit layers'
  weights replaced by NNCF's dequantized ones, and with every layer's replaced (NNCF's model again,
  through mixprec's layers: a check that nothing else differs).

Writes benchmarks/results/nncf_codes_<model>.json and .md.
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from pathlib import Path

import torch

import mixprec
from mixprec import __version__
from mixprec.builtin import get_builtin
from mixprec.candidates import parse_candidate
from mixprec.errors import MissingDataError
from mixprec.plan import write_json_atomic
from mixprec.quantizers import int_qparams

RESULTS = Path(__file__).parent / "results"
# the group sizes SmolLM2's 576-wide inputs allow (NNCF refuses 128: InvalidGroupSizeError)
CONFIGS = [(mode, group) for mode in ("INT4_SYM", "INT4_ASYM") for group in (32, 64)]
EMBEDDING = "w8-asym-minmax"  # NNCF's backup mode, INT8_ASYM per channel


def mixprec_candidate(mode: str, group: int) -> str:
    return f"w4g{group}{'-asym' if mode == 'INT4_ASYM' else ''}-minmax"


def decompressors(compressed: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Layer name -> NNCF's weight decompressor (its hooks are named after the weight they decompress)."""
    out = {}
    for name, module in compressed.named_modules():
        if "Decompressor" in type(module).__name__ and "post_hooks." in name:
            layer = name.split("post_hooks.", 1)[1].rsplit(":weight__", 1)[0].replace(":", ".")
            out[layer] = module
    return out


def codes_and_scales(weight: torch.Tensor, candidate: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """mixprec's integer codes, scales and zero-points of ``weight`` on ``candidate`` (minmax range),
    one row per quantization group."""
    fmt = parse_candidate(candidate).weight
    group = fmt.group_size or weight.shape[-1]
    rows = weight.detach().float().reshape(-1, group)
    scale, zero_point = int_qparams(rows.amin(1, keepdim=True), rows.amax(1, keepdim=True), fmt)
    codes = torch.clamp(torch.round(rows / scale) + zero_point, fmt.qmin, fmt.qmax)
    return codes, scale, zero_point


def nncf_tensors(module: torch.nn.Module, packed: torch.Tensor, rows: int):
    """NNCF's dequantized weight (rows, group), scale (rows, 1) and zero-point (rows, 1) or None."""
    with torch.no_grad():
        dequantized = module(packed).float().reshape(rows, -1)
    buffers = dict(module.named_buffers())
    scale = buffers["_scale"].float().reshape(rows, 1)
    zero_point = buffers.get("_zero_point")
    if zero_point is not None:
        zero_point = zero_point.float().reshape(-1)
        if zero_point.numel() != rows:  # packed 4-bit zero-points: unpack the low and high nibbles
            low, high = (zero_point.to(torch.uint8) & 15), (zero_point.to(torch.uint8) >> 4)
            zero_point = torch.stack([low, high], -1).reshape(-1)[:rows].float()
        zero_point = zero_point.reshape(rows, 1)
    return dequantized, scale, zero_point


def compare_layers(model, compressed, plan) -> tuple[dict, dict[str, torch.Tensor]]:
    """Per-format totals of differing codes and scale differences, and NNCF's dequantized weights
    (layer -> (candidate, weight))."""
    totals: dict[str, dict] = {}
    nncf_weights = {}
    layer_candidate = {layer: plan.assignments[group] for group, layers in plan.groups.items() for layer in layers}
    for layer, module in decompressors(compressed).items():
        weight = model.get_submodule(layer).weight
        candidate = layer_candidate[layer]
        codes, scale, zero_point = codes_and_scales(weight, candidate)
        dequantized, nncf_scale, nncf_zero = nncf_tensors(module, compressed.get_submodule(layer).weight,
                                                          codes.shape[0])
        nncf_codes = torch.round(dequantized / nncf_scale + (nncf_zero if nncf_zero is not None else 0))
        t = totals.setdefault(candidate, {"layers": 0, "codes": 0, "codes_differing": 0, "differing_at_ties": 0,
                                          "zero_points_differing": 0, "largest_scale_rel_difference": 0.0,
                                          "largest_dequantized_difference": 0.0})
        t["layers"] += 1
        t["codes"] += codes.numel()
        differ = nncf_codes != codes
        t["codes_differing"] += int(differ.sum())
        # a tie: x / scale half-way between two codes, which rounding half to even settles by the parity of what
        # is rounded (NNCF: x / scale + zero-point; mixprec: x / scale, then + zero-point)
        ratio = weight.detach().float().reshape(codes.shape) / scale
        t["differing_at_ties"] += int((differ & ((ratio - ratio.floor() - 0.5).abs() < 1e-4)).sum())
        if nncf_zero is not None:
            t["zero_points_differing"] += int((nncf_zero != zero_point).sum())
        rel = ((nncf_scale - scale).abs() / scale.abs()).max().item()
        t["largest_scale_rel_difference"] = max(t["largest_scale_rel_difference"], rel)
        mine = (codes - zero_point) * scale
        t["largest_dequantized_difference"] = max(t["largest_dequantized_difference"],
                                                  (mine - dequantized).abs().max().item())
        nncf_weights[layer] = (candidate, dequantized.reshape(weight.shape))
    return totals, nncf_weights


def measure(model_name: str, device: str, windows: int | None) -> dict:
    import nncf
    builtin = get_builtin(model_name)
    model = builtin.model().eval()
    calibration = builtin.calibration(builtin.default_calibration_samples)
    evaluate = builtin.evaluate if windows is None else (lambda m: builtin.evaluate(m, windows))

    def metric(m) -> float:
        return evaluate(m.to(device)).value

    float_value = metric(copy.deepcopy(model))
    print(f"{model_name}: float {float_value:.3f}", flush=True)
    rows = []
    for mode, group in CONFIGS:
        start = time.perf_counter()
        compressed = nncf.compress_weights(copy.deepcopy(model), mode=getattr(nncf.CompressWeightsMode, mode),
                                           group_size=group, ratio=1.0, dataset=nncf.Dataset(calibration))
        seconds = time.perf_counter() - start
        candidate = mixprec_candidate(mode, group)
        groups = mixprec.discover_groups(model, calibration[0], pins={"*lm_head*": EMBEDDING})
        plan = mixprec.Plan.uniform(groups, candidate)
        quantized = mixprec.apply(model, plan, calibration)
        totals, nncf_weights = compare_layers(model, compressed, plan)
        row = {"mode": mode, "group_size": group, "candidate": candidate, "compress_seconds": round(seconds, 1),
               "formats": totals, "nncf": metric(compressed), "mixprec": metric(quantized)}
        del compressed
        sharing = {}  # a tied weight (lm_head = embedding): NNCF decompresses it once, for every layer using it
        for layer in (layer for layers in plan.groups.values() for layer in layers):
            sharing.setdefault(model.get_submodule(layer).weight.data_ptr(), []).append(layer)
        for key, which in (("mixprec_nncf_4bit", lambda c: c == candidate), ("mixprec_nncf_all", lambda c: True)):
            for layer, (layer_candidate, weight) in nncf_weights.items():
                if which(layer_candidate):
                    for user in sharing[model.get_submodule(layer).weight.data_ptr()]:
                        quantized.get_submodule(user).layer.weight.data.copy_(weight.to(device))
            row[key] = metric(quantized)
        rows.append(row)
        differing = sum(t["codes_differing"] for t in totals.values())
        print(f"{mode.lower()} g{group}: NNCF {row['nncf']:.4f}, mixprec {row['mixprec']:.4f}, with NNCF's 4-bit "
              f"weights {row['mixprec_nncf_4bit']:.4f}, with all of NNCF's {row['mixprec_nncf_all']:.4f}; codes "
              f"differing {differing:,} of {sum(t['codes'] for t in totals.values()):,}", flush=True)
    return {"model": model_name, "float": float_value, "metric": "perplexity", "windows": windows, "rows": rows,
            "embedding": EMBEDDING,
            "command": "python " + " ".join(sys.argv),
            "environment": {"mixprec": __version__, "nncf": nncf.__version__, "torch": torch.__version__,
                            "device": device, "python": platform.python_version(), "machine": platform.machine(),
                            "threads": torch.get_num_threads()}}


def markdown(r: dict) -> str:
    env = r["environment"]
    windows = "" if r["windows"] is None else " (first %d evaluation windows)" % r["windows"]
    lines = [f"# NNCF at ratio 1.0 against mixprec's uniform plan, code by code: {r['model']}", "",
             f"`{r['command']}` — NNCF {env['nncf']}, torch {env['torch']}, {env['device']}. Float perplexity "
             f"{r['float']:.3f}{windows}. mixprec's uniform plan: every Linear on the candidate shown, the "
             f"embedding/lm_head (tied) on {EMBEDDING}, as NNCF keeps it (INT8_ASYM per channel). Codes and "
             "scales per layer format (4-bit layers / the embedding); perplexity of NNCF's model, of mixprec's "
             "plan, of mixprec's plan with the 4-bit layers' weights as NNCF dequantizes them, and with every "
             "layer's (NNCF's model through mixprec's layers).", "",
             "| NNCF | mixprec | codes differing (4-bit / embedding) | of them at rounding ties | largest relative "
             "scale difference | largest dequantized difference | NNCF | mixprec | + NNCF's 4-bit weights | + NNCF's "
             "embedding |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        four, eight = row["formats"][row["candidate"]], row["formats"][EMBEDDING]
        lines.append(
            f"| {row['mode'].lower()} g{row['group_size']} | {row['candidate']} | "
            f"{four['codes_differing']:,} of {four['codes']:,} / {eight['codes_differing']:,} of {eight['codes']:,} | "
            f"{four.get('differing_at_ties', 0):,} / {eight.get('differing_at_ties', 0):,} | "
            f"{four['largest_scale_rel_difference']:.1e} / {eight['largest_scale_rel_difference']:.1e} | "
            f"{four['largest_dequantized_difference']:.1e} / {eight['largest_dequantized_difference']:.1e} | "
            f"{row['nncf']:.4f} | {row['mixprec']:.4f} | {row['mixprec_nncf_4bit']:.4f} | {row['mixprec_nncf_all']:.4f} |")
    four_same = all(row["formats"][row["candidate"]]["codes_differing"] == 0 for row in r["rows"])
    differing = sum(t["codes_differing"] for row in r["rows"] for t in row["formats"].values())
    at_ties = sum(t.get("differing_at_ties", 0) for row in r["rows"] for t in row["formats"].values())
    check = max(abs(row["mixprec_nncf_all"] - row["nncf"]) / row["nncf"] for row in r["rows"])
    gaps = [100 * (row["mixprec"] - row["nncf"]) / row["nncf"] for row in r["rows"]]
    lines += ["", f"The 4-bit codes: {'the same at every weight of every configuration' if four_same else 'some differ'};"
              f" of all the codes that differ, {at_ties:,} of {differing:,} are at rounding ties (x / scale half-way "
              "between two codes: NNCF rounds x / scale + zero-point half to even, mixprec x / scale, then adds the "
              "zero-point, and where the zero-point is odd the two pick the two neighbours)."
              f" mixprec's plan against NNCF's model: {min(gaps):+.3f} % to {max(gaps):+.3f} % perplexity. NNCF keeps "
              "its scales in float16 and multiplies them by the codes in float16; mixprec keeps float32 scales (what "
              "its ONNX export writes for a float32 model). Through mixprec's layers, NNCF's weights give NNCF's "
              f"perplexity within {100 * check:.4f} %: the two tools' models differ by that float16 arithmetic and by "
              "the codes counted above, nothing else."]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", choices=("smollm2",))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--windows", type=int, default=None, help="evaluation windows (default: the model's own)")
    args = parser.parse_args()
    try:
        import nncf  # noqa: F401
    except ImportError:
        print("skipped: nncf is not installed (pip install -e \".[bench]\")")
        return 0
    try:
        result = measure(args.model, args.device, args.windows)
    except MissingDataError as exc:
        print(f"skipped {args.model}: {exc}")
        return 0
    name = f"nncf_codes_{args.model}"
    write_json_atomic(RESULTS / f"{name}.json", result)
    (RESULTS / f"{name}.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
