"""ONNX Runtime side of the export: a session as an nn.Module, and what the runtime really runs.

    OrtModule(path)      model(x) runs the ONNX file in an ORT session (all graph optimisations on), so the
                         user's own evaluation function measures the exported artifact
    optimized_graph(path)            the graph ONNX Runtime runs after its optimisations
    runtime_kernels(path, written)   per layer, the op ONNX Runtime executes after its optimisations
                         (read from the optimised graph it saves) and whether that op is low precision
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ModelError, SpecError

# Ops that compute on integer (or packed low-bit) operands in ONNX Runtime's CPU provider.
LOW_PRECISION_OPS = {"QLinearConv", "ConvInteger", "QLinearMatMul", "MatMulInteger", "MatMulIntegerToFloat",
                     "DynamicQuantizeMatMul", "QGemm", "MatMulNBits", "QAttention", "DynamicQuantizeLSTM"}


def session_options(threads: int | None = None, level: str = "all", optimized_path: str | None = None,
                    profile_prefix: str | None = None):
    """ORT session options: ``threads`` intra-op threads, graph optimisation ``level`` (all, basic, none),
    the optimised graph saved to ``optimized_path``, and with ``profile_prefix`` ORT's own per-node profiler on
    (its JSON file starts with that prefix)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                                        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}[level]
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    # No spinning threads left behind to slow down torch (or another session) in the same process.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3
    if optimized_path:
        options.optimized_model_filepath = optimized_path
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return options


def make_session(path: str | os.PathLike, threads: int | None = None, level: str = "all",
                 optimized_path: str | None = None, profile_prefix: str | None = None):
    """An ORT CPU session; a file ORT cannot load is a ModelError naming the node when ORT does."""
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(path), session_options(threads, level, optimized_path, profile_prefix),
                                    providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types (Fail, InvalidGraph, ...)
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"ONNX Runtime cannot load {path}: {message}{_nodes_named(path, message)}") from exc


def _nodes_named(path: str | os.PathLike, message: str) -> str:
    """The nodes of the file ``message`` points at by op type or by output name, where ORT names neither node:
    ' (node 'a', op FancyOp)' or ''."""
    try:
        import onnx
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception:  # not readable as ONNX at all: ORT's message says so
        return ""
    hits = []
    for node in graph.node:
        op = f"{node.domain}:{node.op_type}" if node.domain else node.op_type
        if node.name and node.name in message:
            return ""  # ORT named it
        if re.search(rf"(?<![\w.:]){re.escape(op)}\b", message) or any(
                o and re.search(rf"\({re.escape(o)}\)|'{re.escape(o)}'", message) for o in node.output):
            hits.append(f"{node.name or '(unnamed)'!r}, op {op}")
    if not hits:
        return ""
    return f" (node {hits[0]}" + (f", and {len(hits) - 1} more" if len(hits) > 1 else "") + ")"


class Outputs(dict):
    """A dict of a model's outputs that also reads as a Hugging Face model output: ``out.logits``, ``out[0]``,
    ``out.to_tuple()``."""

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, key):
        if isinstance(key, (int, slice)):
            return self.to_tuple()[key]
        return super().__getitem__(key)

    def to_tuple(self) -> tuple:
        return tuple(self.values())


def _outputs(value: Any, classes: dict | None = None, path: tuple = ()) -> Any:
    """The outputs of a file in the structure its model returned: its dicts as :class:`Outputs`, and the dicts
    that were dataclasses (``classes``: path -> OutputClass) built again as instances of those."""
    if isinstance(value, dict):
        fields = {k: _outputs(v, classes, path + (k,)) for k, v in value.items()}
        kind = classes.get(path) if classes else None
        return kind.build(fields) if kind is not None else Outputs(fields)
    if isinstance(value, (tuple, list)):
        return type(value)(_outputs(v, classes, path + (i,)) for i, v in enumerate(value))
    return value


class OutputClass:
    """A dataclass a model returned, as its file's metadata ``mixprec.output_classes`` names it: ``build``
    makes it again from its fields, or, where that class cannot be found or constructed here, gives an
    :class:`Outputs` (``out.logits`` and ``out["logits"]`` still read) with a warning saying why, once. The class
    is looked up on the first call, so that a model or evaluation file loaded after the OrtModule counts."""

    def __init__(self, entry: dict, where: str):
        self.name = str(entry.get("class", "?"))
        self.file = entry.get("file")
        self.fields = list(entry.get("fields", []))
        self.init = list(entry.get("init", self.fields))
        self.where = where
        self.kind: type | None = None
        self.found = self.warned = False

    def build(self, fields: dict) -> Any:
        if not self.found:
            self.found = True
            self.kind, why = _find_class(self.name, self.file, self.fields)
            if self.kind is None:
                self._fall_back(why)
        if self.kind is None:
            return Outputs(fields)
        try:
            value = self.kind(**{k: fields[k] for k in self.init})
            for k in self.fields:
                if k not in self.init:  # a field its constructor does not take (init=False)
                    object.__setattr__(value, k, fields[k])
            return value
        except Exception as exc:  # the user's class: its __init__ or __post_init__ may refuse anything
            self._fall_back(f"constructing it from its fields raised {type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''}")
            return Outputs(fields)

    def _fall_back(self, why: str) -> None:
        if self.warned:
            return
        self.warned = True
        import warnings
        module, _, qualname = self.name.partition(":")
        where = f"defined in {self.file}" if self.file else f"module {module}"
        warnings.warn(f"{self.where}: the model returned a dataclass {qualname} ({where}), which cannot be built "
                      f"again here: {why}; its outputs come back as a dict of its fields, which also reads as "
                      "attributes (out.logits, out['logits'])", UserWarning, stacklevel=2)


def _find_class(name: str, file: str | None, fields: list[str]) -> tuple[type | None, str]:
    """The dataclass ``module:qualname`` names, with the ``fields`` the file recorded: from its module if it is
    loaded (or another module loaded from the same ``file``: a model file mixprec loaded under another name);
    never imported: a file's metadata does not make code run; (None, why) if it is not found or is not that
    dataclass."""
    import dataclasses
    import sys

    module_name, _, qualname = name.partition(":")
    if not module_name or not qualname or "<locals>" in qualname:
        return None, "it is defined inside a function" if "<locals>" in qualname else f"{name!r} names no class"

    def same_file(module) -> bool:
        path = getattr(module, "__file__", None)
        try:
            return bool(file and path and os.path.samefile(path, file))
        except OSError:
            return False

    # a model file mixprec loaded (file.py:function) has a module name of that process alone, and __main__ is
    # whichever script runs: those are found by their file; another module by its name
    by_name = module_name != "__main__" and not module_name.startswith("_mixprec_user_")
    modules, failure = [], ""
    if by_name:  # already loaded only: a file's metadata never makes a module run (import it to get the class)
        if sys.modules.get(module_name) is not None:
            modules.append(sys.modules[module_name])
        else:
            failure = (f"its module {module_name} is not loaded in this process (import it before calling the file's "
                       "model to get the dataclass back)")
    elif sys.modules.get(module_name) is not None and (not file or same_file(sys.modules[module_name])):
        modules.append(sys.modules[module_name])
    modules += [m for m in list(sys.modules.values()) if m is not None and same_file(m) and m not in modules]
    if not modules:
        return None, failure or (f"its file {file} is not loaded in this process" if file else
                                 f"its module {module_name} is not loaded in this process")
    for module in modules:
        kind = module
        for part in qualname.split("."):
            kind = getattr(kind, part, None)
        if isinstance(kind, type) and dataclasses.is_dataclass(kind):
            if {f.name for f in dataclasses.fields(kind)} >= set(fields):
                return kind, ""
            return None, f"its fields are now {[f.name for f in dataclasses.fields(kind)]}, not {fields}"
    return None, f"{module_name} has no dataclass {qualname}"


_FLOATS = {"tensor(float)": torch.float32, "tensor(float16)": torch.float16, "tensor(double)": torch.float64}


class OrtModule(nn.Module):
    """An ONNX file as an nn.Module: ``forward`` feeds the ORT session and returns torch tensors.

    Positional inputs map to the graph inputs in order, keyword inputs by name; keywords the graph does not take,
    and positional inputs that were not tensors when it was exported (its metadata ``mixprec.constant_inputs``),
    are ignored. The empty parameter lets
    evaluation code that asks ``next(model.parameters()).device`` find the CPU.

    A language model exported with its KV cache (metadata ``mixprec.kv_cache``) called with token ids alone
    runs them as a prompt: positions 0.., every token attended, an empty cache; it returns the logits only,
    as the model it was exported from does. Called with every input, it returns every output. A model that
    returned several tensors in tuples, lists or dicts (metadata ``mixprec.outputs``) gets them back in that
    structure."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        super().__init__()
        path = Path(path)
        if not path.is_file():
            raise SpecError(f"ONNX model file not found: {path}")
        self.path = path
        self.session = make_session(path, threads)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.input_types = {i.name: i.type for i in self.session.get_inputs()}
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.kv_cache = kv_cache(self.session)
        self.structure = output_structure(self.session)
        self.nones = _positions(self.session, "mixprec.output_nones")
        self.classes = output_classes(self.session, path.name)
        self.constants = _positions(self.session, "mixprec.constant_inputs")
        self.anchor = nn.Parameter(torch.zeros(0), requires_grad=False)

    def forward(self, *args: Any, **kwargs: Any):
        if self.constants and len(args) > len(self.input_names):  # the non-tensor inputs the file was traced with
            args = tuple(a for i, a in enumerate(args) if i not in self.constants)
        if len(args) > len(self.input_names):
            raise ModelError(f"{self.path.name} takes {len(self.input_names)} input(s) ({self.input_names}); "
                             f"got {len(args)} positional")
        feed = dict(zip(self.input_names, args))
        for key, value in kwargs.items():
            if key in self.input_names:  # extra keywords (e.g. token_type_ids the graph dropped) are ignored
                feed[key] = value
        prompt = self.kv_cache is not None and "input_ids" in feed and not any(n in feed for n in self.kv_cache["past"])
        if prompt:
            feed = {**self.prompt_inputs(feed["input_ids"]), **feed}
        missing = [n for n in self.input_names if n not in feed]
        if missing:
            raise ModelError(f"{self.path.name} needs input(s) {missing}")
        arrays = {k: self._array(k, v) for k, v in feed.items()}
        names = self.output_names[:1] if prompt else self.output_names
        try:
            results = self.session.run(names, arrays)
        except Exception as exc:  # onnxruntime's own error types: a bad input is the caller's, not internal
            if not type(exc).__module__.startswith("onnxruntime"):
                raise
            shapes = {k: tuple(v.shape) for k, v in arrays.items()}
            hint = (". An index input (token ids?) is outside a table of the file: was it tokenized with another "
                    "model's tokenizer (--tokenizer)?" if "Gather" in str(exc) and "idx=" in str(exc) else "")
            detail = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())  # the indices at fault
            expects = ", ".join(f"{i.name} {_shape(i.shape)}" for i in self.session.get_inputs())
            raise ModelError(f"ONNX Runtime could not run {self.path.name} on inputs {shapes}: {detail[:600]} "
                             f"(the file takes {expects}){hint}") from exc
        outputs = [torch.from_numpy(np.asarray(o)) for o in results]
        if self.structure is not None and len(outputs) + len(self.nones) == self.structure.num_leaves:
            from torch.utils._pytree import tree_unflatten
            it = iter(outputs)  # a dict's None values have no output in the file: they go back where they were
            leaves = [None if i in self.nones else next(it) for i in range(self.structure.num_leaves)]
            # the dict, tuple or dataclass the model returned
            return _outputs(tree_unflatten(leaves, self.structure), self.classes)
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def _array(self, name: str, value: Any) -> np.ndarray:
        """``value`` for the graph input ``name``; a float tensor of another width (a bfloat16 or float16
        model's input) is cast to the graph's float type."""
        if not isinstance(value, torch.Tensor):
            return np.asarray(value)
        value = value.detach().cpu()
        wanted = self.input_types.get(name)
        if value.is_floating_point() and wanted in _FLOATS and value.dtype != _FLOATS[wanted]:
            value = value.to(_FLOATS[wanted])
        return value.numpy()

    def prompt_inputs(self, input_ids: Any) -> dict[str, np.ndarray]:
        """The inputs beside the token ids that run them as a prompt (:func:`prompt_inputs`)."""
        return prompt_inputs(self.kv_cache, input_ids)


def _positions(session, key: str) -> set[int]:
    """The positions a file's metadata ``key`` lists (a JSON list of integers): ``mixprec.constant_inputs``, the
    non-tensor inputs the model was exported with (values of the trace, not inputs of the file), and
    ``mixprec.output_nones``, the None values among its outputs' leaves (no output of the file)."""
    import json
    meta = session.get_modelmeta().custom_metadata_map.get(key)
    try:
        return {int(i) for i in json.loads(meta)} if meta else set()
    except (ValueError, TypeError):
        return set()


def output_structure(session):
    """The structure (a torch.utils._pytree spec) of the outputs of a model that returned several tensors, as
    its file's ``mixprec.outputs`` metadata records it; None if absent or unreadable."""
    from torch.utils._pytree import treespec_loads
    meta = session.get_modelmeta().custom_metadata_map.get("mixprec.outputs")
    try:
        return treespec_loads(meta) if meta else None
    except Exception:
        return None


def output_classes(session, where: str = "") -> dict:
    """The dataclasses among the outputs of a file's model (its ``mixprec.output_classes`` metadata), by their
    path in the structure: path -> :class:`OutputClass`; {} if none or unreadable."""
    meta = session.get_modelmeta().custom_metadata_map.get("mixprec.output_classes")
    try:
        entries = json.loads(meta) if meta else []
        return {tuple(e["path"]): OutputClass(e, where) for e in entries}
    except (ValueError, TypeError, KeyError):
        return {}


def kv_cache(session) -> dict | None:
    """The KV cache a language model's file was exported with (its ``mixprec.kv_cache`` metadata: the
    past and present tensors' names, (heads, dim) of each, dtype), or None."""
    meta = session.get_modelmeta().custom_metadata_map.get("mixprec.kv_cache")
    return json.loads(meta) if meta else None


def prompt_inputs(cache: dict, input_ids: Any, past: int = 0) -> dict[str, np.ndarray]:
    """The inputs beside ``input_ids`` (batch, tokens) that run them on a file with a KV cache: as a prompt
    (``past`` 0: positions from 0, every token attended, an empty cache), or after ``past`` cached tokens
    (positions from ``past``, all attended, a cache of zeros that long: the work of any cache of that length,
    as mixprec.export.latency times a decoding step)."""
    ids = np.asarray(input_ids.detach().cpu() if isinstance(input_ids, torch.Tensor) else input_ids)
    batch, length = ids.shape
    dtype = np.float16 if cache["dtype"] == "torch.float16" else np.float32
    return {"position_ids": np.broadcast_to(np.arange(past, past + length, dtype=np.int64), (batch, length)).copy(),
            "attention_mask": np.ones((batch, past + length), dtype=np.int64),
            **{name: np.zeros((batch, heads, past, dim), dtype=dtype)
               for name, (heads, dim) in zip(cache["past"], cache["shapes"])}}

    def extra_repr(self) -> str:
        return f"path={self.path}"


def optimized_graph(path: str | os.PathLike):
    """The graph ONNX Runtime runs for the file at ``path`` after its optimisations (level all)."""
    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        optimized = os.path.join(tmp, "optimized.onnx")
        make_session(path, threads=1, optimized_path=optimized)
        return onnx.load(optimized, load_external_data=False).graph


def runtime_kernels(path: str | os.PathLike, written: dict[str, dict], graph=None) -> dict[str, dict]:
    """Per layer, the op ONNX Runtime runs after optimisation (level all), whether it is low precision, and
    the optimised node's name (``runtime_node``, what ORT's profiler calls it).

    A layer is followed from the int8/packed weight initializer the exporter gave it (``<layer>.weight_*``)
    or, failing that, from its node name, to the node of the optimised graph that consumes it.
    graph: that optimised graph, if the caller already has it (optimized_graph(path))."""
    import onnx

    graph = optimized_graph(path) if graph is None else graph
    by_input: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            by_input.setdefault(name, []).append(node)
    producers = {o: n for n in graph.node for o in n.output}
    original = None
    out = {}
    for layer, entry in written.items():
        calls = []  # a layer the model calls more than once: each call's node (its initializers carry its tag)
        for tag, node_name in zip(entry.get("call_tags", [layer]), entry.get("call_nodes", [entry["node"]])):
            node = _find(graph, by_input, producers, tag, {**entry, "node": node_name})
            if node is None:  # a float layer whose weight ONNX Runtime re-laid out and whose node it renamed
                original = onnx.load(str(path), load_external_data=False).graph if original is None else original
                node = _fused_node(graph, original, node_name)
            requantized = None
            if node is None:  # a float layer ONNX Runtime quantized itself (WeightBiasQuantization)
                node = requantized = _requantized_node(by_input, node_name)
            op = node.op_type if node is not None else "?"
            lookup = op == "Gather" and node.input[0].startswith(f"{tag}.weight_quantized")  # integer rows looked up
            calls.append({"runtime_op": op, "low_precision": op in LOW_PRECISION_OPS or lookup,
                          "runtime_node": node.name if node is not None else "",
                          **({"quantized_by_runtime": True} if requantized is not None else {})})
        # a layer called more than once is low precision only if every call is; the first call that is not
        # stands for it, so that its op and note describe the fallback
        fallback = next((i for i, c in enumerate(calls) if not c["low_precision"]), None)
        out[layer] = {**calls[fallback or 0], "low_precision": fallback is None}
        if any(c.get("quantized_by_runtime") for c in calls):
            out[layer]["quantized_by_runtime"] = True
        if len(calls) > 1:
            out[layer]["runtime_nodes"] = [c["runtime_node"] for c in calls]
            out[layer]["runtime_ops"] = [c["runtime_op"] for c in calls]
            if fallback is not None and any(c["low_precision"] for c in calls):
                out[layer]["fallback_calls"] = [i for i, c in enumerate(calls) if not c["low_precision"]]
    return out


# ONNX Runtime's WeightBiasQuantization (level basic) gives a float Conv/ConvTranspose/Gemm whose input is
# dequantized per tensor and whose output goes (through a Relu or Clip at most) to a QuantizeLinear its own
# symmetric per-tensor int8 weights, named after the node, so the QDQ fusion makes an integer kernel of it;
# disabled_optimizers=[RUNTIME_WEIGHT_QUANTIZATION] when making the session keeps such a layer float
RUNTIME_WEIGHT_QUANTIZATION = "WeightBiasQuantization"


def _requantized_node(by_input: dict, node_name: str):
    """The integer node of the optimised graph that ONNX Runtime made of the float node ``node_name`` by
    quantizing its weights itself (its initializer ``<node>_weight_q``), or None."""
    for name, nodes in by_input.items():
        if name.startswith(f"{node_name}_weight_q"):
            node = _compute_node(nodes, by_input) if nodes else None
            if node is not None:
                return node
    return None


def _find(graph, by_input: dict, producers: dict, layer: str, entry: dict):
    prefixes = (f"{layer}.weight_quantized", f"{layer}.weight_packed", f"{layer}.weight_fp16", f"{layer}.weight")
    for prefix in prefixes:
        for name, nodes in by_input.items():
            if name == prefix or name.startswith(prefix):
                node = _compute_node(nodes, by_input)
                if node is not None:
                    return node
    for node in graph.node:  # unfused float layers keep their node name
        if node.name == entry["node"]:
            return node
    return None


_FUSED_AFTER = {"BatchNormalization", "Relu", "Clip", "Add", "Sum", "Sigmoid", "Mul", "LeakyRelu", "HardSigmoid"}
_COMPUTE = {"Conv", "FusedConv", "NhwcFusedConv", "ConvTranspose", "Gemm", "FusedGemm", "MatMul", "FusedMatMul"}


def _fused_node(graph, original, node_name: str):
    """The compute node of the optimised ``graph`` that the original node ``node_name`` became, where ONNX
    Runtime named it after (or gave it) the output of the last op it fused in (its BatchNorm, activation or
    add; NCHWc convs add the suffix ``_nchwc``)."""
    start = next((n for n in original.node if n.name == node_name), None)
    if start is None:
        return None
    consumers: dict[str, list] = {}
    for n in original.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    names, node = [], start
    for _ in range(4):
        names.extend(node.output)
        users = consumers.get(node.output[0], []) if node.output else []
        if len(users) != 1 or users[0].op_type not in _FUSED_AFTER:
            break
        node = users[0]
    for name in reversed(names):  # the deepest fusion first
        for n in graph.node:
            if n.op_type in _COMPUTE and (n.name in (name, f"{name}_nchwc") or name in n.output
                                          or f"{name}_nchwc" in n.output):
                return n
    return None


def _compute_node(nodes: list, by_input: dict):
    """Follow a weight through DequantizeLinear / Cast / layout ops to the node that computes with it."""
    passthrough = {"DequantizeLinear", "Cast", "Transpose", "Reshape", "ReorderInput", "ReorderOutput", "Identity"}
    seen = set()
    frontier = list(nodes)
    while frontier:
        node = frontier.pop(0)
        if id(node) in seen:
            continue
        seen.add(id(node))
        if node.op_type not in passthrough:
            return node
        for output in node.output:
            frontier.extend(by_input.get(output, []))
    return None


JOIN_OPS = {"Add", "Sum", "Concat"}


def join_kernels(path: str | os.PathLike, quantized: nn.Module, optimized=None) -> list[dict]:
    """Per residual add or concatenation whose inputs the exported file dequantizes (join quantizers), the
    op ONNX Runtime runs after optimisation and whether it is low precision (QLinearAdd, QLinearConcat).
    optimized: the optimised graph, if the caller already has it (optimized_graph(path))."""
    import onnx

    from ..joins import join_quantizers

    if not join_quantizers(quantized):
        return []
    graph = onnx.load(str(path), load_external_data=False).graph
    producers = {o: n.op_type for n in graph.node for o in n.output}
    readers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)

    def quantized_output(node) -> bool:  # its output goes to a QuantizeLinear, through a Relu at most
        users = [u for o in node.output for u in readers.get(o, [])]
        if len(users) == 1 and users[0].op_type == "Relu":
            users = [u for o in users[0].output for u in readers.get(o, [])]
        return any(u.op_type == "QuantizeLinear" for u in users)
    # joins of the plan: a join reading dequantized tensors whose output is not quantized is float by design
    # (no layer beside it has integer inputs: mixprec.joins)
    joins = [n.name for n in graph.node if n.op_type in JOIN_OPS
             and any(producers.get(i) == "DequantizeLinear" for i in n.input) and quantized_output(n)]
    nodes = (optimized_graph(path) if optimized is None else optimized).node
    out = []
    for name in joins:
        match = next((n for n in nodes if n.name == name), None) or next(
            (n for n in nodes if n.name.startswith(name)), None)
        op = match.op_type if match is not None else "?"
        out.append({"node": name, "runtime_op": op, "low_precision": op in LOW_PRECISION_OPS or op.startswith("QLinear")})
    return out


def _shape(dims) -> str:
    """An ONNX input's shape as ORT lists it, a named (dynamic) axis shown by its name: (batch, 1, 16, 16)."""
    return "(" + ", ".join(str(d) if d is not None else "?" for d in dims) + ")"
