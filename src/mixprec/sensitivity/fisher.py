"""fisher (empirical Fisher, as NVIDIA ModelOpt AutoQuantize's gradient score): the diagonal
Fisher's second-order estimate of the loss increase, for the weights and for the layer input.

    S[g, c] = sum_{layers l of g} 0.5 * sum_i F_i (Q_c(W_l) - W_l)_i^2
                                + 0.5 * sum_batches sum_j g_xj^2 (Q_c(x_l) - x_l)_j^2 / rows

F = sum_batches g_b^2 / rows, with g_b the gradient of batch b's loss summed over its rows: one
backward per batch, computed once per analysis for every group. Per-batch (not per-sample)
gradients: the cross terms between a batch's samples have zero mean when the labels are drawn from
the model (no labels) and are the price of one backward per batch with real labels. The input
gradient g_x of one sample depends only on that sample, so the activation term is per-sample exact.
Loss: cross-entropy with labels; without labels, cross-entropy against labels sampled from the
float model's own prediction (the true Fisher, equal in expectation to the Hessian of the KL that
the hessian metric uses; see gradients.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from ..progress import tqdm

from . import Metric, gradients
from .context import MeasureContext

# (per layer F = sum_b g_b^2 / rows, per (layer, input format) sum g_x^2 (Q(x) - x)^2 / rows)
SquaredGradients = tuple[dict[str, torch.Tensor], dict[tuple[str, object], float]]


def squared_gradients(ctx: MeasureContext, seed: int) -> SquaredGradients:
    """One backward per batch; without labels, labels sampled with ``seed`` (see the module docstring)."""
    capture = bool(gradients.activation_formats(ctx))
    generator = gradients.generator(ctx, seed)
    weight_sq: dict[str, torch.Tensor] = {}
    input_term: dict[tuple[str, object], float] = {}
    rows = 0
    with gradients.differentiable_weights(ctx, "fisher") as weights:
        quantizers = gradients.input_quantizers(ctx)
        unique = list({id(w): w for w in weights.values()}.values())  # a tied weight is one variable
        slot = {name: next(i for i, u in enumerate(unique) if u is w) for name, w in weights.items()}
        for b in tqdm(range(len(ctx.data)), desc="fisher gradients", unit="batch", disable=not ctx.nested_progress):
            out, captured = gradients.forward(ctx, b, "fisher", capture)
            labels = ctx.labels(b) if ctx.has_labels else None
            loss, n = gradients.loss(out, labels, "fisher", sample_labels=None if labels is not None else generator,
                                     inputs=ctx.inputs(b))
            rows += n
            variables = unique + [z for _, _, z in captured]
            grads = torch.autograd.grad(loss, variables, allow_unused=True)
            for name, w in weights.items():
                g = grads[slot[name]]
                sq = torch.zeros_like(w, dtype=torch.float32) if g is None else g.detach().float().pow(2)
                weight_sq[name] = weight_sq[name] + sq if name in weight_sq else sq
            for (name, x, _), g in zip(captured, grads[len(unique):]):
                if g is None:
                    continue
                g2 = g.float().pow(2)
                for fmt, q in quantizers[name].items():
                    with torch.no_grad():
                        term = float((g2 * (q(x).float() - x.float()).pow(2)).sum())
                    input_term[(name, fmt)] = input_term.get((name, fmt), 0.0) + term
            del grads, out, loss, captured
    rows = max(rows, 1)
    return {name: sq / rows for name, sq in weight_sq.items()}, {key: v / rows for key, v in input_term.items()}


@dataclass(frozen=True)
class Fisher(Metric):
    seed: int = 0  # of the labels sampled from the model's prediction (no labels): the same table on every run

    name = "fisher"
    needs_grad = True

    def __post_init__(self):
        self.check_int("seed", 0, 2**64 - 1)

    def prepare(self, ctx: MeasureContext) -> SquaredGradients:
        return squared_gradients(ctx, self.seed)  # the same for every chunk: once per analysis

    def measure(self, ctx: MeasureContext, group_indices: list[int], runner,
                state: SquaredGradients) -> dict[tuple[int, int], float]:
        fisher, input_term = state
        values = {}
        for g in group_indices:
            group = ctx.groups.groups[g]
            for c, cand in enumerate(ctx.candidates):
                value = 0.0
                for layer in group.layer_names:
                    w = ctx.model.get_submodule(layer).weight.detach().float()
                    delta = ctx.quantized_weight(layer, cand).float() - w
                    value += 0.5 * float((fisher[layer] * delta.pow(2)).sum())
                    if cand.activation is not None:
                        value += 0.5 * input_term.get((layer, cand.activation), 0.0)
                values[(g, c)] = value
        return values
