"""The int32 bias of an integer kernel: the rounding the runtime adds that a float simulation leaves out.

ONNX Runtime's integer kernels (QLinearConv, QGemm) add a layer's bias to their int32 accumulator, so the
exported file holds it as int32 codes at scale s_x * s_w per output channel (mixprec.export.onnx_graph), after
folding the BatchNorm that alone reads a convolution's output into the weights: y = factor * conv(x) + shift.
The bias the kernel adds is then round(B / S) * S, not B = factor * bias + shift, with S = s_x * s_w * factor.
One step of S is small, but it is the same on every output of a channel, and on a deep network those offsets
are most of what still makes the file's codes differ from the simulated ones
(``benchmarks/int8_divergence.py``: ResNet-56, top-1 agreement with the file 99.27 % without it, 99.92 % with).

Where a simulation runs the int8 graph of a target (join quantizers, mixprec.joins), every layer that the
target runs with integer inputs and weights (``integer_kernel``: what mixprec.export.targets.realise writes as
'qdq') rounds its bias so: the rounding error of each channel is added to the layer's output, divided by the
BatchNorm's factor, so that the BatchNorm after it, unfolded in the simulation, makes it the error of the
folded bias. s_w is the step of the layer's symmetric weight grid, max|w_q| / 2^(B-1) per channel (with nearest
rounding the extreme of the range lands on the lowest code; a weight that another rounding keeps off that code
gets a smaller step, so its bias is rounded more finely than in the file); a channel whose bias the export
refits (``fit_bias``: a BatchNorm that all but silences it) is rounded at the refitted scale. A Linear counts
only on 2-d inputs, which torch exports as a Gemm with its bias; on more dimensions it becomes a MatMul and a
float Add.

    bias_folds(model)              layer -> the BatchNorm the export folds into it (None: none), for a traced model
    attach(model, layers=None)     the quantized layers of a traced int8-graph model round their bias (in place)
    integer_kernel(candidate)      whether the target runs a layer at ``candidate`` with integer inputs and weights
    rounding_error(...)            the per-channel error added to a layer's output
    unrounded(model)               context: the layers of ``model`` leave their bias unrounded (the plain simulation)
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import fx, nn

from .candidates import Candidate
from .formats import IntFormat, is_dynamic
from .joins import int8_graph
from .quantizers import int_qparams

BIAS_LIMIT = 2 ** 30  # the largest int32 bias code the export writes: room left in the accumulator for the products
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass
class BiasFold:
    """How a layer's bias reaches the int32 accumulator: the BatchNorm module folded into it (None: none), whose
    statistics are read at each forward; ``enabled`` False leaves the bias unrounded (``unrounded``)."""

    batchnorm: nn.Module | None = None
    enabled: bool = True

    def factor_shift(self, channels: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(factor, shift) per channel, float64: y = factor * layer(x) + shift (1 and 0 without a BatchNorm)."""
        bn = self.batchnorm
        if bn is None:
            return like.new_ones(channels, dtype=torch.float64), like.new_zeros(channels, dtype=torch.float64)
        gamma = bn.weight.detach().double() if bn.weight is not None else like.new_ones(channels, dtype=torch.float64)
        beta = bn.bias.detach().double() if bn.bias is not None else like.new_zeros(channels, dtype=torch.float64)
        factor = gamma / torch.sqrt(bn.running_var.detach().double() + bn.eps)
        return factor, beta - bn.running_mean.detach().double() * factor


def _module_of(node: fx.Node, modules: dict[str, nn.Module]) -> nn.Module | None:
    return modules.get(node.target) if node.op == "call_module" else None


def _inner(module: nn.Module | None) -> nn.Module | None:
    """A quantized layer's own layer (mixprec.swap.QuantizedLayer), or the module itself."""
    return getattr(module, "layer", module) if module is not None else None


def bias_folds(model: nn.Module) -> dict[str, str | None]:
    """Conv/Linear layer name -> the BatchNorm module that alone reads its output (what the export folds into a
    convolution), None where there is none; {} for a model that is not traced (no graph to read)."""
    graph = getattr(model, "graph", None)
    if not isinstance(graph, fx.Graph):
        return {}
    modules = dict(model.named_modules())
    out: dict[str, str | None] = {}
    for node in graph.nodes:
        layer = _inner(_module_of(node, modules))
        if not isinstance(layer, (nn.Linear, *_CONVS)):
            continue
        users = list(node.users)
        bn = None
        if isinstance(layer, _CONVS) and len(users) == 1:
            reader = _module_of(users[0], modules)
            if isinstance(reader, _BATCHNORMS) and not reader.training and reader.track_running_stats:
                bn = users[0].target
        out[node.target] = bn
    return out


def attach(model: nn.Module, layers: dict[str, nn.Module] | None = None) -> int:
    """Make the quantized layers of ``model`` (a traced int8-graph model) round their bias as the integer kernels
    do; ``layers``: name -> quantized layer to attach instead (replacements not yet in ``model``, which names
    them). Returns how many layers were given a fold. Layers that the target does not run as integer kernels
    get one too and ignore it (rounding_error returns None for them)."""
    folds = bias_folds(model) if int8_graph(model) else {}
    if not folds:
        return 0
    targets = layers if layers is not None else {n: m for n, m in model.named_modules() if hasattr(m, "input_quantizer")}
    count = 0
    for name, module in targets.items():
        if name not in folds or not hasattr(module, "input_quantizer"):
            continue
        bn = folds[name]
        module.integer_bias = BiasFold(model.get_submodule(bn) if bn is not None else None)
        count += 1
    return count


def integer_kernel(candidate: Candidate) -> bool:
    """Whether ONNX Runtime's CPU target runs a Conv/Linear at ``candidate`` as an integer kernel with an int32
    bias: 8-bit static inputs and symmetric per-channel integer weights of at most 8 bits (what
    mixprec.export.targets.realise writes as 'qdq')."""
    w, a = candidate.weight, candidate.activation
    return (not candidate.multipoint and isinstance(w, IntFormat) and isinstance(a, IntFormat) and not is_dynamic(a)
            and a.bits == 8 and w.bits <= 8 and w.granularity == "channel" and w.symmetric
            and w.scale_dtype == "fp32" and not w.narrow_range)


def _weight_step(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Per output channel, the step of a symmetric signed grid the weight lies on: max|w| / 2^(B-1) (1 where the
    row is all zero, as int_qparams gives a zero range)."""
    amax = weight.detach().reshape(weight.shape[0], -1).abs().amax(dim=1).double()
    step = amax / float(2 ** (bits - 1))
    return torch.where(step > 0, step, torch.ones_like(step))


def rounding_error(layer: nn.Module, candidate: Candidate, input_quantizer, fold: BiasFold,
                   input_dims: int) -> torch.Tensor | None:
    """Per output channel, what the integer kernel adds beyond the float layer (its int32 bias rounding error,
    divided by the folded BatchNorm's factor), float64; None where the layer has no int32 bias (no bias and no
    BatchNorm, a Linear on more than 2-d inputs, a realisation other than integer inputs and weights)."""
    if (isinstance(layer, nn.Linear) and input_dims != 2) or not integer_kernel(candidate):
        return None
    if layer.bias is None and fold.batchnorm is None:
        return None
    q = input_quantizer
    input_scale = int_qparams(q.lo.reshape(1).float(), q.hi.reshape(1).float(), q.fmt)[0].double()
    factor, shift = fold.factor_shift(layer.weight.shape[0], layer.weight)
    bias = layer.bias.detach().double() if layer.bias is not None else torch.zeros_like(factor)
    folded = factor * bias + shift
    # the export's bias scale: float32 of s_x * (s_w * factor), widened by fit_bias where the bias would overflow
    scale = (input_scale * _weight_step(layer.weight, candidate.weight.bits) * factor.abs()).float().double()
    scale = torch.maximum(scale, folded.abs() / BIAS_LIMIT)
    error = torch.round(folded / scale) * scale - folded
    safe = torch.where(factor != 0, factor, torch.ones_like(factor))
    return torch.where(factor != 0, error / safe, torch.zeros_like(error))


@contextlib.contextmanager
def unrounded(model: nn.Module) -> Iterator[None]:
    """Inside the block, the layers of ``model`` add no bias rounding: the simulation without it."""
    folds = [m.integer_bias for m in model.modules() if getattr(m, "integer_bias", None) is not None]
    before = [f.enabled for f in folds]
    for f in folds:
        f.enabled = False
    try:
        yield
    finally:
        for f, b in zip(folds, before):
            f.enabled = b
