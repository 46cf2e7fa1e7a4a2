"""How far ONNX Runtime's int8 kernels drift from mixprec's simulation, quantizer by quantizer.

    python benchmarks/int8_divergence.py efficientnet-lite0 [--plan w8a8] [--images 32]

Exports a uniform plan (with join quantizers) to ONNX Runtime CPU, makes every QuantizeLinear output of the
file a graph output, and runs --images calibration images through the file and through the simulated model.
For each QuantizeLinear, in graph order, it compares the u8 codes the runtime computes with the codes of the
simulated quantizer of the same tensor (the layer whose weight the DequantizeLinear after it feeds, or the
join quantizer of the same name): the fraction that differ and the largest difference. It does so twice:
with the simulation as mixprec runs it for the ort-cpu target, which rounds each integer layer's bias to int32
as the kernels do (mixprec.integer_bias), and without that rounding (``integer_bias.unrounded``). Before
comparing, it checks that the simulated bias rounding is the file's own: per layer, the simulated error against
the int32 bias the file holds (``bias_check``: the largest difference in steps of the bias scale, over channels
whose code float32 holds exactly).
Then it runs the built-in's evaluation through the file once and through both simulations, and counts the
predictions that agree; and once more through the simulation with its layers in float64, which shows how much
of the disagreement any change of float arithmetic makes by itself.
Writes benchmarks/results/int8_divergence_<model>.json and .md.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from export_ort import RESULTS, THREADS, _cpu, _ort_version
from mixprec import __version__
from mixprec.apply import apply
from mixprec.builtin import get_builtin
from mixprec.export import OrtModule, cpu_has_vnni, export
from mixprec.export.ort import make_session
from mixprec.groups import discover_groups
from mixprec.integer_bias import rounding_error, unrounded
from mixprec.plan import Plan, write_json_atomic
from mixprec.quantizers import ActivationQuantizer, int_qparams


def _graph_outputs(path: Path, out: Path) -> tuple:
    """The file again with every QuantizeLinear output a graph output; returns (its graph, its QuantizeLinear
    nodes)."""
    import onnx
    model = onnx.load(str(path))
    names = {o.name for o in model.graph.output}
    nodes = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    for node in nodes:
        if node.output[0] not in names:
            model.graph.output.append(onnx.helper.make_tensor_value_info(node.output[0], onnx.TensorProto.UINT8, None))
    onnx.save(model, str(out))
    return model, nodes


def _quantizer_of(node, model, modules: dict) -> str | None:
    """The simulated quantizer of a QuantizeLinear: a join quantizer of its name, or the input quantizer of the
    layer whose weight the DequantizeLinear after it feeds."""
    join = f"mixprec_joins.{node.name.strip('/').split('/')[0]}"
    if join in modules:
        return join
    dequantized = [n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == node.output[0]]
    for reader in model.graph.node:
        if any(i in dequantized for i in reader.input) and len(reader.input) > 1 \
                and reader.input[1].endswith(".weight_dequantized"):
            name = f"{reader.input[1][:-len('.weight_dequantized')]}.input_quantizer"
            if name in modules:
                return name
    return None


def _codes(quantizer: ActivationQuantizer, x: torch.Tensor) -> np.ndarray:
    scale, zero = int_qparams(quantizer.lo.reshape(1).float(), quantizer.hi.reshape(1).float(), quantizer.fmt)
    return torch.clamp(torch.round(x.float() / scale) + zero, quantizer.fmt.qmin, quantizer.fmt.qmax).to(torch.int64).numpy()


def _compare(sim: np.ndarray, ort: np.ndarray) -> tuple[float, int, bool]:
    """(fraction differing, largest difference, padded); a simulated tensor larger than the runtime's (its zero
    padding, which the exported file moved into the conv) is compared at the offset that matches best."""
    ort = ort.astype(np.int64)
    padded = sim.shape != ort.shape
    if padded:
        if sim.ndim != 4 or sim.shape[:2] != ort.shape[:2]:
            return float("nan"), -1, True
        dh, dw = sim.shape[2] - ort.shape[2], sim.shape[3] - ort.shape[3]
        views = [sim[:, :, i:i + ort.shape[2], j:j + ort.shape[3]] for i in range(dh + 1) for j in range(dw + 1)]
        sim = min(views, key=lambda v: int((v != ort).sum()))
    diff = np.abs(sim - ort)
    return float((diff > 0).mean()), int(diff.max()), padded


def bias_check(quantized: nn.Module, initializers: dict) -> dict:
    """Per layer with an int32 bias in the file: the simulated rounding error (mixprec.integer_bias) against the
    file's, code x bias scale - folded bias, in steps of the bias scale; channels whose code is above 2^24 (where
    float32 no longer holds the product exactly) are left out. Returns {"layers", "worst_steps"}."""
    worst, layers = 0.0, 0
    for name, m in quantized.named_modules():
        fold = getattr(m, "integer_bias", None)
        if fold is None or f"{name}.bias_quantized" not in initializers:
            continue
        code = initializers[f"{name}.bias_quantized"].astype(np.float64)
        scale = initializers[f"{name}.bias_scale"].astype(np.float64)
        factor, shift = fold.factor_shift(m.layer.weight.shape[0], m.layer.weight)
        bias = m.layer.bias.detach().double() if m.layer.bias is not None else torch.zeros_like(factor)
        folded = (factor * bias + shift).numpy()
        simulated = rounding_error(m.layer, m.parsed, m.input_quantizer, fold, m.layer.weight.dim()).numpy()
        steps = np.abs(simulated * factor.numpy() - (code * scale - folded)) / scale
        exact = np.abs(code) < 2 ** 24
        worst, layers = max(worst, float(steps[exact].max(initial=0.0))), layers + 1
    return {"layers": layers, "worst_steps": worst}


class _Float64(nn.Module):
    """``model`` with float64 parameters and buffers, fed float64 inputs; float32 outputs."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.double()).float()


def _predictions(builtin, model: nn.Module) -> torch.Tensor:
    from mixprec.export import _Recorder
    recorder = _Recorder(model)
    builtin.evaluate(recorder)
    return torch.cat(recorder.predictions)


def run(name: str, candidate: str, images: int, samples: int) -> dict:
    from onnx import numpy_helper
    import onnx
    builtin = get_builtin(name)
    model = builtin.model()
    calibration = builtin.calibration(samples)
    groups = discover_groups(model, builtin.example_input())
    plan = Plan.uniform(groups, candidate, {"joins": True})
    quantized = apply(model, plan, calibration, joins=True, progress=False)
    x = torch.cat([b if torch.is_tensor(b) else b[0] for b in calibration])[:images]
    modules = dict(quantized.named_modules())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        result = export(model, plan, calibration, "ort-cpu", path, quantized=quantized, progress=False, threads=THREADS)
        initializers = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
        graph, nodes = _graph_outputs(path, Path(tmp) / "outputs.onnx")
        session = make_session(Path(tmp) / "outputs.onnx", THREADS)
        outputs = dict(zip([o.name for o in session.get_outputs()],
                           session.run(None, {session.get_inputs()[0].name: x.numpy()})))
        rows = [{"node": n.name, "quantizer": _quantizer_of(n, graph, modules)} for n in nodes]
        check = bias_check(quantized, initializers)
        print(f"simulated bias rounding against the file's: {check['layers']} layers, worst "
              f"{check['worst_steps']:.2g} steps", flush=True)
        exported = _predictions(builtin, OrtModule(path, THREADS))
        passes = {}
        for label, rounded in (("simulation without int32 bias rounding", False),
                               ("simulation (int32 bias rounding)", True)):
            seen: dict[str, np.ndarray] = {}
            recorders = [modules[r["quantizer"]].register_forward_hook(
                lambda mod, inp, out, key=r["quantizer"]: seen.__setitem__(key, _codes(mod, inp[0])))
                for r in rows if r["quantizer"]]
            with contextlib.nullcontext() if rounded else unrounded(quantized):
                with torch.no_grad():
                    quantized(x)
                for h in recorders:
                    h.remove()
                for r, n in zip(rows, nodes):
                    if r["quantizer"] in seen:
                        frac, largest, padded = _compare(seen[r["quantizer"]], outputs[n.output[0]])
                        r[label] = {"differ": frac, "largest": largest, "padded": padded}
                start = time.perf_counter()
                simulated = _predictions(builtin, quantized)
            agree = float((simulated == exported).float().mean())
            passes[label] = {"agreement": agree, "predictions": int(exported.numel()),
                             "seconds": time.perf_counter() - start}
            print(f"{label}: predictions agreeing {100 * agree:.2f}% of {exported.numel()}", flush=True)
        # the same simulation with its layers in float64 (its quantizers still round float32 values): how much of
        # the disagreement is the float arithmetic itself, whatever the runtime does
        wide = _predictions(builtin, _Float64(copy.deepcopy(quantized)))
        float64 = {"agreement": float((wide == exported).float().mean()), "predictions": int(exported.numel()),
                   "agreement_with_float32": float((wide == simulated).float().mean())}
        print(f"simulation in float64: agreeing with the file {100 * float64['agreement']:.2f}%, with the float32 "
              f"simulation {100 * float64['agreement_with_float32']:.2f}%", flush=True)
    return {"float64": float64, "model": name, "plan": f"uniform {candidate}, join quantizers", "images": int(x.shape[0]),
            "calibration_samples": samples, "rows": rows, "passes": passes, "bias_check": check,
            "refit_channels": sum(l.get("bias_refit_channels", 0) for l in result.layers),
            "command": "python benchmarks/int8_divergence.py " + " ".join(sys.argv[1:]),
            "environment": {"mixprec": __version__, "torch": torch.__version__, "onnxruntime": _ort_version(),
                            "cpu": _cpu(), "vnni": cpu_has_vnni()}}


def _float64_sentence(r: dict) -> str:
    f = r.get("float64")
    if not f:
        return ""
    return (f" The same simulation with its layers in float64 (quantizers rounding float32 values) agrees with the "
            f"file on {100 * f['agreement']:.2f}% and with itself in float32 on {100 * f['agreement_with_float32']:.2f}%: "
            "what is left is float rounding at the quantizers' rounding boundaries, which any change of arithmetic "
            "moves.")


def _columns(r: dict) -> str:
    """What the two pairs of columns are (results made before the simulation rounded biases had them the other way)."""
    if "bias_check" not in r:
        return ("First pair of columns: the simulation as it was, without the integer kernels' int32 bias rounding; "
                "second pair: with that rounding added from the file's own biases (forward hooks). ")
    c = r["bias_check"]
    return ("First pair of columns: the simulation without the integer kernels' int32 bias rounding; second pair: "
            "the simulation as mixprec runs it for the ort-cpu target, with it (mixprec.integer_bias; against the "
            f"file's own int32 biases, {c['layers']} layers, the largest difference is {c['worst_steps']:.2g} steps "
            "of a bias scale). ")


def markdown(r: dict) -> str:
    labels = list(r["passes"])
    env = r["environment"]
    lines = [f"## int8 on ONNX Runtime against the simulation, quantizer by quantizer: {r['model']}", "",
             f"{r['plan']}; codes compared on {r['images']} calibration images, in graph order; {env['cpu']} "
             f"(VNNI: {'yes' if env['vnni'] else 'no'}), onnxruntime {env['onnxruntime']}. "
             + _columns(r) + "Padded: the simulated tensor is the zero-padded input of a conv (compared at its best offset).", "",
             "| QuantizeLinear | simulated quantizer | " + " | ".join(f"{l}: codes differing | largest" for l in labels)
             + " |", "|---|---|" + "---|---|" * len(labels)]
    for row in r["rows"]:
        cells = []
        for l in labels:
            c = row.get(l)
            cells += (["—", "—"] if c is None else
                      [f"{100 * c['differ']:.3f}%" + (" (padded)" if c["padded"] else ""), str(c["largest"])])
        lines.append(f"| `{row['node']}` | `{row['quantizer'] or 'none found'}` | " + " | ".join(cells) + " |")
    lines += ["", "Top-1 predictions of the built-in's evaluation that agree with the exported file: "
              + "; ".join(f"{l} {100 * p['agreement']:.2f}% of {p['predictions']:,}" for l, p in r["passes"].items())
              + "." + _float64_sentence(r), "", f"Channels that a folded BatchNorm all but silences, given a larger weight scale so that their "
              f"int32 bias fits (`fit_bias`): {r['refit_channels']}.", "", f"`{r['command']}`"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--plan", default="w8a8", help="uniform candidate (default w8a8)")
    parser.add_argument("--images", type=int, default=32, help="calibration images whose codes are compared")
    parser.add_argument("--calibration-samples", type=int, default=256)
    args = parser.parse_args()
    report = run(args.model, args.plan, args.images, args.calibration_samples)
    write_json_atomic(RESULTS / f"int8_divergence_{args.model}.json", report)
    (RESULTS / f"int8_divergence_{args.model}.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
