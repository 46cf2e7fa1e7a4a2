"""Quantizer groups: find the quantizable layers of a model and decide which share a decision.

A group is a layer's weight quantizer plus the quantizer of its input (an embedding table has
only its weight: its input is token ids). Layers are tied into one group when they read the same
tensor (Q/K/V projections, gate/up projections, the two convolutions of a branch point), when they
share one weight tensor (an output layer tied to the input embedding: the tensor is stored once,
in one format), or when the user ties them by name pattern. Discovery runs
one forward pass on an example input with hooks, which also counts MACs; without an example
input (or for a model whose forward cannot be hooked) every layer is its own group and MACs
are unknown.
"""
from __future__ import annotations

import fnmatch
import math
import os
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
from torch import nn

from .canonical import canonical, conversions, evaluating
from .batches import batch_axis_hint, batch_size, describe_shape, input_hint, outputs_note, run_model, tensors_of, to_device
from .candidates import parse_candidate
from .errors import ModelError

QUANTIZABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.Linear, nn.Embedding)
TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d)  # weight (in, out / groups, kernel): channel axis 0 is the input
NO_COLUMNS = (nn.Conv3d, *TRANSPOSED)  # no im2col column form of the input here (GPTQ's Hessian): rounded to nearest


@dataclass(frozen=True)
class Layer:
    name: str
    kind: str
    weight_shape: tuple[int, ...]
    macs: int | None = None  # per sample of the example input
    input_shape: tuple[int, ...] | None = None  # per-sample input shape seen in the trace
    weight_of: str = ""  # the earlier layer whose weight tensor this layer shares (stored, and costed, once)
    float_bits: int = 32  # the width of the model's own weight (16: bfloat16/float16), which a float layer keeps

    @property
    def params(self) -> int:
        return math.prod(self.weight_shape)


@dataclass(frozen=True)
class QuantizerGroup:
    name: str
    layers: tuple[Layer, ...]
    tied_by: str = ""  # why several layers share this group ("" for a single layer)
    pinned: str | None = None  # candidate this group is fixed to

    @property
    def layer_names(self) -> tuple[str, ...]:
        return tuple(l.name for l in self.layers)

    @property
    def params(self) -> int:
        """Weights the group holds: a weight its layers share (tied embedding and output layer) counted once."""
        return sum(l.params for l in self.layers if not l.weight_of)

    @property
    def macs(self) -> int | None:
        if any(l.macs is None for l in self.layers):
            return None
        return sum(l.macs for l in self.layers)


@dataclass(frozen=True)
class ModelGroups:
    groups: tuple[QuantizerGroup, ...]
    excluded: tuple[Layer, ...] = ()
    traced: bool = True
    example_shape: tuple | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)
    edges: tuple[str, ...] = ()  # the groups of the first and the last quantized layer the forward calls

    def __iter__(self):
        return iter(self.groups)

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, name: str) -> QuantizerGroup:
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(name)

    @property
    def names(self) -> list[str]:
        return [g.name for g in self.groups]

    @property
    def layers(self) -> list[Layer]:
        return [l for g in self.groups for l in g.layers]

    def to_dict(self) -> dict:
        """The groups (name, layers, parameters, MACs, tie, pin) and the layers left in float, as JSON data."""
        return {"groups": [{"name": g.name, "layers": list(g.layer_names), "params": g.params, "macs": g.macs,
                            "tied_by": g.tied_by, "pinned": g.pinned} for g in self.groups],
                "excluded": [l.name for l in self.excluded]}


def one_or_many(value: str | Iterable[str]) -> list[str]:
    """A --tie/--exclude pattern or a KIND=FILE cost item given in Python as one string, or several: a list of
    them (one string is one item, not its characters)."""
    return [value] if isinstance(value, str) else list(value)


def is_torchscript(model: nn.Module) -> bool:
    return isinstance(model, torch.jit.ScriptModule)


def layer_kind(module: nn.Module) -> str | None:
    """'Conv2d', 'Linear', ... for a quantizable layer (eager or TorchScript), else None; a subclass of one
    (mixprec.embedding_bag's, a user's own nn.Linear) is of the kind it derives from."""
    if isinstance(module, QUANTIZABLE):
        return next(kind.__name__ for kind in QUANTIZABLE if isinstance(module, kind))
    if isinstance(module, torch.jit.ScriptModule):
        name = getattr(module, "original_name", "")
        return name if name in {c.__name__ for c in QUANTIZABLE} else None
    return None


def quantizable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Name -> layer of every layer mixprec quantizes; in an eager model, none inside a TorchScript submodule
    (its layers can be neither hooked nor swapped; unquantized_weights names it)."""
    scripted = [] if is_torchscript(model) else _scripted_submodules(model)
    return {name: m for name, m in model.named_modules() if layer_kind(m) and not _within(name, scripted)}


def _within(name: str, modules: list[str]) -> bool:
    """Whether module ``name`` is one of ``modules`` or inside one."""
    return any(name == m or name.startswith(m + ".") for m in modules)


def _scripted_submodules(model: nn.Module) -> list[str]:
    """The outermost TorchScript submodules of an eager model."""
    out: list[str] = []
    for name, module in model.named_modules():
        if name and isinstance(module, torch.jit.ScriptModule) and not _within(name, out):
            out.append(name)
    return out


NOT_QUANTIZED = "mixprec does not quantize"  # words of the note on weights outside every layer it quantizes
# torch renormalises the rows an Embedding(max_norm=...) reads, in place, at every lookup; ONNX has no such op
MAX_NORM_NOTE = ("{count} embedding(s) with max_norm (e.g. {example!r}): torch renormalises the rows each lookup reads, "
                 "in place, so the table changes as the model runs; quantization sees the table as it is, and an "
                 "ONNX export holds it as its example batch left it and never renormalises (the exported outputs "
                 "differ, even at fp32): renormalise the table once (with torch.no_grad(), weight rows scaled to "
                 "max_norm) and set max_norm=None before quantizing")


def unquantized_weights(model: nn.Module) -> list[tuple[str, str, int]]:
    """(name, type, elements) of the modules that hold a weight matrix of their own (2-D or more) but are no
    layer mixprec quantizes: a custom projection, transformers' Conv1D. They stay float, which a user
    should know; norms and biases (1-D) are not counted."""
    if is_torchscript(model):
        return []
    scripted = _scripted_submodules(model)
    out = [(name, "a TorchScript submodule", sum(p.numel() for p in model.get_submodule(name).parameters()
                                                  if p.dim() >= 2)) for name in scripted]
    for name, module in model.named_modules():
        if layer_kind(module) or _within(name, scripted):
            continue
        own = [(n, p) for n, p in module.named_parameters(recurse=False) if p.dim() >= 2]
        if own:
            # a parameter of a module (a position table, a class token) is named through it; the model's own by itself
            label = ", ".join(f"{name}.{n}" if name else n for n, _ in own)
            out.append((label, type(module).__name__, sum(p.numel() for _, p in own)))
    return out


def check_weights(layers: dict[str, nn.Module]) -> None:
    from torch.nn.parameter import is_lazy
    lazy = [name for name, module in layers.items() if is_lazy(module.weight)]
    if lazy:
        raise ModelError(f"{len(lazy)} layer(s) (e.g. {lazy[0]!r}) are lazy (nn.LazyLinear, nn.LazyConv2d, ...) and "
                         "not initialised yet: their weights have no shape until the model runs once; call the model "
                         "on one input (model(example)) before quantizing it, e.g. at the end of the function that "
                         "builds it")
    for name, module in layers.items():
        bad = ~torch.isfinite(module.weight.detach())
        if bad.any():
            raise ModelError(f"layer {name!r} has {int(bad.sum())} NaN/Inf weight values; "
                             "fix or retrain the model before quantizing it")


def _tensor_key(t: torch.Tensor) -> tuple:
    return (t.data_ptr(), tuple(t.shape), tuple(t.stride()), t.dtype, t.device.type)


def trace(model: nn.Module, example_input: Any, layers: dict[str, nn.Module]
          ) -> tuple[dict, dict, dict, str | None, list[str]]:
    """One hooked forward pass: per layer MACs and input shape, which tensor each layer read, a note where
    the model returns several outputs (batches.outputs_note), and the layers' calls in the order they ran."""
    macs: dict[str, int] = {n: 0 for n in layers}
    calls: list[str] = []
    shapes: dict[str, tuple] = {}
    reads: dict[str, set] = {n: set() for n in layers}
    keep_alive: list[torch.Tensor] = []  # so that no tensor address is reused during the pass
    n = batch_size(example_input)

    def hook(name):
        def fn(module, inputs, output):
            x = inputs[0]
            keep_alive.append(x)
            calls.append(name)
            reads[name].add(_tensor_key(x))
            shapes.setdefault(name, tuple(x.shape[1:]))
            w = module.weight
            if isinstance(module, nn.Embedding):  # a table look-up: no multiply-accumulates
                pass
            elif isinstance(module, nn.Linear):  # every output row costs in x out MACs
                macs[name] += (output.numel() // w.shape[0]) * w.shape[0] * w.shape[1]
            elif isinstance(module, TRANSPOSED):  # every input element costs (out/groups) x kernel MACs
                macs[name] += x.numel() * math.prod(w.shape[1:])
            else:  # conv: every output element costs (in/groups) x kernel MACs
                macs[name] += output.numel() * math.prod(w.shape[1:])
        return fn

    handles = [m.register_forward_hook(hook(name)) for name, m in layers.items()]
    device = next(iter(layers.values())).weight.device
    try:
        with torch.no_grad():
            output = run_model(model, to_device(example_input, device))
    finally:
        for h in handles:
            h.remove()
    note = outputs_note(output)
    n, first = _samples_per_batch(model, example_input, output, n)
    if first:
        note = (f"the model reads its input sequence-first ({len(first)} module(s) with batch_first=False, e.g. "
                f"{first[0]!r}): its batch is axis 1 of the input {describe_shape(example_input)}, and MACs and BOPs "
                "are counted per sample of it; mixprec's other checks take axis 0 as the batch, so build the model "
                "with batch_first=True where you can" + (f". {note}" if note else ""))
    return {k: v // max(n, 1) for k, v in macs.items()}, shapes, reads, note, calls


def _samples_per_batch(model: nn.Module, example: Any, output: Any, rows: int) -> tuple[int, list[str]]:
    """(samples in the example batch, the sequence-first modules where its batch is axis 1). One unbatched sample
    (a 1-D float input whose output's first axis is not its length: a list of samples given as the data) is refused:
    its features would be counted as samples, and a cap on samples would cut inside one."""
    from .attention import sequence_first_modules
    from .batches import batch_on_axis_one, output_tensor
    from .errors import SpecError
    try:
        out = output_tensor(output)
    except (TypeError, ValueError):
        return rows, []
    x = example if isinstance(example, torch.Tensor) else None
    if x is not None and x.dim() == 1 and x.is_floating_point() and out.dim() <= 1 and out.numel() != rows:
        raise SpecError(f"the example input has shape {tuple(x.shape)} and the model's output {tuple(out.shape)}: one "
                        "sample without its batch axis (mixprec reads the first axis of every input as the batch, and "
                        "the output keeps it); give batches, e.g. torch.utils.data.DataLoader(dataset, batch_size=32) "
                        "or [torch.stack(samples[i:i + 32]) for i in range(0, len(samples), 32)]")
    first = sequence_first_modules(model) if x is not None and x.dim() >= 3 else []
    if first and batch_on_axis_one(model, x) is True:
        return int(x.shape[1]), first
    return rows, []


_METADATA = frozenset({"shape", "dtype", "device", "requires_grad", "is_cuda", "is_leaf", "grad", "layout", "ndim",
                       "size", "dim", "numel", "stride", "element_size", "data_ptr", "is_contiguous",
                       "is_floating_point", "nelement", "storage_offset", "get_device"})


def _reads_values(func) -> bool:
    """Whether a torch function reads a tensor's values, not only what it is (its shape, dtype, device, ...)."""
    name = getattr(func, "__name__", "")
    if name == "__get__":
        name = getattr(getattr(func, "__self__", None), "__name__", "")
    return name not in _METADATA


def weights_read_outside(model: nn.Module, example_input: Any, layers: dict[str, nn.Module]) -> list[str]:
    """Of ``layers``, those whose weight the forward reads outside the call of every layer that holds it: a layer
    never called as a module but computed with its weight (``F.conv2d(x, self.conv.weight)``, ``x @
    self.proj.weight.T``), or an embedding whose table the forward also multiplies by itself (``F.linear(h,
    self.wte.weight)``, a tied output without its own layer). One more pass, watching every torch function's
    tensor arguments; what a read only looks at (shape, dtype, device) does not count, and a weight two layers
    hold (a tied table) is read inside either's call."""
    from torch.overrides import TorchFunctionMode

    holders: dict[int, set[str]] = {}
    for n, m in layers.items():
        holders.setdefault(id(m.weight), set()).add(n)
    running: list[str] = []  # the layers whose call the pass is inside
    seen: set[str] = set()

    def look(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            names = holders.get(id(value))
            if names and not names.intersection(running):
                seen.update(names)
        elif isinstance(value, (list, tuple)):
            for v in value:
                look(v)
        elif isinstance(value, dict):
            for v in value.values():
                look(v)

    class Watch(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if _reads_values(func):
                look(args)
                look(kwargs or {})
            return func(*args, **(kwargs or {}))

    def enter(name):
        def fn(module, inputs):
            running.append(name)
        return fn

    def leave(name):
        def fn(module, inputs, output):  # returns None: the output stays the layer's
            if running and running[-1] == name:
                running.pop()
        return fn

    handles = [h for n, m in layers.items()
               for h in (m.register_forward_pre_hook(enter(n)), m.register_forward_hook(leave(n)))]
    device = next(iter(layers.values())).weight.device
    try:
        with torch.no_grad(), Watch():
            run_model(model, to_device(example_input, device))
    except Exception:  # a forward that does not run under a function mode: nothing is known, nothing is excluded
        return []
    finally:
        for h in handles:
            h.remove()
    return [n for n in layers if n in seen]


def _near_names(pattern: str, names: list[str]) -> str:
    """A hint where the pattern matches the end of layer names: a whole name is matched, so 'lm_head' is not
    'lm.lm_head' (an hf: model's layers are under 'lm.')."""
    near = [n for n in names if fnmatch.fnmatchcase(n, f"*.{pattern}")]
    if not near:
        return ""
    return (f"; it matches the end of {len(near)} layer name(s), e.g. {near[0]!r}: give the whole name, or "
            f"'*.{pattern}'")


class _UnionFind:
    def __init__(self, items: Iterable[str]):
        self.parent = {i: i for i in items}
        self.reason: dict[str, str] = {}

    def find(self, x: str) -> str:
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: str, b: str, reason: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra
            # every reason that joined the group, in order ("shared input + tie *proj")
            reasons = [r for part in (self.reason.get(ra), self.reason.get(rb), reason) if part
                       for r in part.split(" + ")]
            self.reason[ra] = " + ".join(dict.fromkeys(reasons))


def group_name(names: list[str]) -> str:
    """``a.b.{q,k,v}`` for tied layers, the layer name for a single one."""
    if len(names) == 1:
        return names[0]
    parts = [n.split(".") for n in names]
    common = os.path.commonprefix(parts)
    rest = [".".join(p[len(common):]) for p in parts]
    prefix = ".".join(common)
    return (prefix + "." if prefix else "") + "{" + ",".join(rest) + "}"


GLOB_HINT = (" (a pattern is a shell-style glob matched against whole layer names: *, ?, [...]; one pattern per "
             "option, repeated for several; `mixprec inspect` lists the layers and the modules left float)")


def discover_groups(model: nn.Module, example_input: Any = None, *, ties: Iterable[str] = (),
                    exclude: Iterable[str] = (), pins: dict[str, str] | None = None,
                    tie_shared_inputs: bool = True) -> ModelGroups:
    """Quantizer groups of ``model``.

    ties: name patterns (fnmatch); all layers matching one pattern form one group.
    exclude: name patterns of layers left in float. pins: name pattern -> candidate.
    The groups are those of ``canonical(model)``, as every other step of mixprec sees the model
    (mixprec.canonical): an ``nn.MultiheadAttention`` counts as its four projection layers, and a
    reparametrized weight (weight_norm) as the plain weight it computes.
    """
    model = canonical(model)
    example_input = tensors_of(example_input)  # numpy inputs work as tensors do
    ties, exclude = one_or_many(ties), one_or_many(exclude)
    if pins is not None and not isinstance(pins, dict):
        raise ModelError(f"pins is a dict of name pattern -> candidate, e.g. {{'conv1': 'w8a8'}}; got "
                         f"{type(pins).__name__} {pins!r}")
    pins = dict(pins or {})
    for candidate in pins.values():
        parse_candidate(candidate)
    layers = quantizable_layers(model)
    if not layers:
        raise ModelError(f"{type(model).__name__} has no quantizable layers (mixprec quantizes nn.Conv1d/2d/3d, "
                         "nn.ConvTranspose1d/2d, nn.Linear, nn.Embedding and nn.EmbeddingBag); nothing to do")
    check_weights(layers)
    patterns = exclude
    excluded_names = [n for n in layers if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    for p in patterns:
        if not any(fnmatch.fnmatchcase(n, p) for n in layers):
            raise ModelError(f"exclude pattern {p!r} matches no layer; layers look like {list(layers)[:3]}"
                             f"{_near_names(p, list(layers))}{GLOB_HINT}")
    if len(excluded_names) == len(layers):
        raise ModelError(f"--exclude {' '.join(map(repr, patterns))} leaves all {len(layers)} quantizable layers in "
                         "float: nothing is left to quantize; exclude fewer layers (e.g. --exclude "
                         f"{list(layers)[0]!r})")
    notes = list(conversions(model))
    uncovered = unquantized_weights(model)
    total = sum(p.numel() for p in model.parameters())
    held = sum(n for _, _, n in uncovered)
    kinds = sorted({kind for _, kind, _ in uncovered})
    if uncovered and held >= 0.01 * total:  # a class token or two is not worth a note
        notes.append(f"{held / max(total, 1):.0%} of the weights are in {len(uncovered)} module(s) {NOT_QUANTIZED} "
                     f"({', '.join(kinds)}; e.g. {uncovered[0][0]!r}): they stay float, counted in bytes; "
                     "whatever they compute (a custom projection's matmul; a position table or class token computes "
                     "nothing) is in no MACs or BOPs figure (those count the quantizable layers)")
    renormed = [n for n, m in model.named_modules() if isinstance(m, nn.Embedding) and m.max_norm is not None]
    if renormed:
        notes.append(MAX_NORM_NOTE.format(count=len(renormed), example=renormed[0]))
    traced = example_input is not None and not is_torchscript(model)
    if is_torchscript(model):
        notes.append("TorchScript model: forward hooks do not run inside it, so layers are not tied by shared "
                     "inputs, MACs are unknown and only weight-only candidates apply")
    macs: dict[str, int] = {}
    shapes: dict[str, tuple] = {}
    reads: dict[str, set] = {}
    calls: list[str] = []
    if traced:
        try:
            with evaluating(model):  # a look at shapes: a training-mode model's statistics stay as they were
                macs, shapes, reads, output_note, calls = trace(model, example_input, layers)
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            shape = _describe(example_input)
            hint = (" A data item that is a 2-tuple is read as (inputs, labels): give a model of several inputs "
                    "batches of ((input1, input2, ...), labels), of a tuple of 3 or more, or of a dict of its "
                    "arguments." if "required positional argument" in str(exc) else
                    " A dict item is passed to forward as keyword arguments: leave out the keys forward does not "
                    "take, or give batches of (dict of inputs, labels); a forward that takes the dict itself "
                    "(forward(self, batch)) is given it as its one argument by a 1-tuple: batches of (dict,), or "
                    "((dict,), labels)." if "unexpected keyword argument" in str(exc) else
                    " A data item that is a tuple of 3 or more is the model's positional inputs, all of them (an "
                    "(inputs, labels, index) item from a Dataset that returns its index too is three inputs): give "
                    "(inputs, labels) pairs, e.g. [(x, y) for x, y, _ in loader]."
                    if "positional argument" in str(exc) and "were given" in str(exc)
                    and isinstance(example_input, (tuple, list)) and len(example_input) >= 3 else
                    " mixprec runs nn.MultiheadAttention with its q/k/v projections as layers of their own "
                    "(q_proj, k_proj, v_proj, out_proj), where its in_proj_bias is None: a forward that reads "
                    "in_proj_bias (or, with other key/value widths, in_proj_weight) itself cannot run so; read "
                    "att.q_proj.bias (k_proj, v_proj) instead." if "NoneType" in str(exc) and any(
                        type(m).__name__ == "ExplicitAttention" for m in model.modules())
                    else "")
            raise ModelError(f"the model failed on the example input {shape}: "
                             f"{str(exc).splitlines()[0]}.{input_hint(model, example_input)}"
                             f"{batch_axis_hint(model, example_input)} Check that the data "
                             f"matches what the model expects.{hint}") from exc
        if output_note:
            notes.append(output_note)
        unused = [n for n in layers if not reads[n]]
        with evaluating(model):  # layers whose weights the forward also computes with itself
            outside = weights_read_outside(model, example_input, layers)
        never = [n for n in outside if n in unused]  # never called as modules: computed with their weights
        beside = [n for n in outside if n not in unused]  # called, and their weight read elsewhere too
        excluded_names += [n for n in outside if n not in excluded_names]
        if never:
            notes.append(f"{len(never)} layer(s) (e.g. {never[0]}) are never called, but the forward reads "
                         f"their weights itself (F.conv2d(x, {never[0]}.weight), x @ {never[0]}.weight.T, "
                         "...): mixprec quantizes a layer where its module is called, so they stay float, "
                         f"counted in bytes as float; call the module ({never[0]}(x)) to quantize it")
            unused = [n for n in unused if n not in never]
        if beside:
            notes.append(f"{len(beside)} layer(s) (e.g. {beside[0]}) are called, but the forward also computes with "
                         f"their weights itself (e.g. a tied output F.linear(h, {beside[0]}.weight)): that use would "
                         "be neither priced nor exported as the layer's, so they stay float, counted in bytes as "
                         "float; give the other use a module of its own sharing the weight (an nn.Linear whose "
                         f"weight is {beside[0]}.weight) to quantize them together")
        if outside and len(excluded_names) == len(layers):
            raise ModelError(f"no quantizable layer is left: {notes[-1]}")
        if unused:
            notes.append(f"{len(unused)} layer(s) not called on the example input (e.g. {unused[0]}): MACs 0")
    elif not is_torchscript(model):  # a TorchScript model's own note says why it is not traced
        notes.append("no example input: every layer is its own group and MACs are unknown")

    owner: dict[int, str] = {}  # id of a weight tensor -> the first layer holding it
    for n, m in layers.items():
        owner.setdefault(id(m.weight), n)
    info = {n: Layer(n, layer_kind(m), tuple(m.weight.shape), macs.get(n) if traced else None, shapes.get(n),
                     owner[id(m.weight)] if owner[id(m.weight)] != n else "",
                     m.weight.element_size() * 8 if m.weight.is_floating_point() else 32)
            for n, m in layers.items()}
    kept = [n for n in layers if n not in excluded_names]
    shared = [n for n in layers if info[n].weight_of and (n in excluded_names) != (info[n].weight_of in excluded_names)]
    if shared:
        raise ModelError(f"layer {shared[0]!r} shares its weight with {info[shared[0]].weight_of!r}; exclude both "
                         "or neither (one tensor is stored in one format)")
    uf = _UnionFind(kept)
    for n in kept:
        if info[n].weight_of:
            uf.union(info[n].weight_of, n, "shared weight")
    if traced and tie_shared_inputs:
        first_reader: dict[tuple, str] = {}
        for n in kept:
            if info[n].kind.startswith("Embedding"):  # its input is indices, never quantized: nothing to share
                continue
            for key in reads[n]:
                if key in first_reader:
                    uf.union(first_reader[key], n, "shared input")
                else:
                    first_reader[key] = n
    for pattern in ties:
        matched = [n for n in kept if fnmatch.fnmatchcase(n, pattern)]
        if not matched:
            raise ModelError(f"tie pattern {pattern!r} matches no layer; layers look like {kept[:3]}"
                             f"{_near_names(pattern, kept)}{GLOB_HINT}")
        if len(matched) == 1:
            notes.append(f"tie pattern {pattern!r} matches only {matched[0]}: it ties nothing (each --tie ties the "
                         "layers one pattern matches: give one pattern that matches every layer to tie)")
        for n in matched[1:]:
            uf.union(matched[0], n, f"tie {pattern}")

    members: dict[str, list[str]] = {}
    for n in kept:
        members.setdefault(uf.find(n), []).append(n)
    groups = []
    for root, names in members.items():
        pinned = {c for p, c in pins.items() for n in names if fnmatch.fnmatchcase(n, p)}
        if len(pinned) > 1:
            raise ModelError(f"group {group_name(names)} has conflicting pins {sorted(pinned)}")
        pin = parse_candidate(pinned.pop()).name if pinned else None
        groups.append(QuantizerGroup(group_name(names), tuple(info[n] for n in names),
                                     uf.reason.get(root, "") if len(names) > 1 else "", pin))
    for p in pins:
        if not any(fnmatch.fnmatchcase(n, p) for n in kept):
            gone = [n for n in excluded_names if fnmatch.fnmatchcase(n, p)]
            if gone:
                raise ModelError(f"pin pattern {p!r} matches only excluded layer(s) {gone[:3]} (left in float by "
                                 "--exclude or the model's defaults): pin or exclude them, not both")
            raise ModelError(f"pin pattern {p!r} matches no quantized layer; layers look like {kept[:3]}"
                             f"{_near_names(p, kept)}{GLOB_HINT}")
    return ModelGroups(tuple(groups), tuple(info[n] for n in excluded_names), traced,
                       describe_shape(example_input) if traced else None, tuple(notes), _edges(groups, calls))


def _edges(groups: list[QuantizerGroup], calls: list[str]) -> tuple[str, ...]:
    """The group of the first quantized layer called and that of the last (one where they are the same):
    the model's first and last layers as it runs them, whatever order its modules were declared in (a
    head declared before the body is common). Empty without a trace."""
    of = {layer: g.name for g in groups for layer in g.layer_names}
    ran = [of[name] for name in calls if name in of]
    return tuple(dict.fromkeys([ran[0], ran[-1]])) if ran else ()


def _describe(inputs: Any) -> str:
    return f"of shape {describe_shape(inputs)}"
