"""Export targets: which candidates a runtime can be given, and how each becomes an ONNX layer.

A realisation names what the exporter writes for a (layer kind, candidate) pair; ``None`` with a
reason means the target cannot run it. Nothing here knows torch or onnx: the check runs before any
work, on the plan alone. The targets ``gguf`` and ``compressed-tensors`` are files of their own
(mixprec.export.gguf, mixprec.export.compressed_tensors); mixprec.export.checks checks a plan for any
target with the check of the module that writes it.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..candidates import Candidate
from ..errors import CandidateError
from ..formats import FloatFormat, IntFormat, is_dynamic


# MatMulNBits stores 4- or 8-bit codes in blocks of a power of two >= 16 inputs.
NBITS_MIN_BLOCK = 16
NBITS_PER_CHANNEL_BLOCK = 128


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    candidates: str  # what the target accepts, for error messages and docs
    writer: str = "export"  # the function of mixprec.export that writes it
    out: str = "an .onnx file"  # what --out / out names
    joins: bool = False  # its int8 graph quantizes residual adds and concatenations (mixprec.joins)


TARGETS: dict[str, Target] = {
    "ort-cpu": Target(
        "ort-cpu", "ONNX Runtime, CPU execution provider",
        "fp32; w<B>a8 with B <= 8 (int8 QDQ: u8 inputs, s8 per-channel weights; w7a8 for reduce_range); "
        "weight-only w<B>, w<B>g<G> and their -asym forms with B <= 8 (MatMulNBits on Linear layers; G a multiple "
        "of 16 with a power-of-two factor >= 16; on Conv layers per channel only, dequantized to a float conv); "
        "w<B>a16 with B <= 8 and w16a16/fp16 (float16 values, float compute)", joins=True),
    "gguf": Target(
        "gguf", "llama.cpp: a GGUF file of a Llama, Mistral or Qwen2 causal LM",
        "q8_0 (Q8_0), q4_0 (Q4_0), fp16 or w16a16 (F16) -- profile gguf -- and fp32 (F32); Q8_0/Q4_0 layers need "
        "inputs in whole blocks of 32", writer="export_gguf", out="a .gguf file"),
    "compressed-tensors": Target(
        "compressed-tensors", "a compressed-tensors checkpoint folder (what vLLM serves)",
        "fp32 (ignored); integer weight-only w<B>, w<B>g<G> and -asym with B <= 8 (pack-quantized; G must divide "
        "the layer's inputs); w<B>a<A> with B, A <= 8 (int-quantized, static per-tensor inputs); fp8 e4m3 "
        "(float-quantized); fp16/bf16/w16a16 and w<B>a16 are written with their simulated weights but without "
        "the float16 input cast (the serving dtype's job); Linear layers only",
        writer="write_compressed_tensors", out="a folder"),
    "cuda": Target(
        "cuda", "torch's low-bit kernels on an NVIDIA GPU: a deployed model, saved as a folder",
        "w<B>g<G> / w<B> weight-only with B <= 4 (int4 tinygemm; G in 32, 64, 128, 256 dividing the inputs); w<B> "
        "with B <= 8 symmetric per channel (int8 weight-only); fp8 (e4m3, row-wise _scaled_mm); fp16, bf16, "
        "w16a16; fp32; Linear layers (Embedding layers on weight-only candidates: a lookup of the simulated rows)",
        writer="deploy_cuda", out="a folder"),
}


@dataclass(frozen=True)
class Realisation:
    """How one layer is written: ``qdq`` (integer input and weights), ``nbits`` (MatMulNBits),
    ``dq_weight`` (integer weights dequantized to a float op), ``fp16`` (float16 values), ``simulated`` (an
    embedding's float16 rows stored as float32 values) or ``float``."""

    kind: str
    weight_bits: int | None = None  # bits of the stored codes (container)
    block_size: int | None = None  # MatMulNBits block
    input_fp16: bool = False
    accuracy_level: int | None = None  # MatMulNBits' accuracy_level the candidate fixes (None: the export's)


def get_target(name: str) -> Target:
    if name not in TARGETS:
        raise CandidateError(f"unknown export target {name!r}; targets: "
                             + "; ".join(f"{t.name} ({t.description})" for t in TARGETS.values()))
    return TARGETS[name]


def get_onnx_target(name: str, what: str = "export()") -> Target:
    """A target ``export`` writes as ONNX (and ``profile`` times); the others name their own writer."""
    target = get_target(name)
    if target.writer != "export":
        call = (f"mixprec.export.{target.writer}(model, plan, data, device=...) and save_cuda(deployment, out)"
                if target.writer == "deploy_cuda" else f"mixprec.export.{target.writer}(model, plan, out, ...)")
        raise CandidateError(f"{what} writes ONNX files; target {target.name} ({target.description}) is {target.out} "
                             f"written by {call} or mixprec export --target {target.name}")
    return target


def nbits_block_size(group_size: int | None, inputs: int) -> int | None:
    """MatMulNBits block for a grouped (or, ``group_size`` None, per-channel) weight, or None.

    Every block must lie inside one of mixprec's groups: the largest power of two >= 16 dividing G
    (the shorter last group then starts on a block boundary); per channel, one scale repeated."""
    if group_size is None:
        block = NBITS_MIN_BLOCK
        while block * 2 <= min(inputs, NBITS_PER_CHANNEL_BLOCK):
            block *= 2
        return block
    block = group_size & -group_size  # largest power of two dividing G
    return block if block >= NBITS_MIN_BLOCK else None


def realise(candidate: Candidate, kind: str, inputs: int, reduce_range: bool = False) -> Realisation | str:
    """The realisation of ``candidate`` on a ``kind`` layer ('Conv1d', 'Conv2d', 'ConvTranspose2d', 'Linear') with ``inputs``
    inputs per output channel, or the reason the target cannot run it."""
    w, a = candidate.weight, candidate.activation
    if candidate.multipoint:
        return "multipoint weights are not exported yet"
    if w is None:
        return Realisation("float")
    if kind == "Embedding":  # a Gather of rows: its input is token ids, so only the weight counts
        if isinstance(w, IntFormat) and w.scale_dtype == "fp32" and not w.narrow_range and w.bits <= 8:
            return Realisation("dq_weight", 8)  # the looked-up integer rows and their scales, dequantized after
        if isinstance(w, IntFormat) and (w.scale_dtype != "fp32" or w.narrow_range):
            return f"{candidate.name} is a GGUF block format: llama.cpp runs it (mixprec.export.gguf)"
        if isinstance(w, FloatFormat) and w.kind != "fp16":
            return f"{w.kind} weights have no ONNX Runtime CPU kernel"
        if isinstance(w, IntFormat) and w.bits > 8:
            return f"{w.bits}-bit integer weights have no ONNX Runtime CPU kernel (8 bits at most)"
        return Realisation("simulated")  # float16 rows: the simulated values stored in float32
    if isinstance(w, FloatFormat):
        if w.kind == "fp16" and (a is None or a == FloatFormat("fp16")):
            return Realisation("fp16", input_fp16=a is not None)
        return f"{w.kind} weights have no ONNX Runtime CPU kernel"
    assert isinstance(w, IntFormat)
    if w.scale_dtype != "fp32" or w.narrow_range:
        return f"{candidate.name} is a GGUF block format: llama.cpp runs it (mixprec.export.gguf)"
    if w.bits > 8:
        return f"{w.bits}-bit integer weights have no ONNX Runtime CPU kernel (8 bits at most)"
    if is_dynamic(a):  # MatMulNBits at accuracy_level 4: int8 inputs per block of the kernel's BlkLen
        if kind != "Linear":
            return "inputs quantized per block at run time are MatMulNBits' (Linear layers only)"
        if a.bits != 8 or w.bits > 8:
            return "MatMulNBits quantizes inputs to 8 bits per block (a8d<N>), with weights of at most 8 bits"
        n = a.group_size
        if n < NBITS_MIN_BLOCK or n & (n - 1) or (w.granularity == "group" and w.group_size % n):
            return (f"input blocks of {n}: MatMulNBits blocks are powers of two >= {NBITS_MIN_BLOCK}"
                    + (f" dividing the weight groups of {w.group_size}" if w.granularity == "group" else ""))
        if w.granularity not in ("group", "channel"):
            return "MatMulNBits needs per-channel or grouped weights"
        return Realisation("nbits", 4 if w.bits <= 4 else 8, n, accuracy_level=4)
    if kind.startswith("ConvTranspose") and isinstance(a, IntFormat):
        return ("integer inputs on a transposed convolution: ONNX Runtime CPU has no integer ConvTranspose kernel "
                "for its weights' scales (per input channel); plan it weight-only (e.g. w8, w4), fp16 or fp32")
    if isinstance(a, IntFormat):
        if a.bits != 8:
            return f"{a.bits}-bit inputs: ONNX Runtime CPU quantizes activations to 8 bits only"
        if w.granularity != "channel" or not w.symmetric:
            return "integer inputs need symmetric per-channel weights (QLinearConv / QGemm)"
        if reduce_range and w.bits > 7:
            return "reduce_range needs weights of 7 bits at most: plan these layers with w7a8 (profile ort-cpu-avx2)"
        return Realisation("qdq", 8)
    if isinstance(a, FloatFormat):
        if a.kind != "fp16":
            return f"{a.kind} inputs have no ONNX Runtime CPU kernel"
        if w.granularity != "channel":
            return "grouped weights with float16 inputs are not exported"
        return Realisation("dq_weight", 8, input_fp16=True)
    if kind == "Linear":  # weight-only
        block = nbits_block_size(w.group_size, inputs)
        if block is None:
            return (f"group size {w.group_size} has no power-of-two factor >= {NBITS_MIN_BLOCK}, "
                    "which MatMulNBits blocks need")
        return Realisation("nbits", 4 if w.bits <= 4 else 8, block)
    if w.granularity != "channel":
        return "grouped weights on a convolution are not exported (no blocked-weight conv kernel)"
    return Realisation("dq_weight", 8)


def check_layers(target: Target, layers: dict[str, tuple[str, int, Candidate]], reduce_range: bool = False
                 ) -> dict[str, Realisation]:
    """Realisation of every layer (name -> (kind, inputs, candidate)); one error lists every layer the
    target cannot run, with the target's candidates."""
    out: dict[str, Realisation] = {}
    refused: list[str] = []
    for name, (kind, inputs, candidate) in layers.items():
        result = realise(candidate, kind, inputs, reduce_range)
        if isinstance(result, str):
            refused.append(f"{name} ({kind}, {candidate.name}): {result}")
        else:
            out[name] = result
    from ..profiles import PROFILE_TARGETS
    refuse_layers(refused, f"target {target.name} cannot run", f"{target.name} runs: {target.candidates}",
                  tuple(sorted(p for p, t in PROFILE_TARGETS.items() if t == target.name)))
    return out


def refuse_layers(refused: list[str], what: str, accepts: str, profiles: tuple[str, ...] = ()) -> None:
    """One CandidateError for every layer a target cannot take (``refused``: one line each, the first 20
    shown), opened by ``what`` and closed by what the target ``accepts``; nothing when none is refused.
    ``profiles``: the analyze profiles that plan for this target (none: plan with candidates it accepts)."""
    if refused:
        shown = refused[:20] + ([f"... and {len(refused) - 20} more"] if len(refused) > 20 else [])
        first = refused[0].split(" (")[0]
        plan_for = (f"analyze with a profile of it (--profile {' or --profile '.join(profiles)}) or analyze(..., "
                    "target=...)" if profiles else "analyze with --candidates it accepts (listed above)")
        raise CandidateError(f"{what} {len(refused)} layer(s) of the plan:\n  " + "\n  ".join(shown) + f"\n{accepts}\n"
                             f"To deploy this plan, pin those layers to a candidate the target takes (--pin "
                             f"'{first}=fp32' on the command line; the plan's costs change, and a layer tied to it, "
                             f"such as a tied output layer, moves with it), or plan for the target: {plan_for}")
