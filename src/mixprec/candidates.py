"""Candidates: the legal options for a quantizer group, parsed from short strings.

Grammar (case-insensitive)::

    w<B>[g<G>][x<K>][a<B>[d<N>]][-asym][-minmax|-mse]
                               integer weights of B bits (2..16; w16 = float16), per output
                               channel, or per group of G inputs; x<K>: multipoint, up to K
                               (2..8) B-bit points per output channel, each with its own
                               scales, the count chosen per channel on calibration data
                               (mixprec.multipoint); a<B> quantizes the layer input to B bits
                               (a16 = float16); without a<B> the candidate is weight-only and
                               the input stays float; a<B>d<N>: the input is quantized at run time,
                               each row's blocks of N values with their own symmetric scale
                               max|x| / (2^(B-1) - 1) (ONNX Runtime's MatMulNBits at
                               accuracy_level 4 does this with B = 8 and N its block; ort-cpu
                               exports w8a8d32 / w4g64a8d64 so). -asym: asymmetric weights.
                               -minmax / -mse: this candidate's weight ranges are chosen so,
                               whatever --weight-range says (two candidates that differ only in
                               it cost the same; analyze --weight-range auto picks per candidate).
    fp8 | fp8e5m2             FP8 e4m3 (or e5m2) weights per channel and inputs per tensor
    fp16 | bf16               16-bit float weights and inputs
    fp32                      no quantization (the float reference)
    q8_0 | q4_0               GGUF's (llama.cpp's) block formats, weight-only: blocks of 32 inputs,
                               one float16 scale each, min/max ranges; q8_0: d = max|x| / 127,
                               codes -127..127; q4_0: d = (the value of largest magnitude) / -8,
                               codes -8..7 (mixprec.export.gguf writes them)

Examples: w8a8, w4a8, w8a16, w16a16 (float16), w4, w4g128, w2g64, w4g128-asym, fp8, fp16,
w4x2a8 (4-bit, up to 2 points per channel, 8-bit inputs), w4g128x2, w4g64-minmax.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import CandidateError
from .formats import FloatFormat, Format, IntFormat

VALID_FORMS = ("w<B>a<B> (e.g. w8a8, w4a8, w8a16, w16a16)", "w<B> weight-only (e.g. w4, w8)",
               "w<B>g<G> grouped weight-only (e.g. w4g128, w2g64)", "w<B>g<G>a<B>",
               "dynamic inputs in blocks a<B>d<N> (e.g. w8a8d32, w4g64a8d64)", "suffix -asym (e.g. w4g128-asym)",
               "suffix -minmax or -mse: the weight range method (e.g. w4g64-minmax)",
               "multipoint x<K> after the weight part, up to K points per channel (e.g. w4x2a8, w4g128x2)",
               "fp8, fp8e5m2, fp16, bf16, fp32", "GGUF blocks q8_0, q4_0")
_PATTERN = re.compile(r"^w(\d+)(?:g(\d+))?(?:x(\d+))?(?:a(\d+)(?:d(\d+))?)?(-asym)?(?:-(minmax|mse))?$")
# Weight range methods a candidate can fix for itself (suffix -minmax / -mse).
CANDIDATE_RANGES = ("minmax", "mse")
MAX_POINTS = 8
# GGUF's Q8_0 and Q4_0 (ggml-quants.c, quantize_row_q8_0_ref / quantize_row_q4_0_ref): 32 inputs a block.
GGUF_BLOCK = 32
GGUF_FORMATS = {
    "q8_0": IntFormat(8, True, "group", GGUF_BLOCK, narrow_range=True, scale_dtype="fp16", range_method="minmax"),
    "q4_0": IntFormat(4, True, "group", GGUF_BLOCK, scale_dtype="fp16", range_method="minmax"),
}
# Bits an unquantized (float) input is counted at in BOPs: weight-only kernels run on float16.
FLOAT_ACTIVATION_BITS = 16


@dataclass(frozen=True)
class Candidate:
    """Weight format and input-activation format of a group (None = left in float32).

    ``points`` > 1: multipoint weights, up to that many ``weight``-format points per output
    channel (mixprec.multipoint); how many each channel takes is chosen on calibration data.
    """

    name: str
    weight: Format | None
    activation: Format | None
    points: int = 1

    @property
    def multipoint(self) -> bool:
        return self.points > 1

    @property
    def weight_bits(self) -> int:
        return 32 if self.weight is None else self.weight.bits

    @property
    def activation_bits(self) -> int:
        """Bits of the layer input in BOPs: the quantized width, 32 for fp32, else float16."""
        if self.activation is not None:
            return self.activation.bits
        return 32 if self.weight is None else FLOAT_ACTIVATION_BITS

    @property
    def weight_only(self) -> bool:
        return self.activation is None

    @property
    def quantizes_input(self) -> bool:
        """A quantized layer's input quantized too: what a TorchScript model cannot take (no module can be added)."""
        return self.activation is not None and self.weight is not None

    def __str__(self) -> str:
        return self.name


def _int_bits(text: str, what: str, spec: str) -> int:
    bits = int(text)
    if not 2 <= bits <= 16:
        raise CandidateError(f"{what} bit-width {bits} in candidate {spec!r} is out of range 2..16")
    return bits


def _what_is_wrong(text: str) -> str | None:
    """The part of a candidate string that the grammar refuses, for the common slips, or None."""
    suffixes = re.findall(r"-([a-z0-9_]+)", text)
    ranges = [s for s in suffixes if s in CANDIDATE_RANGES]
    if "asym" in suffixes and ranges and suffixes.index(ranges[0]) < suffixes.index("asym"):
        return f"-asym comes before the range suffix (e.g. {text.replace('-asym', '').replace('-' + ranges[0], '')}" \
               f"-asym-{ranges[0]})"
    unknown = [s for s in suffixes if s not in (*CANDIDATE_RANGES, "asym")]
    if unknown:
        known = {"percentile": "percentile is a --weight-range or --activation-range value, not a candidate suffix "
                               "(a candidate takes -minmax or -mse)",
                 "sym": "weights are symmetric unless -asym is given"}
        for s in unknown:
            if s in known:
                return known[s]
            if s.replace("_", "").replace("-", "") in ("pertensor", "perchannel", "tensor", "channel"):
                return "weights are per output channel unless grouped (g<G>, e.g. w4g128); there is no per-tensor " \
                       "weight candidate"
        return f"unknown suffix -{unknown[0]} (suffixes: -asym, then -minmax or -mse)"
    body = text.split("-")[0]
    if not re.match(r"w\d", body):  # not an integer candidate at all: the letters after w mean nothing here
        if re.match(r"q\d", body):
            return f"the GGUF block types here are {', '.join(GGUF_FORMATS)}"
        return "an integer candidate starts with w and its weight bits (e.g. w8a8: int8 weights and inputs)" \
            if body else None
    for letter, what, example in (("g", "a group size", "w4g128"), ("x", "a number of points", "w4x2"),
                                  ("a", "an activation bit-width", "w4a8"), ("d", "a block size", "w8a8d32")):
        if re.search(letter + r"(?!\d)", body[1:]):
            return f"{letter} takes {what} after it (e.g. {example})"
    return None


def parse_candidate(spec: str | Candidate) -> Candidate:
    """Parse a candidate string; the error lists the valid forms."""
    if isinstance(spec, Candidate):
        return spec
    if not isinstance(spec, str):
        raise CandidateError(f"a candidate must be a string such as 'w4a8', got {type(spec).__name__}")
    text = spec.strip().lower()
    floats = {"fp32": (None, None), "fp16": (FloatFormat("fp16"), FloatFormat("fp16")),
              "bf16": (FloatFormat("bf16"), FloatFormat("bf16")),
              "fp8": (FloatFormat("fp8_e4m3", "channel"), FloatFormat("fp8_e4m3")),
              "fp8e4m3": (FloatFormat("fp8_e4m3", "channel"), FloatFormat("fp8_e4m3")),
              "fp8e5m2": (FloatFormat("fp8_e5m2", "channel"), FloatFormat("fp8_e5m2")),
              **{name: (fmt, None) for name, fmt in GGUF_FORMATS.items()}}
    if text in floats:
        canonical = {"fp8e4m3": "fp8"}.get(text, text)
        return Candidate(canonical, *floats[text])
    match = _PATTERN.match(text)
    if not match:
        hint = _what_is_wrong(text)
        raise CandidateError(f"unknown candidate {spec!r}{'; ' + hint if hint else ''}; valid forms: "
                             + "; ".join(VALID_FORMS))
    wbits_s, group_s, points_s, abits_s, block_s, asym, weight_range = match.groups()
    wbits = _int_bits(wbits_s, "weight", spec)
    points = int(points_s) if points_s else 1
    if not 1 <= points <= MAX_POINTS:
        raise CandidateError(f"candidate {spec!r}: the number of points x<K> must be 1..{MAX_POINTS} "
                             f"(e.g. w4x2), got {points}")
    if wbits == 16:
        if group_s or asym or points > 1 or weight_range:
            raise CandidateError(f"candidate {spec!r}: w16 means float16 weights, which take no group size, "
                                 "points (x<K>), -asym or a range suffix")
        weight: Format = FloatFormat("fp16")
    elif group_s:
        group = int(group_s)
        if group < 1:
            raise CandidateError(f"candidate {spec!r}: group size must be >= 1")
        weight = IntFormat(wbits, symmetric=not asym, granularity="group", group_size=group,
                           range_method=weight_range)
    else:
        weight = IntFormat(wbits, symmetric=not asym, granularity="channel", range_method=weight_range)
    activation: Format | None = None
    if abits_s:
        abits = _int_bits(abits_s, "activation", spec)
        if block_s:  # dynamic: each row's blocks of N inputs get their own symmetric scale at run time
            block = int(block_s)
            if abits > 8 or block < 1:
                raise CandidateError(f"candidate {spec!r}: dynamic inputs a<B>d<N> take B <= 8 bits in blocks of "
                                     f"N >= 1 inputs (e.g. w8a8d32), got a{abits}d{block}")
            activation = IntFormat(abits, symmetric=True, granularity="group", group_size=block, narrow_range=True,
                                   range_method="minmax")
        else:
            activation = FloatFormat("fp16") if abits == 16 else IntFormat(abits, symmetric=False, granularity="tensor")
    name = (f"w{wbits}" + (f"g{int(group_s)}" if group_s else "") + (f"x{points}" if points > 1 else "")
            + (f"a{int(abits_s)}" if abits_s else "") + (f"d{int(block_s)}" if block_s else "") + (asym or "") + (f"-{weight_range}" if weight_range else ""))
    return Candidate(name, weight, activation, points)


def check_distinct(candidates: list[Candidate], weight_range: str, given: list[str] | None = None) -> None:
    """Refuse two candidates that are one format once a name without a range suffix takes the run's weight range
    (w4a8 and w4a8-mse under weight_range "mse", or after "auto" chose mse for w4a8): the table would hold two
    columns of the same entries, and a budget or pin naming one would be ambiguous."""
    from dataclasses import replace
    given = given if given is not None and len(given) == len(candidates) else [c.name for c in candidates]
    seen: dict[tuple, int] = {}
    for i, c in enumerate(candidates):
        weight = c.weight
        if isinstance(weight, IntFormat) and weight.range_method is None and weight_range in ("mse", "minmax"):
            weight = replace(weight, range_method=weight_range)
        key = (weight, c.activation, c.points)
        if key in seen:
            j = seen[key]
            renamed = [k for k in (i, j) if given[k] != candidates[k].name]  # by weight_range "auto"
            how = (f"--weight-range auto chose {candidates[renamed[0]].name} for {given[renamed[0]]}" if renamed else
                   f"a name without a range suffix takes --weight-range's ({weight_range})")
            raise CandidateError(f"duplicate candidates: {given[j]} and {given[i]} are the same format ({how}); "
                                 "give one of them")
        seen[key] = i


def parse_candidates(specs: str | list[str]) -> list[Candidate]:
    """Parse a comma-separated list (or a list) of candidates, refusing duplicates."""
    items = [s for s in (specs.split(",") if isinstance(specs, str) else specs)]
    items = [s.strip() if isinstance(s, str) else s for s in items if not (isinstance(s, str) and not s.strip())]
    if not items:
        raise CandidateError("no candidates given; e.g. --candidates w4a8,w8a8,w16a16")
    out = [parse_candidate(s) for s in items]
    seen: dict[tuple, str] = {}
    for c in out:
        key = (c.weight, c.activation, c.points)
        if key in seen:
            same = c.name if seen[key] == c.name else f"{seen[key]} and {c.name} (the same formats)"
            raise CandidateError(f"duplicate candidates: {same}")
        seen[key] = c.name
    return out
