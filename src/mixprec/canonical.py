"""The canonical model: the form in which every step of mixprec sees a user's model.

Some modules compute a layer's weight or output where hooks and swapped layers cannot see it:

- a weight reparametrized (``torch.nn.utils.parametrizations.weight_norm``/``spectral_norm``, any
  ``torch.nn.utils.parametrize`` parametrization, and the older hook-based ``weight_norm`` and
  ``spectral_norm``) is recomputed at every access; for a trained model in inference it is one fixed
  tensor, so it is folded into a plain ``weight`` parameter holding that tensor;
- ``nn.MultiheadAttention`` becomes :class:`mixprec.attention.ExplicitAttention` (its projections as
  ``nn.Linear`` layers);
- transformers' ``Conv1D`` (GPT-2's attention and MLP) becomes the equivalent ``nn.Linear``;
- ``nn.EmbeddingBag`` becomes :class:`mixprec.embedding_bag.ExplicitEmbeddingBag` (an ``nn.Embedding``
  look-up and the bag's reduction), so that its table is quantized and exported like an embedding's.

A ``torch.compile``'d model is taken as the module it compiles, and a model wrapped in ``nn.DataParallel`` or
``DistributedDataParallel`` as the module it wraps (its layers under their own names, without ``_orig_mod.`` or
``module.``; torch's exporter refuses the data-parallel wrappers, and quantizing needs one device).
:func:`canonical` returns ``model`` itself where none of these occurs, else a copy (sharing the parameters it
does not change), so the model passed in is never modified. Every public entry point (analyze, apply,
discover_groups, export, profile, deploy_cuda and the command line's model loading) calls it, so groups,
plans, applied models and exports all name the same layers. A model in training mode is measured on a copy in
eval mode (:func:`in_eval_mode`), its mode left as it was.
"""
from __future__ import annotations

import contextlib
import copy

import torch
from torch import nn
from torch.nn.utils import parametrize

from .attention import ExplicitAttention, attention_modules, make_explicit
from .embedding_bag import bag_modules, make_explicit_bags
from .errors import ModelNote, notify

__all__ = ["canonical", "conversions", "reparametrized", "conv1d_to_linear", "unwrapped"]

NOTES = "_mixprec_canonical"


def _hooked(module: nn.Module) -> list[str]:
    """Names of the weights the older hook-based weight_norm/spectral_norm recompute before each call."""
    from torch.nn.utils.spectral_norm import SpectralNorm
    from torch.nn.utils.weight_norm import WeightNorm
    return [hook.name for hook in module._forward_pre_hooks.values() if isinstance(hook, (WeightNorm, SpectralNorm))]


def reparametrized(model: nn.Module) -> list[str]:
    """``module.tensor`` names of the weights ``model`` recomputes from other parameters."""
    out = []
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module):
            out += [f"{name}.{t}" if name else t for t in module.parametrizations]
        out += [f"{name}.{t}" if name else t for t in _hooked(module)]
    return out


def canonical(model: nn.Module) -> nn.Module:
    """``model`` with its reparametrized weights folded, its nn.MultiheadAttention made explicit and its Conv1D
    layers as nn.Linear (see the module docstring); ``model`` itself when it has none of them, and TorchScript
    models as they are."""
    if isinstance(model, torch.jit.ScriptModule):
        return model
    if not isinstance(model, nn.Module):
        from .errors import ModelError
        what = ("a state dict: build the model and load it (model.load_state_dict(state)), then pass the model"
                if isinstance(model, dict) else "a spec string is taken by analyze and quantize" if isinstance(model, str)
                else "give the torch.nn.Module itself")
        raise ModelError(f"the model must be a torch.nn.Module, got {type(model).__name__}: {what}")
    model = unwrapped(model)
    attention = attention_modules(model)
    conv1d = [n for n, m in model.named_modules() if _is_conv1d(m)]
    folded = reparametrized(model)
    bags = bag_modules(model)
    if not attention and not conv1d and not folded and not bags:
        return model
    memo = {id(p): p for n, p in model.named_parameters()}  # parameters shared, buffers copied
    for module in model.modules():
        for tensor in _hooked(module):  # a computed weight is no graph leaf: deepcopy cannot copy it
            value = getattr(module, tensor)
            if isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter):
                memo[id(value)] = value.detach().clone()
    copied = copy.deepcopy(model, memo)
    for module in copied.modules():
        if parametrize.is_parametrized(module):
            _fold_parametrizations(module)
        for tensor in _hooked(module):  # torch's own removal leaves the weight it computed as a parameter
            from torch.nn.utils.spectral_norm import SpectralNorm
            kinds = [type(h) for h in module._forward_pre_hooks.values() if getattr(h, "name", None) == tensor]
            if SpectralNorm in kinds:
                torch.nn.utils.remove_spectral_norm(module, tensor)
            else:
                torch.nn.utils.remove_weight_norm(module, tensor)
    make_explicit(copied, attention)
    conv1d_to_linear(copied)
    make_explicit_bags(copied, bags)
    done = [_attention_note(attention)] if attention else []
    if folded:
        done.append(f"{len(folded)} reparametrized weight(s) (weight_norm, spectral_norm or a parametrization; e.g. "
                    f"{folded[0]}) folded into the plain weight they compute")
    if conv1d:
        done.append(f"{len(conv1d)} transformers Conv1D layer(s) (e.g. {conv1d[0]}) run as the equivalent nn.Linear")
    if bags:
        done.append(f"{len(bags)} nn.EmbeddingBag module(s) (e.g. {bags[0]}) run as an embedding look-up and the "
                    "bag's reduction, their table quantized like an embedding's (mixprec.embedding_bag)")
    copied.__dict__[NOTES] = tuple(done)  # read by discover_groups; not a module, parameter or buffer
    return copied


def unwrapped(model: nn.Module) -> nn.Module:
    """The module inside torch.compile's and the data-parallel wrappers (nested ones too); ``model`` otherwise."""
    from torch.nn.parallel import DistributedDataParallel
    while True:
        if type(model).__name__ == "OptimizedModule" and isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        elif isinstance(model, (nn.DataParallel, DistributedDataParallel)) and isinstance(model.module, nn.Module):
            model = model.module
        else:
            return model


def conversions(model: nn.Module) -> tuple[str, ...]:
    """What canonical changed to make ``model`` (one line each), () for a model it returned as it was. A model
    traced from a canonical one (join quantizers) keeps its modules, not these notes: its explicit attention
    is still named."""
    if NOTES in model.__dict__:
        return tuple(model.__dict__[NOTES])
    attention = [n for n, m in model.named_modules() if isinstance(m, ExplicitAttention)]
    return (_attention_note(attention),) if attention else ()


def _attention_note(names: list[str]) -> str:
    return (f"{len(names)} nn.MultiheadAttention module(s) (e.g. {names[0]}) run as their q_proj, k_proj, v_proj "
            "and out_proj Linear layers, quantized like any other (mixprec.attention)")


def _fold_parametrizations(module: nn.Module) -> None:
    """Each parametrized tensor of ``module`` (a copy) becomes a plain parameter holding its current value.
    Not torch's remove_parametrizations: that edits the parametrized class, which the copy shares with
    the model it was copied from, and writes a single original in place."""
    values = {}
    with torch.no_grad():
        for tensor, plist in module.parametrizations.items():
            value = getattr(module, tensor)
            grad = any(p.requires_grad for p in plist.parameters(recurse=False)) or value.requires_grad
            values[tensor] = nn.Parameter(value.detach().clone(), requires_grad=grad)
    module.__class__ = module.__class__.__bases__[0]  # parametrize made Parametrized<cls> a subclass of cls
    del module._modules["parametrizations"]
    for tensor, value in values.items():
        module.register_parameter(tensor, value)


def conv1d_to_linear(model: nn.Module) -> int:
    """Replace transformers' ``Conv1D`` layers (GPT-2's attention and MLP: y = x W + b with W of shape
    (in, out)) by the equivalent ``nn.Linear`` (weight W transposed), which mixprec quantizes per output
    channel like any linear layer; returns how many were replaced."""
    replaced = 0
    for name, module in list(model.named_modules()):
        if not _is_conv1d(module):
            continue
        fan_in, fan_out = module.weight.shape
        # made uninitialised (its weights are copied in below): the random state stays as it was
        linear = nn.utils.skip_init(nn.Linear, fan_in, fan_out, bias=module.bias is not None,
                                    device=module.weight.device, dtype=module.weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(module.weight.t())
            if module.bias is not None:
                linear.bias.copy_(module.bias)
        linear.requires_grad_(module.weight.requires_grad)
        linear.train(module.training)  # a new module is in training mode: it takes the mode of the one it replaces
        linear.__dict__[FROM_CONV1D] = True  # its checkpoint tensor is (in, out): read by export targets
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, linear)
        replaced += 1
    return replaced


FROM_CONV1D = "_mixprec_from_conv1d"


def from_conv1d(module: nn.Module) -> bool:
    """Whether ``module`` is a transformers Conv1D, or the nn.Linear canonical made of one."""
    return _is_conv1d(module) or bool(module.__dict__.get(FROM_CONV1D))


def _is_conv1d(module: nn.Module) -> bool:
    """transformers' Conv1D (GPT-2): y = x W + b with W of shape (in, out)."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and getattr(module, "weight", None) is not None \
        and module.weight.dim() == 2


def in_eval_mode(model: nn.Module, verbose: bool = True) -> nn.Module:
    """``model`` in eval mode, as every measurement runs it (dropout off, batch-norm statistics read, not
    updated). A model in training mode is not switched: a copy sharing its parameters is (the model passed in
    is never changed), with a note."""
    if not any(m.training for m in model.modules()):
        return model
    note = ("the model is in training mode (model.train()): it is measured, quantized and exported in eval mode, "
            "dropout off and batch-norm statistics as they are; the model passed in keeps its mode")
    notify(note, verbose, stacklevel=4, category=ModelNote)
    return copy_sharing_parameters(model).eval()


@contextlib.contextmanager
def evaluating(model: nn.Module):
    """``model`` in eval mode for the block, each module's own mode restored after it: a forward that only looks
    (tracing shapes and MACs) leaves a training-mode model's batch-norm statistics and the RNG as they were."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def copy_sharing_parameters(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose parameters are ``model``'s own tensors (buffers, which a forward may
    update, are copied): no second copy of a large model's weights, for code that replaces the copy's
    parameters (QuantizedLayer sets a new Parameter) and only reads the others."""
    return copy.deepcopy(model, {id(p): p for p in model.parameters()})
