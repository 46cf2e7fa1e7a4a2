"""export_gguf(model, plan, out="model.gguf"): a Llama, Mistral or Qwen2 causal LM as a GGUF file for llama.cpp, each
planned layer at the GGUF type of its candidate (q8_0 -> Q8_0, q4_0 -> Q4_0, fp16 -> F16, fp32 -> F32).

Nothing is re-quantized: every Q8_0/Q4_0 block gets the codes and the float16 scale of mixprec's own
simulation (mixprec.candidates.GGUF_FORMATS), so a GGUF reader dequantizes exactly the simulated
weight, ties in rounding included; :func:`read_back` proves it on the written file and the export
reports it. Tensors outside the plan are F32 (``float_type="f16"``: F16 for 2-D ones); norms and
biases are always F32, as llama.cpp expects. For Llama and Mistral (llama.cpp's ``llama`` architecture)
the rows of Q and K, and their biases, are permuted as llama.cpp's HF converter does (convert_hf_to_gguf.py,
LlamaModel.permute): that architecture rotates adjacent pairs, HF Llama rotates halves; Qwen2 (its
``qwen2`` architecture, which rotates halves) is written as it is, biases of Q, K and V included. Blocks lie along the inputs, so the permutation moves whole
rows of blocks; the read-back undoes it before comparing.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..atomic import write_atomic
from ..candidates import GGUF_BLOCK, GGUF_FORMATS, Candidate, parse_candidate
from ..errors import MixprecError, ModelError, PlanError
from ..formats import FloatFormat
from ..plan import Plan
from ..quantizers import stored_scale, weight_qparams
from ..swap import QuantizedLayer

from .targets import TARGETS, refuse_layers

__all__ = ["export_gguf", "read_back", "gguf_type", "check_plan", "vocabulary_refusal", "GGUFExport",
           "GGUF_CANDIDATES"]

# What the gguf target runs (profile "gguf" plus fp32), for error messages.
GGUF_CANDIDATES = TARGETS["gguf"].candidates
# Hugging Face model types written, as llama.cpp's converter (convert_hf_to_gguf.py) writes them: its
# architecture, and whether the rows of Q and K are permuted (its llama architecture rotates adjacent pairs,
# HF Llama and Mistral rotate halves; its qwen2 architecture rotates halves, as HF Qwen2 does).
ARCHITECTURES = {"llama": ("LLAMA", True), "mistral": ("LLAMA", True), "qwen2": ("QWEN2", False)}
# llama.cpp's pre-tokenizer of a model type whose byte-level BPE splits text its own way.
PRE_TOKENIZERS = {"qwen2": "qwen2"}
FLOAT_TYPES = ("f32", "f16")
# mixprec's names of llama.cpp's file types (gguf.LlamaFileType), by the type most planned weights take.
_FILE_TYPES = {"F32": "ALL_F32", "F16": "MOSTLY_F16", "Q8_0": "MOSTLY_Q8_0", "Q4_0": "MOSTLY_Q4_0"}


@dataclass
class GGUFExport:
    """What ``export_gguf`` wrote: the .gguf file, every tensor with its GGUF type and the plan's layer, and the
    read-back check (each planned tensor dequantized by the gguf package against the simulated weights)."""
    path: Path
    size_bytes: int
    tensors: list[dict]  # per GGUF tensor: name, layer (plan's name or None), candidate, type, shape, bytes, permuted
    readback: dict  # read_back's summary: tensors compared, exact, mismatched
    notes: list[str] = field(default_factory=list)

    def type_counts(self) -> dict[str, int]:
        """GGUF type -> number of planned layers written at it."""
        return dict(Counter(t["type"] for t in self.tensors if t["layer"] is not None))

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "size_bytes": self.size_bytes, "types": self.type_counts(),
                "readback": self.readback, "notes": self.notes, "tensors": self.tensors}


def gguf_type(candidate: Candidate | str) -> str | None:
    """The GGUF type a candidate is written as, or None when GGUF has no type that is exactly it."""
    c = parse_candidate(candidate)
    if c.multipoint:
        return None
    if c.weight is None:
        return "F32"
    if c.weight == FloatFormat("fp16") and c.activation in (None, FloatFormat("fp16")):
        return "F16"  # llama.cpp's CPU matmul rounds the input of an F16 weight to float16 too
    for name, fmt in GGUF_FORMATS.items():
        if c.weight == fmt and c.activation is None:
            return name.upper()
    return None


def check_plan(layers: dict[str, tuple[tuple[int, ...], Candidate]]) -> dict[str, str]:
    """GGUF type of every planned layer (name -> (weight shape, candidate)); one error lists every layer
    whose candidate has no GGUF type or whose inputs are not whole blocks of 32."""
    types: dict[str, str] = {}
    refused: list[str] = []
    for name, (shape, candidate) in layers.items():
        kind = gguf_type(candidate)
        if kind is None:
            refused.append(f"{name} ({candidate.name}): no GGUF type is exactly this candidate")
        elif kind.startswith("Q") and (len(shape) != 2 or shape[1] % GGUF_BLOCK):
            refused.append(f"{name} ({candidate.name}, weight {tuple(shape)}): {kind} needs a 2-D weight whose "
                           f"{shape[-1]} inputs are a multiple of {GGUF_BLOCK}; plan it as fp16")
        else:
            types[name] = kind
    refuse_layers(refused, "target gguf cannot write", f"gguf writes: {GGUF_CANDIDATES}", ("gguf",))
    return types


def export_gguf(model: nn.Module, plan: Plan, out: str | os.PathLike = "model.gguf", *,
                quantized: nn.Module | None = None, tokenizer: Any = None, tokenizer_pre: str | None = None,
                float_type: str = "f32", name: str | None = None, progress: bool = True) -> GGUFExport:
    """Write ``plan`` applied to ``model`` (a Hugging Face Llama, Mistral or Qwen2 causal LM, or a module
    holding one) as a GGUF file for llama.cpp (its ``llama`` architecture, or ``qwen2``), read it back and
    report.

    quantized: the model ``apply(model, plan, ...)`` already made with a rounding that keeps nearest
    rounding's scales (adaround, brecq, gptq with static_groups=True); default: made here with nearest
    rounding. tokenizer: the model's Hugging
    Face tokenizer (a byte-level BPE is written as llama.cpp's ``gpt2`` vocabulary; without one the file
    has no vocabulary and is fed token ids); tokenizer_pre: llama.cpp's pre-tokenizer name (e.g.
    ``smollm``; see its convert_hf_to_gguf.py; default: the model type's, ``qwen2`` for Qwen2, else
    ``default``). float_type: the type of 2-D tensors outside the plan.
    The file is written atomically; a read-back that differs from the simulation is a MixprecError.
    """
    if not isinstance(plan, Plan):
        raise PlanError(f"export_gguf takes a mixprec Plan, got {type(plan).__name__}; load one with Plan.load(path)")
    if float_type not in FLOAT_TYPES:
        raise MixprecError(f"float_type must be one of {FLOAT_TYPES}, got {float_type!r}")
    out = Path(out)
    if out.suffix != ".gguf":
        raise MixprecError(f"the exported file must end in .gguf, got {out}")
    gguf = _import_gguf()
    prefix, lm, model_type = _find_causal_lm(model)
    arch, permute = ARCHITECTURES[model_type]
    arch = getattr(gguf.MODEL_ARCH, arch)
    notes = []
    if tokenizer_pre is None:
        tokenizer_pre = PRE_TOKENIZERS.get(model_type, "default")
        if tokenizer is not None and model_type not in PRE_TOKENIZERS:
            notes.append("the tokenizer is written with llama.cpp's pre-tokenizer 'default' (a model llama.cpp knows "
                         "names its own in convert_hf_to_gguf.py: give it with --tokenizer-pre NAME, "
                         "tokenizer_pre= in Python)")
    window = getattr(lm.config, "sliding_window", None)
    if model_type == "mistral" and window and window < lm.config.max_position_embeddings:
        notes.append(f"the model attends within a sliding window of {window} tokens, which llama.cpp's llama "
                     "architecture does not: contexts longer than that differ")
    modules = plan.model_layers(model)
    plan.check_covers(model)  # and every layer of the model is the plan's (or excluded; else a PlanNote)
    candidates = {n: parse_candidate(c) for n, c in plan.layer_candidates().items()}
    outside = sorted(n for n in candidates if not n.startswith(prefix))
    if outside:
        raise PlanError(f"the plan quantizes layer(s) outside the causal LM ({outside[:3]}); GGUF holds only it")
    types = check_plan({n: (tuple(m.weight.shape), candidates[n]) for n, m in modules.items()})

    if quantized is None:
        from ..apply import apply, note_plan_rounding
        note_plan_rounding(plan, "export_gguf", stacklevel=3)
        quantized = apply(model, plan, None, weight_range="minmax", progress=progress, rounding="nearest")
    simulated: dict[str, torch.Tensor] = {}  # HF parameter name -> simulated weight
    dtypes: set[torch.dtype] = set()
    for layer in candidates:
        module = quantized.get_submodule(layer)
        if not isinstance(module, QuantizedLayer):
            raise PlanError(f"the quantized model has no quantized layer {layer!r} the plan names; pass the model "
                            "apply(model, plan) made from this plan")
        simulated[layer[len(prefix):] + ".weight"] = module.layer.weight.detach().to(torch.float32).cpu()
        dtypes.add(module.layer.weight.dtype)
    planned = {layer[len(prefix):] + ".weight": layer for layer in candidates}
    low = sorted((d for d in dtypes if d not in (torch.float32, torch.float64)), key=str)
    model_dtype = low[0] if low else torch.float32
    if low:
        notes.append(f"the model's weights are {str(model_dtype).replace('torch.', '')}: its simulation holds each "
                     "quantized weight as code x scale rounded to that type, the file holds the code and scale, "
                     "which llama.cpp multiplies unrounded (a difference of at most half that type's epsilon of "
                     "each weight); the read-back compares the file with code x scale")

    config = lm.config
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    writer = gguf.GGUFWriter(None, gguf.MODEL_ARCH_NAMES[arch])
    rows: list[dict] = []
    expected: dict[str, Any] = {}  # GGUF name -> what its read-back must equal (HF layout; a function making it)
    permuted: dict[str, int] = {}  # GGUF name -> heads of its row permutation
    for key, value in lm.state_dict().items():
        value = value.detach().to(torch.float32).cpu()  # one tensor at a time: a bfloat16 model is not copied whole
        module_name, _, suffix = key.rpartition(".")
        base = names.get_name(module_name)
        if base is None or suffix not in ("weight", "bias"):
            raise ModelError(f"no GGUF name for tensor {key!r} of llama.cpp's {gguf.MODEL_ARCH_NAMES[arch]} "
                             f"architecture; is this a plain {type(lm).__name__}?")
        if key == "lm_head.weight" and getattr(config, "tie_word_embeddings", False) and key not in planned:
            continue  # llama.cpp reads the tied output from token_embd
        gguf_name = f"{base}.{suffix}"
        # llama.cpp's converter permutes the biases of Q and K with their rows (attention_bias=True)
        row_heads = None if not permute else (
            heads if module_name.endswith("self_attn.q_proj")
            else kv_heads if module_name.endswith("self_attn.k_proj") else None)
        if key in planned:
            layer = planned[key]
            kind = types[layer]
            tied = simulated.get("model.embed_tokens.weight", expected.get("token_embd.weight"))
            tied = tied() if callable(tied) else tied
            if key == "lm_head.weight" and getattr(config, "tie_word_embeddings", False) and tied is not None \
                    and any(r["name"] == "token_embd.weight" and r["type"] == kind for r in rows) \
                    and torch.equal(tied, simulated[key]):
                continue  # tied and planned alike (one group): the same blocks as token_embd, read from there
            data, expected[gguf_name] = _encode(value, simulated[key], candidates[layer], kind, layer,
                                                dtype=model_dtype)
        else:
            layer, kind = None, "F32" if value.dim() < 2 or float_type == "f32" else "F16"
            data = value.numpy() if kind == "F32" else value.numpy().astype(np.float16)
            expected[gguf_name] = value if kind == "F32" else (lambda v=value: v.to(torch.float16).to(torch.float32))
        if row_heads is not None:
            data = _permute_rows(data, row_heads)
            permuted[gguf_name] = row_heads
        qtype = gguf.GGMLQuantizationType[kind]
        writer.add_tensor(gguf_name, np.ascontiguousarray(data), raw_dtype=qtype if kind.startswith("Q") else None)
        rows.append({"name": gguf_name, "layer": layer, "candidate": None if layer is None else candidates[layer].name,
                     "type": kind, "shape": list(value.shape), "bytes": int(data.nbytes),
                     "permuted": row_heads is not None})

    _write_metadata(writer, gguf, config, name or getattr(config, "_name_or_path", "") or "mixprec", types)
    _write_vocab(writer, gguf, tokenizer, config.vocab_size, tokenizer_pre)

    def write(f):
        # GGUFWriter opens files by path; it is handed mixprec.atomic's open temporary file instead.
        writer.fout, writer.state = [f], gguf.gguf_writer.WriterState.EMPTY
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()

    write_atomic(out, write)
    check = read_back(out, expected, permuted)
    result = GGUFExport(out, out.stat().st_size, rows, check, notes=notes)
    if check["mismatched"]:
        raise MixprecError(f"{out}: {len(check['mismatched'])} tensor(s) read back differ from the simulated model "
                           f"(e.g. {check['mismatched'][0]}); this is a bug in mixprec's GGUF export, please report it")
    if tokenizer is None:
        result.notes.append("no tokenizer given: the file has no vocabulary (llama.cpp runs it on token ids)")
    return result


def read_back(path: str | os.PathLike, expected: dict[str, torch.Tensor], permuted: dict[str, int] | None = None
              ) -> dict[str, Any]:
    """Read every tensor of ``expected`` (GGUF name -> float32 tensor in Hugging Face layout, or a function making
    it when compared) from the GGUF file with gguf.GGUFReader, dequantize it with gguf.quants.dequantize, undo the
    Q/K row permutation (``permuted``: GGUF name -> heads) and compare value for value (+0 and -0 count as equal).

    Returns {"tensors": n, "exact": n equal, "mismatched": [names], "max_abs_error": {name: e}}."""
    gguf = _import_gguf()
    from gguf.quants import dequantize

    permuted = permuted or {}
    reader = gguf.GGUFReader(str(path))
    found = {t.name: t for t in reader.tensors}
    missing = sorted(set(expected) - set(found))
    mismatched, errors = list(missing), {}
    for name, want in expected.items():
        if name not in found:
            continue
        want = want() if callable(want) else want  # made now, dropped after the comparison
        tensor = found[name]
        values = np.asarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32).reshape(tuple(want.shape))
        if name in permuted:
            values = _unpermute_rows(values, permuted[name])
        got = torch.from_numpy(np.array(values, dtype=np.float32))  # a writable copy
        if not torch.equal(got, want):
            mismatched.append(name)
            errors[name] = float((got - want).abs().max())
    return {"tensors": len(expected), "exact": len(expected) - len(mismatched), "mismatched": mismatched,
            "max_abs_error": errors}


def block_codes(original: torch.Tensor, simulated: torch.Tensor, candidate: Candidate, layer: str = "",
                dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes (rows, inputs) int8, float16 scale per block (rows, inputs / 32)) of a simulated Q8_0/Q4_0
    weight: its own codes on the grid its format chose for ``original`` (a weight off that grid is an
    error, never re-rounded). ``dtype``: the model's, in which the simulation holds code * scale rounded to
    it (bfloat16, float16): up to half its epsilon of the value, less than a quarter step for 8-bit codes in
    bfloat16, so the codes are still read exactly; float32: exactly code * scale."""
    fmt = candidate.weight
    scale, _ = weight_qparams(original, fmt, fmt.range_method or "minmax")
    step = stored_scale(scale, fmt)
    if dtype in (torch.float32, torch.float64):
        codes = torch.where(step != 0, simulated / torch.where(step != 0, step, 1), 0)
        held = codes * step == simulated
    else:
        codes = torch.round(torch.where(step != 0, simulated / torch.where(step != 0, step, 1), 0))
        held = (codes * step).to(dtype).to(simulated.dtype) == simulated
    on_grid = (codes == torch.round(codes)) & (codes >= fmt.qmin) & (codes <= fmt.qmax) & held
    if not bool(on_grid.all()):
        raise ModelError(f"layer {layer!r}: the quantized weight is not on the {candidate.name} grid of its min/max "
                         "scales, so its codes cannot be written exactly; quantize it with a rounding that keeps them (nearest, "
                         "adaround, brecq, or gptq with static_groups=True)")
    return codes.to(torch.int8), step[:, ::GGUF_BLOCK].to(torch.float16)


def _encode(original: torch.Tensor, simulated: torch.Tensor, candidate: Candidate, kind: str, layer: str,
            dtype: torch.dtype = torch.float32) -> tuple[np.ndarray, Any]:
    """(the layer's data as GGUF stores it: float32/float16 values, or Q8_0/Q4_0 blocks (uint8 rows); the
    float32 values the file holds, or a function making them: the simulated weight, or code * scale of each block,
    which a model of ``dtype`` bfloat16 or float16 simulates rounded to that type)."""
    if kind == "F32":
        return simulated.numpy(), simulated
    if kind == "F16":
        return simulated.numpy().astype(np.float16), lambda: simulated.to(torch.float16).to(torch.float32)
    codes, scales = block_codes(original, simulated, candidate, layer, dtype)
    # the values the file holds, made when the read-back compares them (from the codes and scales, a quarter of
    # their size), so that a whole model's worth of them is never held at once
    held = lambda: (codes.to(torch.float32).reshape(codes.shape[0], -1, GGUF_BLOCK)  # noqa: E731
                    * scales.to(torch.float32).unsqueeze(-1)).reshape(codes.shape)
    rows, inputs = codes.shape
    q = codes.numpy().reshape(rows, inputs // GGUF_BLOCK, GGUF_BLOCK)
    d = scales.numpy().reshape(rows, inputs // GGUF_BLOCK, 1).view(np.uint8)  # 2 bytes, little-endian
    if kind == "Q8_0":  # block_q8_0: fp16 d, int8 qs[32]
        body = q.view(np.uint8)
    else:  # block_q4_0: fp16 d, qs[16]: code j + 8 in the low nibble of byte j, code j + 16 + 8 in the high one
        u = (q + 8).astype(np.uint8)
        body = u[..., : GGUF_BLOCK // 2] | (u[..., GGUF_BLOCK // 2:] << np.uint8(4))
    return np.concatenate([d, body], axis=-1).reshape(rows, -1), held


def _permute_rows(a: np.ndarray, heads: int) -> np.ndarray:
    # convert_hf_to_gguf.py LlamaModel.permute: per head, rows (i, i + d/2) -> (2i, 2i + 1)
    return a.reshape(heads, 2, a.shape[0] // heads // 2, *a.shape[1:]).swapaxes(1, 2).reshape(a.shape)


def _unpermute_rows(a: np.ndarray, heads: int) -> np.ndarray:
    return a.reshape(heads, a.shape[0] // heads // 2, 2, *a.shape[1:]).swapaxes(1, 2).reshape(a.shape)


def _find_causal_lm(model: nn.Module) -> tuple[str, nn.Module, str]:
    """(name prefix with its dot, the causal LM, its model type): ``model`` itself or the first module it holds
    of a type GGUF export writes (ARCHITECTURES)."""
    for module_name, module in model.named_modules():
        model_type = getattr(getattr(module, "config", None), "model_type", None)
        if model_type in ARCHITECTURES and hasattr(module, "lm_head"):
            return (module_name + "." if module_name else ""), module, model_type
    found = {getattr(getattr(m, "config", None), "model_type", None) for m in model.modules()} - {None}
    raise ModelError(f"GGUF export writes Hugging Face causal LMs of model type {', '.join(sorted(ARCHITECTURES))} "
                     "(e.g. SmolLM2, Qwen2.5); "
                     + (f"this model is {sorted(found)}" if found else f"got a {type(model).__name__}"))


def _rope_parameters(config) -> dict:
    params = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    if "rope_theta" not in params and getattr(config, "rope_theta", None) is not None:
        params["rope_theta"] = config.rope_theta
    return params


def _write_metadata(writer, gguf, config, name: str, types: dict[str, str]) -> None:
    """The hyper-parameters llama.cpp reads for the llama and qwen2 architectures (convert_hf_to_gguf.py's)."""
    rope = _rope_parameters(config)
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "linear"):
        raise ModelError(f"RoPE type {rope_type!r} is not exported to GGUF yet (default and linear are)")
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_name(str(name))
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads or config.num_attention_heads)
    writer.add_rope_freq_base(float(rope.get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // config.num_attention_heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    if rope_type == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    most = Counter(types.values()).most_common(1)
    writer.add_file_type(gguf.LlamaFileType[_FILE_TYPES[most[0][0] if most else "F32"]])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def vocabulary_refusal(tokenizer) -> str | None:
    """Why ``tokenizer`` cannot be written as a GGUF vocabulary, or None: only byte-level BPE (GPT-2 style)
    tokenizers with a fast backend are."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = json.loads(backend.to_str()) if backend is not None else {}
    if (spec.get("model") or {}).get("type") != "BPE" or "ByteLevel" not in json.dumps(spec.get("pre_tokenizer")):
        return "GGUF export writes byte-level BPE tokenizers (GPT-2 style, as SmolLM2's) only"
    return None


def _write_vocab(writer, gguf, tokenizer, vocab_size: int, pre: str) -> None:
    """A byte-level BPE tokenizer as llama.cpp's ``gpt2`` vocabulary (tokens, types, merges, special ids,
    as convert_hf_to_gguf.py's _set_vocab_gpt2); no tokenizer: model ``none`` with ``vocab_size`` tokens."""
    if tokenizer is None:
        writer.add_tokenizer_model("none")
        return
    refusal = vocabulary_refusal(tokenizer)
    if refusal:
        raise ModelError(f"{refusal}; pass tokenizer=None to write the model without a vocabulary")
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    vocab = tokenizer.get_vocab()
    if max(vocab.values()) >= vocab_size:
        raise ModelError(f"the tokenizer has token ids up to {max(vocab.values())}, the model {vocab_size} embeddings")
    reverse = {i: t for t, i in vocab.items()}
    added = {i: t for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items()}
    tokens, kinds = [], []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            kinds.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(reverse[i])
            kinds.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(reverse[i])
            kinds.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(kinds)
    writer.add_token_merges(merges)
    for kind in ("bos", "eos", "unk", "pad"):
        token_id = getattr(tokenizer, f"{kind}_token_id", None)
        if token_id is not None:
            getattr(writer, f"add_{kind}_token_id")(int(token_id))
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str):
        writer.add_chat_template(template)


def _import_gguf():
    try:
        import gguf
        import gguf.gguf_writer  # noqa: F401
    except ImportError as exc:
        raise MixprecError(f"GGUF export needs the gguf package ({exc}); install it with pip install "
                           "-e '.[models]'") from exc
    return gguf
