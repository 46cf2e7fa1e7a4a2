"""Number formats a quantizer can target: uniform integers and (simulated) floats.

Formats are small frozen dataclasses validated at construction; they know their bit-width
and how many scale/zero-point values they need, nothing about tensors.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import CandidateError

GRANULARITIES = ("tensor", "channel", "group")
FLOAT_KINDS = {"fp32": 32, "fp16": 16, "bf16": 16, "fp8_e4m3": 8, "fp8_e5m2": 8}
# Largest finite value of each FP8 flavour (OCP FP8 spec): the scale maps amax onto it.
FP8_MAX = {"fp8_e4m3": 448.0, "fp8_e5m2": 57344.0}
# Scales are stored as float16 (as in GPTQ/AWQ/NNCF checkpoints); zero-points at the weight bit-width.
SCALE_BITS = 16
RANGE_METHODS = ("minmax", "percentile", "mse")
SCALE_DTYPES = ("fp32", "fp16")


@dataclass(frozen=True)
class IntFormat:
    """Uniform affine integer grid: q = clamp(round(x / scale) + zero_point, qmin, qmax).

    The defaults are mixprec's own grids. GGUF's block formats (candidates q8_0, q4_0) fix three more
    things: ``narrow_range`` (symmetric codes -qmax..qmax, scale max|x| / qmax: Q8_0), ``scale_dtype``
    'fp16' (codes are chosen with the float32 scale, values dequantized with it rounded to float16,
    as ggml stores it) and ``range_method`` (the range the format is defined with, whatever the caller
    asks: GGUF's are min/max)."""

    bits: int
    symmetric: bool = True
    granularity: str = "tensor"
    group_size: int | None = None
    narrow_range: bool = False
    scale_dtype: str = "fp32"
    range_method: str | None = None

    def __post_init__(self):
        if not isinstance(self.bits, int) or not 2 <= self.bits <= 16:
            raise CandidateError(f"integer bit-width must be 2..16, got {self.bits!r}")
        if self.narrow_range and not self.symmetric:
            raise CandidateError("narrow_range (codes -qmax..qmax) needs a symmetric grid")
        if self.scale_dtype not in SCALE_DTYPES:
            raise CandidateError(f"scale_dtype must be one of {SCALE_DTYPES}, got {self.scale_dtype!r}")
        if self.range_method is not None and self.range_method not in RANGE_METHODS:
            raise CandidateError(f"range_method must be one of {RANGE_METHODS} or None, got {self.range_method!r}")
        if self.granularity not in GRANULARITIES:
            raise CandidateError(f"granularity must be one of {GRANULARITIES}, got {self.granularity!r}")
        if self.granularity == "group":
            if not isinstance(self.group_size, int) or self.group_size < 1:
                raise CandidateError(f"group granularity needs a positive group_size, got {self.group_size!r}")
        elif self.group_size is not None:
            raise CandidateError(f"group_size is only valid with granularity='group' (got {self.granularity!r})")

    @property
    def qmin(self) -> int:
        if not self.symmetric:
            return 0
        return -self.qmax if self.narrow_range else -(2 ** (self.bits - 1))

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.symmetric else 2 ** self.bits - 1

    def num_scales(self, shape: tuple[int, ...]) -> int:
        """Number of (scale, zero-point) pairs for a weight of this shape (dim 0 = output channels)."""
        if self.granularity == "tensor" or len(shape) < 2:
            return 1
        out = shape[0]
        if self.granularity == "channel":
            return out
        per_row = math.prod(shape[1:])
        return out * math.ceil(per_row / self.group_size)

    def storage_bits(self, shape: tuple[int, ...]) -> int:
        """Bits to store a tensor of this shape: codes + float16 scales + zero-points (asymmetric)."""
        n = math.prod(shape)
        per_scale = SCALE_BITS + (0 if self.symmetric else self.bits)
        return n * self.bits + self.num_scales(shape) * per_scale

    @property
    def name(self) -> str:
        g = {"tensor": "t", "channel": "c"}.get(self.granularity, f"g{self.group_size}")
        return (f"int{self.bits}{'s' if self.symmetric else 'a'}{'n' if self.narrow_range else ''}-{g}"
                + ("-fp16scale" if self.scale_dtype == "fp16" else ""))


@dataclass(frozen=True)
class FloatFormat:
    """float32 (no-op), float16/bfloat16 (cast) or FP8 (scaled cast, per tensor or channel)."""

    kind: str
    granularity: str = "tensor"

    def __post_init__(self):
        if self.kind not in FLOAT_KINDS:
            raise CandidateError(f"float format must be one of {sorted(FLOAT_KINDS)}, got {self.kind!r}")
        if self.granularity not in ("tensor", "channel"):
            raise CandidateError(f"float formats support granularity 'tensor' or 'channel', got {self.granularity!r}")

    @property
    def bits(self) -> int:
        return FLOAT_KINDS[self.kind]

    @property
    def scaled(self) -> bool:
        return self.kind in FP8_MAX

    def num_scales(self, shape: tuple[int, ...]) -> int:
        if not self.scaled:
            return 0
        return shape[0] if self.granularity == "channel" and len(shape) >= 2 else 1

    def storage_bits(self, shape: tuple[int, ...]) -> int:
        return math.prod(shape) * self.bits + self.num_scales(shape) * SCALE_BITS

    @property
    def name(self) -> str:
        return self.kind


Format = IntFormat | FloatFormat


def is_dynamic(fmt: "Format | None") -> bool:
    """An input format whose ranges come from the values at run time: an integer grid per block of each row's
    last dimension (candidates ``w<B>[g<G>]a8d<N>``, what ONNX Runtime's MatMulNBits does at accuracy_level 4)."""
    return isinstance(fmt, IntFormat) and fmt.granularity == "group"


def is_static_integer(fmt: "Format | None") -> bool:
    """An integer input format with calibrated ranges: the inputs an int8 graph quantizes with QuantizeLinear nodes
    (not float, not weight-only, not dynamic)."""
    return isinstance(fmt, IntFormat) and not is_dynamic(fmt)
