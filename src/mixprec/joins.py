"""Join quantizers: 8-bit quantizers on the tensors that residual adds and concatenations read and write,
where an int8 runtime graph has them.

An int8 graph (ONNX Runtime's QDQ format) runs a convolution as an integer kernel only when its output
is quantized too, and an add only when both its inputs and its output are. Quantizing only layer inputs
(mixprec's groups) leaves every layer that feeds a residual add in float. With join quantizers, the
simulated model has the quantizers of the graph that runs:

    each input of an add or concatenation of two or more tensors gets a quantizer, unless it is already
    the output of one, where a layer with integer inputs writes or reads the join's tensors (directly, or
    through ReLU, BatchNorm, clamps, Identity/Dropout or zero padding): a join among float layers only
    enables no integer kernel, and stays float;
    its output gets one too, after the ReLU that alone reads it if there is one (a ReLU before an unsigned
    quantizer whose range starts at 0 changes nothing, and ONNX Runtime drops it);
    a convolution whose output (after the BatchNorm, ReLU, ReLU6 or clamp that alone reads it, which the
    runtime fuses into the integer conv) is read by anything but layers with integer inputs and quantizers
    (a pooling, a mean, an activation the conv does not fuse, a layer the plan leaves in float) gets one
    there too, unless it is the model's output: ONNX Runtime has no integer conv with a float output, so
    without it that conv runs in float (EfficientNet-Lite0's last conv, before its global average pooling;
    the conv before a layer a mixed plan leaves in float).

Join quantizers are not chosen by a plan: they are 8-bit, per tensor, calibrated with the layers' input
quantizers, with the activation range method. A layer whose 8-bit input quantizer reads a tensor that a
join quantizer reads (or writes) takes the join quantizer's range, so the exported graph holds one
quantize/dequantize pair there, shared by every reader (mixprec.export.onnx_graph).

    insert_join_quantizers(model, integer_inputs=None)
                                   ``model`` traced by torch.fx, with uncalibrated join quantizers
                                   (integer_inputs: the layers a plan gives integer inputs; None: all)
                                   (mixprec.swap calibrates them: quantize_layers, with_join_quantizers)
    join_quantizers(model)         name -> JoinQuantizer of a model
    int8_graph(model)              whether the model was traced with join quantizers (an int8 graph's simulation)
    layers_reading_joins(model)    layer -> the join quantizer on its input tensor (they share a range)
    passthrough(model)             context: join quantizers pass values through (the float model)
"""
from __future__ import annotations

import contextlib
import inspect
import operator
from typing import Iterator

import torch
from torch import fx, nn

from .candidates import parse_candidate
from .errors import ModelError
from .groups import QUANTIZABLE
from .quantizers import ActivationQuantizer, int_qparams

JOIN_FORMAT = parse_candidate("w8a8").activation  # unsigned 8-bit, what ONNX Runtime's QDQ graph uses
CONTAINER = "mixprec_joins"
_ADDS = {operator.add, operator.iadd, torch.add}
_CATS = {torch.cat, torch.concat}
_RELUS = {torch.relu, torch.nn.functional.relu}
_CLAMPS = {torch.clamp, torch.clip, torch.nn.functional.relu6, torch.nn.functional.hardtanh}
_FUSED_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.ReLU, nn.ReLU6, nn.Hardtanh)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


class JoinQuantizer(ActivationQuantizer):
    """An 8-bit per-tensor quantizer on a join's input or output.

    ``passthrough``: values go through unchanged. ``onnx``: written as an ONNX QuantizeLinear/DequantizeLinear pair when the model is
    exported (torch's fake_quantize_per_tensor_affine), with the scale and zero-point of the simulation."""

    def __init__(self, method: str = "mse", where: str = ""):
        super().__init__(JOIN_FORMAT, method)
        self.where = where
        self.passthrough = False
        self.onnx = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.passthrough or not torch.is_floating_point(x):
            return x
        if self.onnx and not self.observing:
            scale, zero_point = self.qparams()
            fmt = self.fmt
            return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, fmt.qmin, fmt.qmax)
        return super().forward(x)

    def qparams(self) -> tuple[float, int]:
        scale, zero_point = int_qparams(self.lo.reshape(1).float().cpu(), self.hi.reshape(1).float().cpu(), self.fmt)
        return float(scale), int(zero_point)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, where={self.where}"


class _Tracer(fx.Tracer):
    """Quantizers (and mixprec's quantized layers) are leaves: their forward branches on tensor values.
    A torch.nn container of quantizable layers (nn.TransformerEncoder and its layers) is traced through,
    not kept whole as fx keeps torch.nn's modules: its layers must be nodes of the graph. Buffers are nodes
    too (get_attr), so a forward may slice one by its input's size (rotary tables: ``self.cos[:t]``); a model
    that branches on a buffer's value is traced with its buffers as constants instead (graph_module)."""

    def __init__(self, proxy_buffers: bool = True):
        super().__init__()
        self.proxy_buffer_attributes = proxy_buffers

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        quantized_layer = isinstance(getattr(m, "input_quantizer", None), ActivationQuantizer)
        if isinstance(m, ActivationQuantizer) or quantized_layer:
            return True
        if isinstance(m, (nn.MultiheadAttention, *QUANTIZABLE)):  # MultiheadAttention never calls its out_proj
            return True
        return super().is_leaf_module(m, qualname) and not any(isinstance(sub, QUANTIZABLE) for sub in m.modules())


def graph_module(model: nn.Module, example=None) -> fx.GraphModule:
    """``model`` as a GraphModule (submodules keep their names), quantizers as leaves; fx's own errors.
    example: an input as the data gives it; the optional arguments it leaves out (default None: a mask) are
    traced as None, not as tensors (calling the graph with one of them later is an error that says so)."""
    concrete = _absent_optionals(model, example)
    try:
        graph = _Tracer().trace(model, concrete_args=concrete)
    except Exception as exc:  # e.g. `if self.count > 0:` on a buffer: its value, not a node, is what it needs
        try:
            graph = _Tracer(proxy_buffers=False).trace(model, concrete_args=concrete)
        except Exception:
            raise exc from None
    name = type(model).__name__
    traced = fx.GraphModule(model, graph, name if name.isidentifier() else "Traced")
    kept = dict(traced.named_modules())
    for layer, module in model.named_modules():  # a layer forward never calls (T5's `shared`) keeps its name,
        if layer and layer not in kept and isinstance(module, QUANTIZABLE):  # so plans that list it still apply
            traced.add_submodule(layer, module)
    return traced


def _absent_optionals(model: nn.Module, example) -> dict | None:
    """{argument: None} for ``model.forward``'s arguments of default None that ``example`` does not give."""
    if example is None:
        return None
    try:
        signature = inspect.signature(model.forward)
        bound = (signature.bind_partial(**example) if isinstance(example, dict) else
                 signature.bind_partial(*example) if isinstance(example, (tuple, list)) else
                 signature.bind_partial(example))
    except (TypeError, ValueError):
        return None
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    absent = {name: None for name, p in signature.parameters.items()
              if p.kind in kinds and p.default is None and name not in bound.arguments}
    return absent or None


def from_transformers(model: nn.Module) -> bool:
    """Whether ``model`` holds Hugging Face transformers modules (which torch.fx does not trace here)."""
    return any(type(m).__module__.startswith("transformers.") for m in model.modules())


def trace(model: nn.Module, example=None) -> fx.GraphModule:
    """graph_module(model, example), a ModelError that says what to do where fx cannot trace it."""
    try:
        return graph_module(model, example)
    except Exception as exc:  # fx raises many kinds of errors on data-dependent code
        hf = from_transformers(model)
        clash = fx_clash_hint(model)
        raise ModelError(f"join quantizers need a model torch.fx can trace, and tracing failed: {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}; "
                         + (f"{clash} to have the joins quantized" if clash else
                            "Hugging Face models do not trace with torch.fx here, so their residual adds stay float "
                            "(their layers are quantized as planned)" if hf else
                            "quantize without join quantizers (joins=False) or make the forward free of "
                            "data-dependent control flow")) from exc


FX_RESERVED = ("meta", "graph", "code", "_graph", "_code", "_tracer_cls", "_tracer_extras")


def fx_clash_hint(model: nn.Module) -> str:
    """What to rename where a direct submodule of ``model`` is named as an attribute torch.fx's GraphModule sets
    itself (``meta``: GraphModule's dict), which no GraphModule of the model can hold; "" where none is."""
    clash = next((name for name, _ in model.named_children() if name in FX_RESERVED), None)
    return (f"the submodule {clash!r} has the name of an attribute of torch.fx's GraphModule: rename it "
            f"(e.g. self.{clash}_net)") if clash else ""


def default_joins(model: nn.Module, target: str | None, candidates) -> tuple[bool, str | None]:
    """Whether an analysis for ``target`` measures with join quantizers when the caller does not say, and a note
    saying why (None where nothing needs saying): yes when the target's int8 graph quantizes residual adds and
    concatenations (mixprec.export.TARGETS' ``joins``: ort-cpu), some candidate gives a layer static 8-bit
    integer inputs (the int8 QDQ layers that graph is made of; weight-only and a8d candidates give none) and
    ``model`` traces with torch.fx; a model that does not trace is measured without them, with a note."""
    from .candidates import parse_candidate
    from .export.targets import TARGETS
    from .formats import is_static_integer
    if target is None or target not in TARGETS or not TARGETS[target].joins:
        return False, None
    parsed = [c if not isinstance(c, str) else parse_candidate(c) for c in candidates]
    if not any(is_static_integer(c.activation) and c.activation.bits <= 8 for c in parsed):
        return False, None
    try:
        trace(model)
    except ModelError as exc:
        return False, (f"target {target} quantizes residual adds in its int8 graph, but this model is measured "
                       f"without join quantizers: {exc}")
    return True, (f"target {target} measures with join quantizers (8-bit residual adds and concatenations, as its "
                  "int8 graph runs them; --no-joins or joins=False turns them off)")


def _is_join(node: fx.Node) -> bool:
    """An add of two tensors or a concatenation of two or more."""
    if node.op == "call_function" and node.target in _ADDS:
        plain = not node.kwargs.get("alpha")
    elif node.op == "call_method" and node.target in ("add", "add_"):
        plain = not node.kwargs
    elif node.op == "call_function" and node.target in _CATS:
        plain = True
    else:
        return False
    return plain and len(_tensor_inputs(node)) >= 2


def _is_relu(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_function" and node.target in _RELUS:
        return True
    if node.op == "call_method" and node.target in ("relu", "relu_"):
        return True
    return node.op == "call_module" and isinstance(modules.get(node.target), nn.ReLU)


def _fuses_into_conv(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """BatchNorm (folded by the export), ReLU, ReLU6 or a clamp: what the runtime's integer conv takes in."""
    if _is_relu(node, modules):
        return True
    if node.op == "call_module":
        return isinstance(modules.get(node.target), _FUSED_MODULES)
    if node.op == "call_function":
        return node.target in _CLAMPS
    return node.op == "call_method" and node.target in ("clamp", "clamp_", "clip", "clip_")


_DROPPED = (nn.Identity, nn.Dropout)  # modules the exported graph drops: a tensor passes them unchanged


def _read_quantized(node: fx.Node, modules: dict[str, nn.Module], integer_inputs: set[str] | None = None) -> bool:
    """``node`` is a quantizer or a layer with integer inputs (whose input quantizer the runtime graph puts on
    the tensor; every layer when ``integer_inputs`` is None), or an Identity/Dropout or zero padding that only
    such nodes read."""
    def readers_quantized() -> bool:
        return bool(node.users) and all(_read_quantized(u, modules, integer_inputs) for u in node.users)
    if _is_zero_pad(node, modules):  # quantizing commutes with it; the export moves the reader's pair before it
        return readers_quantized()
    if node.op != "call_module":
        return False
    module = modules.get(node.target)
    if isinstance(module, ActivationQuantizer):
        return True
    if isinstance(module, _LAYERS):
        return integer_inputs is None or node.target in integer_inputs
    return isinstance(module, _DROPPED) and readers_quantized()


def _is_zero_pad(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """A padding by the constant 0 (nn.ZeroPad*d, nn.ConstantPad*d(value=0), F.pad in constant mode)."""
    if node.op == "call_module":
        module = modules.get(node.target)
        return isinstance(module, (nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d,
                                   nn.ConstantPad3d)) and float(module.value) == 0.0
    if node.op == "call_function" and node.target is torch.nn.functional.pad:
        mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
        value = node.args[3] if len(node.args) > 3 else node.kwargs.get("value", None)
        return mode == "constant" and (value is None or value == 0)
    return False


def _before_dropped(node: fx.Node, modules: dict[str, nn.Module]) -> fx.Node | None:
    """``node``, or what it reads through Identity/Dropout modules (None: not a node there)."""
    while node.op == "call_module" and isinstance(modules.get(node.target), _DROPPED):
        node = node.args[0]
        if not isinstance(node, fx.Node):
            return None
    return node


def _is_quantized(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """The node is a quantizer's output, or that output through Identity/Dropout modules."""
    node = _before_dropped(node, modules)
    return node is not None and node.op == "call_module" and isinstance(modules.get(node.target), ActivationQuantizer)


def _tensor_inputs(node: fx.Node) -> list[fx.Node]:
    if node.op == "call_function" and node.target in _CATS:
        tensors = node.args[0] if node.args else node.kwargs.get("tensors")
        return [t for t in tensors if isinstance(t, fx.Node)] if isinstance(tensors, (list, tuple)) else []
    return [a for a in node.args[:2] if isinstance(a, fx.Node)]


def insert_join_quantizers(model: nn.Module, method: str = "mse",
                           integer_inputs: set[str] | None = None, example=None) -> fx.GraphModule:
    """``model`` traced, with an uncalibrated JoinQuantizer at every join (see the module docstring).
    integer_inputs: names of the layers whose inputs a plan quantizes to integers (None: every layer, as
    an analysis measures before any plan): a conv read only by other layers still gets an output quantizer
    where one of them is not among these. example: an input as the data gives it (see graph_module)."""
    gm = trace(model, example)
    modules = dict(gm.named_modules())
    container = nn.Module()
    gm.add_module(CONTAINER, container)
    graph = gm.graph
    used_names: set[str] = set()

    def new_quantizer(after: fx.Node, where: str) -> fx.Node:
        base = where.replace(".", "_") or "join"
        name, k = base, 1
        while name in used_names:
            k += 1
            name = f"{base}_{k}"
        used_names.add(name)
        container.add_module(name, JoinQuantizer(method, where))
        modules[f"{CONTAINER}.{name}"] = container.get_submodule(name)
        with graph.inserting_after(after):
            return graph.call_module(f"{CONTAINER}.{name}", (after,))

    joins = [n for n in graph.nodes if _is_join(n)]
    if integer_inputs is not None:  # a join among float layers only enables no integer kernel: it stays float
        joins = [j for j in joins if _near_integer_layer(j, modules, integer_inputs)]
    made: dict[fx.Node, fx.Node] = {}  # a tensor two joins read: one quantizer (the same range), as a runtime has
    for join in joins:
        label = _label(join)
        for i, source in enumerate(_tensor_inputs(join)):
            if _is_quantized(source, modules):
                continue
            q = made.get(source) or new_quantizer(source, f"{label}.in{i}")
            made[source] = q
            join.replace_input_with(source, q)
        end = join
        users = list(end.users)
        if len(users) == 1 and _is_relu(users[0], modules):
            end = users[0]
        users = list(end.users)
        if users and all(_is_quantized(u, modules) for u in users):
            continue
        q = new_quantizer(end, f"{label}.out")
        end.replace_all_uses_with(q, delete_user_cb=lambda user: user is not q)
    for conv in [n for n in graph.nodes if n.op == "call_module" and isinstance(modules.get(n.target), _CONVS)
                 and (integer_inputs is None or n.target in integer_inputs)]:  # a float conv needs none
        end = conv
        while len(end.users) == 1 and _fuses_into_conv(next(iter(end.users)), modules):
            end = next(iter(end.users))
        users = list(end.users)
        if not users or any(u.op == "output" for u in users) or all(
                _read_quantized(u, modules, integer_inputs) for u in users):
            continue
        q = new_quantizer(end, f"{conv.target}.out")
        end.replace_all_uses_with(q, delete_user_cb=lambda user: user is not q)
    graph.lint()
    gm.recompile()
    return gm


def _passes_through(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """A node between a layer and a join that the int8 graph quantizes around as if absent: a ReLU, BatchNorm
    or clamp, an Identity/Dropout, a zero padding."""
    if _fuses_into_conv(node, modules) or _is_zero_pad(node, modules):
        return True
    return node.op == "call_module" and isinstance(modules.get(node.target), _DROPPED)


def _near_integer_layer(join: fx.Node, modules: dict[str, nn.Module], integer_inputs: set[str]) -> bool:
    """Whether a layer the plan gives integer inputs writes a tensor ``join`` reads or reads the tensor it writes,
    directly or through what ``_passes_through``: only then can its quantizers make an integer kernel of the join
    or of a layer beside it."""
    seen, frontier = {join}, [join]
    while frontier:
        node = frontier.pop()
        for near in [*node.all_input_nodes, *node.users]:
            if near in seen:
                continue
            seen.add(near)
            if near.op == "call_module" and isinstance(modules.get(near.target), _LAYERS):
                if near.target in integer_inputs:
                    return True
            elif _passes_through(near, modules):
                frontier.append(near)
    return False


def _label(node: fx.Node) -> str:
    """A readable place for a join: the module path of its node (fx names nodes after their code)."""
    stack = node.meta.get("nn_module_stack") or {}
    path = list(stack.values())[-1][0] if stack else ""
    return f"{path}.{node.name}" if path else node.name


def layers_reading_joins(model: nn.Module) -> dict[str, str]:
    """Quantized layer (a call_module target of the traced ``model``) -> the join quantizer on its input tensor: one
    that reads the same tensor, or whose output the layer reads (through Identity/Dropout). Such a layer's
    8-bit input quantizer takes the join quantizer's range, so that the runtime graph quantizes the
    tensor once for all its readers."""
    graph = getattr(model, "graph", None)
    if graph is None:
        return {}
    modules = dict(model.named_modules())
    out: dict[str, str] = {}
    for node in graph.nodes:
        if (node.op != "call_module" or not node.args
                or not isinstance(getattr(modules.get(node.target), "input_quantizer", None), ActivationQuantizer)):
            continue  # quantized layers only
        source = _before_dropped(node.args[0], modules) if isinstance(node.args[0], fx.Node) else None
        if source is None:
            continue
        if source.op == "call_module" and isinstance(modules.get(source.target), JoinQuantizer):
            out[node.target] = source.target
            continue
        readers, frontier = [], list(source.users)
        while frontier:  # through Identity/Dropout, which the exported graph drops
            user = frontier.pop(0)
            module = modules.get(user.target) if user.op == "call_module" else None
            if isinstance(module, JoinQuantizer):
                readers.append(user.target)
            elif isinstance(module, _DROPPED):
                frontier.extend(user.users)
        if readers:
            out[node.target] = readers[0]
    return out


def int8_graph(model: nn.Module) -> bool:
    """Whether ``model`` simulates a runtime's int8 graph: traced with join quantizers inserted (perhaps none, where
    its graph has no join), so its quantized layers also round their bias as the integer kernels do
    (mixprec.integer_bias)."""
    return isinstance(getattr(model, CONTAINER, None), nn.Module)


def strip_join_quantizers(model: fx.GraphModule) -> fx.GraphModule:
    """``model`` (in place) without its join quantizers: each call of one is replaced by its input, and their
    container removed. The graph of the float model again, to insert a plan's own joins into."""
    graph = model.graph
    for node in list(graph.nodes):
        if node.op == "call_module" and str(node.target).startswith(CONTAINER + "."):
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
    if hasattr(model, CONTAINER):
        delattr(model, CONTAINER)
    graph.lint()
    model.recompile()
    return model


def join_quantizers(model: nn.Module) -> dict[str, JoinQuantizer]:
    return {n: m for n, m in model.named_modules() if isinstance(m, JoinQuantizer)}


@contextlib.contextmanager
def passthrough(model: nn.Module) -> Iterator[None]:
    """Join quantizers pass values through inside the block: ``model`` is the float model again."""
    quantizers = list(join_quantizers(model).values())
    before = [q.passthrough for q in quantizers]
    for q in quantizers:
        q.passthrough = True
    try:
        yield
    finally:
        for q, b in zip(quantizers, before):
            q.passthrough = b


@contextlib.contextmanager
def onnx_mode(model: nn.Module) -> Iterator[None]:
    """Join quantizers are written as QuantizeLinear/DequantizeLinear pairs by torch.onnx.export."""
    quantizers = list(join_quantizers(model).values())
    for q in quantizers:
        q.onnx = True
    try:
        yield
    finally:
        for q in quantizers:
            q.onnx = False
