"""The ONNX graph of a planned model: the float graph torch exports, each planned layer rewritten to
what its candidate says, with the codes, scales and zero-points of mixprec's simulation.

    qdq        QuantizeLinear -> DequantizeLinear on the input (u8, the calibrated scale and zero-point);
               the weight as int8 codes behind a per-channel DequantizeLinear; the bias as int32 with
               scale = input scale x weight scale. ONNX Runtime fuses DQ -> op -> Q into integer kernels.
    nbits      com.microsoft MatMulNBits: 4- or 8-bit codes in blocks, the candidate's scales, accuracy_level.
    dq_weight  int8 codes behind a DequantizeLinear feeding the float op (inputs cast through float16 for a16).
    fp16       float16 weight (and input) values, cast to float for the op.
    float      untouched.

Layers are found by the initializer their weight is exported as (``<layer>.weight``), never by node
position. A BatchNormalization right after a rewritten Conv is folded into it: the weight scales are per
output channel, so folding multiplies each channel's scale and keeps the simulated codes exactly.
"""
from __future__ import annotations

import dataclasses
import inspect
import io
import json
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from ..batches import run_model
from ..candidates import Candidate
from ..errors import ModelError
from ..formats import IntFormat
from ..integer_bias import BIAS_LIMIT  # the largest int32 bias code written
from ..quantizers import int_qparams, row_chunks, weight_qparams
from .targets import Realisation

OPSET = 17
MS_DOMAIN = "com.microsoft"


@dataclass
class LayerCodes:
    """A layer as the simulation holds it: integer weight codes (shape (out, inputs)) with the scale and zero-point
    of each of their groups, and the input quantizer's scale and zero-point (None: float input).

    The codes are kept in int16 and the scales and zero-points once per group (``group_size`` inputs of a row; a
    per-channel or per-tensor weight has one group per row), so a model's codes take half its float32 weights'
    memory; ``scales`` and ``zero_points`` give them per element, as (out, inputs) arrays made when read."""

    name: str
    candidate: Candidate
    realisation: Realisation
    codes: np.ndarray | None = None  # int16 (int32 above 8 bits) (out, k)
    group_scales: np.ndarray | None = None  # float32 (out, groups)
    group_zero_points: np.ndarray | None = None  # int32 (out, groups)
    group_size: int = 0  # inputs per group; the last group of a row may be shorter
    input_scale: float | None = None
    input_zero_point: int | None = None

    def _per_element(self, per_group: np.ndarray | None) -> np.ndarray | None:
        if per_group is None:
            return None
        return np.repeat(per_group, self.group_size, axis=1)[:, :self.codes.shape[1]]

    @property
    def scales(self) -> np.ndarray | None:
        """float32 (out, k): each code's scale."""
        return self._per_element(self.group_scales)

    @property
    def zero_points(self) -> np.ndarray | None:
        """int64 (out, k): each code's zero-point."""
        z = self._per_element(self.group_zero_points)
        return None if z is None else z.astype(np.int64)


def layer_codes(name: str, original: torch.Tensor, simulated: torch.Tensor, candidate: Candidate,
                realisation: Realisation, input_quantizer: Any = None, weight_method: str = "mse") -> LayerCodes:
    """Codes of the simulated weight on the grid nearest rounding chooses for ``original`` (what apply's
    quantize_weight does); a weight that is not on that grid is a ModelError, never re-rounded."""
    out = LayerCodes(name, candidate, realisation)
    fmt = candidate.weight
    if isinstance(fmt, IntFormat):
        parts = [_codes_of_rows(name, original[rows], simulated[rows], fmt, weight_method)
                 for rows in row_chunks(original.shape[0], original[0].numel(), fmt)]
        out.group_size = parts[0][3]
        out.codes, out.group_scales, out.group_zero_points = (np.concatenate([p[i] for p in parts]) for i in range(3))
    q = input_quantizer
    if q is not None and isinstance(q.fmt, IntFormat):
        scale, zero_point = int_qparams(q.lo.reshape(1).float().cpu(), q.hi.reshape(1).float().cpu(), q.fmt)
        out.input_scale, out.input_zero_point = float(scale), int(zero_point)
    return out


def _codes_of_rows(name: str, original: torch.Tensor, simulated: torch.Tensor, fmt: IntFormat,
                   weight_method: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(codes, scale and zero-point per group, group size) of some output rows of a layer (:func:`layer_codes`)."""
    rows = original.detach().to(torch.float32).reshape(original.shape[0], -1)
    sim = simulated.detach().to(torch.float32).reshape(rows.shape)
    scale, zero_point = weight_qparams(rows, fmt, weight_method)
    codes = torch.clamp(torch.round(sim / scale) + zero_point, fmt.qmin, fmt.qmax)
    error = ((codes - zero_point) * scale - sim).abs()
    # a bfloat16 or float16 model holds code * scale rounded to its type: up to half its epsilon of the value
    # (at most a quarter step for 8-bit codes in bfloat16), so the codes are still read back exactly
    rounding = 0.0 if simulated.dtype in (torch.float32, torch.float64) else \
        0.5 * torch.finfo(simulated.dtype).eps * 1.001
    if bool((error > 1e-5 * scale.abs() + rounding * sim.abs() + 1e-12).any()):
        raise ModelError(f"layer {name!r}: the quantized weight is not on the grid of nearest rounding's scales "
                         f"(largest error {float((error / scale.abs()).max()):.3g} steps), so its codes cannot be "
                         "exported exactly; export a model quantized with rounding nearest, adaround, brecq, or gptq with "
                         "static groups (--static-groups, GPTQ(static_groups=True))")
    del error
    # weight_qparams gives every element its group's scale: one column per group keeps them all
    size = fmt.group_size if fmt.granularity == "group" else rows.shape[1]
    return (codes.to(torch.int16 if fmt.bits <= 8 else torch.int32).cpu().numpy(),
            scale[:, ::size].cpu().numpy().astype(np.float32),
            zero_point[:, ::size].to(torch.int32).cpu().numpy(), size)


OUTPUTS_KEY = "mixprec.outputs"  # the metadata holding the structure of several outputs
NONES_KEY = "mixprec.output_nones"  # the positions among its leaves of the None values a dict output held
CLASSES_KEY = "mixprec.output_classes"  # the dataclasses among the outputs (written as dicts of their fields)


def export_float(model: nn.Module, example: Any, opset: int = OPSET, free: dict[int, set[int]] | None = None):
    """The float ONNX graph of ``model`` (TorchScript exporter, nothing folded, so initializers keep the
    state-dict names and BatchNorm stays a node); batch (and sequence, for integer inputs) axes dynamic, and the
    axes ``free`` names (the id of an example input tensor -> axes the calibration batches vary)."""
    import onnx

    constants, positions, by_name, defaults = {}, [], False, False
    if isinstance(example, torch.Tensor):
        # named as forward names it (input_ids, x), as tuple and dict inputs are: the file takes it by that name
        args, names, tensors = (example,), [_single_name(model)], [example]
        defaults = _unfilled_defaults(model, 1)
    elif isinstance(example, dict):
        # the exporter passes a trailing dict as keyword arguments and makes the graph's inputs in the order of
        # forward's parameters: the names must follow that order, not the dict's
        constants = {k: example[k] for k in plain_inputs(example)}
        names = _keyword_order(model, {k: v for k, v in example.items() if k not in constants})
        tensors = [example[n] for n in names]
        # with non-tensor values, or a forward(**kwargs) (the exporter binds a dict to named parameters only),
        # forward is bound by name and takes the tensors in order (_bound)
        by_name = bool(constants) or _var_keyword(model) or _unfilled_defaults(model, names)
        args = tuple(tensors) if by_name else (dict(zip(names, tensors)),)
    elif isinstance(example, (tuple, list)):
        positions = plain_inputs(example)
        kept = [i for i in range(len(example)) if i not in positions]
        positional = _positional_names(model, len(example))
        args, names, tensors = (tuple(example[i] for i in kept), [positional[i] for i in kept],
                                [example[i] for i in kept])
        defaults = _unfilled_defaults(model, len(example))
    else:
        raise ModelError(f"cannot export a model whose input is a {type(example).__name__}; give a tensor, "
                         "a tuple or a dict of tensors")
    # (batch, length) integer inputs (token ids, masks) have a dynamic length of their own: an encoder-decoder's
    # two sequences differ, and ONNX Runtime takes two axes of one name to be equal; other inputs (float, or
    # integer images) keep their other axes (mixprec.export notes their fixed shape)
    batch = batch_size(tensors)
    dynamic = {n: ({0: "batch", 1: f"{n}_length"} if token_like(t) else {batch_axis(t, batch): "batch"})
               for n, t in zip(names, tensors) if t.dim() >= 1}
    for n, t in zip(names, tensors):  # axes the calibration batches vary (free: id of an input -> its axes)
        for axis in sorted((free or {}).get(id(t), ())):
            dynamic.setdefault(n, {}).setdefault(axis, f"{n}_axis{axis}")
    module, outputs, metadata, structure, classes = model, ["output"], {}, None, []
    dynamic["output"] = {0: "batch"}
    step = getattr(model, "onnx_step", None)  # a model that exports as something else (an LM's cached step)
    signature = step(example) if callable(step) and isinstance(example, torch.Tensor) else None
    if signature is not None:
        module, args, names = signature["module"], signature["args"], signature["input_names"]
        outputs, dynamic, metadata = signature["output_names"], signature["dynamic_axes"], signature["metadata"]
    buffer = io.BytesIO()
    ids_only = signature is None and isinstance(example, torch.Tensor) and not example.is_floating_point()
    if positions:  # the file runs the model as traced on the example's values there; OrtModule skips them
        metadata[CONSTANTS_KEY] = json.dumps(positions)
    with _without_cache(model if signature is None else None), _all_attended(model if ids_only else None), \
            _bound(model if signature is None else None, example, constants, positions, names, by_name, defaults):
        if signature is None:
            called = args[0] if len(args) == 1 and isinstance(args[0], (dict, torch.Tensor)) else args
            structure = _output_structure(model, called, tensors[0].shape[0] if tensors and tensors[0].dim() else None)
            if structure is not None:  # a tuple, a dict, a model output: each tensor named, OrtModule rebuilds it
                outputs, batched, metadata[OUTPUTS_KEY], nones, classes = structure
                if nones:
                    metadata[NONES_KEY] = json.dumps(nones)
                if classes:
                    metadata[CLASSES_KEY] = json.dumps(classes)
                dynamic.pop("output")
                dynamic.update({n: {0: "batch"} for n, b in zip(outputs, batched) if b})
        # dataclasses among the outputs are traced as the dicts of their fields (the exporter takes no dataclass)
        with _plain_outputs(model if signature is None and structure is not None and classes else None):
            _export(module, args, buffer, opset, names, outputs, dynamic)
    graph = onnx.ModelProto()
    with buffer.getbuffer() as view:  # parsed from the buffer itself: no third copy of the weights
        graph.ParseFromString(view)
    buffer.close()
    _cast_bool_cumsums(graph)
    stored = {i.name for i in graph.graph.initializer}
    kept = [i for i in graph.graph.input if i.name not in stored]  # weights are constants, not inputs
    del graph.graph.input[:]
    graph.graph.input.extend(kept)
    for key, value in metadata.items():
        graph.metadata_props.add(key=key, value=value)
    return graph


def batch_size(tensors: list[torch.Tensor]) -> int | None:
    """The example's batch size: the most common size of its inputs' first axes (the first input's on a tie)."""
    sizes = [int(t.shape[0]) for t in tensors if t.dim() >= 1]
    return max(sizes, key=lambda s: (sizes.count(s), -sizes.index(s))) if sizes else None


def batch_axis(t: torch.Tensor, batch: int | None) -> int:
    """The axis of input ``t`` that holds the batch: 0, unless its first axis is not the batch's size and exactly
    one other axis is (a recurrent state of shape (layers, batch, hidden), nn.GRU's and nn.LSTM's)."""
    if batch is None or t.dim() < 2 or t.shape[0] == batch:
        return 0
    others = [i for i in range(1, t.dim()) if t.shape[i] == batch]
    return others[0] if len(others) == 1 else 0


def plain_inputs(example: Any) -> list:
    """The keys (a dict) or positions (a tuple) of the example's inputs that are not tensors (a batch's ids, a
    flag): ONNX inputs are tensors, so the file is traced with these as constants (_bound)."""
    if isinstance(example, dict):
        return [k for k, v in example.items() if not isinstance(v, torch.Tensor)]
    if isinstance(example, (tuple, list)):
        return [i for i, v in enumerate(example) if not isinstance(v, torch.Tensor)]
    return []


CONSTANTS_KEY = "mixprec.constant_inputs"  # metadata: positions of the example's non-tensor inputs (not in the file)


@contextmanager
def _bound(model: nn.Module | None, example: Any, constants: dict, positions: list[int], names: list[str],
           by_name: bool = False, defaults: bool = False):
    """``model.forward`` with the example's non-tensor inputs (a batch's ids or texts, a flag) bound to their
    values, so the exporter traces it on its tensors alone: ONNX inputs are tensors, and those values are
    constants of the trace. The model itself is called (its state-dict names, which name the file's weights,
    unchanged); nothing is bound where there is nothing to bind. by_name: a dict input is passed by name
    (forward(**kwargs), which the exporter cannot bind a dict to), constants or not. defaults: forward has
    parameters with defaults the example does not give (``temperature=1.0``), which the exporter would make
    inputs of the file; called with the given tensors alone, forward takes its defaults as constants."""
    if model is None or not (constants or positions or by_name or defaults):
        yield
        return
    own = model.__dict__.get("forward")  # an instance's own forward, put back after
    forward = model.forward
    if constants or by_name:
        keys = [k for k in names if k not in constants]

        def by_name(*tensors):
            return forward(**dict(zip(keys, tensors)), **constants)
        model.forward = by_name
    else:
        fixed = {i: example[i] for i in positions}
        total = len(example) if isinstance(example, (tuple, list)) else 1

        def positional(*tensors):
            it = iter(tensors)
            return forward(*[fixed[i] if i in fixed else next(it) for i in range(total)])
        model.forward = positional
    try:
        yield
    finally:
        if own is None:
            del model.forward  # the class's forward again
        else:
            model.forward = own


def token_like(t: torch.Tensor) -> bool:
    """A (batch, length) integer input: token ids or a mask, exported with a dynamic length."""
    return not torch.is_floating_point(t) and t.dim() == 2


def _cast_bool_cumsums(model) -> None:
    """torch's exporter writes a cumulative sum of booleans (Whisper's positions from its mask) as a CumSum of a
    bool tensor, which ONNX does not allow and ONNX Runtime refuses to load; torch sums them as int64, so the
    input is cast to int64 first."""
    import onnx
    from onnx import TensorProto, helper
    cumsums = [n for n in model.graph.node if n.op_type == "CumSum"]
    if not cumsums:
        return
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # shapes ONNX cannot infer: left to ONNX Runtime's own error
        return
    types = {v.name: v.type.tensor_type.elem_type for v in list(inferred.graph.value_info)
             + list(inferred.graph.input) + list(inferred.graph.output)}
    for node in cumsums:
        if types.get(node.input[0]) == TensorProto.BOOL:
            cast = helper.make_node("Cast", [node.input[0]], [node.input[0] + "_as_int64"], to=TensorProto.INT64,
                                    name=node.name + "/bool_to_int64")
            node.input[0] = cast.output[0]
            nodes = list(model.graph.node)
            del model.graph.node[:]
            model.graph.node.extend(nodes[:nodes.index(node)] + [cast] + nodes[nodes.index(node):])


def _rms_norm(g, input, normalized_shape, weight, eps):
    """aten::rms_norm (nn.RMSNorm, F.rms_norm), which torch's exporter cannot write before opset 23, as the
    ops it computes: input / sqrt(mean(input^2 over the normalized axes) + eps) * weight; eps None is
    float32's machine epsilon, as torch takes for a float32 input (the file's float type)."""
    from torch.onnx import symbolic_helper as sh
    axes = list(range(-len(sh._get_const(normalized_shape, "is", "normalized_shape")), 0))
    eps = torch.finfo(torch.float32).eps if sh._is_none(eps) else sh._get_const(eps, "f", "eps")
    square = g.op("Mul", input, input)
    mean = (g.op("ReduceMean", square, axes_i=axes, keepdims_i=1) if g.opset < 18 else  # axes an input from 18
            g.op("ReduceMean", square, g.op("Constant", value_t=torch.tensor(axes)), keepdims_i=1))
    out = g.op("Div", input, g.op("Sqrt", g.op("Add", mean, g.op("Constant", value_t=torch.tensor(eps)))))
    return out if sh._is_none(weight) else g.op("Mul", out, weight)


def _diff(g, input, n, dim, prepend, append):
    """aten::diff (transformers' packed-sequence check on position ids), which torch's exporter cannot write:
    the input (with prepend/append concatenated along ``dim``) less itself shifted by one, n times."""
    from torch.onnx import symbolic_helper as sh
    n, dim = sh._get_const(n, "i", "n"), sh._get_const(dim, "i", "dim")
    if not sh._is_none(prepend):
        input = g.op("Concat", prepend, input, axis_i=dim)
    if not sh._is_none(append):
        input = g.op("Concat", input, append, axis_i=dim)

    def const(value: int):
        return g.op("Constant", value_t=torch.tensor([value], dtype=torch.int64))
    for _ in range(n):
        later = g.op("Slice", input, const(1), const(torch.iinfo(torch.int64).max), const(dim))
        earlier = g.op("Slice", input, const(0), const(-1), const(dim))
        input = g.op("Sub", later, earlier)
    return input


def _bilinear(g, input1, input2, weight, bias):
    """aten::bilinear (nn.Bilinear, a layer mixprec keeps float), which torch's exporter cannot write: y[..., k]
    = sum over i, j of x1[..., i] W[k, i, j] x2[..., j], plus b[k], as one Einsum."""
    from torch.onnx import symbolic_helper as sh
    out = g.op("Einsum", input1, weight, input2, equation_s="...i,kij,...j->...k")
    return out if sh._is_none(bias) else g.op("Add", out, bias)


# ops of torch and transformers code that torch's exporter cannot write at OPSET
_SYMBOLICS = {"aten::rms_norm": _rms_norm, "aten::diff": _diff, "aten::bilinear": _bilinear}


_HINTS = {"complex": "; ONNX has no complex numbers: write the computation with real tensors (rotary embeddings "
                      "as x * cos + rotate_half(x) * sin, as Hugging Face's Llama does)",
          "not part of the active trace": "; torch's exporter cannot trace a TorchScript submodule of an eager model: "
                                          "give that part as the plain nn.Module, not torch.jit.script'ed"}


def _register_symbolics(opset: int) -> None:
    for name, function in _SYMBOLICS.items():
        torch.onnx.register_custom_op_symbolic(name, function, opset)


def _export(module, args, buffer, opset: int, names: list[str], outputs: list[str], dynamic: dict) -> None:
    """torch.onnx.export into ``buffer``; a failure is one ModelError line, torch's log kept in a file it names."""
    _register_symbolics(opset)
    with warnings.catch_warnings(), _output_to_file() as log:
        warnings.simplefilter("ignore")
        try:
            # initializers kept as inputs: the exporter then stores two equal weights as two tensors under their
            # own names, not one read by an Identity (layers are matched by their weight's name)
            torch.onnx.export(module, args, buffer, dynamo=False, opset_version=opset, do_constant_folding=False,
                              input_names=names, output_names=outputs, dynamic_axes=dynamic,
                              keep_initializers_as_inputs=True)
        except Exception as exc:  # the exporter raises many types; the message is what the user needs
            failure = exc
        else:
            failure = None
    if failure is not None:
        kept = _keep_log(log)
        message = str(failure).splitlines()[0] if str(failure) else ""
        hint = next((h for op, h in _HINTS.items() if op in message), "")
        raise ModelError(f"torch.onnx.export failed on the model: {type(failure).__name__}: {message}{hint}"
                         + (f" (torch's log of the export, with the graph it failed on: {kept})" if kept else "")
                         ) from failure
    Path(log).unlink(missing_ok=True)


@contextmanager
def _all_attended(model):
    """A Hugging Face model given token ids alone is exported with an explicit all-ones attention mask: without
    one transformers checks for packed sequences with torch.diff, which the exporter cannot write. Every token
    is attended, as without a mask. (Its forward is replaced on the instance, so its parameters keep their
    names.)"""
    if model is None or not _takes_mask(model):
        yield
        return
    forward = type(model).forward
    model.forward = lambda input_ids: forward(model, input_ids=input_ids, attention_mask=torch.ones_like(input_ids))
    try:
        yield
    finally:
        del model.forward


def _takes_mask(model: nn.Module) -> bool:
    try:
        return hasattr(model, "config") and "attention_mask" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


@contextmanager
def _without_cache(model):
    """A Hugging Face model (``config.use_cache``) given in Python exports its logits without its KV cache
    object, which the exporter cannot write (a model loaded with hf:DIR exports its cache as tensors)."""
    configs = {} if model is None else {id(c): c for c in (getattr(m, "config", None) for m in model.modules())
                                           if getattr(c, "use_cache", False) is True}  # an encoder-decoder's parts
    for config in configs.values():                                                 # each keep a config of their own
        config.use_cache = False
    try:
        yield
    finally:
        for config in configs.values():
            config.use_cache = True


def _output_structure(model: nn.Module, example: Any,
                      batch: int | None) -> tuple[list[str], list[bool], str, list[int], list[dict]] | None:
    """For a model that returns several tensors (in tuples, lists, dicts, dataclasses): the graph's output names,
    whether each leads with the batch, the structure as JSON (``torch.utils._pytree``, a dataclass as the dict of
    its fields), the positions of its None leaves (a dict's None values: the file has no output for them,
    OrtModule puts them back) and the dataclasses it holds (:func:`_plain`, which OrtModule builds again); None
    for one tensor, or a structure pytree cannot write (the exporter's own outputs then). An output the file
    cannot hold (a number, a string, an object of another class) is a ModelError, raised before the export."""
    from torch.utils._pytree import tree_flatten, treespec_dumps
    with torch.no_grad():
        try:
            produced = run_model(model, example)
        except Exception:  # the exporter's own error says more
            return None
    if isinstance(produced, torch.Tensor):
        return None
    check_output(produced)
    classes: list[dict] = []
    plain = _plain(produced, classes)
    leaves, spec = tree_flatten(plain)
    nones = [i for i, leaf in enumerate(leaves) if leaf is None]
    tensors = [leaf for leaf in leaves if leaf is not None]
    try:
        text = treespec_dumps(spec)
        json.dumps(classes)
    except Exception:  # a container type pytree cannot write
        return None
    names = _leaf_names(plain, inputs=_input_names(model, example))
    return (names, [batch is not None and t.dim() >= 1 and t.shape[0] == batch for t in tensors], text, nones,
            classes)


def _leaf_names(plain: Any, inputs: set[str] = frozenset()) -> list[str]:
    """The graph's names for the tensor leaves of a model's output (None leaves have none): a dict's keys and a
    dataclass's fields by their path ("logits", "encoder.hidden"); leaves reached through tuples and lists alone,
    and names that would repeat one already taken or an input's, "output", "output1", ..."""
    from torch.utils._pytree import MappingKey, SequenceKey, tree_flatten_with_path
    names: list[str] = []
    for path, leaf in tree_flatten_with_path(plain)[0]:
        if leaf is None:
            continue
        keyed = any(isinstance(k, MappingKey) for k in path)
        name = ".".join(str(k.key) if isinstance(k, MappingKey) else str(k.idx) if isinstance(k, SequenceKey)
                        else str(k).strip(".[]") for k in path)
        if not keyed or not name or name in names or name in inputs or not name.isprintable():
            name = "output" if not names else f"output{len(names)}"
            while name in names or name in inputs:
                name += "_"
        names.append(name)
    return names


def _input_names(model: nn.Module, example: Any) -> set[str]:
    """Names the graph's inputs may take (forward's parameters and a dict input's keys), which no output takes."""
    import inspect
    try:
        taken = set(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        taken = set()
    return taken | (set(example) if isinstance(example, dict) else set())


SUPPORTED_OUTPUTS = ("a tensor, or tuples, lists, dicts, dataclasses and Hugging Face model outputs of tensors "
                     "(nested; None values allowed)")


def check_output(produced: Any) -> None:
    """A ModelError naming the first part of a model's output an ONNX file cannot hold (anything but tensors,
    None, and tuples, lists, dicts and dataclasses of them), and what it can hold."""
    from torch.utils._pytree import tree_flatten
    found = _unsupported(produced, "output")
    if found is None:
        if not any(isinstance(leaf, torch.Tensor) for leaf in tree_flatten(_plain(produced))[0]):
            raise ModelError(f"the model's output ({type(produced).__name__}) holds no tensor, so there is nothing "
                             f"for an ONNX file to output; export supports outputs that are {SUPPORTED_OUTPUTS}")
        return
    where, value = found
    kind = type(value)
    name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    whole = "" if where == "output" else f" (in a {type(produced).__name__})"
    article = "an" if name[:1].lower() in "aeiou" else "a"
    raise ModelError(f"cannot export the model to ONNX: its {where}{whole} is {article} {name}, which an ONNX file "
                     f"cannot output; export supports outputs that are {SUPPORTED_OUTPUTS}: return those from forward "
                     "(e.g. a @dataclass or a dict of its tensors), with anything else kept outside the model")


def check_model_output(model: nn.Module, example: Any) -> None:
    """:func:`check_output` on what ``model`` returns for ``example`` (a tensor, or a tuple or dict of inputs),
    so that an output the file cannot hold fails before any slow work; nothing if the model fails to run. As the
    export traces it: a model with its own ``onnx_step`` (a language model's cached step) is not checked, and a
    Hugging Face model runs without its KV cache object (``_without_cache``)."""
    if callable(getattr(model, "onnx_step", None)):
        return
    with torch.no_grad(), _without_cache(model):
        try:
            produced = run_model(model, example)
        except Exception:  # the model's own error comes later, where it is run for the export
            return
    if not isinstance(produced, torch.Tensor):
        check_output(produced)


def _is_dataclass(value: Any) -> bool:
    return dataclasses.is_dataclass(value) and not isinstance(value, type)


def _fields(value: Any) -> list:
    """A dataclass's fields that the instance holds (one declared with init=False and never set has no value)."""
    return [f for f in dataclasses.fields(value) if hasattr(value, f.name)]


def _unsupported(value: Any, where: str) -> tuple[str, Any] | None:
    """(where, value) of the first part of ``value`` that is neither a tensor, None, nor a tuple, list, mapping
    or dataclass of them; None if there is none."""
    if value is None or isinstance(value, torch.Tensor):
        return None
    if isinstance(value, Mapping):
        parts = ((f"{where}[{k!r}]", v) for k, v in value.items())
    elif _is_dataclass(value):
        parts = ((f"{where}.{f.name}", getattr(value, f.name)) for f in _fields(value))
    elif isinstance(value, (tuple, list)):
        parts = ((f"{where}[{i}]", v) for i, v in enumerate(value))
    else:
        return where, value
    return next((found for w, v in parts if (found := _unsupported(v, w)) is not None), None)


def _plain(value: Any, classes: list[dict] | None = None, path: tuple = ()) -> Any:
    """``value`` with its mappings (dicts, a Hugging Face model's output) and dataclasses as dicts and its
    sequences as tuples or lists, in order: the structure the exporter writes the outputs in. A Hugging Face
    output's None fields are not among its items; a plain dict's None values, and a dataclass's, stay (leaves
    the file has no output for). classes: where each dataclass is appended as {"path": the keys and positions
    that lead to it, "class": "module:qualname", "file": its module's file, "fields", "init": the fields its
    constructor takes}, so OrtModule can build it again."""
    if isinstance(value, Mapping):
        return {k: _plain(v, classes, path + (k,)) for k, v in value.items()}
    if _is_dataclass(value):
        fields = _fields(value)
        if classes is not None:
            kind = type(value)
            module = sys.modules.get(kind.__module__)
            classes.append({"path": list(path), "class": f"{kind.__module__}:{kind.__qualname__}",
                            "file": getattr(module, "__file__", None), "fields": [f.name for f in fields],
                            "init": [f.name for f in fields if f.init]})
        return {f.name: _plain(getattr(value, f.name), classes, path + (f.name,)) for f in fields}
    if isinstance(value, (tuple, list)):
        items = [_plain(v, classes, path + (i,)) for i, v in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    return value


@contextmanager
def _plain_outputs(model: nn.Module | None):
    """``model.forward`` returning its output as :func:`_plain` writes it (its dataclasses as dicts), for the
    exporter, which takes tensors, tuples, lists and dicts only; the forward the instance had is put back after
    (mixprec's own bindings, :func:`_bound`, keep their order)."""
    if model is None:
        yield
        return
    own = model.__dict__.get("forward")
    forward = model.forward

    def plain(*args, **kwargs):
        return _plain(forward(*args, **kwargs))
    model.forward = plain
    try:
        yield
    finally:
        if own is None:
            del model.forward
        else:
            model.forward = own


def _unfilled_defaults(model: nn.Module, given: int | list[str]) -> bool:
    """Whether ``model.forward`` has parameters with a default that the example does not give (``given``: how
    many positional inputs, or the names of the keyword inputs). torch's exporter fills such parameters with
    their defaults and makes each an input of the file, which then needs a tensor nobody has (a float
    ``temperature=1.0`` became a float64 input ``onnx::Cast_1``)."""
    try:
        parameters = [p for p in inspect.signature(model.forward).parameters.values()
                      if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    except (TypeError, ValueError):
        return False
    rest = parameters[given:] if isinstance(given, int) else [p for p in parameters if p.name not in given]
    return any(p.default is not p.empty for p in rest)


def _var_keyword(model: nn.Module) -> bool:
    """Whether ``model.forward`` takes **kwargs."""
    try:
        return any(p.kind == p.VAR_KEYWORD for p in inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return False


def _single_name(model: nn.Module) -> str:
    """The graph input name of a model's one tensor input: forward's first parameter name (``input_ids``, ``x``),
    ``input`` where forward names none."""
    name = _positional_names(model, 1)[0]
    return "input" if name == "input0" else name


def _positional_names(model: nn.Module, count: int) -> list[str]:
    """The graph input names of ``count`` positional inputs: forward's parameter names (``x``, ``mask``), so
    that the file takes them by name as the model does; ``input<i>`` where forward names none (``*args``)."""
    try:
        signature = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        signature = {}
    named = [n for n, p in signature.items() if n != "self" and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    names = [named[i] if i < len(named) else f"input{i}" for i in range(count)]
    return names if len(set(names)) == len(names) else [f"input{i}" for i in range(count)]


def _keyword_order(model: nn.Module, example: dict) -> list[str]:
    """The keys of ``example`` in the order of ``model.forward``'s parameters (how the exporter orders the
    graph's inputs); a key forward does not name is a clear error, since the exporter would drop it."""
    try:
        signature = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # no signature to read: the dict's order
        return list(example)
    parameters = [n for n, p in signature.items() if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    unnamed = [k for k in example if k not in parameters]
    if unnamed and any(p.kind == p.VAR_KEYWORD for p in signature.values()):  # forward(**kwargs) takes them all
        return [n for n in parameters if n in example] + unnamed
    if unnamed:
        raise ModelError(f"the example input has {unnamed}, which {type(model).__name__}.forward does not name "
                         f"(its parameters: {parameters}); ONNX export passes a dict input as keyword arguments, "
                         "so give only the inputs forward names")
    return [n for n in parameters if n in example]


@contextmanager
def _output_to_file():
    """Everything the process writes to stdout and stderr meanwhile (torch's exporter prints its whole graph
    from C++ when it fails) goes to a temporary file, whose path this yields."""
    import os
    import sys
    import tempfile

    fd, path = tempfile.mkstemp(prefix="mixprec-onnx-export-", suffix=".log")
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {n: os.dup(n) for n in (1, 2)}
    try:
        for n in saved:
            os.dup2(fd, n)
        yield path
    except BaseException as exc:
        if not isinstance(exc, Exception):  # an interruption (Ctrl-C): no failure to keep the log of
            Path(path).unlink(missing_ok=True)
        raise
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for n, old in saved.items():
            os.dup2(old, n)
            os.close(old)
        os.close(fd)


def _keep_log(path: str) -> str:
    """``path`` if it holds anything, else removed and ''."""
    if Path(path).stat().st_size:
        return path
    Path(path).unlink(missing_ok=True)
    return ""


class _Graph:
    """Index of an ONNX graph being rewritten: initializers by name, and new nodes to put before a node."""

    def __init__(self, model):
        self.model = model
        self.graph = model.graph
        self.nodes = list(self.graph.node)  # kept: protobuf may give a new wrapper object on each access
        self.inits = {i.name: i for i in self.graph.initializer}
        self.before: dict[int, list] = {}  # id(node) -> nodes emitted just before it
        self.removed: set[int] = set()
        self.new_inits: list = []
        self.dequantized: dict[tuple, str] = {}  # (tensor, scale, zero-point) -> DQ output

    def consumers(self, tensor: str) -> list:
        return [n for n in self.nodes if tensor in n.input and id(n) not in self.removed]

    def array(self, name: str) -> np.ndarray:
        from onnx import numpy_helper
        return numpy_helper.to_array(self.inits[name])

    def add_init(self, name: str, array: np.ndarray) -> str:
        from onnx import numpy_helper
        self.new_inits.append(numpy_helper.from_array(array, name))
        return name

    def emit(self, before_node, node) -> None:
        self.before.setdefault(id(before_node), []).append(node)

    def finish(self) -> None:
        nodes = []
        for n in self.nodes:
            nodes.extend(self.before.get(id(n), []))
            if id(n) not in self.removed:
                nodes.append(n)
        nodes = _topological(nodes, {i.name for i in self.graph.input} | set(self.inits)
                             | {i.name for i in self.new_inits} | {""})
        outputs = {o.name for o in self.graph.output}
        while True:  # what nothing reads any more (the shape arithmetic of a Pad folded into a Conv)
            needed = outputs | {i for n in nodes for i in n.input}
            live = [n for n in nodes if any(o in needed for o in n.output)]
            if len(live) == len(nodes):
                break
            nodes = live
        used = {i for n in nodes for i in n.input}
        inits = [i for i in self.graph.initializer if i.name in used] + [i for i in self.new_inits if i.name in used]
        nodes, inits = [_copy(n) for n in nodes], [_copy(i) for i in inits]
        del self.graph.node[:]
        self.graph.node.extend(nodes)
        del self.graph.initializer[:]
        self.graph.initializer.extend(inits)


def _copy(message):
    new = type(message)()
    new.CopyFrom(message)
    return new


def _topological(nodes: list, available: set[str]) -> list:
    """``nodes`` in an order where every input is produced first, as close to the given order as possible."""
    done: list = []
    waiting = list(nodes)
    available = set(available)
    while waiting:
        ready = next((i for i, n in enumerate(waiting) if all(x in available for x in n.input)), None)
        if ready is None:
            node = waiting[0]
            raise ModelError(f"the rewritten graph has a cycle or a missing input at node {node.name!r} "
                             f"(inputs not produced: {[x for x in node.input if x not in available]})")
        node = waiting.pop(ready)
        done.append(node)
        available.update(node.output)
    return done


def rewrite(model, layers: dict[str, LayerCodes], accuracy_level: int = 4,
            idle: Callable[[str], bool] = lambda name: False, shared: dict[str, list[str]] | None = None,
            kinds: dict[str, str] | None = None, calls: dict[str, int] | None = None) -> dict[str, dict]:
    """Rewrite the float graph ``model`` (onnx ModelProto, in place) per ``layers``; returns, per layer, the
    ONNX node it became and the format written. idle(name): whether a layer no node reads never reaches the
    model's output (torch leaves such layers out of the graph): written as absent, not refused. shared: layer ->
    the other layers holding the same weight (a tied embedding and output layer), found under whichever name
    torch exported it; the Gather reading it is the Embedding's (``kinds``), the other node the Linear's. calls:
    layer -> how many times the model calls it; a weight read by more nodes than that is refused (the model
    also uses it as a tensor, e.g. F.linear(x, layer.weight.t()), which the simulation leaves to the model)."""
    from onnx import helper

    g = _Graph(model)
    _quantizer_constants(g)
    for node in list(g.nodes):  # an Identity of a weight (torch writes one for a tied weight's second name):
        if node.op_type == "Identity" and node.input[0] in g.inits:  # its readers read the weight itself
            for reader in g.consumers(node.output[0]):
                for i, tensor in enumerate(reader.input):
                    if tensor == node.output[0]:
                        reader.input[i] = node.input[0]
            if node.output[0] not in {o.name for o in g.graph.output}:
                g.removed.add(id(node))
    written: dict[str, dict] = {}
    for name, layer in layers.items():
        weight = f"{name}.weight"
        ties = (shared or {}).get(name, [])
        if weight not in g.inits and ties and idle(name):  # a tied holder the model never runs (T5's `shared`):
            weight = ""                                      # the weight it shares is its callers' to rewrite
        if weight and weight not in g.inits:
            weight = next((f"{o}.weight" for o in ties if f"{o}.weight" in g.inits), weight)
        users = g.consumers(weight) if weight in g.inits else []
        if len(users) > 1 and ties:  # each holder of a tied weight takes its own reader
            lookup = (kinds or {}).get(name) == "Embedding"
            users = [u for u in users if (u.op_type == "Gather" and u.input[0] == weight) == lookup]
        if not users and idle(name):
            written[name] = {"node": "", "op": "-", "format": "not exported (not in the traced graph)",
                             "op_written": "-", "batchnorm_folded": False, "absent": True}
            continue
        if not users:
            raise ModelError(f"layer {name!r}: the exported graph has no node reading initializer {weight!r}; layers "
                             "are matched by their weight's name, so a layer whose weight torch renames, folds or "
                             "shares cannot be exported")
        called = (calls or {}).get(name, 0)
        if called and len(users) > called and layer.realisation.kind != "float":
            raise ModelError(
                f"layer {name!r}: its weight is read by {len(users)} nodes of the exported graph "
                f"({', '.join(repr(u.name) for u in users)}) but the model calls the layer {called} time(s): the "
                "model also uses the weight as a tensor outside the layer (e.g. F.linear(x, layer.weight.t()), a "
                "decoder tied to an encoder), which the exporter cannot realise as the layer's format. Leave it "
                f"float (analyze and solve with --exclude {name}, or --pin {name}=fp32), or give that other use a "
                "layer of its own")
        # a layer the model calls more than once (one encoder on both inputs of a siamese model): every call's
        # node is rewritten alike, each with initializers of its own (the file holds the weight once per call)
        entries = [_rewrite_reader(g, name if k == 0 else f"{name}.call{k}", layer, node, weight, accuracy_level,
                                   helper, name) for k, node in enumerate(users)]
        written[name] = entries[0]
        if len(entries) > 1:
            written[name].update(calls=len(entries), call_tags=[name, *(f"{name}.call{k}" for k in range(1, len(entries)))],
                                 call_nodes=[e["node"] for e in entries])
    g.finish()
    if any(e.get("op_written") == "MatMulNBits" for e in written.values()):
        if not any(o.domain == MS_DOMAIN for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return written


def _rewrite_reader(g: _Graph, tag: str, layer: LayerCodes, node, weight: str, accuracy_level: int, helper,
                    name: str) -> dict:
    """Rewrite the node ``node`` that reads layer ``name``'s weight initializer per ``layer``; ``tag`` names what is
    written for this node (the layer's name, or the name and its call for a layer called again)."""
    transposed = False
    kind = layer.realisation.kind
    if kind == "float":
        if node.op_type == "Transpose" and len(g.consumers(node.output[0])) == 1:  # a weight read transposed:
            node = g.consumers(node.output[0])[0]  # the layer is the node computing with it (a tied output)
        return {"node": node.name, "op": node.op_type, "format": "float32", "op_written": node.op_type,
                "batchnorm_folded": False}
    if node.op_type == "Gather" and node.input[0] == weight:  # an embedding's rows
        return _write_gather(g, node, tag, layer, g.array(weight), helper)
    if node.op_type == "Transpose" and list(_attr(node, "perm", [1, 0])) == [1, 0]:
        matmuls = g.consumers(node.output[0])
        if len(matmuls) != 1 or matmuls[0].op_type != "MatMul" or matmuls[0].input[1] != node.output[0]:
            raise ModelError(f"layer {name!r}: its transposed weight does not feed exactly one MatMul")
        g.removed.add(id(node))
        node, transposed = matmuls[0], True
    if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul") or (node.op_type == "Gemm" and (
            _attr(node, "transB", 0) != 1 or _attr(node, "transA", 0) != 0 or _attr(node, "alpha", 1.0) != 1.0
            or _attr(node, "beta", 1.0) != 1.0)):
        raise ModelError(f"layer {name!r}: its weight feeds an ONNX {node.op_type} node {node.name!r}, which the "
                         "exporter does not rewrite (Conv, ConvTranspose, Gemm with transB=1, MatMul): the model "
                         "uses the weight as a tensor, not as the layer. Leave it float: analyze and solve with "
                         f"--exclude {name} (or pin it to fp32 with --pin {name}=fp32 and export again)")
    w = g.array(weight)
    bias_name = node.input[2] if node.op_type in ("Conv", "ConvTranspose", "Gemm") and len(node.input) > 2 \
        and node.input[2] else None
    bias = g.array(bias_name).astype(np.float64) if bias_name else None
    scales = None if layer.scales is None else layer.scales.astype(np.float64)
    codes = layer.codes
    folded = None
    if node.op_type == "Conv" and kind in ("qdq", "dq_weight"):
        folded = _fold_batchnorm(g, node)
        if folded is not None:
            factor, shift = folded
            scales = scales * factor[:, None]
            bias = (bias if bias is not None else 0.0) * factor + shift
    entry = {"node": node.name, "op": node.op_type, "batchnorm_folded": folded is not None}
    if kind == "qdq":
        if bias is not None and layer.input_scale is not None:
            codes, scales, refit = fit_bias(codes, scales, bias, layer.input_scale, layer.candidate.weight)
            if refit:
                entry["bias_refit_channels"] = refit
        entry.update(_write_qdq(g, node, tag, layer, codes, scales, w.shape, bias, transposed))
    elif kind == "nbits":
        level = accuracy_level if layer.realisation.accuracy_level is None else layer.realisation.accuracy_level
        entry.update(_write_nbits(g, node, tag, layer, codes, scales, w.shape, bias, level, helper))
    elif kind == "dq_weight":
        entry.update(_write_dq_weight(g, node, tag, layer, codes, scales, w.shape, bias, transposed))
    else:
        entry.update(_write_fp16(g, node, tag, layer, w, transposed))
    return entry


def _attr(node, name: str, default):
    from onnx import helper
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _fold_batchnorm(g: _Graph, conv) -> tuple[np.ndarray, np.ndarray] | None:
    """Fold the BatchNormalization that alone reads ``conv``'s output: y = factor * conv(x) + shift per channel."""
    users = g.consumers(conv.output[0])
    graph_outputs = {o.name for o in g.graph.output}
    if len(users) != 1 or users[0].op_type != "BatchNormalization" or conv.output[0] in graph_outputs:
        return None
    bn = users[0]
    # torch's exporter writes equal initializers once and the others as Identity nodes of it
    identities = {n.output[0]: n.input[0] for n in g.nodes if n.op_type == "Identity" and id(n) not in g.removed}
    params = [identities.get(i, i) for i in bn.input[1:5]]
    if len(bn.output) != 1 or not all(i in g.inits for i in params):
        return None
    gamma, beta, mean, var = (g.array(i).astype(np.float64) for i in params)
    factor = gamma / np.sqrt(var + float(_attr(bn, "epsilon", 1e-5)))
    g.removed.add(id(bn))
    conv.output[0] = bn.output[0]
    return factor, beta - mean * factor


def _quantizer_constants(g: _Graph) -> None:
    """Give every QuantizeLinear/DequantizeLinear of the traced graph (join quantizers, written by torch as
    Constant -> Cast chains) its scale and zero-point as initializers, which the rewrite can compare (the
    chains nothing reads any more go with the other dead nodes when the graph is finished)."""
    producers = {o: n for n in g.nodes for o in n.output}
    for node in g.nodes:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or id(node) in g.removed:
            continue
        for i in (1, 2):
            if i < len(node.input) and node.input[i] and node.input[i] not in g.inits:
                array = _constant(g, node.input[i], producers=producers)
                if array is not None:
                    name = f"{node.name or node.output[0]}.{'scale' if i == 1 else 'zero_point'}"
                    node.input[i] = g.add_init(name, array)
                    g.inits[name] = g.new_inits[-1]


def _same_quantizer(g: _Graph, node, scale: float, zero_point: int) -> bool:
    s, z = node.input[1], node.input[2] if len(node.input) > 2 else ""
    if s not in g.inits or not z or z not in g.inits:
        return False
    zs = g.array(z)
    return (zs.dtype == np.uint8 and zs.size == 1 and int(zs.reshape(-1)[0]) == zero_point
            and float(g.array(s).reshape(-1)[0]) == float(np.float32(scale)) and g.array(s).size == 1)


def _existing_pair(g: _Graph, tensor: str, scale: float, zero_point: int) -> str | None:
    """A Q -> DQ pair the graph already has on ``tensor`` with this scale and zero-point (a join quantizer),
    or ``tensor`` itself when it is the output of such a pair: the layer reads it instead of a second pair."""
    for n in g.nodes:
        if id(n) not in g.removed and n.op_type == "DequantizeLinear" and tensor in n.output:
            if _same_quantizer(g, n, scale, zero_point):
                return tensor
    for q in g.consumers(tensor):
        if q.op_type == "QuantizeLinear" and q.input[0] == tensor and _same_quantizer(g, q, scale, zero_point):
            for dq in g.consumers(q.output[0]):
                if dq.op_type == "DequantizeLinear" and _same_quantizer(g, dq, scale, zero_point):
                    return dq.output[0]
    return None


def _dequantized_input(g: _Graph, node, layer: LayerCodes) -> str:
    """The output of a Q -> DQ pair on the node's input (one pair per tensor and quantizer, shared with a
    join quantizer's pair of the same scale and zero-point).

    Where the input comes from a zero Pad whose only consumer is this node (the "same" padding of
    TF-ported convolutions), quantizing commutes with the padding (0.0 is the zero-point exactly, and
    Q(DQ(q)) = q), so the result is the simulated one either way:
    - a Pad of constant spatial pads before a Conv goes into the Conv's own ``pads`` (an integer conv pads
      with the zero-point), and the pair reads the Pad's input: ONNX Runtime then runs the producer and
      this node as integer kernels with nothing between them (it neither fuses a Pad between Q/DQ pairs
      into the conv nor runs it in integers);
    - any other zero Pad gets the pair on both sides, so that at least the producer runs in integers."""
    tensor = node.input[0]
    existing = _existing_pair(g, tensor, layer.input_scale, layer.input_zero_point)
    if existing is not None:
        return existing
    pad = _zero_pad(g, tensor)
    if pad is not None and len(g.consumers(tensor)) == 1:
        if _fold_pad_into_conv(g, pad, node):
            return _dequantized_input(g, node, layer)
        pad.input[0] = _qdq(g, pad, pad.input[0], layer)
    return _qdq(g, node, tensor, layer)


def _fold_pad_into_conv(g: _Graph, pad, conv) -> bool:
    """Fold a zero Pad that alone feeds ``conv`` into the Conv's ``pads`` attribute (True), where its pads
    are constant, non-negative, on the spatial axes only, and the Conv pads explicitly (no auto_pad)."""
    from onnx import helper
    if conv.op_type != "Conv" or _attr(conv, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        return False
    pads = _constant(g, pad.input[1]) if len(pad.input) > 1 and pad.input[1] else None
    axes = _constant(g, pad.input[3]) if len(pad.input) > 3 and pad.input[3] else None
    if pads is None or axes is not None or pads.ndim != 1 or pads.size % 2 or pads.size < 6:
        return False
    rank = pads.size // 2
    begin, end = pads[:rank].astype(np.int64), pads[rank:].astype(np.int64)
    if begin[:2].any() or end[:2].any() or (pads < 0).any():
        return False
    spatial = rank - 2
    old = [int(v) for v in _attr(conv, "pads", [0] * (2 * spatial))]
    new = [old[i] + int(begin[2 + i]) for i in range(spatial)] + [old[spatial + i] + int(end[2 + i]) for i in range(spatial)]
    for a in list(conv.attribute):
        if a.name == "pads":
            conv.attribute.remove(a)
    conv.attribute.append(helper.make_attribute("pads", new))
    conv.input[0] = pad.input[0]
    g.removed.add(id(pad))
    return True


_FOLDABLE = {"Cast", "Reshape", "Transpose", "Slice", "Concat", "ConstantOfShape", "Shape", "Gather", "Add", "Sub",
             "Mul", "Div", "Neg", "Unsqueeze", "Squeeze", "Range", "Identity"}


def _constant(g: _Graph, tensor: str, depth: int = 0, producers: dict | None = None):
    """The value of ``tensor`` where it is computed from constants alone (an initializer, a Constant node, or
    shape arithmetic on them, as torch's exporter writes a Pad's pads), else None. producers: output name ->
    node, where the caller has that index of the graph (else the graph is searched)."""
    from onnx import numpy_helper
    if tensor in g.inits:
        return g.array(tensor)
    if producers is not None:
        node = producers.get(tensor)
    else:
        node = next((n for n in g.nodes if tensor in n.output and id(n) not in g.removed), None)
    if node is None or depth > 64:
        return None
    if node.op_type == "Constant":
        attr = _attr(node, "value", None)
        return None if attr is None else numpy_helper.to_array(attr)
    if node.op_type not in _FOLDABLE or node.domain not in ("", "ai.onnx") or len(node.output) != 1:
        return None
    inputs = [(_constant(g, i, depth + 1, producers) if i else None) for i in node.input]
    if any(v is None for i, v in zip(node.input, inputs) if i):
        return None
    from onnx.reference import ReferenceEvaluator
    try:
        return np.asarray(ReferenceEvaluator(node).run(None, {i: v for i, v in zip(node.input, inputs) if i})[0])
    except Exception:  # an op the reference evaluator does not run: not folded, the Pad stays
        return None


def _qdq(g: _Graph, node, tensor: str, layer: LayerCodes) -> str:
    from onnx import helper

    key = (tensor, layer.input_scale, layer.input_zero_point)
    if key not in g.dequantized:
        base = f"{tensor}_q{len([k for k in g.dequantized if k[0] == tensor]) or ''}"
        scale = g.add_init(f"{base}.scale", np.array(layer.input_scale, dtype=np.float32))
        zero = g.add_init(f"{base}.zero_point", np.array(layer.input_zero_point, dtype=np.uint8))
        g.emit(node, helper.make_node("QuantizeLinear", [tensor, scale, zero], [f"{base}_quantized"],
                                      name=f"{base}/QuantizeLinear"))
        g.emit(node, helper.make_node("DequantizeLinear", [f"{base}_quantized", scale, zero], [f"{base}_dequantized"],
                                      name=f"{base}/DequantizeLinear"))
        g.dequantized[key] = f"{base}_dequantized"
    return g.dequantized[key]


def _zero_pad(g: _Graph, tensor: str):
    """The Pad node producing ``tensor`` if it pads with the constant 0 (else None)."""
    pad = next((n for n in g.nodes if tensor in n.output and id(n) not in g.removed), None)
    if pad is None or pad.op_type != "Pad" or _attr(pad, "mode", b"constant") not in (b"constant", "constant"):
        return None
    if len(pad.input) < 3 or not pad.input[2]:
        return pad  # no constant_value: zero
    value = _constant(g, pad.input[2])
    return pad if value is not None and np.all(value == 0) else None


def _channel_scales(scales: np.ndarray) -> np.ndarray:
    return scales[:, 0]


def _int8_weight(g: _Graph, node, name: str, codes: np.ndarray, scales: np.ndarray, shape: tuple,
                 transposed: bool) -> str:
    """int8 codes behind a per-channel DequantizeLinear (axis 0; 1 for a MatMul's transposed weight)."""
    from onnx import helper

    q = codes.reshape(shape).astype(np.int8)
    if transposed:
        q = np.ascontiguousarray(q.T)
    channel = _channel_scales(scales).astype(np.float32)
    w_q = g.add_init(f"{name}.weight_quantized", q)
    w_s = g.add_init(f"{name}.weight_scale", channel)
    w_z = g.add_init(f"{name}.weight_zero_point", np.zeros(channel.shape, dtype=np.int8))
    out = f"{name}.weight_dequantized"
    g.emit(node, helper.make_node("DequantizeLinear", [w_q, w_s, w_z], [out], name=f"{name}.weight/DequantizeLinear",
                                  axis=1 if transposed else 0))
    return out


def fit_bias(codes: np.ndarray, scales: np.ndarray, bias: np.ndarray, input_scale: float,
             fmt: IntFormat) -> tuple[np.ndarray, np.ndarray, int]:
    """Codes and per-channel scales at which every channel's int32 bias (at scale input scale x weight scale)
    fits in BIAS_LIMIT; returns (codes, scales, channels changed).

    A BatchNorm folded with a near-zero gain leaves a channel whose weight scale is tiny (1e-10) and whose bias
    is about all of its output: at that scale its bias overflows int32, and a clipped bias would make the
    channel output almost nothing instead of its constant. Such a channel gets the smallest weight scale at
    which its bias fits, its codes re-rounded to it: its weights, which contributed about scale x 127 per
    input, now contribute at most half a step of the new scale, still far below any input step.
    """
    channel = scales[:, 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        need = np.abs(bias) / (input_scale * np.abs(channel))
    over = np.flatnonzero((np.isfinite(bias) & (need > BIAS_LIMIT)) | (channel == 0))
    if not over.size:
        return codes, scales, 0
    codes, scales = codes.copy(), scales.copy()
    for c in over:  # a zero scale with a zero bias gets scale 1: its codes are all zero whatever the scale
        new = (np.abs(bias[c]) / (input_scale * BIAS_LIMIT) if bias[c] else 1.0) * (1.0 if channel[c] >= 0 else -1.0)
        codes[c] = np.clip(np.round(codes[c] * (channel[c] / new)), fmt.qmin, fmt.qmax)
        scales[c] = new
    return codes, scales, int(over.size)


def _float_bias(g: _Graph, node, name: str, bias: np.ndarray | None) -> None:
    if bias is not None:
        node.input[2] = g.add_init(f"{name}.bias_folded", bias.astype(np.float32))


def _write_qdq(g, node, name, layer, codes, scales, shape, bias, transposed) -> dict:
    from onnx import helper

    node.input[0] = _dequantized_input(g, node, layer)
    node.input[1] = _int8_weight(g, node, name, codes, scales, shape, transposed)
    if bias is not None:  # int32 at scale s_x * s_w, as the integer kernels read it
        bias_scale = (layer.input_scale * _channel_scales(scales)).astype(np.float32)
        b_q = np.clip(np.round(bias / bias_scale.astype(np.float64)), -2**31, 2**31 - 1).astype(np.int32)
        b_qn = g.add_init(f"{name}.bias_quantized", b_q)
        b_s = g.add_init(f"{name}.bias_scale", bias_scale)
        b_z = g.add_init(f"{name}.bias_zero_point", np.zeros(b_q.shape, dtype=np.int32))
        g.emit(node, helper.make_node("DequantizeLinear", [b_qn, b_s, b_z], [f"{name}.bias_dequantized"],
                                      name=f"{name}.bias/DequantizeLinear", axis=0))
        while len(node.input) < 3:
            node.input.append("")
        node.input[2] = f"{name}.bias_dequantized"
    bits = layer.candidate.weight.bits
    return {"format": f"int8 QDQ: u8 input (per tensor), s8 weights (per channel{', ' + str(bits) + '-bit codes' if bits < 8 else ''})",
            "op_written": node.op_type}


def _write_dq_weight(g, node, name, layer, codes, scales, shape, bias, transposed) -> dict:
    from onnx import helper

    node.input[1] = _int8_weight(g, node, name, codes, scales, shape, transposed)
    if node.op_type in ("Conv", "ConvTranspose"):  # scales along the weight's axis 0: a ConvTranspose's inputs
        if bias is not None:
            while len(node.input) < 3:
                node.input.append("")
            _float_bias(g, node, name, bias)
    elif bias is not None:
        _float_bias(g, node, name, bias)
    if layer.realisation.input_fp16:
        _fp16_input(g, node, helper)
    bits = layer.candidate.weight.bits
    return {"format": f"s8 weights (per channel, {bits}-bit codes) dequantized for a float {node.op_type}"
            + (", input rounded to float16" if layer.realisation.input_fp16 else ""), "op_written": node.op_type}


def _write_gather(g: _Graph, node, name: str, layer: LayerCodes, w: np.ndarray, helper) -> dict:
    """An embedding: the integer rows of the looked-up tokens gathered with their scales (and zero-points),
    then dequantized (Cast, Sub, Mul: the float32 values DequantizeLinear computes), so a lookup dequantizes
    its own rows, never the whole table; float16 rows, or groups that do not tile a row, as float32 values."""
    entry = {"node": node.name, "op": "Gather", "batchnorm_folded": False, "op_written": "Gather"}
    fmt = layer.candidate.weight
    if layer.codes is None:  # float16 rows
        g.inits[f"{name}.weight"].CopyFrom(_tensor(w.astype(np.float16).astype(np.float32), f"{name}.weight"))
        return {**entry, "format": "float32 rows holding the float16 values (a float Gather)"}
    rows = layer.codes.reshape(w.shape[0], -1)
    zero = layer.zero_points.reshape(w.shape[0], -1)
    scales = layer.scales.reshape(w.shape[0], -1)  # one per element
    dim = rows.shape[1]
    size = fmt.group_size if fmt.granularity == "group" else dim
    if dim % size or len(w.shape) != 2:  # a last, partial group: the simulated values in float32
        values = ((rows - zero) * scales.astype(np.float64)).astype(np.float32).reshape(w.shape)
        g.inits[f"{name}.weight"].CopyFrom(_tensor(values, f"{name}.weight"))
        return {**entry, "format": f"float32 rows holding the simulated {fmt.bits}-bit values ({dim} values a row "
                                   f"are not whole groups of {size})"}
    groups = dim // size
    per_group = lambda a: a.reshape(w.shape[0], groups, size)[:, :, :1]  # noqa: E731
    if not (np.array_equal(np.broadcast_to(per_group(scales), (w.shape[0], groups, size)).reshape(rows.shape), scales)
            and np.array_equal(np.broadcast_to(per_group(zero), (w.shape[0], groups, size)).reshape(rows.shape), zero)):
        raise ModelError(f"layer {name!r}: its scales are not constant over groups of {size} values, as "
                         f"{layer.candidate.name} says")
    signed = int(rows.min()) >= -128 and int(rows.max()) <= 127
    dtype = np.int8 if signed else np.uint8
    ids = node.input[1]
    out = node.output[0]
    op = lambda kind, inputs, suffix, **attrs: g.emit(node, helper.make_node(  # noqa: E731
        kind, inputs, [f"{name}.lookup/{suffix}"], name=f"{name}.lookup/{suffix}", **attrs)) or f"{name}.lookup/{suffix}"
    q = g.add_init(f"{name}.weight_quantized", rows.astype(dtype).reshape(w.shape[0], groups, size))
    s_ = g.add_init(f"{name}.weight_scale", per_group(scales).astype(np.float32))
    values = op("Cast", [op("Gather", [q, ids], "codes")], "codes_float", to=1)  # 1: FLOAT
    if bool((zero != 0).any()):
        z = g.add_init(f"{name}.weight_zero_point", per_group(zero).astype(np.float32))  # exact: small integers
        values = op("Sub", [values, op("Gather", [z, ids], "zero_points")], "centred")
    values = op("Mul", [values, op("Gather", [s_, ids], "scales")], "values")
    tail = g.add_init(f"{name}.lookup/row", np.array([dim], dtype=np.int64))
    shape = op("Concat", [op("Shape", [ids], "ids_shape"), tail], "shape", axis=0)
    g.emit(node, helper.make_node("Reshape", [values, shape], [out], name=f"{name}.lookup/Reshape"))
    g.removed.add(id(node))
    layout = f"per row, {fmt.bits}-bit codes" if groups == 1 else f"{fmt.bits}-bit codes in groups of {size}"
    return {**entry, "op_written": "Gather (integer rows, dequantized after the lookup)",
            "format": f"{'s8' if signed else 'u8'} rows ({layout}) gathered with their scales, then dequantized"}


def _tensor(array: np.ndarray, name: str):
    from onnx import numpy_helper
    return numpy_helper.from_array(array, name)


def _fp16_input(g: _Graph, node, helper) -> None:
    from onnx import TensorProto

    tensor = node.input[0]
    half, back = f"{tensor}_fp16", f"{tensor}_fp16_float"
    if not any(n.output and n.output[0] == back for nodes in g.before.values() for n in nodes):
        g.emit(node, helper.make_node("Cast", [tensor], [half], name=f"{half}/Cast", to=TensorProto.FLOAT16))
        g.emit(node, helper.make_node("Cast", [half], [back], name=f"{back}/Cast", to=TensorProto.FLOAT))
    node.input[0] = back


def _write_fp16(g, node, name, layer, w, transposed) -> dict:
    from onnx import TensorProto, helper

    half = w.astype(np.float16)
    w16 = g.add_init(f"{name}.weight_fp16", np.ascontiguousarray(half.T) if transposed else half)
    g.emit(node, helper.make_node("Cast", [w16], [f"{name}.weight_float"], name=f"{name}.weight/Cast",
                                  to=TensorProto.FLOAT))
    node.input[1] = f"{name}.weight_float"
    if layer.realisation.input_fp16:
        _fp16_input(g, node, helper)
    return {"format": "float16 weights" + (" and input" if layer.realisation.input_fp16 else "")
            + f", float {node.op_type}", "op_written": node.op_type}


def _write_nbits(g, node, name, layer, codes, scales, shape, bias, accuracy_level, helper) -> dict:
    """MatMulNBits(A, B, scales, zero_points, g_idx, bias): dequantized B[n, k] = (code - zero_point) * scale
    per block of ``block_size`` inputs; codes are unsigned, so signed codes move up by 2^(bits - 1)."""
    fmt: IntFormat = layer.candidate.weight
    bits, block = layer.realisation.weight_bits, layer.realisation.block_size
    n, k = codes.shape
    blocks = -(-k // block)
    offset = -fmt.qmin if fmt.symmetric else 0  # signed codes -> unsigned
    pad = blocks * block - k
    unsigned = np.pad(codes + offset, ((0, 0), (0, pad))).reshape(n, blocks, block)
    zeros = np.pad(layer.zero_points + offset, ((0, 0), (0, pad)), mode="edge").reshape(n, blocks, block)[:, :, 0]
    block_scales = np.pad(scales, ((0, 0), (0, pad)), mode="edge").reshape(n, blocks, block)
    per_block = block_scales[:, :, 0]
    if not np.array_equal(block_scales, np.broadcast_to(per_block[:, :, None], block_scales.shape)):
        raise ModelError(f"layer {name!r}: its scales change inside a MatMulNBits block of {block}")
    unsigned = np.where(np.arange(blocks * block).reshape(blocks, block) < k, unsigned, zeros[:, :, None])
    if bits == 4:
        packed = (unsigned[:, :, 0::2] | (unsigned[:, :, 1::2] << 4)).astype(np.uint8)
    else:
        packed = unsigned.astype(np.uint8)
    inputs = [node.input[0], g.add_init(f"{name}.weight_packed", packed),
              g.add_init(f"{name}.weight_scales", per_block.reshape(-1).astype(np.float32))]
    default_zero = 2 ** (bits - 1)
    if not np.all(zeros == default_zero):
        if bits == 4:
            zp = np.pad(zeros, ((0, 0), (0, blocks % 2)), constant_values=default_zero)
            zp = (zp[:, 0::2] | (zp[:, 1::2] << 4)).astype(np.uint8).reshape(-1)
        else:
            zp = zeros.astype(np.uint8).reshape(-1)
        inputs.append(g.add_init(f"{name}.weight_zero_points", zp))
    else:
        inputs.append("")
    inputs.append("")  # g_idx
    if bias is not None:
        inputs.append(g.add_init(f"{name}.bias_float", bias.astype(np.float32)))
    while inputs and inputs[-1] == "":
        inputs.pop()
    new = helper.make_node("MatMulNBits", inputs, list(node.output), name=node.name, domain=MS_DOMAIN,
                           K=k, N=n, bits=bits, block_size=block, accuracy_level=accuracy_level)
    g.emit(node, new)
    g.removed.add(id(node))
    return {"format": f"MatMulNBits {bits}-bit ({fmt.bits}-bit codes{', asymmetric' if not fmt.symmetric else ''}), "
                      f"blocks of {block}, accuracy_level {accuracy_level}", "op_written": "MatMulNBits"}
