"""hessian (HAWQ-V2, Dong et al. 2020, eq. 2; Schaefer et al. 2023): average Hessian trace of the
loss w.r.t. the weights times the squared weight perturbation, plus the same term for the input.

    S[g, c] = sum_{layers l of g} Tr(H_Wl)/n_Wl * ||Q_c(W_l) - W_l||^2
                                + sum_batches Tr(H_xl)/n_xl * ||Q_c(x_l) - x_l||^2

H is the Hessian of the mean loss per row (cross-entropy with labels, KL to the float model's own
prediction without; see gradients.py). Traces come from Hutchinson's estimator, Tr(H_B) ~ mean_k
v_B^T (H v)_B with one Rademacher v over every quantized weight and layer input at once: one
Hessian-vector product (double backprop) estimates every block on the block diagonal, so all
groups come from the same ``samples`` products per batch, computed once per analysis.

Choices: a group of several layers sums its layers' terms (each layer keeps its own average
curvature; for one layer this is HAWQ-V2's formula). The activation term is the exact analogue for
the layer input x (the whole batch tensor): its Hessian trace is estimated in the same products
through a zero leaf added to x, and multiplied by the input's quantization noise energy on that
batch. Negative trace estimates (an indefinite Hessian with labels) count as 0: no second-order damage.
Caveat of the shared v: (H v)_B also holds the cross-block terms H_BB' v_B', zero in expectation but
not in one sample, so a block whose own curvature is small next to its coupling to others (e.g. a
layer rescaled up, its neighbour down) gets a noisy estimate; more samples, or one product per
block (G times the cost), reduce it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..atomic import save_torch_atomic
from ..progress import tqdm

from . import Metric, gradients
from .context import MeasureContext

# (per layer Tr(H_W)/n_W, per (layer, input format) sum_batches Tr(H_x)/n_x * ||Q(x) - x||^2)
Curvature = tuple[dict[str, float], dict[tuple[str, object], float]]


def rademacher(like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    v = torch.randint(0, 2, like.shape, generator=generator, device=like.device)
    return (2 * v - 1).to(like.dtype)


TRACES = "hessian_traces.pt"  # in the run directory: the traces so far, resumed after an interruption


def _load_traces(path: Path | None, key: dict) -> dict | None:
    """The traces an interrupted analysis saved (tensors and plain values only: weights_only), if they were made
    with the same samples, seed and number of batches; None otherwise (measured again)."""
    if path is None or not path.is_file():
        return None
    try:
        saved = torch.load(path, weights_only=True)
        if any(saved.get(k) != v for k, v in key.items()) or not 0 <= int(saved["next_batch"]) <= key["batches"]:
            return None
        saved["input_term"] = {tuple(k.split("\t", 1)): float(v) for k, v in saved["input_term"].items()}
        saved["weight_trace"] = {str(k): float(v) for k, v in saved["weight_trace"].items()}
        if not isinstance(saved["generator"], torch.Tensor) or any(len(k) != 2 for k in saved["input_term"]):
            return None
        return saved
    except Exception:  # torn, edited or of an older layout: the traces are measured again
        return None


def curvature(ctx: MeasureContext, samples: int, seed: int) -> Curvature:
    """Hutchinson's estimate with ``samples`` Rademacher vectors per batch (see the module docstring)."""
    capture = bool(gradients.activation_formats(ctx))
    generator = gradients.generator(ctx, seed)
    weight_trace: dict[str, float] = {}
    input_term: dict[tuple[str, object], float] = {}
    rows = 0
    key = {"samples": samples, "seed": seed, "batches": len(ctx.data)}
    path = None if ctx.checkpoint is None else Path(ctx.checkpoint) / TRACES
    first, saved = 0, _load_traces(path, key)
    with gradients.differentiable_weights(ctx, "hessian") as weights, \
            tqdm(total=len(ctx.data) * samples, desc="hessian traces", unit="hvp", disable=not ctx.progress) as bar:
        quantizers = gradients.input_quantizers(ctx)
        if saved is not None:  # an interrupted analysis: its traces so far, and the generator where it stood
            formats = {(name, str(fmt)): (name, fmt) for name, qs in quantizers.items() for fmt in qs}
            if all(k in formats for k in saved["input_term"]) and set(saved["weight_trace"]) <= set(weights):
                first, rows = saved["next_batch"], saved["rows"]
                weight_trace = dict(saved["weight_trace"])
                input_term = {formats[k]: v for k, v in saved["input_term"].items()}
                generator.set_state(saved["generator"].to(generator.get_state().device))
                bar.update(first * samples)
        unique = list({id(w): w for w in weights.values()}.values())  # a tied weight is one variable
        slot = {name: next(i for i, u in enumerate(unique) if u is w) for name, w in weights.items()}
        for b in range(first, len(ctx.data)):
            # the Hessian-vector products differentiate the gradient again: attention through torch's math kernel,
            # the one scaled_dot_product_attention kernel with a second derivative on every device
            with sdpa_kernel(SDPBackend.MATH):
                out, captured = gradients.forward(ctx, b, "hessian", capture)
            loss, n = gradients.loss(out, ctx.labels(b) if ctx.has_labels else None, "hessian", inputs=ctx.inputs(b))
            rows += n
            variables = unique + [z for _, _, z in captured]
            grads = torch.autograd.grad(loss, variables, create_graph=True, allow_unused=True)
            live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
            traces = torch.zeros(len(variables), dtype=torch.float64, device=ctx.device)
            for k in range(samples):
                vs = [rademacher(variables[i], generator) for i in live]
                hvs = torch.autograd.grad([grads[i] for i in live], [variables[i] for i in live], grad_outputs=vs,
                                          retain_graph=k < samples - 1, allow_unused=True)
                for i, v, hv in zip(live, vs, hvs):
                    if hv is not None:
                        traces[i] += (v * hv).sum().double() / samples  # v^T (H v) on the block
                bar.update()
            traces = traces.clamp_min(0).tolist()
            for name in weights:
                weight_trace[name] = weight_trace.get(name, 0.0) + traces[slot[name]]
            for (name, x, _), t in zip(captured, traces[len(unique):]):
                for fmt, q in quantizers[name].items():
                    with torch.no_grad():
                        noise = float((q(x).float() - x.float()).pow(2).sum())
                    input_term[(name, fmt)] = input_term.get((name, fmt), 0.0) + t / x.numel() * noise
            del grads, out, loss, captured
            if path is not None:  # after every batch: an interruption loses at most the batch in progress
                save_torch_atomic({**key, "next_batch": b + 1, "rows": rows, "weight_trace": weight_trace,
                                   "input_term": {f"{name}\t{fmt}": v for (name, fmt), v in input_term.items()},
                                   "generator": generator.get_state().cpu()}, path)
    rows = max(rows, 1)
    weight_avg = {name: weight_trace.get(name, 0.0) / rows / w.numel() for name, w in weights.items()}
    return weight_avg, {key: v / rows for key, v in input_term.items()}


@dataclass(frozen=True)
class Hessian(Metric):
    samples: int = 16  # Hutchinson samples (Hessian-vector products) per calibration batch
    seed: int = 0  # of the Rademacher vectors: the same table on every run

    name = "hessian"
    minimum = None  # Hutchinson estimates of an indefinite Hessian can be negative
    needs_grad = True

    def __post_init__(self):
        self.check_int("samples", 1)
        self.check_int("seed", 0, 2**64 - 1)

    def prepare(self, ctx: MeasureContext) -> Curvature:
        return curvature(ctx, self.samples, self.seed)  # the same for every chunk: once per analysis

    def measure(self, ctx: MeasureContext, group_indices: list[int], runner,
                state: Curvature) -> dict[tuple[int, int], float]:
        weight_avg, input_term = state
        values = {}
        for g in group_indices:
            group = ctx.groups.groups[g]
            for c, cand in enumerate(ctx.candidates):
                value = 0.0
                for layer in group.layer_names:
                    w = ctx.model.get_submodule(layer).weight.detach().float()
                    value += weight_avg[layer] * float((ctx.quantized_weight(layer, cand).float() - w).pow(2).sum())
                    if cand.activation is not None:
                        value += input_term.get((layer, cand.activation), 0.0)
                values[(g, c)] = value
        return values
