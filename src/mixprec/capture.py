"""What the layers of a model see: their inputs on the calibration data, captured by forward hooks.

    with on_inputs(modules, see): ...   see(name, module, args, kwargs) before every call of each
                                        named module; see may raise StopForward to end the pass
    forward(model, inputs, index, device) -> the output on calibration batch ``index``, or None
                                        where a hook stopped the pass
    block_inputs(model, block, items, run) -> [(args, kwargs)] of the block's call on every item
    add_moments(state, layer, x)        X X^T of the columns the layer's weight multiplies (GPTQ's
                                        Hessian, multipoint's output error), summed over calls

The callers keep what they need from each input: the rounding back-ends their per-layer state,
the chained steps a block's inputs, multipoint its X X^T, the sensitivity metrics activation ranges.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .batches import describe_shape, input_hint, run_model, to_device
from .errors import MixprecError, ModelError


class StopForward(BaseException):
    """Raised by a hook to end a forward pass once it has what it needs (BaseException: model
    code that catches Exception must not swallow it)."""


def forward(model: nn.Module, inputs: Any, index: int, device: torch.device) -> Any:
    """The model's output on calibration batch ``index``, or None where a hook stopped the pass.

    Gradients follow the caller's grad mode."""
    try:
        return run_model(model, to_device(inputs, device))
    except StopForward:
        return None
    except MixprecError:  # mixprec's own, raised by a hook during the pass: already says what is wrong
        raise
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        raise ModelError(f"the model failed on calibration batch {index} of shape {describe_shape(inputs)}: "
                         f"{str(exc).splitlines()[0]}.{input_hint(model, inputs)}") from exc


def layer_input(args: tuple, kwargs: dict) -> torch.Tensor:
    """A layer's input: its first argument, given by position or by keyword."""
    return args[0] if args else next(iter(kwargs.values()))


@contextmanager
def on_inputs(modules: dict[str, nn.Module],
              see: Callable[[str, nn.Module, tuple, dict], None]) -> Iterator[None]:
    """Forward pre-hooks that call see(name, module, args, kwargs); removed on exit."""
    def hook(name: str):
        return lambda module, args, kwargs: see(name, module, args, kwargs)

    handles = [m.register_forward_pre_hook(hook(name), with_kwargs=True) for name, m in modules.items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


CONTAINERS = (nn.Sequential, nn.ModuleList)


def inside(block: str, layer: str) -> bool:
    """Whether module ``layer`` is ``block`` or within it (by dotted name)."""
    return layer == block or layer.startswith(block + ".")


def container_blocks(model: nn.Module, layers: list[str], layers_are_blocks: bool = True) -> list[str]:
    """Names of the blocks: the elements (not themselves containers) of the outermost
    nn.Sequential/nn.ModuleList containers on the way to ``layers``, that hold at least one of them.
    ``layers_are_blocks=False``: a listed layer that is itself such an element is not a block."""
    blocks: list[str] = []

    def visit(prefix: str, module: nn.Module) -> None:
        for child_name, child in module.named_children():
            full = f"{prefix}.{child_name}" if prefix else child_name
            if (not layers_are_blocks and full in layers) or not any(inside(full, layer) for layer in layers):
                continue
            if isinstance(module, CONTAINERS) and not isinstance(child, CONTAINERS):
                blocks.append(full)
            else:
                visit(full, child)
    visit("", model)
    return blocks


def map_tensors(value: Any, fn: Callable[[Any], Any], leaves: type | tuple[type, ...] = torch.Tensor) -> Any:
    """``value`` with ``fn`` applied to every tensor in it (tuples, named tuples, lists and dicts kept);
    ``leaves``: the types ``fn`` is applied to (default: tensors)."""
    if isinstance(value, leaves):
        return fn(value)
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(map_tensors(v, fn, leaves) for v in value))
    if isinstance(value, (tuple, list)):
        return type(value)(map_tensors(v, fn, leaves) for v in value)
    if isinstance(value, dict):
        return type(value)((k, map_tensors(v, fn, leaves)) for k, v in value.items())
    return value


def detach(value: Any) -> Any:
    return map_tensors(value, torch.Tensor.detach)


def first_tensor(output: Any) -> Any:
    """A block's main output: the first element of a tuple or list, else the output itself."""
    return output[0] if isinstance(output, (tuple, list)) else output


def replace_first(output: Any, tensor: torch.Tensor) -> Any:
    """``output`` with ``tensor`` in place of its main output (first_tensor)."""
    if isinstance(output, tuple):
        return (tensor,) + tuple(output[1:])
    if isinstance(output, list):
        return [tensor] + list(output[1:])
    return tensor


def block_inputs(model: nn.Module, block: str, items: list, run: Callable[[nn.Module, Any, int], Any]) -> list:
    """(args, kwargs) of ``block``'s call on every item, detached; run(model, item, index) stops there."""
    inputs: list[tuple[tuple, dict]] = []

    def see(name, module, args, kwargs):
        inputs.append(detach((args, kwargs)))
        raise StopForward

    with on_inputs({block: model.get_submodule(block)}, see):
        for index, item in enumerate(items):
            with torch.no_grad():
                run(model, item, index)
    return inputs


def add_moments(state: list | None, layer: nn.Module, x: torch.Tensor) -> list:
    """Accumulate [sum of X X^T per convolution group, number of columns] from one call's input."""
    columns = layer_columns(layer, x.detach()).float()
    xtx = columns.transpose(1, 2) @ columns
    if state is None:
        return [xtx, columns.shape[1]]
    state[0] += xtx
    state[1] += columns.shape[1]
    return state


def layer_columns(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What the weight multiplies: (convolution groups, columns, weight inputs per group).

    Linear: every row of the input (token, sample). Conv1d/Conv2d: every patch (im2col), padding
    included, channel-major like the flattened weight.
    """
    if isinstance(layer, nn.Linear):
        return x.reshape(1, -1, x.shape[-1])
    if isinstance(layer, (nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d)):
        raise MixprecError(f"{type(layer).__name__} layers have no input columns for GPTQ's Hessian (or multipoint's "
                           "fit); round them with rounding adaround, brecq or nearest, or exclude them "
                           "(--exclude NAME)")
    dims = len(layer.kernel_size)
    if x.dim() == dims + 1:  # unbatched input
        x = x.unsqueeze(0)
    x = F.pad(x, _padding(layer), mode="constant" if layer.padding_mode == "zeros" else layer.padding_mode)
    kernel, dilation, stride = layer.kernel_size, layer.dilation, layer.stride
    if dims == 1:
        x, kernel, dilation, stride = x.unsqueeze(2), (1, *kernel), (1, *dilation), (1, *stride)
    patches = F.unfold(x, kernel, dilation=dilation, stride=stride)  # (N, C * prod(kernel), L)
    patches = patches.transpose(1, 2).reshape(-1, patches.shape[1])
    return patches.reshape(patches.shape[0], layer.groups, -1).transpose(0, 1)


def _padding(layer: nn.Module) -> list[int]:
    """The conv's padding as F.pad amounts (last dimension first); 'same' puts the odd one on the right."""
    if layer.padding == "valid":
        pairs = [(0, 0)] * len(layer.kernel_size)
    elif layer.padding == "same":
        totals = [d * (k - 1) for k, d in zip(layer.kernel_size, layer.dilation)]
        pairs = [(t // 2, t - t // 2) for t in totals]
    else:
        pairs = [(p, p) for p in layer.padding]
    return [a for pair in reversed(pairs) for a in pair]
