"""Shared pass of the gradient-based metrics (hessian, fisher): the loss they differentiate and a
forward in which every quantized layer's weight and input can be differentiated.

The loss is summed over predicted rows (classifier rows, language-model tokens); the metrics
divide by the total row count, so their statistics are those of the mean loss per row.
  - with labels: cross-entropy of the output logits against the labels (ignore_index -100);
  - without: KL(softmax(y_float, detached) || softmax(y)). Its gradient is zero at the float point
    but its Hessian is the Gauss-Newton matrix J^T (diag(p) - p p^T) J, the curvature the kl metric
    sees to second order;
  - ``sample_labels`` (fisher without labels): cross-entropy against labels drawn from the model's
    own prediction, whose expected squared gradient is the Fisher information, i.e. that same
    Gauss-Newton matrix. (The KL's per-sample gradients are all zero, so its Fisher would be 0.)
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..batches import output_tensor
from ..capture import forward as run_batch
from ..errors import MixprecError
from ..formats import Format
from ..groups import is_torchscript
from ..quantizers import ActivationQuantizer
from .context import MeasureContext


def layer_names(ctx: MeasureContext) -> list[str]:
    return [layer.name for layer in ctx.groups.layers]


def activation_formats(ctx: MeasureContext) -> list[Format]:
    """Distinct input formats of the candidates (weight-only candidates leave the input float)."""
    return list(dict.fromkeys(c.activation for c in ctx.candidates if c.activation is not None))


def input_quantizers(ctx: MeasureContext) -> dict[str, dict[Format, ActivationQuantizer]]:
    """Per layer, a calibrated quantizer per activation format; built before any hook is set."""
    formats = activation_formats(ctx)
    return {name: {fmt: ctx.input_quantizer(name, fmt) for fmt in formats} for name in layer_names(ctx)}


@contextmanager
def differentiable_weights(ctx: MeasureContext, metric: str):
    """Within: the quantized layers' weights require grad, no other parameter does; restored on exit."""
    if is_torchscript(ctx.model):
        raise MixprecError(f"the {metric} metric needs gradients, and this is a TorchScript model: its layers' "
                           "inputs cannot be hooked and frozen graphs hold no weights to differentiate. Give the "
                           "eager nn.Module, or use --metric sqnr, kl or roundoff, which need no gradients")
    weights = {}
    for name in layer_names(ctx):
        weight = ctx.model.get_submodule(name).weight
        if not isinstance(weight, nn.Parameter):
            raise MixprecError(f"the {metric} metric needs gradients w.r.t. the weight of layer {name!r}, but it "
                               f"is a computed {type(weight).__name__} (a parametrization?), not a parameter; "
                               "use --metric sqnr, kl or roundoff")
        weights[name] = weight
    params = list(ctx.model.parameters())
    saved = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        for w in weights.values():
            w.requires_grad_(True)
        with torch.enable_grad():
            yield weights
    finally:
        for p, flag in zip(params, saved):
            p.requires_grad_(flag)


def forward(ctx: MeasureContext, batch: int, metric: str, capture_inputs: bool):
    """The output of one batch and, per call of a quantized layer, (layer, input x, zero leaf z).

    The layer reads x + z, so d loss / d z is the gradient (and Hessian) w.r.t. its input.
    """
    captured: list[tuple[str, torch.Tensor, torch.Tensor]] = []

    def hook(name):
        def fn(module, args):
            x = args[0]
            if not torch.is_floating_point(x):
                return None
            z = torch.zeros_like(x, requires_grad=True)
            captured.append((name, x.detach().clone(), z))  # a clone: the model may later write into x
            return (x + z, *args[1:])
        return fn

    handles = []
    if capture_inputs:
        handles = [ctx.model.get_submodule(name).register_forward_pre_hook(hook(name)) for name in layer_names(ctx)]
    try:
        out = output_tensor(run_batch(ctx.model, ctx.inputs(batch), batch, ctx.device))  # a failing batch is named
    finally:
        for h in handles:
            h.remove()
    if not torch.is_floating_point(out) or not out.requires_grad:
        raise MixprecError(f"the {metric} metric needs gradients of the loss w.r.t. the layer weights, but the "
                           f"model output ({out.dtype}) does not depend on them through autograd (a forward under "
                           "torch.no_grad, a detached or parameter-free output); use --metric sqnr, kl or roundoff")
    return out, captured


def loss(out: torch.Tensor, labels, metric: str, sample_labels: torch.Generator | None = None,
         inputs: Any = None) -> tuple[torch.Tensor, int]:
    """(loss summed over rows, number of rows); see the module docstring for which loss. ``inputs``: the batch's,
    whose attention mask (a padded batch of texts) leaves the padded positions' rows out, as the output
    divergences do."""
    from .divergence import check_class_scores, class_last, token_mask
    check_class_scores(out, f"the {metric} metric (the cross-entropy of a classifier's logits)")
    mask = token_mask(inputs, out) if inputs is not None else None
    if mask is not None:  # the real tokens' rows alone (labels given per token are selected alike)
        out = out[mask]
        if isinstance(labels, torch.Tensor) and tuple(labels.shape[:2]) == tuple(mask.shape):
            labels = labels[mask.to(labels.device)]
    shape = tuple(out.shape)  # as the model gives it, for the messages
    out = class_last(out)  # a segmentation's (N, C, H, W): a row per pixel, as kl and the guard read it
    logits = out.float().reshape(-1, out.shape[-1]) if out.dim() > 1 else out.float().reshape(1, -1)
    if labels is None and sample_labels is None:
        log_p = torch.log_softmax(logits.detach(), dim=-1)
        return (log_p.exp() * (log_p - torch.log_softmax(logits, dim=-1))).sum(), logits.shape[0]
    if labels is None:
        probs = torch.softmax(logits.detach(), dim=-1)
        target = torch.multinomial(probs, 1, generator=sample_labels).squeeze(1)
    else:
        target = labels.reshape(-1)
        if target.dtype.is_floating_point or target.numel() != logits.shape[0]:
            raise MixprecError(f"the {metric} metric computes the cross-entropy of the output logits "
                               f"{shape} against the labels {tuple(labels.shape)} ({labels.dtype}); "
                               "expected integer class labels, one per output row (per token of a (N, T, classes) "
                               "output, per pixel of a (N, classes, H, W) one), or give no labels")
        bad = target[(target != -100) & ((target < 0) | (target >= logits.shape[-1]))]
        if bad.numel():
            raise MixprecError(f"the {metric} metric computes the cross-entropy of the output logits "
                               f"{shape} against the labels, but label {int(bad[0])} is not a class of "
                               f"the {logits.shape[-1]} output columns (0..{logits.shape[-1] - 1}); check the labels "
                               "of the data (or give none: the metric then uses the model's own predictions)")
    return F.cross_entropy(logits, target, reduction="sum"), int((target != -100).sum())


def generator(ctx: MeasureContext, seed: int) -> torch.Generator:
    """Rademacher vectors and sampled labels from a fixed seed: the same table on every run."""
    return torch.Generator(device=ctx.device).manual_seed(seed)
