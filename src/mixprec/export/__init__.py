"""export(model, plan, data, target="ort-cpu", out="model.onnx"): the plan as a file a runtime runs.

Each layer becomes what its candidate says, with the codes, scales and zero-points of mixprec's
simulation (nothing is recalibrated): int8 QDQ for w<B>a8, MatMulNBits for weight-only Linear layers,
float for fp32 (mixprec.export.onnx_graph). The result says, per layer, the format written and the op
ONNX Runtime really runs, low precision or a float fallback (mixprec.export.ort); with ``evaluate`` it
also gives the simulated and exported metric and how often their predictions agree.

The other targets are files of their own, each with its own function and result (``export`` and
``ExportResult`` stay ONNX's):

    export_gguf(model, plan, "model.gguf", tokenizer=...) -> GGUFExport             target gguf (llama.cpp)
    write_compressed_tensors(model, plan, "out_dir") -> CompressedTensorsExport     target compressed-tensors (vLLM)
    deploy_cuda(model, plan, data) -> CudaDeployment; save_cuda / load_cuda           target cuda (torch's kernels)

``check_target(target, layers)`` checks a plan for any of them before any work.
"""
from __future__ import annotations

import math

import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

from ..atomic import write_atomic
from ..canonical import canonical, in_eval_mode
from ..batches import as_batches, batch_on_axis_one, output_tensor, run_model, split_item, to_device
from ..candidates import parse_candidate
from ..capture import map_tensors
from ..errors import MixprecError, ModelError, PlanError
from ..evaluation import EvalResult, evaluate_model
from ..formats import IntFormat
from ..groups import is_torchscript, layer_kind
from ..plan import Plan, write_json_atomic
from ..quantizers import range_methods
from ..swap import QuantizedLayer, set_module
from ..sensitivity.store import flatten_tensors
from .checks import check_target
from .compressed_tensors import CompressedTensorsExport, write_compressed_tensors
from .cuda import CudaDeployment, deploy_cuda, load_cuda, save_cuda
from .gguf import GGUFExport, export_gguf
from .ort import RUNTIME_WEIGHT_QUANTIZATION
from .targets import TARGETS, check_layers, get_onnx_target, realise

__all__ = ["export", "ExportResult", "export_gguf", "GGUFExport", "write_compressed_tensors",
           "CompressedTensorsExport", "check_target", "TARGETS", "OrtModule", "agreement", "output_sqnr", "top1",
           "noise_bound", "cpu_has_vnni", "saturation_note",
           "deploy_cuda", "save_cuda", "load_cuda", "CudaDeployment"]


def __getattr__(name: str):
    if name == "OrtModule":
        from .ort import OrtModule
        return OrtModule
    raise AttributeError(name)


@dataclass
class ExportResult:
    """What ``export`` wrote: the ONNX file, per layer the format written and the op ONNX Runtime runs (low
    precision or a float fallback, with a note), the exported against the simulated outputs (agreement, SQNR) and,
    with an evaluation, both metrics; ``to_dict()`` is the report written beside the file."""
    path: Path  # the ONNX file
    target: str
    layers: list[dict]  # per layer: candidate, node, format written, runtime op, low precision, note
    size_bytes: int
    simulated: EvalResult | None = None
    exported: EvalResult | None = None
    agreement: dict[str, Any] = field(default_factory=dict)  # {"calibration": f, "evaluation": f}: top-1 agreement
    outputs: dict[str, int] = field(default_factory=dict)  # how many outputs each agreement counts
    sqnr_db: dict[str, float] = field(default_factory=dict)  # {"calibration": dB}: exported against simulated outputs
    notes: list[str] = field(default_factory=list)
    joins: list[dict] = field(default_factory=list)  # per residual add/concatenation: op run, low precision
    source_model: str | None = None  # the hf: folder the model came from (mixprec evaluate reads with its tokenizer)

    @property
    def fallbacks(self) -> list[dict]:
        """Layers the plan quantizes that the runtime computes in float."""
        return [l for l in self.layers if l["candidate"] != "fp32" and not l["low_precision"] and not l.get("absent")]

    def noise(self) -> float | None:
        """An upper bound, in points, on the standard error of a top-1 accuracy gap (in percent) between the
        simulated and the exported model that comes from the evaluation outputs whose top-1 differs alone: the gap is
        (outputs only the file gets right - outputs only the simulation gets right) / N, both counts out of the D
        that differ, so with neither side favoured its standard error is at most sqrt(D) / N; None without an
        evaluation."""
        return noise_bound(self.agreement.get("evaluation"), self.outputs.get("evaluation"))

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "target": self.target, "size_bytes": self.size_bytes,
                "simulated": None if self.simulated is None else self.simulated.to_dict(),
                "exported": None if self.exported is None else self.exported.to_dict(),
                "agreement": self.agreement, "outputs": self.outputs, "noise": self.noise(),
                "sqnr_db": {k: v if math.isfinite(v) else None for k, v in self.sqnr_db.items()},  # None: equal
                "notes": self.notes,
                "layers": self.layers, "joins": self.joins,
                **({"source_model": self.source_model} if self.source_model else {})}


def noise_bound(agreement: float | None, outputs: int | None) -> float | None:
    """sqrt((1 - agreement) / outputs) in points: at most the standard error of a top-1 accuracy gap (in percent)
    made by the outputs whose top-1 differs alone (ExportResult.noise); None when either is unknown."""
    if not outputs or agreement is None:
        return None
    return 100 * ((1 - agreement) / outputs) ** 0.5


def cpu_has_vnni() -> bool:
    """Whether this CPU has VNNI (AVX512-VNNI or AVX-VNNI); without it ORT's u8 x s8 kernels saturate."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.machine().lower() not in ("x86_64", "amd64")
    return "avx512_vnni" in flags or "avx_vnni" in flags


def saturation_note(candidates: Iterable) -> str | None:
    """A note for plans made for ort-cpu on this CPU when it has no VNNI and some candidate is int8 QDQ with 8-bit
    weights (w8a8): ONNX Runtime's kernels here saturate on those layers, which the simulation does not model.
    None where nothing is at risk."""
    at_risk = [c.name for c in candidates  # what export's own note names: int8 QDQ layers with 8-bit weights
               if getattr(realise(c, "Linear", 256), "kind", None) == "qdq" and c.weight.bits == 8]
    if not at_risk or cpu_has_vnni():
        return None
    return (f"this CPU has no VNNI: ONNX Runtime's int8 kernels on it add pairs of u8 x s8 products in 16 bits, "
            f"which saturate with 8-bit weights, so layers planned as {', '.join(at_risk)} can run here far less "
            "accurately than simulated. If this CPU is where the model runs, use w7a8 instead (--profile "
            "ort-cpu-avx2), which runs as simulated; a CPU with VNNI runs w8a8 as simulated")


def check_rounding_grid(rounding: Any, candidates: dict) -> None:
    """A file holds each integer weight as codes on nearest rounding's scales (ONNX, GGUF, compressed-tensors):
    refuse, before any rounding runs, a rounding that makes its own scales for grouped weights, GPTQ with
    dynamic groups (its default), which chooses each group's scale from weights it has already updated.
    ``candidates``: layer -> Candidate."""
    from ..rounding import rounding_config
    config = None if rounding is None else rounding_config(rounding)
    if config is None or getattr(config, "name", "") != "gptq" or getattr(config, "static_groups", True):
        return
    grouped = sorted(name for name, c in candidates.items()
                     if getattr(c.weight, "granularity", None) == "group")
    if grouped:
        raise PlanError(f"GPTQ with dynamic groups (its default) makes each group's scale from the weights it has "
                        f"already updated, so the weights of the {len(grouped)} layer(s) with grouped formats "
                        f"({', '.join(grouped[:3])}{', ...' if len(grouped) > 3 else ''}) are not on the grid of the "
                        "scales an exported file holds: export with --rounding gptq --static-groups "
                        "(GPTQ(static_groups=True)), or --rounding nearest")


def _float_copy(quantized: nn.Module, share: bool = True) -> nn.Module:
    """The simulated model with every QuantizedLayer replaced by its layer (weights as simulated).

    share: the copy holds ``quantized``'s own parameter and buffer tensors (the export only reads them), so it
    costs no second copy of the weights; False copies them too (for a copy that is then converted in place)."""
    import copy
    memo = {id(t): t for t in (*quantized.parameters(), *quantized.buffers())} if share else {}
    model = copy.deepcopy(quantized, memo).eval()
    for name, module in list(model.named_modules()):
        if isinstance(module, QuantizedLayer):
            set_module(model, name, module.layer)
    return model


def _input_tensors(example: Any) -> list:
    """The example's inputs as a list (a dict's values, a tuple's items, one tensor), in order."""
    return (list(example.values()) if isinstance(example, dict) else list(example)
            if isinstance(example, (tuple, list)) else [example])


def _free_axes(example: Any, others: list) -> list[set[int]]:
    """For each of the example's inputs, the axes (but its batch axis) whose size the other calibration inputs
    change: the file takes them as dynamic, so that it runs on every calibration batch (a sound clip or an image
    of another length)."""
    from .onnx_graph import batch_axis, batch_size
    mine = _input_tensors(example)
    batch = batch_size([t for t in mine if isinstance(t, torch.Tensor)])
    free: list[set[int]] = [set() for _ in mine]
    for other in others:
        theirs = _input_tensors(other)
        if len(theirs) != len(mine):
            continue
        for axes, t, o in zip(free, mine, theirs):
            if isinstance(t, torch.Tensor) and isinstance(o, torch.Tensor) and o.dim() == t.dim():
                axes.update(i for i in range(t.dim()) if i != batch_axis(t, batch) and o.shape[i] != t.shape[i])
    return free


def _fixed_axes(example: Any, free: list[set[int]] | None = None) -> str:
    """The shapes of the example's inputs whose axes but the batch (and the ``free`` ones, :func:`_free_axes`, shown
    as ?) are fixed in the file (all but token ids and masks, mixprec.export.onnx_graph.token_like), as (*, ...),
    comma-joined."""
    from .onnx_graph import batch_axis, batch_size, token_like
    inputs = _input_tensors(example)
    free = free if free is not None and len(free) == len(inputs) else [set() for _ in inputs]
    pairs = [(t, f) for t, f in zip(inputs, free) if isinstance(t, torch.Tensor)]
    batch = batch_size([t for t, _ in pairs])

    def shape(t: torch.Tensor, axes: set[int]) -> str:
        axis = batch_axis(t, batch)
        return str(tuple("*" if i == axis else "?" if i in axes else n for i, n in enumerate(t.shape))).replace("'", "")
    return ", ".join(shape(t, f) for t, f in pairs if t.dim() >= 2 and not token_like(t))


LABEL_KEYS = ("labels", "label", "label_ids", "start_positions", "end_positions")  # Hugging Face's loss targets


def _label_keys(model: nn.Module, example: Any) -> list[str]:
    """The targets (``labels``, ...) in a dict example that ``model.forward`` takes as optional arguments for its
    loss (Hugging Face models, batches made for training): a deployed model predicts without them."""
    if not isinstance(example, dict):
        return []
    import inspect
    try:
        parameters = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return []
    return [k for k in LABEL_KEYS if k in example and k in parameters
            and parameters[k].default is not inspect.Parameter.empty]


def _drop(item: Any, keys: list[str]) -> Any:
    """A calibration item (a dict of inputs, or an (inputs, labels) pair) without ``keys`` in its inputs."""
    if isinstance(item, dict):
        return {k: v for k, v in item.items() if k not in keys}
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], dict):
        return (_drop(item[0], keys), item[1])
    return item


def _first_input(data: Iterable | None, example: Any) -> Any:
    if example is not None:
        return example
    for item in data or []:
        return split_item(item)[0]
    raise MixprecError("export needs an example input: pass calibration data (or example_input=...)")


DECODERS = ("fused", "traced")
OVER_PLANNED = 1.25  # a file this much larger than the plan's bytes cost: a note says why


def export(model: nn.Module, plan: Plan | str | os.PathLike, data: Iterable | None = None, target: str = "ort-cpu",
           out: str | os.PathLike = "model.onnx", *, quantized: nn.Module | None = None, reduce_range: bool = False,
           accuracy_level: int = 4, evaluate: Callable[[nn.Module], Any] | None = None,
           example_input: Any = None, weight_range: str | None = None, activation_range: str | None = None,
           threads: int | None = None, progress: bool = True, joins: bool | None = None,
           rounding: Any = None, source_model: str | None = None, decoder: str = "fused",
           weight_method: str | None = None, activation_method: str | None = None,
           rounding_checkpoint: str | os.PathLike | None = None) -> ExportResult:
    """Write ``plan`` applied to ``model`` as an ONNX file for ``target`` and report what runs.

    data: calibration batches (as for apply; the first one is also the example input of the export).
    quantized: the model ``apply(model, plan, data, ...)`` already made; default: made here with ``rounding``
    (None: nearest, with a RoundingNote where the plan was chosen with another; a name or a config of
    mixprec.rounding: the codes written are the weights it makes, which must lie
    on nearest rounding's grid: adaround, brecq, and gptq per channel or with static_groups=True; with
    ``rounding_checkpoint``, a folder where an interrupted rounding is kept and resumes, as apply's). reduce_range: check that every layer with 8-bit inputs has
    7-bit weights at most (no saturation in the u8 x s8 kernels of CPUs without VNNI).
    accuracy_level: MatMulNBits' (4: inputs quantized to int8 inside the kernel, the fast path).
    evaluate: the user's evaluation function; it runs on the simulated and the exported model.
    weight_range, activation_range: mse (default), minmax or percentile, as in ``analyze`` and ``apply`` (the
    former names weight_method, activation_method are still taken).
    joins: quantize the tensors residual adds and concatenations read and write (mixprec.joins), so that
    ONNX Runtime runs the layers around them as integer kernels too; default: the plan's
    ``metadata["joins"]``, else on when some layer has 8-bit integer inputs and the model traces with
    torch.fx. Ignored when ``quantized`` is given (it has join quantizers or not).
    source_model: the ``hf:`` folder the model was loaded from, recorded in the report, so that ``mixprec
    evaluate`` reads a ppl: or text: evaluation of the file with that folder's tokenizer.
    decoder: for a Llama-family causal LM, "fused" (default) writes its cached step with ONNX Runtime's fused
    decoder ops (:mod:`mixprec.export.decoder_graph`; checked against the model's logits, else the traced
    step, with a note saying why); "traced" writes the step torch.onnx traces.
    Writes ``out`` and ``out`` with suffix ``.report.json``, each atomically. The targets gguf and
    compressed-tensors are written by :func:`export_gguf` and :func:`write_compressed_tensors`.
    """
    spec = get_onnx_target(target)
    weight_method, activation_method = range_methods(weight_range, activation_range, weight_method, activation_method)
    if isinstance(plan, (str, os.PathLike)):  # a plan.json, as apply takes it
        plan = Plan.load(plan)
    if not isinstance(plan, Plan):
        raise PlanError(f"export takes a mixprec Plan or the path of a plan.json, got {type(plan).__name__}; load "
                        "one with Plan.load(path)")
    if is_torchscript(model):
        raise ModelError("a TorchScript model cannot be exported to ONNX here; give the model as file.py:function")
    if decoder not in DECODERS:
        raise MixprecError(f"decoder must be one of {', '.join(DECODERS)}, got {decoder!r}")
    if accuracy_level not in (0, 1, 2, 3, 4):
        raise MixprecError(f"accuracy_level must be 0..4 (MatMulNBits), got {accuracy_level!r}")
    out = Path(out)
    if out.suffix != ".onnx":
        raise MixprecError(f"the exported file must end in .onnx, got {out}")
    # before canonical makes attention explicit: which modules read (sequence, batch, ...) inputs
    from ..attention import sequence_first_modules
    sequence_first = sequence_first_modules(model)
    # the layers plans name (mixprec.canonical), in eval mode as every measurement runs it: a model in training mode
    # is exported from a copy sharing its parameters, so its batch-norm statistics and the RNG stay as they were
    model = in_eval_mode(canonical(model), progress)
    modules = plan.model_layers(model)  # a plan for another model is a PlanError here
    plan.check_covers(model)  # and every layer of the model is the plan's (or excluded; else a PlanNote)
    candidates = {name: parse_candidate(c) for name, c in plan.layer_candidates().items()}
    shapes = {name: (layer_kind(m), int(m.weight[0].numel()), candidates[name]) for name, m in modules.items()}
    realisations = check_layers(spec, shapes, reduce_range)
    if quantized is None:
        if rounding is None:
            from ..apply import note_plan_rounding
            note_plan_rounding(plan, "export", stacklevel=3)
            rounding = "nearest"
        check_rounding_grid(rounding, candidates)
    _import_onnx()

    from ..apply import apply
    from .onnx_graph import export_float, layer_codes, plain_inputs, rewrite
    from ..joins import join_quantizers, onnx_mode
    from .ort import OrtModule, join_kernels, optimized_graph, runtime_kernels

    batches = as_batches(data, model)
    notes: list[str] = []
    from ..streaming import device_of, placed_copy
    place = device_of(model)
    if place.type != "cpu":  # ONNX Runtime CPU runs the file: traced, calibrated and compared on a CPU copy
        model = placed_copy(model, "cpu")
        quantized = None if quantized is None else placed_copy(quantized, "cpu")
        batches = None if batches is None else [to_device(item, "cpu") for item in batches]
        example_input = None if example_input is None else to_device(example_input, "cpu")
        modules = plan.model_layers(model)  # the copy's layers
        notes.append(f"the model is on {place}: it was exported, and compared with the file, from a copy on the CPU")
    labels = _label_keys(model, _first_input(batches, example_input) if batches or example_input is not None else None)
    if labels:  # traced, calibrated and exported without them: the file predicts
        batches = None if batches is None else [_drop(item, labels) for item in batches]
        example_input = _drop(example_input, labels)
        notes.append(f"the file leaves out the input(s) {labels}: the model takes them for its loss, not for its "
                     "prediction (OrtModule ignores them where they are given)")
    if batches or example_input is not None:  # an output the file cannot hold: said before any calibration
        from .onnx_graph import check_model_output
        check_model_output(model, _first_input(batches, example_input))
    renormed = [n for n, m in model.named_modules() if isinstance(m, nn.Embedding) and m.max_norm is not None]
    coded = [n for n in renormed if n in candidates and isinstance(candidates[n].weight, IntFormat)]
    if coded:  # the calibration passes would move the simulated table off its grid: no codes to write
        raise ModelError(f"layer {coded[0]!r} is an nn.Embedding with max_norm, which renormalises the rows each "
                         "lookup reads, in place, so its quantized table leaves its grid as the model runs and "
                         f"cannot be written as integer codes; plan it float (--pin {coded[0]}=fp32, or --exclude "
                         f"{coded[0]}), or renormalise the table once (with torch.no_grad(), rows scaled to max_norm) "
                         "and set max_norm=None before quantizing")
    if renormed:
        from ..groups import MAX_NORM_NOTE
        notes.append(MAX_NORM_NOTE.format(count=len(renormed), example=renormed[0]))
    flow = control_flow(model)
    if flow:
        notes.append(f"the model's forward branches or loops on tensor values (torch.fx: {flow}): the file holds the "
                     "path its example batch took, branches and loop counts fixed, so an input that would take "
                     "another path computes something else there; compare the exported figures on varied data")
    if quantized is None:
        if joins is None:
            joins = _default_joins(model, plan, realisations, batches, notes)
        quantized = apply(model, plan, batches, weight_range=weight_method, activation_range=activation_method,
                          progress=progress, joins=joins, rounding=rounding, rounding_checkpoint=rounding_checkpoint)
    layers_q = {n: m for n, m in quantized.named_modules() if isinstance(m, QuantizedLayer)}
    missing = sorted(set(candidates) - set(layers_q))
    if missing:
        raise PlanError(f"the quantized model has no quantized layer {missing[0]!r} the plan names; pass the model "
                        "apply(model, plan, data) made from this plan")
    wrong = sorted(n for n in candidates if layers_q[n].candidate != candidates[n].name)
    if wrong:  # a model quantized by another plan: the file would be neither, its "simulated" metric the other's
        raise PlanError(f"the quantized model holds layer {wrong[0]!r} at {layers_q[wrong[0]].candidate}, the plan "
                        f"at {candidates[wrong[0]].name} ({len(wrong)} layer(s) differ): it was made from another "
                        "plan; pass the model apply(model, plan, data) made from this plan")
    example = _first_input(batches, example_input)
    narrow = sorted({str(p.dtype).replace("torch.", "") for p in quantized.parameters()
                     if p.is_floating_point() and p.dtype != torch.float32})
    floated = _float_copy(quantized, share=not narrow)  # .float() below converts a copy's tensors in place
    if narrow:  # ONNX Runtime's CPU kernels run float32: the file is float32 around its integer kernels
        floated, example = floated.float(), map_tensors(example, lambda t: t.float() if t.is_floating_point() else t)
        notes.append(f"the model is {'/'.join(narrow)}: the file is float32 around its integer and low-bit kernels "
                     "(ONNX Runtime's CPU float type), so its float layers and its dequantized weights are float32 "
                     f"where the simulation rounded them to {'/'.join(narrow)}")
    say = print if progress else (lambda *a, **k: None)
    say("export: tracing the model to ONNX", flush=True)
    free = _free_axes(example, [split_item(b)[0] for b in batches or []])
    graph = _fused_decoder(floated, example, quantized, notes) if decoder == "fused" else None
    if graph is None:
        with onnx_mode(floated):  # join quantizers become QuantizeLinear/DequantizeLinear pairs
            graph = export_float(floated, example, free={id(t): f for t, f in zip(_input_tensors(example), free)
                                                         if isinstance(t, torch.Tensor) and f})
    plain = plain_inputs(example)
    if plain:
        notes.append(f"the input(s) {plain} are not tensors: the file holds the model as traced with the example's "
                     "values for them, and OrtModule ignores them where they are given")
    fixed = _fixed_axes(example, free)
    if fixed and sequence_first and not callable(getattr(model, "onnx_step", None)) \
            and batch_on_axis_one(floated, example) is True:  # None: it cannot be told, nothing claimed
        notes.append(f"the model reads sequence-first inputs ({len(sequence_first)} module(s) with batch_first=False, "
                     f"e.g. {sequence_first[0]!r}), so the file's dynamic axis, axis 0 of inputs of shape {fixed}, is "
                     "the sequence, and the batch (axis 1) is fixed at the example's: evaluate the file with batches "
                     "of that size, or build the model with batch_first=True and export it again")
    elif fixed and not callable(getattr(model, "onnx_step", None)) and "?" in fixed:
        notes.append(f"the file takes inputs of shape {fixed} (* the batch, ? an axis whose size the calibration "
                     "batches vary, dynamic too): an input's other axes are fixed at the example's")
    elif fixed and not callable(getattr(model, "onnx_step", None)):
        notes.append(f"the file takes inputs of shape {fixed} (* the batch): only the batch axis of an input other "
                     "than token ids is dynamic (and an axis whose size the calibration batches vary), so a "
                     "sequence or image of another size needs its own export, or calibration batches of several")
    holders: dict[int, list[str]] = {}
    for name in candidates:  # tied weights (an embedding and the output layer): one tensor, several layers
        holders.setdefault(id(modules[name].weight), []).append(name)
    shared = {n: [o for o in names if o != n] for names in holders.values() if len(names) > 1 for n in names}
    # the codes after the trace: torch's exporter holds the weights twice while it runs, the codes not beside them
    codes = {name: layer_codes(name, modules[name].weight, layers_q[name].layer.weight, candidates[name],
                               realisations[name], layers_q[name].input_quantizer, weight_method)
             for name in candidates}
    written = rewrite(graph, codes, accuracy_level, idle=lambda name: _idle(quantized, name, example), shared=shared,
                      kinds={name: layer_kind(modules[name]) for name in candidates},
                      calls=_calls(floated, list(candidates), example))  # the model as exported
    del codes, floated  # the weights' codes are in the graph now
    graph.producer_name, graph.producer_version = "mixprec", _version()
    report_path(out).unlink(missing_ok=True)  # a report of an earlier file never sits beside this one
    _save_atomic(graph, out)
    del graph  # ONNX Runtime reads the file
    say(f"export: wrote {out}; reading the kernels ONNX Runtime runs after optimisation", flush=True)
    try:
        optimized = optimized_graph(out)  # one optimisation of the file for the layers and the joins
        kernels = runtime_kernels(out, {n: e for n, e in written.items() if not e.get("absent")}, optimized)
        joins = join_kernels(out, quantized, optimized)
    except BaseException:  # an interruption (or ONNX Runtime's error) leaves a whole file without its report
        print(f"note: {out} was written, but the export stopped before it read which kernels ONNX Runtime runs, so "
              "it has no report and nothing says whether a layer falls back to float; export again to check it",
              flush=True)
        raise
    kernels.update({n: {"runtime_op": "-", "low_precision": False, "runtime_node": ""}
                    for n, e in written.items() if e.get("absent")})
    rows = []
    for name in candidates:
        row = {"layer": name, "candidate": candidates[name].name, **written[name], **kernels[name]}
        row["note"] = _note(row, realisations[name].kind)
        rows.append(row)
    requantized = [r["layer"] for r in rows if r.get("quantized_by_runtime")]
    if requantized:
        notes.append(f"{len(requantized)} layer(s) the plan keeps float ({', '.join(requantized[:3])}"
                     f"{', ...' if len(requantized) > 3 else ''}) run as integer kernels: ONNX Runtime gives a float "
                     "Conv/Gemm between a dequantized input and a quantized output its own per-tensor int8 weights "
                     f"({RUNTIME_WEIGHT_QUANTIZATION}), which the simulation does not; the exported metric includes it. "
                     f"To run them float, make the session with disabled_optimizers=['{RUNTIME_WEIGHT_QUANTIZATION}']")
    result = ExportResult(out, spec.name, rows, out.stat().st_size, notes=notes, source_model=source_model)
    result.joins = joins
    if not join_quantizers(quantized):  # no tensor of this model needed one: nothing was added
        notes[:] = [n for n in notes if n != JOINS_ADDED]
    if result.joins:
        fused = sum(1 for j in result.joins if j["low_precision"])
        notes.append(f"{fused} of the {len(result.joins)} residual add(s)/concatenation(s) with join quantizers run "
                     "as integer kernels (those with no integer layer beside them have none and run in float)")
    planned = (plan.metadata.get("predicted_costs") or {}).get("bytes")
    if isinstance(planned, (int, float)) and planned > 0 and result.size_bytes > OVER_PLANNED * planned:
        wider = [name for name, r in realisations.items() if r.weight_bits
                 and isinstance(candidates[name].weight, IntFormat) and candidates[name].weight.bits < r.weight_bits]
        owners: dict[int, str] = {}
        twice = [n for n, m in modules.items() if owners.setdefault(id(m.weight), n) != n]  # a tied weight's 2nd use
        notes.append(f"the file holds {result.size_bytes:,} bytes, {result.size_bytes / planned:.2f}x the plan's bytes "
                     f"cost ({planned:,.0f})"
                     + (f": {len(wider)} layer(s) (e.g. {wider[0]}) keep their codes in {realisations[wider[0]].weight_bits}-bit "
                        "storage, which the runtime's kernels read, and the graph adds its own structure (names, shapes, "
                        "nodes)" if wider else ": the graph adds its own structure (names, shapes, nodes) and "
                        "constant tables (a decoder's rotary caches), which weigh most beside a small model's weights")
                     + (f"; {len(twice)} layer(s) (e.g. {twice[0]}) share a weight with another, which the plan prices "
                        "once and the file holds once for each (a tied embedding: its rows for the lookup, its "
                        "codes for the output layer's matrix product)" if twice else ""))
    refit = [r for r in rows if r.get("bias_refit_channels")]
    if refit:
        notes.append(f"{sum(r['bias_refit_channels'] for r in refit)} channel(s) of {len(refit)} layer(s) (e.g. "
                     f"{refit[0]['layer']}) that a folded BatchNorm all but silences got a larger weight scale, so "
                     "that their int32 bias fits (docs/export.md)")
    eight_bit = [r["layer"] for r in rows if realisations[r["layer"]].kind == "qdq"
                 and candidates[r["layer"]].weight.bits == 8]
    if eight_bit and not cpu_has_vnni():
        result.notes.append(f"this CPU has no VNNI: ORT's u8 x s8 kernels add pairs of products in 16 bits and may "
                            f"saturate on {len(eight_bit)} layer(s) with 8-bit weights (e.g. {eight_bit[0]}), which "
                            "the simulation does not model; plan them as w7a8 (profile ort-cpu-avx2) for exact results")
    unsimulated = [r["layer"] for r in rows if realisations[r["layer"]].kind == "nbits" and not r.get("absent")
                   and realisations[r["layer"]].accuracy_level is None and accuracy_level != 0]
    if unsimulated:
        result.notes.append(f"{len(unsimulated)} weight-only layer(s) (e.g. {unsimulated[0]}) run MatMulNBits at "
                            f"accuracy_level {accuracy_level}, which quantizes their inputs to int8 per block; the plan "
                            "simulated float inputs. Plan them as w<B>a8d<N> (e.g. w8a8d32, w4g64a8d64) to simulate "
                            "that, or export with accuracy_level 0 (float inputs, slower)")
    fused_dq = [r["layer"] for r in rows if realisations[r["layer"]].kind == "dq_weight"
                     and r.get("runtime_op") == "MatMulNBits"]  # float inputs written, int8 inputs run
    if fused_dq:
        result.notes.append(f"ONNX Runtime fuses the DequantizeLinear + MatMul of {len(fused_dq)} layer(s) (e.g. "
                            f"{fused_dq[0]}) into MatMulNBits, at its session's accuracy level (default 4: inputs "
                            "quantized to int8 per block), which the plan did not simulate (float inputs); a session "
                            "made with the config entry session.qdq_matmulnbits_accuracy_level = 0 runs them on float "
                            "inputs, as simulated")
    if result.fallbacks:
        planned = sum(1 for r in rows if r["candidate"] != "fp32" and not r.get("absent"))
        result.notes.append(f"{len(result.fallbacks)} of {planned} quantized layer(s) run in float on ONNX Runtime "
                            f"(e.g. {result.fallbacks[0]['layer']}: {result.fallbacks[0]['note']})")
    exported = OrtModule(out, threads)
    if callable(getattr(model, "onnx_step", None)):
        result.notes.append(
            "written with its KV cache: one step of a served model (logits and the cache with the new tokens)"
            if exported.kv_cache is not None else
            "written without a KV cache (token ids in, logits out): the model's cache is not one key/value pair of "
            "tensors per layer, it attends within a sliding window (a traced cached step would keep the example's "
            "mask), or the example input has fewer than 3 tokens to trace the cached step with")
    say("export: comparing the file with the simulation" + (" and evaluating both" if evaluate is not None else ""),
        flush=True)
    try:
        regression = bool(batches) and _regression(quantized, batches)  # outputs with no classes to agree on
        if batches:
            inputs = [split_item(b)[0] for b in batches]
            if fixed:  # the file takes the example's fixed sizes (token ids' length is free): compared on those batches
                kept = [x for x in inputs if _fixed_axes(x, free) == fixed]
                if len(kept) < len(inputs):
                    result.notes.append(f"{len(inputs) - len(kept)} of {len(inputs)} calibration batches have other "
                                        f"sizes than the file takes {fixed}: the file is compared with the simulation "
                                        + ("on the others" if kept else "on none of them (give calibration batches of "
                                                                       "the example's sizes to compare)"))
                inputs = kept
            if regression:
                result.notes.append("the calibration items hold float targets of the output's shape: a regression, "
                                    "whose outputs have no classes, so the file is compared with the simulation by "
                                    "SQNR alone (no top-1 agreement)")
            same = None if getattr(model, "returns_hidden_state", False) or not inputs or regression else \
                agreement(quantized, exported, inputs)
            if same is not None:
                result.agreement["calibration"] = same
            if inputs:
                result.sqnr_db["calibration"] = output_sqnr(quantized, exported, inputs)
        if evaluate is not None:
            sim_out, exp_out = _Recorder(quantized, labels, not regression), _Recorder(exported, classes=not regression)
            result.simulated = evaluate_model(evaluate, sim_out)
            result.exported = evaluate_model(evaluate, exp_out)
    except BaseException:  # the file is written: its report too (without the metrics), and the error says so
        write_json_atomic(report_path(out), result.to_dict())
        print(f"note: {out} and its report {report_path(out)} were written; the comparison with the simulation "
              "stopped, so the report holds no metric (mixprec evaluate --model FILE --eval SPEC measures the file "
              "again)")
        raise
    if evaluate is not None:
        compared = _evaluation_agreement(sim_out, exp_out)
        if isinstance(compared, str):
            result.notes.append(compared)
        elif compared is not None:
            result.agreement["evaluation"], result.outputs["evaluation"] = compared
        gap_note = _gap_note(result, bool(eight_bit) and not cpu_has_vnni(), branching=flow is not None)
        if gap_note:
            result.notes.insert(0, gap_note)
    write_json_atomic(report_path(out), result.to_dict())
    return result


def _fused_decoder(floated: nn.Module, example: Any, quantized: nn.Module, notes: list[str]):
    """The fused decoder graph of a causal LM (mixprec.export.decoder_graph), or None (the traced step is
    written), with a note either way for a model that exports its cached step."""
    if not callable(getattr(floated, "onnx_step", None)):
        return None
    from ..joins import join_quantizers
    from .decoder_graph import fused_step
    from .onnx_graph import OPSET

    if join_quantizers(quantized):
        graph, why = None, "the plan quantizes residual adds (join quantizers), which the fused ops do not hold"
    else:
        graph, why = fused_step(floated, example, OPSET)
    if graph is None:
        notes.append(f"written as the traced step, not with ONNX Runtime's fused decoder ops: {why}")
        return None
    notes.append("written with ONNX Runtime's fused decoder ops (GroupQueryAttention, SkipSimplifiedLayerNormalization"
                 "; checked against the model's own logits); decoder='traced' (--decoder traced) writes the traced step")
    return graph


def _gap_note(result: ExportResult, saturating: bool, branching: bool = False) -> str | None:
    """A plain warning where the exported metric is further from the simulated than rounding noise explains
    (more than twice ExportResult.noise): the file does not compute what was simulated."""
    noise = result.noise()
    if noise is None or result.simulated is None or result.exported is None:
        return None
    gap = result.exported.value - result.simulated.value
    # the noise is in points of a percent; an accuracy given as a fraction (0.9) is in hundredths of them
    unit = 0.01 if max(abs(result.exported.value), abs(result.simulated.value)) <= 1 else 1.0
    if abs(gap) <= max(2 * noise, 0.1) * unit:
        return None
    if result.agreement.get("evaluation") == 1.0:  # the same predictions, other figures: the evaluation's doing
        return (f"the exported {result.exported.name} is {gap:+.2f} from the simulated {result.simulated.value:.4g}, "
                f"yet both models give the same prediction on all {result.outputs.get('evaluation')} outputs of the "
                "evaluation data: the evaluation function gives other figures for the same predictions. Does it "
                "depend on randomness or on state kept between calls (a reference model built anew, unseeded, on "
                "each call), or on the type of the model it is given (the exported file is an nn.Module around an "
                "ONNX Runtime session)? `mixprec evaluate --model FILE --eval SPEC` measures the file alone")
    why = ("most likely the forward's branches or loops on tensor values, fixed in the file at the path its example "
           "batch took (the note below): inputs that take another path compute something else there" if branching
           else "most likely the int8 kernels' 16-bit saturation on this CPU without VNNI (the note below): plan those "
           "layers as w7a8, e.g. analyze with --profile ort-cpu-avx2, and export again" if saturating else
           "the runtime computes these layers otherwise than the simulation; compare the layers' formats above and "
           "see docs/export.md")
    return (f"the exported {result.exported.name} is {gap:+.2f} from the simulated {result.simulated.value:.4g}, "
            f"beyond twice the noise of the outputs that differ (±{noise:.2f}): the file does not compute what "
            f"was simulated; {why}")


def control_flow(model: nn.Module) -> str | None:
    """The first line of torch.fx's error where ``model``'s forward has control flow on tensor values (which
    torch.export fixes to the path of its example), else None (it traces, or fails for another reason)."""
    from ..joins import from_transformers, graph_module
    if from_transformers(model):
        return None  # fx does not trace them here for other reasons; their branches are on shapes and settings
    try:
        graph_module(model)
    except Exception as exc:  # fx raises many kinds of errors
        text = str(exc).splitlines()[0] if str(exc) else ""
        return text if "control flow" in text or "cannot be iterated" in text else None
    return None


def _default_joins(model: nn.Module, plan: Plan, realisations: dict, batches: list | None, notes: list[str]) -> bool:
    """Join quantizers by default where the plan's metadata says so, else where some layer runs int8 QDQ and
    the model traces (a model torch.fx cannot trace is exported without them, with a note)."""
    if "joins" in plan.metadata:
        return bool(plan.metadata["joins"])
    if batches is None or not any(r.kind == "qdq" for r in realisations.values()):
        return False
    from ..joins import trace
    try:
        trace(model)
    except ModelError as exc:
        notes.append(f"residual adds and concatenations are left in float: {exc}")
        return False
    notes.append(JOINS_ADDED)
    return True


JOINS_ADDED = ("join quantizers are added where ONNX Runtime's int8 graph quantizes a tensor (residual adds, "
               "concatenations, and a convolution's output that a pooling, a mean or a float layer reads); a plan solved "
               "on an analysis without them is measured without them (analyze --joins or --profile ort-cpu measures "
               "with them), so the simulated metric here, which includes them, can differ from quantize's")


def report_path(onnx_path: str | os.PathLike) -> Path:
    """The report beside an exported file: ``model.report.json`` for ``model.onnx``, ``model.gguf.report.json``
    for any other file (``model.gguf``), so that two targets' files of one name keep a report each."""
    path = Path(onnx_path)
    return path.with_name((path.stem if path.suffix == ".onnx" else path.name) + ".report.json")


def _calls(model: nn.Module, names: list[str], example: Any) -> dict[str, int]:
    """How many times the model calls each of the layers ``names`` on ``example`` (a siamese encoder: twice)."""
    counts = dict.fromkeys(names, 0)
    handles = [model.get_submodule(n).register_forward_pre_hook(lambda m, a, n=n: counts.__setitem__(n, counts[n] + 1))
               for n in names]
    try:
        with torch.no_grad():
            run_model(model, example)
    finally:
        for h in handles:
            h.remove()
    return counts


def _idle(model: nn.Module, name: str, example: Any) -> bool:
    """Whether layer ``name``'s output never reaches the model's output on ``example`` (an encoder's pooler
    when only the hidden states are returned): NaN put into its output does not come out."""
    def poison(module, args, output):
        return output * float("nan")
    handle = model.get_submodule(name).register_forward_hook(poison)
    try:
        with torch.no_grad():
            out = output_tensor(run_model(model, example))
    finally:
        handle.remove()
    return not bool(torch.isnan(out).any())


def _note(row: dict, kind: str) -> str:
    note = _kernel_note(row, kind)
    calls = row.get("fallback_calls")
    if calls:  # a layer called more than once, some calls integer: say which calls are not
        ops = row["runtime_ops"]
        note = f"call(s) {', '.join(str(i + 1) for i in calls)} of {len(ops)} ({' / '.join(ops)}): {note}"
    return note


def _kernel_note(row: dict, kind: str) -> str:
    op, low = row["runtime_op"], row["low_precision"]
    if row.get("absent"):
        return ("not in the exported graph: the traced example does not compute this layer into the outputs (a "
                "layer whose output is unused, or on a branch the example does not take)")
    if kind == "float":
        if row.get("quantized_by_runtime"):
            return (f"planned float, but ONNX Runtime quantizes it itself to a {op} with its own per-tensor int8 "
                    f"weights ({RUNTIME_WEIGHT_QUANTIZATION}: its input is dequantized and its output quantized); "
                    f"disabled_optimizers=['{RUNTIME_WEIGHT_QUANTIZATION}'] in the InferenceSession keeps it float")
        return "float, as planned"
    if kind == "dq_weight" and row.get("op") == "Gather":
        if str(row.get("format", "")).startswith("float32 rows"):  # groups that do not tile a row
            return f"float by design: {row['format']}, for a float Gather"
        return "integer rows in the file; a lookup dequantizes only the rows it reads"
    if low:
        return f"runs in low precision ({op})"
    if kind == "qdq":
        return (f"float fallback: ONNX Runtime runs a float {op} on dequantized values (it fuses an integer kernel "
                "only where the output is quantized too, e.g. through a ReLU into the next layer's input quantizer)")
    if kind == "simulated":
        return f"float by design: the simulated rows stored in float32 for a float {op}"
    if kind == "dq_weight":
        return f"float fallback by design: weights stored as integers, dequantized for a float {op}"
    if kind == "fp16":
        return f"float16 values, computed in float32 ({op})"
    return f"float fallback ({op})"


class _Recorder(nn.Module):
    """Wraps a model for the user's evaluation: records the top-1 prediction of every output row. ``drop``: keyword
    arguments the model was traced and exported without (loss targets), left out of its calls as the file does."""

    def __init__(self, model: nn.Module, drop: list[str] = (), classes: bool = True):
        super().__init__()
        self.model = model
        self.drop = tuple(drop)
        self.classes = classes  # False: a regression's outputs, whose argmax is no prediction
        self.train(model.training)  # an evaluation that restores the mode it found restores the model's own
        self.predictions: list[torch.Tensor] = []
        self.inputs: list[str] = []  # a key of each recorded call's inputs: the two runs compared call by call

    def forward(self, *args, **kwargs):
        output = self.model(*args, **{k: v for k, v in kwargs.items() if k not in self.drop})
        if not self.classes:
            return output
        try:
            top = top1(output_tensor(output), [*args, *kwargs.values()])
            if top is not None:
                self.predictions.append(top.cpu())
                self.inputs.append(_inputs_key([*args, *kwargs.values()]))
        except TypeError:
            pass
        return output

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("model"), name)


@torch.no_grad()
def _regression(model: nn.Module, batches: list) -> bool:
    """Whether the first calibration item holds float targets of the model's output shape (a regression or a
    denoiser: sensitivity.divergence.regression_targets), whose outputs have no classes to agree on."""
    from ..sensitivity.divergence import regression_targets
    inputs, targets = split_item(batches[0])
    if targets is None:
        return False
    try:
        return regression_targets(targets, output_tensor(run_model(model, inputs)).to(targets.device))
    except (TypeError, AttributeError):
        return False


def _inputs_key(inputs: list) -> str:
    """A cheap key of a call's tensors: shapes, dtypes and up to 4,096 values taken evenly from each (another order,
    another sample or other random data changes it)."""
    import hashlib
    digest = hashlib.sha256()

    def walk(value: Any):
        if isinstance(value, dict):
            for k in value:
                digest.update(repr(k).encode())
                walk(value[k])
        elif isinstance(value, (tuple, list)):
            for v in value:
                walk(v)
        elif isinstance(value, (torch.Tensor, np.ndarray)):
            x = torch.as_tensor(value).detach()
            flat = x.reshape(-1)
            digest.update(f"{tuple(x.shape)}{x.dtype}".encode())
            digest.update(flat[:: max(1, flat.numel() // 4096)].double().cpu().numpy().tobytes())
        else:
            digest.update(repr(type(value)).encode())
    walk(inputs)
    return digest.hexdigest()


def _evaluation_agreement(sim: "_Recorder", exp: "_Recorder") -> tuple[float, int] | str | None:
    """(share of the evaluation's top-1 predictions that agree, their number), where the evaluation gave both models
    the same inputs in the same order; else why not (a note), or None where it recorded no predictions."""
    if not sim.predictions and not exp.predictions:
        return None
    if sim.inputs != exp.inputs:
        return ("the evaluation gave the simulated and the exported model different inputs (a shuffled DataLoader, "
                "random data drawn on each call, or a sample of another size), so their predictions are not compared "
                "one by one and no agreement on the evaluation data is reported; give it a fixed order (shuffle=False "
                "or a seeded generator) to have it")
    same = sum(int((a == b).sum()) for a, b in zip(sim.predictions, exp.predictions))
    total = sum(a.numel() for a in sim.predictions)
    return same / max(total, 1), total


def top1(output: torch.Tensor, inputs: Any = None) -> torch.Tensor | None:
    """Each prediction's class: the argmax of the last axis of a (batch, classes) or (batch, tokens, vocabulary)
    output, of the channel axis of a (batch, classes, height, width) one (segmentation); None for an output
    with no class axis (a regression's, an image's of one channel), where top-1 means nothing. ``inputs``: the
    model's inputs, if known; a signal or image output (3-D or 4-D) of the rank of a float input and as wide as it
    on that axis reproduces its channels (an autoencoder's or a denoiser's signal, an image-to-image model's
    picture): no classes."""
    if not torch.is_floating_point(output) or output.dim() < 2:
        return None
    axis = 1 if output.dim() == 4 else output.dim() - 1
    if output.dim() > 4 or output.shape[axis] < 2:
        return None
    if output.dim() >= 3 and any(t.is_floating_point() and t.dim() == output.dim() and t.shape[axis] == output.shape[axis]
                                 for t in flatten_tensors(inputs)):
        return None
    return output.detach().argmax(axis)




@torch.no_grad()
def agreement(simulated: nn.Module, exported: nn.Module, inputs: list) -> float | None:
    """Fraction of predictions (:func:`top1`) that are the same in both models; None for outputs without classes."""
    same = total = 0
    for x in inputs:
        a = top1(output_tensor(run_model(simulated, x)), x)
        b = top1(output_tensor(run_model(exported, x)), x)
        if a is None or b is None:
            return None
        same += int((a == b).sum())
        total += a.numel()
    return same / max(total, 1)


@torch.no_grad()
def output_sqnr(simulated: nn.Module, exported: nn.Module, inputs: list) -> float:
    """10 log10(sum sim^2 / sum (exp - sim)^2) over the outputs on ``inputs``, in dB (inf where they are equal)."""
    signal = noise = 0.0
    for x in inputs:
        a = output_tensor(run_model(simulated, x)).double()
        b = output_tensor(run_model(exported, x)).double().to(a.device)
        signal += float((a * a).sum())
        noise += float(((b - a) ** 2).sum())
    if noise == 0:
        return float("inf")
    return 10 * math.log10(signal / noise) if signal > 0 else float("-inf")


def _version() -> str:
    from .. import __version__
    return __version__


def _import_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise MixprecError(f"export needs onnx and onnxruntime ({exc}); install them with "
                           "pip install -e '.[export]'") from exc


def _save_atomic(model_proto, path: Path) -> None:
    """Write the ONNX file so that a crash never leaves a half-written one (mixprec.atomic)."""
    write_atomic(path, model_proto.SerializeToString())


class _ExportPackage(type(os)):
    """``mixprec.export`` is this package (``mixprec.export.gguf``, ``import mixprec.export.latency as L``) and,
    called, the export function: ``mixprec.export(model, plan, data, ...)`` is ``export(model, plan, data, ...)``."""

    __call__ = staticmethod(export)  # the function itself: no frame of its own between the caller and export


import inspect as _inspect  # noqa: E402
import sys as _sys  # noqa: E402

_sys.modules[__name__].__class__ = _ExportPackage
__signature__ = _inspect.signature(export)  # what help() and editors show for mixprec.export(...)
