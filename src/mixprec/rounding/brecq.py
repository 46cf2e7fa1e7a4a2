"""BRECQ: Li, Gong, Tan, Yang, Hu, Zhang, Yu, Wang, Gu, "BRECQ: Pushing the limit of post-training
quantization by block reconstruction" (ICLR 2021).

AdaRound's learned rounding (adaround.SoftRounding) optimised jointly for every planned layer of
a block (a residual block, a transformer block) against the block's output, each output element
weighted by the diagonal Fisher of the task loss at that output (sec. 3.3, eq. 10):

    min_V  E_x[ sum_i g_i^2 (z~_i - z_i)^2 ] + lambda sum_layers sum(1 - |2 h(V) - 1|^beta)

Algorithm 1 of the paper, as done here:

    Q <- the model quantized by the plan with nearest rounding, activation ranges calibrated
    for each block B in forward order:
        X~ <- B's inputs in Q (earlier blocks already reconstructed, planned activations quantized)
        z  <- B's outputs in the float model
        g  <- d KL(softmax(f(x)) || softmax(Q(x))) / d z~ at B's output in Q, and weight |g| + 1
              (the paper's released code: the KL to the float model's prediction stands in for the
              labelled loss, the + 1 keeps every element in the loss)
        Adam on the V of B's layers, minibatches of (X~, z, g); inputs of planned layers go
            through their activation quantizers (straight-through gradient)
        fix B's weights: each rounds up where h(V) >= 1/2; they go into Q for the next blocks

Blocks: every module that is an element of an nn.Sequential or nn.ModuleList (a stage of residual
blocks, the layer list of a transformer), is not itself such a list and holds planned layers;
``blocks=[names]`` overrides that. A planned layer outside every block is a block of its own
(the paper's stem and head). Scales come from quantize_weight's range method, so costs do not
change. The paper's learned activation step sizes (LSQ) are not used: apply calibrates the
activation ranges afterwards on the model with the rounded weights, as for the other back-ends.
Defaults are AdaRound's quick ones (500 Adam steps of 32 samples per block, lr 5e-2) rather than
the paper's 20,000 steps at 1e-3.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
from torch import nn
from torch.func import functional_call
from ..progress import tqdm

from ..batches import output_tensor
from ..capture import (StopForward, block_inputs, container_blocks, detach, first_tensor, inside, on_inputs,
                       replace_first)
from ..errors import RoundingError
from ..formats import IntFormat
from .adaround import AdaRound, SoftRounding, annealed_beta
from .config import check_finite_input



@dataclass(frozen=True)
class BRECQ(AdaRound):
    """AdaRound's options, and whether the block output error is Fisher-weighted, and which blocks."""
    name: ClassVar[str] = "brecq"
    sequential: ClassVar[bool] = True
    blockwise: ClassVar[bool] = True
    fisher: bool = True
    blocks: list[str] | None = None

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.fisher, bool):
            raise RoundingError(f"brecq option fisher must be True (Fisher-weighted block output, the paper) or "
                                f"False (plain output error), got {self.fisher!r}")
        blocks = self.blocks
        if blocks is not None and (isinstance(blocks, str) or not all(isinstance(b, str) for b in blocks)):
            raise RoundingError(f"brecq option blocks must be a list of module names, e.g. ['layer1.0', 'layer1.1'], "
                                f"got {blocks!r}")

    def round_model(self, model: nn.Module, quantized: nn.Module, batches: list, targets: dict[str, IntFormat],
                    run: Callable[[nn.Module, Any, int], Any], weight_method: str, progress: bool, *,
                    done: dict[str, torch.Tensor], save: Callable) -> dict[str, torch.Tensor]:
        return round_model(model, quantized, batches, targets, run, weight_method, progress, done=done, save=save,
                           **self.options())


def find_blocks(model: nn.Module, layers: list[str], names: list[str] | None = None) -> dict[str, list[str]]:
    """Block module name -> the given layers inside it; a layer outside every block is its own block."""
    if names is not None:
        modules = dict(model.named_modules())
        for name in names:
            if name not in modules:
                raise RoundingError(f"brecq block {name!r} is not a module of the model")
            overlap = [other for other in names if other != name and inside(name, other)]
            if overlap:
                raise RoundingError(f"brecq blocks {name!r} and {overlap[0]!r} overlap; give disjoint modules")
        blocks = list(names)
    else:
        blocks = container_blocks(model, layers, layers_are_blocks=False)
    found = {block: [layer for layer in layers if inside(block, layer)] for block in blocks}
    found = {block: members for block, members in found.items() if members}
    covered = {layer for members in found.values() for layer in members}
    found.update({layer: [layer] for layer in layers if layer not in covered})
    return found


def _log_probs(out: Any) -> torch.Tensor:
    logits = output_tensor(out).float()
    return torch.log_softmax(logits.reshape(-1, logits.shape[-1]), dim=-1)


def round_model(model: nn.Module, quantized: nn.Module, batches: list, targets: dict[str, IntFormat],
                run: Callable[[nn.Module, Any, int], Any], weight_method: str, progress: bool, *,
                iterations: int, lr: float, batch_size: int, reg_weight: float, beta: tuple[float, float],
                warmup: float, seed: int, fisher: bool, blocks: list[str] | None,
                done: dict[str, torch.Tensor], save: Callable[[dict[str, torch.Tensor]], None]) -> dict[str, torch.Tensor]:
    """Rounded weights of ``targets``, block by block.

    quantized: the model quantized by the plan (nearest rounding, activations calibrated; the
    planned layers are QuantizedLayers under their own names); its weights are replaced as blocks
    finish. run(module, inputs, index) is a forward pass (capture.forward on the model's device). done: weights
    already rounded (a resumed run); save(weights) is called after every block.
    """
    found = find_blocks(model, list(targets), blocks)
    with torch.no_grad():
        order = _call_order(model, batches[0], list(found), run)
        reference = [_log_probs(run(model, inputs, i)) for i, inputs in enumerate(batches)] if fisher else None
    never = [b for b in found if b not in order]
    if never:
        warnings.warn(f"{len(never)} brecq block(s) were not called on the first calibration batch, e.g. "
                      f"{never[0]!r}; their layers keep nearest rounding", stacklevel=3)
    rounded = dict(done)
    for name in rounded:
        quantized.get_submodule(name).layer.weight = nn.Parameter(rounded[name], requires_grad=False)
    bar = tqdm(order, desc="brecq rounding", unit="block", disable=not progress, leave=False)
    for block in bar:
        members = found[block]
        if all(m in rounded for m in members):
            continue
        bar.set_postfix_str(block, refresh=False)
        inputs, grads = _quantized_side(quantized, block, batches, reference, run)
        outputs = _float_outputs(model, block, batches, run)
        floats = {name: model.get_submodule(name).weight for name in members}
        weights = _reconstruct(quantized.get_submodule(block), block, floats, targets, inputs, outputs, grads,
                               weight_method, iterations=iterations, lr=lr, batch_size=batch_size,
                               reg_weight=reg_weight, beta=beta, warmup=warmup, seed=seed)
        for name, weight in weights.items():
            quantized.get_submodule(name).layer.weight = nn.Parameter(weight, requires_grad=False)
        rounded.update(weights)
        save(rounded)
    return rounded


def _call_order(model: nn.Module, inputs: Any, blocks: list[str], run) -> list[str]:
    order: list[str] = []
    with on_inputs({b: model.get_submodule(b) for b in blocks},
                   lambda b, module, args, kwargs: None if b in order else order.append(b)):
        run(model, inputs, 0)
    return order


def _float_outputs(model: nn.Module, block: str, batches: list, run) -> list[torch.Tensor]:
    """The block's output of every call on every batch in the float model (the pass stops after the block)."""
    outputs: list[torch.Tensor] = []
    calls: list[int] = []
    expected: list[int] = []  # calls per batch, learnt from the first

    def hook(module, args, output):
        outputs.append(first_tensor(output).detach())
        check_finite_input(block, outputs[-1], "brecq", "output")  # the target every layer of it is fit to
        calls[-1] += 1
        if expected and calls[-1] >= expected[0]:
            raise StopForward

    handle = model.get_submodule(block).register_forward_hook(hook)
    try:
        for index, inputs in enumerate(batches):
            calls.append(0)
            with torch.no_grad():
                run(model, inputs, index)
            if not expected:
                expected.append(calls[0])
    finally:
        handle.remove()
    return outputs


def _quantized_side(quantized: nn.Module, block: str, batches: list, reference: list | None, run):
    """The block's inputs (args, kwargs) in the quantized model, and the Fisher weight |g| + 1 of its outputs."""
    if reference is None:
        return block_inputs(quantized, block, batches, run), None
    inputs: list[tuple[tuple, dict]] = []
    grads: list[torch.Tensor] = []
    leaves: list[torch.Tensor] = []
    module = quantized.get_submodule(block)

    def post(m, args, output):
        leaf = first_tensor(output).detach().requires_grad_(True)
        leaves.append(leaf)
        return replace_first(output, leaf)

    handle = module.register_forward_hook(post)
    try:
        with on_inputs({block: module}, lambda name, m, args, kwargs: inputs.append(detach((args, kwargs)))):
            for index, batch in enumerate(batches):
                leaves.clear()
                with torch.enable_grad():
                    out = run(quantized, batch, index)
                    log_p = reference[index]
                    kl = (log_p.exp() * (log_p - _log_probs(out))).sum() / log_p.shape[0]  # KL, batch mean
                    if not kl.requires_grad:
                        raise RoundingError(
                            f"brecq weights the output of block {block!r} by the Fisher of the model output, which needs "
                            "gradients through the model, but its output does not depend on the block's through "
                            "autograd: the block feeds only an output mixprec does not measure (of a model with several "
                            "outputs, the first or 'logits' is the one measured), or forward runs under torch.no_grad "
                            "or torch.inference_mode, or detaches its output; round with gptq or adaround, which need "
                            "no gradients through the model, or exclude the block's layers (--exclude)")
                    found = torch.autograd.grad(kl, leaves, allow_unused=True)
                grads += [torch.ones_like(leaf) if g is None else g.abs() + 1 for leaf, g in zip(leaves, found)]
    finally:
        handle.remove()
    return inputs, grads


def _reconstruct(block: nn.Module, block_name: str, floats: dict[str, torch.Tensor], targets: dict[str, IntFormat],
                 inputs: list, outputs: list[torch.Tensor], grads: list[torch.Tensor] | None, weight_method: str, *,
                 iterations: int, lr: float, batch_size: int, reg_weight: float, beta: tuple[float, float],
                 warmup: float, seed: int) -> dict[str, torch.Tensor]:
    if len(inputs) != len(outputs):
        raise RoundingError(f"brecq block {block_name!r} was called {len(inputs)} times in the quantized model but "
                            f"{len(outputs)} times in the float model; give blocks=[...] that run the same way in both")
    """The block's layers rounded from their float weights ``floats`` (name -> weight)."""
    relative = {name: name[len(block_name) + 1:] if name != block_name else "" for name in floats}
    layers = {name: (block.get_submodule(rel) if rel else block).layer for name, rel in relative.items()}
    roundings = {name: SoftRounding(w, targets[name], weight_method) for name, w in floats.items()}
    paths = {name: f"{rel}.layer.weight" if rel else "layer.weight" for name, rel in relative.items()}
    # summed over channels (dim 1) for conv outputs, over the last dimension for the rest
    feature_dim = 1 if any(isinstance(layer, nn.modules.conv._ConvNd) for layer in layers.values()) else -1
    stacked = all(len(args) == 1 and not kwargs and isinstance(args[0], torch.Tensor) for args, kwargs in inputs)
    if stacked:  # sample rows across batches
        X = torch.cat([args[0] for args, _ in inputs])
        Z = torch.cat(outputs)
        G = torch.cat(grads) if grads is not None else None
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam([r.V for r in roundings.values()], lr=lr)
    hooks = [q.register_forward_hook(lambda m, a, out: a[0] + (out - a[0]).detach() if out is not a[0] else out)
             for q in (m.input_quantizer for m in block.modules() if hasattr(m, "input_quantizer"))]
    params = {n: p.detach() for n, p in block.named_parameters()}
    try:
        for t in range(iterations):
            if stacked:
                pick = torch.randint(len(X), (min(batch_size, len(X)),), generator=generator).to(X.device)
                args, kwargs, z = (X[pick],), {}, Z[pick]
                g = G[pick] if G is not None else None
            else:
                i = int(torch.randint(len(inputs), (1,), generator=generator))
                (args, kwargs), z = inputs[i], outputs[i]
                g = grads[i] if grads is not None else None
            with torch.enable_grad():
                soft = {paths[name]: r.soft().to(params[paths[name]].dtype) for name, r in roundings.items()}
                out = first_tensor(functional_call(block, {**params, **soft}, args, kwargs))
                error = (out.float() - z.float()).pow(2)
                if g is not None:
                    error = error * g.float().pow(2)
                loss = error.sum(feature_dim).mean()  # summed over features, mean over samples and positions
                b = annealed_beta(t, iterations, warmup, beta)
                if b is not None:
                    loss = loss + reg_weight * sum(r.regulariser(b) for r in roundings.values())
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
            optimiser.step()
    finally:
        for h in hooks:
            h.remove()
    return {name: r.hard() for name, r in roundings.items()}


