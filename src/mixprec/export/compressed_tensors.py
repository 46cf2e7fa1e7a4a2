"""The plan as a compressed-tensors checkpoint (the format vLLM serves), read back to the simulated weights.

    write_compressed_tensors(model, plan, out, quantized=...) -> CompressedTensorsExport
    read_back(out, expected) -> ReadBack          every weight of the folder against ``expected``, bit for bit
    load_dequantized(out, reader="auto")          the folder's weights as float tensors

The folder holds ``config.json`` (the model's Hugging Face config, if it has one, with a
``quantization_config`` whose ``quant_method`` is ``compressed-tensors``), ``model.safetensors`` and
``mixprec-report.json``. Each distinct scheme of the plan is one config group whose ``targets`` are the
exact names of its layers; float layers are ``ignore``d. Layouts follow compressed-tensors 0.20.0
(``compressors/pack_quantized``, ``compressors/naive_quantized``):

    pack-quantized   integer weight-only, 1..8 bits: ``weight_packed`` int32 (code + 2^(B-1), code i of a row
                     at bit i*B of its little-endian word stream), ``weight_shape``, ``weight_scale``
                     (out, groups) or (out, 1), ``weight_zero_point`` packed the same way along the output axis
                     (asymmetric only)
    int-quantized    integer weights with integer inputs (w8a8, w4a8): ``weight`` int8 codes, ``weight_scale``,
                     static per-tensor ``input_scale`` and ``input_zero_point``
    float-quantized  fp8 (e4m3): ``weight`` float8_e4m3fn, per-channel ``weight_scale``, per-tensor ``input_scale``

Nothing is recalibrated: the codes are those of the simulated weight on the grid nearest rounding chooses
(mixprec.export.onnx_graph.layer_codes), the scales are mixprec's, stored in float32. Both conventions
dequantize as w = (q - z) * s, so mixprec's codes are written shifted into compressed-tensors' signed
range (q - 2^(B-1) and z - 2^(B-1) for asymmetric grids) and its signed symmetric scales as they are: a
channel or group whose extreme is positive has a negative scale (compressed-tensors' own symmetric
observer uses max|x| / 2^(B-1) instead, which clips the positive extreme).
"""
from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from ..atomic import check_output_dir, write_atomic, write_json_atomic
from ..candidates import Candidate, parse_candidate
from ..errors import MixprecError, ModelError, OutputError, PlanError
from ..formats import FloatFormat, IntFormat, is_dynamic
from ..groups import layer_kind
from ..plan import Plan
from ..quantizers import choose_range, fp8_scale, int_qparams, range_methods, row_chunks, weight_qparams
from ..swap import QuantizedLayer
from .targets import TARGETS, refuse_layers

__all__ = ["write_compressed_tensors", "read_back", "load_dequantized", "CompressedTensorsExport", "ReadBack",
           "layer_scheme", "check_plan", "check_output_folder", "pack_int32", "unpack_int32", "ACCEPTED"]

CT_VERSION = "0.20.0"  # the compressed-tensors release whose layout is written
WEIGHTS_FILE = "model.safetensors"
REPORT_FILE = "mixprec-report.json"
ACCEPTED = TARGETS["compressed-tensors"].candidates
# Files of a Hugging Face folder a server needs beside the weights (copied with ``source_folder``).
SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "vocab.json",
              "merges.txt", "added_tokens.json", "generation_config.json", "chat_template.jinja")
# Sibling layers vLLM fuses into one matrix; each set must share one scheme (or all be float).
FUSED_SHARDS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
_FP8 = torch.float8_e4m3fn


@dataclass(frozen=True)
class Scheme:
    """One config group: compressed-tensors QuantizationArgs (as JSON) of the weights and inputs, and the format."""

    format: str
    weights: tuple  # sorted (key, value) pairs, hashable
    input_activations: tuple | None = None

    def to_json(self, targets: list[str]) -> dict[str, Any]:
        return {"targets": targets, "weights": dict(self.weights),
                "input_activations": None if self.input_activations is None else dict(self.input_activations),
                "output_activations": None, "format": self.format}


def _args(num_bits: int, kind: str, symmetric: bool, strategy: str, group_size: int | None = None) -> tuple:
    return tuple(sorted({"num_bits": num_bits, "type": kind, "symmetric": symmetric, "strategy": strategy,
                         "group_size": group_size, "dynamic": False}.items()))


def layer_scheme(candidate: Candidate, kind: str, inputs: int) -> Scheme | None | str:
    """The config group of a ``kind`` layer with ``inputs`` inputs per output at ``candidate``: a Scheme, None for
    a float layer (``ignore``d), or the reason compressed-tensors cannot hold it."""
    w, a = candidate.weight, candidate.activation
    if candidate.multipoint:
        return "multipoint weights are sums of several low-bit layers, which no compressed-tensors scheme holds"
    if w is None or (isinstance(w, FloatFormat) and not w.scaled):
        return None  # fp32, or float16/bfloat16 values: a dense layer
    if kind != "Linear":
        return f"compressed-tensors quantizes Linear layers here, not {kind}"
    if isinstance(w, FloatFormat):
        if w.kind != "fp8_e4m3" or a != FloatFormat("fp8_e4m3"):
            return f"{w.kind} weights: compressed-tensors' 8-bit float type is e4m3 (with e4m3 inputs)"
        return Scheme("float-quantized", _args(8, "float", True, "channel"), _args(8, "float", True, "tensor"))
    assert isinstance(w, IntFormat)
    if w.bits > 8:
        return f"{w.bits}-bit integer weights: compressed-tensors packs 1..8-bit integers"
    group = None
    if w.granularity == "group":
        if inputs % w.group_size:
            return (f"group size {w.group_size} does not divide the layer's {inputs} inputs: compressed-tensors groups "
                    "tile a row exactly (mixprec's shorter last group has no place); choose a group size dividing it")
        group = w.group_size
    weights = _args(w.bits, "int", w.symmetric, "group" if group else w.granularity, group)
    if is_dynamic(a):
        return (f"{candidate.name}: inputs quantized per block at run time are ONNX Runtime's MatMulNBits arithmetic "
                "(target ort-cpu); compressed-tensors is written here with static per-tensor inputs")
    if isinstance(a, IntFormat):
        if a.bits > 8:
            return f"{a.bits}-bit inputs: compressed-tensors' integer inputs have 8 bits at most"
        return Scheme("int-quantized", weights, _args(a.bits, "int", False, "tensor"))
    return Scheme("pack-quantized", weights)  # weight-only (a float16 input cast is not part of the scheme)


@dataclass
class ReadBack:
    """Every weight of the checkpoint, dequantized, against what was expected (the simulation): bit for bit."""

    reader: str  # which code dequantized: compressed-tensors' own, or mixprec's reader
    compared: int  # tensors compared
    mismatched: dict[str, str] = field(default_factory=dict)  # tensor -> what differs

    @property
    def exact(self) -> bool:
        return not self.mismatched

    def to_dict(self) -> dict[str, Any]:
        return {"reader": self.reader, "compared": self.compared, "exact": self.exact, "mismatched": self.mismatched}


@dataclass
class CompressedTensorsExport:
    """What ``write_compressed_tensors`` wrote: the checkpoint folder, its config groups (one per format) and
    ignored layers, per layer the group it went to, and the read-back against the simulated weights."""
    path: Path  # the folder
    groups: dict[str, dict]  # config group -> {"format", "weights", "input_activations", "targets"}
    ignore: list[str]
    layers: list[dict]  # per planned layer: candidate, config group (None: ignored), format
    size_bytes: int  # model.safetensors
    readback: ReadBack
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "format": "compressed-tensors", "layout_version": CT_VERSION,
                "size_bytes": self.size_bytes, "readback": self.readback.to_dict(), "notes": self.notes,
                "groups": self.groups, "ignore": self.ignore, "layers": self.layers}


def write_compressed_tensors(model: nn.Module, plan: Plan, out: str | os.PathLike, *, quantized: nn.Module | None = None,
                             data: Iterable | None = None, weight_range: str | None = None,
                             activation_range: str | None = None, source_folder: str | os.PathLike | None = None,
                             reader: str = "auto", progress: bool = True, weight_method: str | None = None,
                             activation_method: str | None = None) -> CompressedTensorsExport:
    """Write ``plan`` applied to ``model`` as a compressed-tensors checkpoint folder ``out`` and read it back.

    model: the float model the plan was made for (a Hugging Face model, or any module holding one, such as
    mixprec's ``hf:`` wrapper; tensor names are those of the Hugging Face model). quantized: the model
    ``apply(model, plan, data)`` made (default: made here with nearest rounding, ``data`` calibrating inputs).
    source_folder: a checkpoint folder whose tokenizer and generation files are copied beside the weights.
    reader: how the read-back dequantizes (``auto``: compressed-tensors' own if installed, else mixprec's).
    weight_range, activation_range: mse (default), minmax or percentile, as in ``analyze`` (the former names
    weight_method, activation_method are still taken).
    Raises a CandidateError listing every layer compressed-tensors cannot hold, before writing anything (so does an
    ``out`` folder holding files of its own, e.g. the source checkpoint), and a ModelError if what was written does
    not read back to the simulated weights bit for bit.
    """
    if not isinstance(plan, Plan):
        raise PlanError(f"write_compressed_tensors takes a mixprec Plan, got {type(plan).__name__}; load one with "
                        "Plan.load(path)")
    if reader not in READERS:
        raise MixprecError(f"reader must be one of {READERS}, got {reader!r}")
    weight_method, activation_method = range_methods(weight_range, activation_range, weight_method, activation_method)
    from ..canonical import from_conv1d
    every = dict(model.named_modules())
    conv1d = sorted(n for n, c in plan.layer_candidates().items()
                    if n in every and from_conv1d(every[n]) and parse_candidate(c).weight is not None)
    if conv1d:
        raise PlanError(f"{len(conv1d)} planned layer(s) (e.g. {conv1d[0]}) are transformers Conv1D layers (GPT-2's "
                        "layout: weight (in, out)), which compressed-tensors checkpoints do not hold (their packed "
                        "weights are (out, in), for nn.Linear); keep them float (--exclude) or export to another "
                        "target (ort-cpu, cuda)")
    modules = plan.model_layers(model)  # a plan for another model is a PlanError here
    plan.check_covers(model)  # and every layer of the model is the plan's (or excluded; else a PlanNote)
    candidates = {name: parse_candidate(c) for name, c in plan.layer_candidates().items()}
    schemes = _check_layers(modules, candidates)
    out = check_output_folder(out)
    prefix, root = _hf_root(model)
    outside = sorted(n for n in candidates if not n.startswith(prefix))
    if outside:
        raise PlanError(f"layer {outside[0]!r} of the plan is outside the Hugging Face model {prefix[:-1]!r} whose "
                        "weights the checkpoint holds")
    if quantized is None:
        from ..apply import apply, note_plan_rounding
        note_plan_rounding(plan, "write_compressed_tensors", stacklevel=3)
        quantized = apply(model, plan, None if data is None else list(data), weight_range=weight_method,
                          activation_range=activation_method, progress=progress, rounding="nearest")
    layers_q = {n: m for n, m in quantized.named_modules() if isinstance(m, QuantizedLayer)}
    wrong = sorted(n for n in candidates if n not in layers_q or layers_q[n].candidate != candidates[n].name)
    if wrong:
        raise PlanError(f"the quantized model does not hold layer {wrong[0]!r} at {candidates[wrong[0]].name}; pass "
                        "the model apply(model, plan, data) made from this plan")

    changed = {n[len(prefix):] for n, c in candidates.items() if c.weight is not None}  # fp32 layers stay as they are
    tensors = _float_tensors(root, changed)
    expected = dict(tensors)
    groups: dict[Scheme, list[str]] = {}
    rows = []
    for name, candidate in candidates.items():
        local = name[len(prefix):]
        scheme = schemes[name]
        rows.append({"layer": local, "candidate": candidate.name, "format": "dense" if scheme is None else scheme.format})
        if local not in changed:
            continue
        simulated = layers_q[name].layer.weight.detach().cpu()
        expected[f"{local}.weight"] = simulated
        if scheme is None:  # float16/bfloat16 values
            tensors[f"{local}.weight"] = simulated.contiguous()
            continue
        groups.setdefault(scheme, []).append(local)
        tensors.update(_layer_tensors(local, modules[name].weight.detach().cpu(), simulated, candidate, scheme,
                                      layers_q[name].input_quantizer, weight_method))
    names = {scheme: f"group_{i}" for i, scheme in enumerate(groups)}
    for row, name in zip(rows, candidates):
        row["group"] = names.get(schemes[name])
    quantized_names = {layer for targets in groups.values() for layer in targets}
    ignore = [n for n, m in root.named_modules() if isinstance(m, nn.Linear) and n not in quantized_names]
    formats = sorted({s.format for s in groups})
    quantization_config = {
        "quant_method": "compressed-tensors", "version": CT_VERSION, "quantization_status": "compressed",
        "format": formats[0] if len(formats) == 1 else ("mixed-precision" if formats else "dense"),
        "config_groups": {names[s]: s.to_json(targets) for s, targets in groups.items()},
        "ignore": ignore, "kv_cache_scheme": None, "global_compression_ratio": None,
        "sparsity_config": {}, "transform_config": {}}
    config = _hf_config(root)
    notes = _notes(root, config, candidates, prefix, schemes, expected)
    config["quantization_config"] = quantization_config

    from safetensors.torch import save_file
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    # an interruption from here on leaves no config.json that describes other weights: the folder stays marked as
    # mixprec's (a report saying it is being written) and holds no config until the weights it describes are in
    write_json_atomic(out / REPORT_FILE, {"status": "being written: an interrupted export; export again"})
    (out / "config.json").unlink(missing_ok=True)
    # written by safetensors tensor by tensor into the temporary file, not as one buffer of the whole checkpoint
    write_atomic(out / WEIGHTS_FILE, lambda f: save_file(tensors, f.name, metadata={"format": "pt"}))
    tensors.clear()  # written: the packed codes are not held through the read-back
    write_json_atomic(out / "config.json", config)
    if source_folder is not None:
        for file in SIDE_FILES:
            if (Path(source_folder) / file).is_file():
                shutil.copyfile(Path(source_folder) / file, out / file)
    check = read_back(out, expected, reader)
    result = CompressedTensorsExport(out, quantization_config["config_groups"], ignore, rows,
                                     (out / WEIGHTS_FILE).stat().st_size, check, notes)
    write_json_atomic(out / REPORT_FILE, result.to_dict())
    if not check.exact:
        first = next(iter(check.mismatched.items()))
        raise ModelError(f"{out} does not read back to the simulated weights ({check.reader}): {len(check.mismatched)} "
                         f"tensor(s) differ, e.g. {first[0]}: {first[1]}; see {out / REPORT_FILE}")
    return result


def check_output_folder(out: str | os.PathLike, what: str = "out") -> Path:
    """Before any work: ``out`` is a new or empty folder, or one an earlier export wrote (it holds REPORT_FILE)
    with no other weights file a server would load too."""
    out = check_output_dir(out, what)
    stale = sorted(p.name for p in out.glob("*.safetensors*") if p.name != WEIGHTS_FILE) if out.is_dir() else []
    if stale:
        raise OutputError(f"{out} already holds {stale[0]}, which a server would load with {WEIGHTS_FILE}; give an "
                          "empty or new folder")
    if out.is_dir() and any(out.iterdir()) and not (out / REPORT_FILE).is_file():
        raise OutputError(f"{what} {out} holds files mixprec did not write (it has no {REPORT_FILE}), and config.json "
                          f"and {WEIGHTS_FILE} there would be replaced; give an empty or new folder")
    return out


def _check_layers(modules: dict[str, nn.Module], candidates: dict[str, Candidate]) -> dict[str, Scheme | None]:
    return check_plan({name: (layer_kind(modules[name]) or type(modules[name]).__name__,
                              int(modules[name].weight[0].numel()), candidate) for name, candidate in candidates.items()})


def check_plan(layers: dict[str, tuple[str, int, Candidate]]) -> dict[str, Scheme | None]:
    """Scheme of every planned layer (name -> (kind, inputs per output, candidate)); one CandidateError lists
    every layer compressed-tensors cannot hold."""
    schemes, refused = {}, []
    for name, (kind, inputs, candidate) in layers.items():
        result = layer_scheme(candidate, kind, inputs)
        if isinstance(result, str):
            refused.append(f"{name} ({kind}, {candidate.name}): {result}")
        else:
            schemes[name] = result
    refuse_layers(refused, "a compressed-tensors checkpoint cannot hold", f"compressed-tensors export accepts: {ACCEPTED}")
    return schemes


def _hf_root(model: nn.Module) -> tuple[str, nn.Module]:
    """(prefix, module) of the outermost Hugging Face model inside ``model`` (one with a config that writes
    JSON); the model itself, prefix '', if there is none."""
    for name, module in model.named_modules():
        if hasattr(getattr(module, "config", None), "to_json_string"):
            return (f"{name}." if name else ""), module
    return "", model


def _hf_config(root: nn.Module) -> dict[str, Any]:
    config = getattr(root, "config", None)
    if not hasattr(config, "to_json_string"):
        return {}
    data = json.loads(config.to_json_string(use_diff=False))
    if not data.get("architectures"):  # a model built in memory; save_pretrained records its class the same way
        data["architectures"] = [type(root).__name__]
    return data


def _float_tensors(root: nn.Module, changed: set[str]) -> dict[str, torch.Tensor]:
    """The state dict of ``root`` without the weights of the ``changed`` layers (written per scheme); a tensor
    shared under two names (a tied output embedding, which the config re-ties on loading) is kept once, under
    its first name."""
    tensors: dict[str, torch.Tensor] = {}
    first: dict[tuple, str] = {}
    for key, value in root.state_dict().items():
        layer = key.rpartition(".")[0]
        ident = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape), value.dtype)
        if ident in first and value.numel():
            if layer in changed or first[ident].rpartition(".")[0] in changed:
                raise ModelError(f"{key} shares its tensor with {first[ident]} (tied weights); a checkpoint stores it "
                                 f"once, so both cannot take different formats: plan {layer!r} like the other or "
                                 "untie them")
            continue
        first[ident] = key
        if key.endswith(".weight") and layer in changed:
            continue
        tensors[key] = value.detach().cpu()
    return tensors


def _layer_tensors(name: str, original: torch.Tensor, simulated: torch.Tensor, candidate: Candidate, scheme: Scheme,
                   input_quantizer: Any, weight_method: str) -> dict[str, torch.Tensor]:
    """The tensors of one quantized layer as compressed-tensors lays them out for ``scheme.format``."""
    out: dict[str, torch.Tensor] = {}
    if scheme.format == "float-quantized":
        rows = original.to(torch.float32).reshape(original.shape[0], -1)
        lo, hi = choose_range(rows, candidate.weight, weight_method)
        scale = fp8_scale(torch.maximum(-lo, hi), "fp8_e4m3")  # (out, 1), as quantize_weight chooses it
        limit = torch.finfo(_FP8).max
        out[f"{name}.weight"] = torch.clamp(simulated.to(torch.float32) / scale, -limit, limit).to(_FP8)
        out[f"{name}.weight_scale"] = scale
        q = input_quantizer
        out[f"{name}.input_scale"] = fp8_scale(torch.maximum(-q.lo, q.hi), "fp8_e4m3").reshape(1).float().cpu()
        return out
    fmt: IntFormat = candidate.weight
    shape = list(original.shape)  # a Linear's (out, inputs)
    original = original.reshape(original.shape[0], -1)
    simulated = simulated.reshape(original.shape)
    shift = 0 if fmt.symmetric else 1 << (fmt.bits - 1)  # mixprec's asymmetric codes are 0..2^B-1
    codes, scales, zeros = [], [], []
    for rows in row_chunks(original.shape[0], original.shape[1], fmt):  # a few million values at a time
        q, scale, zero = _int_codes(name, original[rows], simulated[rows], fmt, weight_method)
        step = fmt.group_size if fmt.granularity == "group" else q.shape[1]
        scales.append(scale[:, ::step].contiguous())  # one per group / channel
        zeros.append(zero[:, ::step] - shift)
        q = q - shift
        codes.append(pack_int32(q, fmt.bits) if scheme.format == "pack-quantized" else q.to(torch.int8))
        del q, scale, zero
    scale, zero = torch.cat(scales), torch.cat(zeros)
    out[f"{name}.weight_scale"] = scale
    if scheme.format == "pack-quantized":
        out[f"{name}.weight_packed"] = torch.cat(codes)
        out[f"{name}.weight_shape"] = torch.tensor(shape, dtype=torch.int64)
        if not fmt.symmetric:
            out[f"{name}.weight_zero_point"] = pack_int32(zero.t(), fmt.bits).t().contiguous()
        return out
    out[f"{name}.weight"] = torch.cat(codes)
    if not fmt.symmetric:
        out[f"{name}.weight_zero_point"] = zero.to(torch.int8)
    a = input_quantizer
    input_scale, input_zero = int_qparams(a.lo.reshape(1).float().cpu(), a.hi.reshape(1).float().cpu(), a.fmt)
    out[f"{name}.input_scale"] = input_scale
    out[f"{name}.input_zero_point"] = (input_zero - (1 << (a.fmt.bits - 1))).to(torch.int8)
    return out


def _int_codes(name: str, original: torch.Tensor, simulated: torch.Tensor, fmt: IntFormat,
               weight_method: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes, scale, zero-point), each (out, inputs): the simulated weight's codes on the grid nearest rounding
    chooses for ``original`` (quantize_weight's), with the scale its values are dequantized with.

    A code is nearest rounding's of ``original`` where that gives the simulated value, else the grid point of
    the simulated value (a rounding back-end moved it); in a bfloat16 model the latter alone could be off by
    one code (an 8-bit value is rounded by up to half a step). Nothing is re-rounded: a value no code gives
    in the model's dtype is a ModelError."""
    rows = original.to(torch.float32).reshape(original.shape[0], -1)
    scale, zero = weight_qparams(rows, fmt, weight_method)
    stored = scale.to(torch.float16).to(torch.float32) if getattr(fmt, "scale_dtype", "fp32") == "fp16" else scale
    sim = simulated.reshape(rows.shape)

    def values(codes):  # w = (q - z) * s in float32, then the model's dtype: the simulation's arithmetic
        return ((codes - zero) * stored).to(sim.dtype)

    nearest = torch.clamp(torch.round(rows / scale) + zero, fmt.qmin, fmt.qmax)
    on_grid = torch.clamp(torch.round(sim.to(torch.float32) / stored) + zero, fmt.qmin, fmt.qmax)
    codes = torch.where(_bit_mask(values(nearest), sim), nearest, on_grid)
    wrong = ~_bit_mask(values(codes), sim)
    if bool(wrong.any()):
        raise ModelError(f"layer {name!r}: {int(wrong.sum())} simulated weight value(s) are on no code of the grid "
                         "nearest rounding chooses, so they cannot be written exactly; export a model quantized "
                         "with a rounding that keeps that grid (nearest, gptq, adaround, brecq)")
    return codes.to(torch.int64), stored, zero.to(torch.int64)


def pack_int32(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """(rows, cols) signed ``bits``-bit codes -> (rows, ceil(cols * bits / 32)) int32, compressed-tensors' dense
    packing: code + 2^(bits-1) of element i at bit i * bits of the row's little-endian word stream (a code may
    straddle two words)."""
    rows, cols = codes.shape
    values = codes.to(torch.int64) + (1 << (bits - 1))
    start = torch.arange(cols, dtype=torch.int64) * bits
    word, offset = start // 32, start % 32
    words = math.ceil(cols * bits / 32)
    packed = torch.zeros(rows, words + 1, dtype=torch.int64)
    packed.scatter_add_(1, word.expand(rows, -1), (values << offset) & 0xFFFFFFFF)  # bits never overlap: add = or
    packed.scatter_add_(1, (word + 1).expand(rows, -1), values >> (32 - offset))
    packed = packed[:, :words]
    return torch.where(packed >= 1 << 31, packed - (1 << 32), packed).to(torch.int32)


def unpack_int32(packed: torch.Tensor, bits: int, cols: int) -> torch.Tensor:
    """Inverse of :func:`pack_int32`: the first ``cols`` signed codes of every row, int64."""
    words = torch.nn.functional.pad(packed.to(torch.int64) & 0xFFFFFFFF, (0, 1))
    start = torch.arange(cols, dtype=torch.int64) * bits
    word, offset = start // 32, start % 32
    values = ((words[:, word] >> offset) | (words[:, word + 1] << (32 - offset))) & ((1 << bits) - 1)
    return values - (1 << (bits - 1))


def _notes(root: nn.Module, config: dict, candidates: dict[str, Candidate], prefix: str,
           schemes: dict[str, Scheme | None], expected: dict[str, torch.Tensor]) -> list[str]:
    notes = []
    if not config:
        notes.append("the model has no Hugging Face config: config.json holds only the quantization_config, "
                     "which vLLM cannot serve without the architecture")
    cast = sorted(n for n, c in candidates.items() if isinstance(c.activation, FloatFormat)
                  and not c.activation.scaled)
    if cast:
        notes.append(f"{len(cast)} layer(s) (e.g. {cast[0]}) cast their input to {candidates[cast[0]].activation.kind} "
                     "in the simulation; a checkpoint has no per-layer cast: serve the model in that dtype")
    dtypes = {str(t.dtype).replace("torch.", "") for t in expected.values() if t.is_floating_point()}
    if dtypes - {"float32"}:
        notes.append(f"the model is in {'/'.join(sorted(dtypes))}: scales are stored in float32, which dequantizes "
                     "exactly; a runtime holding scales in the model dtype rounds them")
    kinds = {s for s in schemes.values() if s is not None}
    if len(kinds) > 1:
        notes.append(f"the checkpoint holds {len(kinds)} schemes (config groups), as a mixed plan does: vLLM serves "
                     "them; transformers' dequantize-on-load (CompressedTensorsConfig(dequantize=True)) loaded only "
                     "one-scheme checkpoints here (transformers 5.24 failed on mixed ones)")
    one_row = sorted(n for n, scheme in schemes.items() if scheme is not None and scheme.format == "pack-quantized"
                     and dict(scheme.weights)["num_bits"] == 4 and not dict(scheme.weights)["symmetric"]
                     and dict(scheme.weights)["strategy"] == "group"
                     and root.get_submodule(n[len(prefix):]).weight.shape[0] <= 8)
    if one_row:
        notes.append(f"{len(one_row)} 4-bit asymmetric grouped layer(s) of at most 8 outputs (e.g. {one_row[0]}) pack "
                     "their zero-points into one int32 row, which compressed-tensors 0.20's own unpacking cannot view "
                     "(torch refuses its byte view of the transposed row): the read-back here gives the row strides it "
                     "can read, but its dequantizer as it stands fails on them, and so would a loader dequantizing "
                     "with it (transformers' CompressedTensorsConfig(dequantize=True)); plan them symmetric (w4g<G>) "
                     "or at another width to avoid it")
    by_local = {n[len(prefix):]: schemes[n] for n in candidates}
    names = {n for n, _ in root.named_modules()}
    for shards in FUSED_SHARDS:
        for parent in sorted(n[: -len(shards[0])] for n in names if n.endswith("." + shards[0])):
            found = {by_local.get(parent + s) for s in shards if parent + s in names}
            if len(found) > 1:
                notes.append(f"{parent}{{{','.join(shards)}}} have different schemes; vLLM fuses them into one "
                             "matrix and needs one scheme: plan them as one group")
    return notes


READERS = ("auto", "compressed-tensors", "mixprec")


def load_dequantized(folder: str | os.PathLike, reader: str = "auto",
                     dtypes: dict[str, torch.dtype] | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """Every tensor of the checkpoint, quantized layers dequantized: (tensors, reader used).

    reader ``compressed-tensors``: the package's own model-free dequantizer (CompressedTensorsDequantizer, which
    infers each group's format as the package would); ``mixprec``: this module's reader of the same layout;
    ``auto``: the package if it is installed. dtypes: the dtype of each dequantized weight (default: the scale's).
    """
    from safetensors.torch import load_file
    folder = Path(folder)
    process, label = _reader(folder, reader)
    out = process(load_file(str(folder / WEIGHTS_FILE)))
    for key, dtype in (dtypes or {}).items():
        if key in out:
            out[key] = out[key].to(dtype)
    return out, label


def _compressed_tensors_version() -> str | None:
    try:
        import compressed_tensors
    except ImportError:
        return None
    return compressed_tensors.__version__


def _dequantize(config: dict, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """mixprec's reader: w = (q - z) * s per channel or group, in the scale's dtype (compressed-tensors' dequantize);
    ``tensors`` may be some of the checkpoint's (one layer's): the targets it lacks are skipped."""
    tensors = dict(tensors)
    out = {}
    for group in config["config_groups"].values():
        args = group["weights"]
        bits = args["num_bits"]
        for layer in group["targets"]:
            if f"{layer}.weight_scale" not in tensors:
                continue
            scale = tensors.pop(f"{layer}.weight_scale")
            zero = tensors.pop(f"{layer}.weight_zero_point", None)
            if group["format"] == "pack-quantized":
                shape = tensors.pop(f"{layer}.weight_shape").tolist()
                q = unpack_int32(tensors.pop(f"{layer}.weight_packed"), bits, shape[1])
                if zero is not None:
                    zero = unpack_int32(zero.t().contiguous(), bits, shape[0]).t()
            else:
                q = tensors.pop(f"{layer}.weight")
            q = q.to(scale.dtype)
            if zero is not None:
                q = q - zero.to(scale.dtype).repeat_interleave(q.shape[1] // zero.shape[1], dim=1)
            out[f"{layer}.weight"] = q * scale.repeat_interleave(q.shape[1] // scale.shape[1], dim=1)
    out.update(tensors)
    return out


def read_back(folder: str | os.PathLike, expected: dict[str, torch.Tensor], reader: str = "auto") -> ReadBack:
    """Dequantize the checkpoint in ``folder`` and compare every tensor of ``expected`` (name -> tensor, e.g. the
    simulated weights) with it bit for bit: same dtype, same shape, same bits (0.0 and -0.0 differ)."""
    from safetensors import safe_open
    folder = Path(folder)
    process, label = _reader(folder, reader)
    result = ReadBack(label, len(expected))
    found: set[str] = set()
    with safe_open(str(folder / WEIGHTS_FILE), framework="pt") as f:  # one module's tensors at a time
        modules: dict[str, list[str]] = {}
        for key in f.keys():
            modules.setdefault(key.rpartition(".")[0], []).append(key)
        for keys in modules.values():
            tensors = {k: f.get_tensor(k) for k in keys}
            if label.startswith("compressed-tensors"):
                tensors = {k: _one_row_fixed(k, t) for k, t in tensors.items()}
            for key, got in process(tensors).items():
                if key in expected:
                    found.add(key)
                    _compare(result, key, got.to(expected[key].dtype), expected[key])
    for key in expected:
        if key not in found:
            result.mismatched[key] = "missing"
    return result


def _one_row_fixed(key: str, tensor: torch.Tensor) -> torch.Tensor:
    """A packed zero-point of one row (a 4-bit asymmetric grouped layer of at most 8 outputs: its zero-points fit
    one int32 row) with strides compressed-tensors 0.20's unpacking can view: it transposes the row and views it
    as bytes, which torch refuses where the row's stride is not 1 (the values are the same)."""
    if key.endswith("weight_zero_point") and tensor.dim() == 2 and tensor.shape[0] == 1 and tensor.dtype == torch.int32:
        return tensor.as_strided(tuple(tensor.shape), (1, 1))
    return tensor


def _reader(folder: Path, reader: str):
    """(a function dequantizing some of the checkpoint's tensors, its label) for ``reader`` (load_dequantized's)."""
    if reader not in READERS:
        raise MixprecError(f"reader must be one of {READERS}, got {reader!r}")
    if reader == "auto":
        reader = "compressed-tensors" if _compressed_tensors_version() else "mixprec"
    if reader == "compressed-tensors":
        if not _compressed_tensors_version():
            raise MixprecError("reader 'compressed-tensors' needs the package: pip install -e '.[export]' "
                               "(compressed-tensors==0.20.0), or use reader='mixprec'")
        from compressed_tensors.entrypoints.convert.converters.ct_dequantizer import CompressedTensorsDequantizer
        dequantizer = CompressedTensorsDequantizer(str(folder), dtype=torch.float32)
        return dequantizer.process, f"compressed-tensors {_compressed_tensors_version()} CompressedTensorsDequantizer"
    config = json.loads((folder / "config.json").read_text())["quantization_config"]
    return (lambda tensors: _dequantize(config, tensors)), "mixprec reader (compressed-tensors layout)"


def _compare(result: "ReadBack", key: str, got: torch.Tensor, want: torch.Tensor) -> None:
    """``got`` against ``want`` bit for bit, a difference recorded in ``result.mismatched``."""
    if got.dtype != want.dtype or got.shape != want.shape:
        result.mismatched[key] = f"{got.dtype} {tuple(got.shape)} read, {want.dtype} {tuple(want.shape)} expected"
    elif not _bits_equal(got, want):
        differ = int((~_bit_mask(got, want)).sum())
        result.mismatched[key] = f"{differ} of {want.numel()} values differ"


def _bit_mask(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.is_floating_point():
        ints = {2: torch.int16, 4: torch.int32, 8: torch.int64, 1: torch.int8}[a.element_size()]
        return a.contiguous().view(ints) == b.contiguous().view(ints)
    return a == b


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(_bit_mask(a, b).all())
