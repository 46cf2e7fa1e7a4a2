"""Fake quantization: round a float tensor onto a format's grid and back, in the same dtype.

Weights are quantized once (per tensor, per output channel, or per group of ``group_size``
consecutive inputs of each output channel; a shorter last group when the size does not
divide). Activations go through an :class:`ActivationQuantizer` that observes calibration
batches, fixes its range, then quantizes.

Range calibration methods: ``minmax``; ``percentile`` (clip at the p-th percentile of |x|
or of each tail); ``mse`` (grid search of a clipping factor minimising the squared error,
as in Banner et al. / Nagel et al., "A White Paper on Neural Network Quantization", sec. 3.5).
"""
from __future__ import annotations

import contextlib
import contextvars

import torch
from torch import nn

from .batches import padding_mask
from .errors import CandidateError
from .formats import FP8_MAX, RANGE_METHODS, FloatFormat, Format, IntFormat, is_dynamic

# Which integer grid the quantizers make; part of every cache key (run entries, plan evaluations,
# rounding checkpoints), so results measured on another grid are never reused. 2: signed symmetric scales.
GRID_VERSION = 2
MSE_GRID = torch.linspace(1.0, 0.2, 41)
_MSE_FACTORS = torch.cat([MSE_GRID, MSE_GRID.new_ones(1)])  # by choice index; the last: no factor beat the full range
_FP8_DTYPES = {"fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}


def int_qparams(lo: torch.Tensor, hi: torch.Tensor, fmt: IntFormat) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero-point mapping [lo, hi] onto [qmin, qmax]; the grid always holds 0 exactly.

    Symmetric: the scale is signed, so that the extreme of the range (the end of larger magnitude)
    lands exactly on qmin = -2^(B-1) whichever its sign, and all 2^B levels are used; the other side
    reaches qmax / -qmin of the extreme (7/8 at 4 bits), and values beyond that are clipped. llama.cpp's
    Q4_0 and NNCF's INT4_SYM do the same. An unsigned max|x| / qmax leaves qmin unused: 15 levels of
    16 at 4 bits, 3 of 4 at 2 bits (benchmarks/symmetric_grid.py measures both)."""
    tiny = torch.finfo(torch.float32).tiny
    if fmt.symmetric and fmt.narrow_range:  # max|x| on +-qmax (GGUF Q8_0: d = amax / 127)
        scale = torch.maximum(-lo.clamp(max=0), hi.clamp(min=0)) / fmt.qmax
        zero_point = torch.zeros_like(scale)
    elif fmt.symmetric:
        lo, hi = lo.clamp(max=0), hi.clamp(min=0)
        scale = torch.where(-lo >= hi, lo, hi) / fmt.qmin  # > 0 when lo is the extreme, < 0 when hi is
        zero_point = torch.zeros_like(scale)
    else:
        lo, hi = lo.clamp(max=0), hi.clamp(min=0)
        scale = (hi - lo) / (fmt.qmax - fmt.qmin)
        zero_point = torch.zeros_like(scale)
    # A zero (or denormal) range means a constant-zero tensor: any scale reproduces it exactly.
    scale = torch.where(scale.abs() > tiny, scale, torch.ones_like(scale))
    if not fmt.symmetric:
        zero_point = torch.clamp(torch.round(fmt.qmin - lo / scale), fmt.qmin, fmt.qmax)
    return scale, zero_point


def fake_quant_int(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, fmt: IntFormat) -> torch.Tensor:
    # x_hat = s' * (clamp(round(x / s) + z, qmin, qmax) - z), s' = s as stored
    q = torch.clamp(torch.round(x / scale) + zero_point, fmt.qmin, fmt.qmax)
    return (q - zero_point) * stored_scale(scale, fmt)


def stored_scale(scale: torch.Tensor, fmt: IntFormat) -> torch.Tensor:
    """The scale values are dequantized with: ``scale``, or ``scale`` rounded to float16 for formats that
    store it so (GGUF blocks; the codes are still chosen with the float32 scale, as ggml's quantizers do)."""
    return scale.to(torch.float16).to(scale.dtype) if fmt.scale_dtype == "fp16" else scale


def fp8_scale(amax: torch.Tensor, kind: str) -> torch.Tensor:
    scale = amax / FP8_MAX[kind]
    return torch.where(scale > torch.finfo(torch.float32).tiny, scale, torch.ones_like(scale))


def fake_quant_fp8(x: torch.Tensor, scale: torch.Tensor, kind: str) -> torch.Tensor:
    limit = FP8_MAX[kind]
    y = torch.clamp(x / scale, -limit, limit).to(_FP8_DTYPES[kind]).to(x.dtype)
    return y * scale


def fake_quant_range(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, fmt: Format) -> torch.Tensor:
    """Quantize float32 ``x`` with the clipping range [lo, hi] (broadcastable)."""
    if isinstance(fmt, IntFormat):
        scale, zero_point = int_qparams(lo, hi, fmt)
        return fake_quant_int(x, scale, zero_point, fmt)
    return fake_quant_fp8(x, fp8_scale(torch.maximum(-lo, hi), fmt.kind), fmt.kind)


def choose_range(rows: torch.Tensor, fmt: Format, method: str = "mse", percentile: float = 99.99,
                 lo: torch.Tensor | None = None, hi: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row clipping range (R, 1) for float32 ``rows`` (R, K); ``lo``/``hi`` override the row extremes.

    A format that fixes its range method (GGUF's: minmax) is calibrated with it, whatever ``method`` says."""
    lo, hi, _ = _rows_range(rows, fmt, method, percentile, lo=lo, hi=hi)
    return lo, hi


def check_range_method(method: str) -> None:
    """A weight or activation range method mixprec knows, else a CandidateError naming them."""
    if method not in RANGE_METHODS:
        raise CandidateError(f"a range method (weight_range, activation_range) must be one of "
                             f"{', '.join(RANGE_METHODS)}, got {method!r}")


def range_methods(weight_range: str | None = None, activation_range: str | None = None,
                  weight_method: str | None = None, activation_method: str | None = None) -> tuple[str, str]:
    """(weight, activation) range methods from the names ``analyze`` and the command line use (weight_range,
    activation_range) or the former names some functions took (weight_method, activation_method), each checked;
    default mse. Both names of one range, set to different methods, are a CandidateError."""
    out = []
    for name, value, old_name, old in (("weight_range", weight_range, "weight_method", weight_method),
                                       ("activation_range", activation_range, "activation_method", activation_method)):
        if value is not None and old is not None and value != old:
            raise CandidateError(f"{name}={value!r} and {old_name}={old!r} name one range twice; give {name} only")
        method = value if value is not None else old if old is not None else "mse"
        check_range_method(method)
        out.append(method)
    return out[0], out[1]


def _rows_range(rows: torch.Tensor, fmt: Format, method: str, percentile: float, choice: torch.Tensor | None = None,
                lo: torch.Tensor | None = None, hi: torch.Tensor | None = None):
    """(lo, hi, choice): the range of each row and, for the mse method, which clipping factor of
    ``MSE_GRID`` each row got (uint8 (R, 1); ``len(MSE_GRID)``: none beat the full range). A given
    ``choice`` skips the search and gives the range the search that made it gave."""
    check_range_method(method)
    method = getattr(fmt, "range_method", None) or method
    lo = rows.amin(dim=1, keepdim=True) if lo is None else lo
    hi = rows.amax(dim=1, keepdim=True) if hi is None else hi
    if method == "percentile":
        q = torch.tensor([1 - percentile / 100, percentile / 100], dtype=rows.dtype, device=rows.device)
        tails = torch.quantile(rows, q, dim=1, keepdim=True)
        return torch.minimum(tails[0], lo.new_zeros(())), torch.maximum(tails[1], hi.new_zeros(())), None
    if method == "minmax":
        return lo, hi, None
    if choice is None:
        choice = _mse_choice(rows, lo, hi, fmt)
    best = _MSE_FACTORS.to(device=lo.device, dtype=lo.dtype)[choice.long()]
    return best * lo, best * hi, choice


def _mse_choice(rows: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, fmt: Format) -> torch.Tensor:
    """The first factor alpha of ``MSE_GRID`` with the least squared error of each row quantized on
    [alpha lo, alpha hi], as its index (uint8 (R, 1)). Several factors are tried in one pass where the
    rows are small (an activation's sample, a small layer): the same errors, fewer kernel launches."""
    best_err = torch.full_like(lo, float("inf"))
    choice = torch.full(lo.shape, len(MSE_GRID), dtype=torch.uint8, device=lo.device)
    limit = MSE_BATCH_ELEMENTS_CUDA if rows.is_cuda else MSE_BATCH_ELEMENTS
    step = max(1, limit // max(1, rows.numel()))
    if step == 1:  # large rows: one factor a pass, on the rows' own shape (broadcasting over a factor axis is slower)
        for i, alpha in enumerate(MSE_GRID.tolist()):
            err = _squared_error(rows, alpha * lo, alpha * hi, fmt)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            choice.masked_fill_(better, i)
        return choice
    factors = MSE_GRID.to(device=lo.device, dtype=lo.dtype)
    for first in range(0, len(MSE_GRID), step):
        alphas = factors[first:first + step].reshape(-1, 1, 1)
        err = _squared_error(rows, alphas * lo, alphas * hi, fmt)  # (factors, R, 1)
        err = torch.where(torch.isnan(err), torch.full_like(err, float("inf")), err)  # NaN is never better
        least, index = err.min(dim=0)  # the first of equal errors, as one factor at a time would keep
        better = least < best_err
        best_err = torch.where(better, least, best_err)
        choice = torch.where(better, (index + first).to(torch.uint8), choice)
    return choice


MSE_BATCH_ELEMENTS = 1 << 18  # how many elements one pass of the mse search holds (factors x rows): small rows
MSE_BATCH_ELEMENTS_CUDA = 1 << 24  # (an activation sample) take several factors a pass; a GPU, whose cost is launches, more


ROW_CHUNK_ELEMENTS = 1 << 24  # weights quantized per channel or group go through float32 this many at a time


def quantize_weight(w: torch.Tensor, fmt: Format | None, method: str = "mse", percentile: float = 99.99) -> torch.Tensor:
    """Fake-quantized copy of ``w`` (dim 0 = output channels); same shape, dtype and device."""
    return quantize_weight_choice(w, fmt, method, percentile)[0]


def quantize_weight_choice(w: torch.Tensor, fmt: Format | None, method: str = "mse", percentile: float = 99.99,
                           choice: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`quantize_weight` and the mse search's choice for every range of ``w`` (uint8, one per
    output channel and group: (out, groups); None for other methods and unscaled formats). Given the
    ``choice`` an earlier call returned for the same tensor and format, the search is skipped (one pass
    instead of ``len(MSE_GRID)``) and the result is the same, bit for bit."""
    if fmt is None:
        return w.clone(), None
    if isinstance(fmt, FloatFormat) and not fmt.scaled:
        return _cast_float(w, fmt), None
    out = w.shape[0] if w.dim() >= 2 else 1
    granularity = fmt.granularity if w.dim() >= 2 else "tensor"
    if granularity == "tensor":
        rows = w.detach().to(torch.float32).reshape(1, -1)
        q, made = _quantize_part(rows, fmt, method, percentile, choice)
        return q.reshape(w.shape).to(w.dtype), made
    # per channel or group, rows are independent: a chunk of rows at a time in float32, so a large
    # weight (an LLM's 128k x 4k output layer) needs no float32 copies of the whole tensor
    source = w.detach().reshape(out, -1)
    q = torch.empty(source.shape, dtype=w.dtype, device=w.device)
    step = max(1, ROW_CHUNK_ELEMENTS // max(1, source.shape[1]))
    quantize = _quantize_part if granularity == "channel" else _quantize_groups
    choices = []
    for i in range(0, out, step):
        part, made = quantize(source[i:i + step].to(torch.float32), fmt, method, percentile,
                              None if choice is None else choice[i:i + step])
        q[i:i + step] = part.to(w.dtype)
        choices.append(made)
    made = torch.cat(choices) if choices and choices[0] is not None else None
    return q.reshape(w.shape), made


def _squared_error(rows: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, fmt: Format) -> torch.Tensor:
    """Each row's sum of squared errors quantized on [lo, hi]: ``fake_quant_range``'s values, in one
    buffer updated in place (the search's inner loop; a symmetric grid's zero-point is 0 and skipped)."""
    if not isinstance(fmt, IntFormat):
        return (fake_quant_range(rows, lo, hi, fmt) - rows).pow(2).sum(dim=-1, keepdim=True)
    scale, zero_point = int_qparams(lo, hi, fmt)
    q = torch.div(rows, scale).round_()
    if not fmt.symmetric:
        q.add_(zero_point)
    q.clamp_(fmt.qmin, fmt.qmax)
    if not fmt.symmetric:
        q.sub_(zero_point)
    return q.mul_(stored_scale(scale, fmt)).sub_(rows).square_().sum(dim=-1, keepdim=True)


def _quantize_part(rows: torch.Tensor, fmt: Format, method: str, percentile: float,
                   choice: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    lo, hi, made = _rows_range(rows, fmt, method, percentile, choice)
    return fake_quant_range(rows, lo, hi, fmt), made


def _quantize_groups(rows: torch.Tensor, fmt: IntFormat, method: str, percentile: float,
                     choice: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    out, k = rows.shape
    size = fmt.group_size
    full = (k // size) * size
    parts, made = [], []
    if full:
        given = None if choice is None else choice[:, :full // size].reshape(-1, 1)
        part, chosen = _quantize_part(rows[:, :full].reshape(-1, size), fmt, method, percentile, given)
        parts.append(part.reshape(out, full))
        made.append(None if chosen is None else chosen.reshape(out, full // size))
    if full < k:  # the shorter last group gets its own scale
        given = None if choice is None else choice[:, full // size:]
        part, chosen = _quantize_part(rows[:, full:], fmt, method, percentile, given)
        parts.append(part)
        made.append(chosen)
    return torch.cat(parts, dim=1), (torch.cat(made, dim=1) if made[0] is not None else None)


CHUNK_VALUES = 1 << 22  # weight values whose codes :func:`row_chunks` lets a caller make at a time


def row_chunks(rows: int, per_row: int, fmt: IntFormat) -> list[slice]:
    """The output rows of a weight in slices of a few million values, whose codes can be made apart (each row
    has its own scales but in a per-tensor format, whose one slice is every row): the float temporaries of
    codes made whole for a large output layer (128k x 4096) take several times its weights."""
    size = rows if fmt.granularity == "tensor" else max(1, CHUNK_VALUES // max(per_row, 1))
    return [slice(start, start + size) for start in range(0, rows, size)]


def weight_qparams(rows: torch.Tensor, fmt: IntFormat, method: str = "mse",
                   percentile: float = 99.99) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero-point of every element of a weight as :func:`quantize_weight` chooses them.

    ``rows``: the float32 weight as (output channels, inputs); both results have its shape, so
    ``fake_quant_int(rows, *weight_qparams(rows, fmt), fmt)`` is ``quantize_weight`` exactly.
    Rounding back-ends use it to keep the grid (and so the costs) of nearest rounding.
    """
    out, k = rows.shape
    if fmt.granularity in ("tensor", "channel"):
        lo, hi = choose_range(rows.reshape(1, -1) if fmt.granularity == "tensor" else rows, fmt, method, percentile)
        scale, zero_point = int_qparams(lo, hi, fmt)
        return scale.expand(out, k).contiguous(), zero_point.expand(out, k).contiguous()
    size = fmt.group_size
    full = (k // size) * size
    scales, zero_points = [], []
    if full:
        lo, hi = choose_range(rows[:, :full].reshape(-1, size), fmt, method, percentile)
        s, z = int_qparams(lo, hi, fmt)
        scales.append(s.expand(-1, size).reshape(out, full))
        zero_points.append(z.expand(-1, size).reshape(out, full))
    if full < k:  # the shorter last group gets its own scale
        lo, hi = choose_range(rows[:, full:], fmt, method, percentile)
        s, z = int_qparams(lo, hi, fmt)
        scales.append(s.expand(-1, k - full))
        zero_points.append(z.expand(-1, k - full))
    return torch.cat(scales, dim=1), torch.cat(zero_points, dim=1)


def _cast_float(x: torch.Tensor, fmt: FloatFormat) -> torch.Tensor:
    if fmt.kind == "fp32":
        return x.clone()
    dtype = torch.float16 if fmt.kind == "fp16" else torch.bfloat16
    return x.to(dtype).to(x.dtype)


def fake_quant_blocks(x: torch.Tensor, fmt: IntFormat) -> torch.Tensor:
    """Symmetric narrow-range codes per block of ``fmt.group_size`` values along the last dimension, the scale
    of each block max|x| / qmax, with MLAS's arithmetic (QuantizeARow_CompInt8): codes = round-half-even(x *
    (qmax / max|x|)), values = codes * (max|x| / qmax), an all-zero block zero; a last, shorter block on its
    own values."""
    k, size = x.shape[-1], fmt.group_size
    pad = (-k) % size
    rows = torch.nn.functional.pad(x, (0, pad)) if pad else x
    blocks = rows.reshape(*rows.shape[:-1], -1, size)
    amax = blocks.abs().amax(dim=-1, keepdim=True)
    qmax = torch.tensor(float(fmt.qmax), dtype=x.dtype, device=x.device)
    inverse = torch.where(amax > 0, qmax / amax, torch.zeros_like(amax))
    codes = torch.clamp(torch.round(blocks * inverse), -fmt.qmax, fmt.qmax)
    values = (codes * (amax / qmax)).reshape(rows.shape)
    return values[..., :k] if pad else values


def needs_calibration(fmt: Format | None) -> bool:
    """Whether an input quantizer of ``fmt`` needs a range from calibration data (not float, unscaled float
    casts or dynamic formats, whose ranges come from each input)."""
    return fmt is not None and not (isinstance(fmt, FloatFormat) and not fmt.scaled) and not is_dynamic(fmt)


# the real tokens of the batch being calibrated on (a padded batch of texts), or None: observers leave the padded
# positions out of the ranges (real_tokens)
_TOKEN_MASK: contextvars.ContextVar = contextvars.ContextVar("mixprec_token_mask", default=None)


@contextlib.contextmanager
def real_tokens(inputs):
    """While a batch is calibrated on: where it is a dict with an ``attention_mask`` (batch, tokens) holding some 0,
    activation observers see the real tokens' positions alone."""
    mask = padding_mask(inputs)
    if mask is None:
        yield
        return
    token = _TOKEN_MASK.set(mask)
    try:
        yield
    finally:
        _TOKEN_MASK.reset(token)


# values an activation quantizer keeps for its range search (a 16th of it from each batch): apply's, and the
# sensitivity analysis's, so that a table's entry is measured on the range the applied plan gets
ACTIVATION_SAMPLES = 1 << 20


class ActivationQuantizer(nn.Module):
    """Per-tensor quantizer of a layer input: observes while ``observing``, then quantizes.

    Observation keeps the exact min/max and a random subsample of values (at most
    ``max_samples``) for the percentile and MSE methods.
    """

    def __init__(self, fmt: Format | None, method: str = "mse", percentile: float = 99.99,
                 max_samples: int = ACTIVATION_SAMPLES):
        super().__init__()
        check_range_method(method)
        self.fmt, self.method, self.percentile, self.max_samples = fmt, method, percentile, max_samples
        self.observing = self.needs_calibration
        self.register_buffer("lo", torch.zeros(()))
        self.register_buffer("hi", torch.zeros(()))
        self._seen_lo: torch.Tensor | None = None
        self._seen_hi: torch.Tensor | None = None
        self._samples: list[torch.Tensor] = []
        self._generator = torch.Generator().manual_seed(0)

    @property
    def needs_calibration(self) -> bool:
        return needs_calibration(self.fmt)

    @property
    def calibrated(self) -> bool:
        return not self.needs_calibration or not self.observing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fmt is None or not torch.is_floating_point(x):
            return x
        if isinstance(self.fmt, FloatFormat) and not self.fmt.scaled:
            return _cast_float(x, self.fmt)
        if is_dynamic(self.fmt):
            return fake_quant_blocks(x.to(torch.float32), self.fmt).to(x.dtype)
        if self.observing:
            self._observe(x)
            return x
        return fake_quant_range(x.to(torch.float32), self.lo, self.hi, self.fmt).to(x.dtype)

    @torch.no_grad()
    def _observe(self, x: torch.Tensor) -> None:
        mask = _TOKEN_MASK.get()
        if mask is not None and x.ndim >= 3 and tuple(x.shape[:2]) == tuple(mask.shape):
            x = x[mask.to(x.device)]  # a padded batch of texts: its padding's activations are no text's
        finite = x.detach().reshape(-1).to(torch.float32)
        if finite.numel() == 0:
            return
        lo, hi = torch.aminmax(finite)  # NaN propagates to both, an infinity to one of them
        if not bool(torch.isfinite(lo) & torch.isfinite(hi)):  # the rare case: observe the finite values only
            finite = finite[torch.isfinite(finite)]
            if finite.numel() == 0:
                return
            lo, hi = torch.aminmax(finite)
        self._seen_lo = lo if self._seen_lo is None else torch.minimum(self._seen_lo, lo)
        self._seen_hi = hi if self._seen_hi is None else torch.maximum(self._seen_hi, hi)
        if self.method != "minmax":
            keep = max(self.max_samples // 16, 1)
            if finite.numel() <= keep:  # all of a batch that fits: the same values whatever the order of the samples
                self._samples.append(finite.cpu())
            else:  # drawn with replacement, the repeats dropped where they are many (up to 4x the budget: a
                # quarter and more of the draws); far above it they are few, and a permutation of a whole batch
                # per observation costs more than the rest of the calibration (14x a draw at 500K values)
                index = torch.randint(finite.numel(), (keep,), generator=self._generator)
                if finite.numel() <= 4 * keep:
                    index = index.unique()
                self._samples.append(finite[index.to(finite.device)].cpu())
            if sum(s.numel() for s in self._samples) > self.max_samples:
                pool = torch.cat(self._samples)
                pick = torch.randperm(pool.numel(), generator=self._generator)[: self.max_samples]
                self._samples = [pool[pick]]

    @torch.no_grad()
    def finish_calibration(self) -> None:
        """Fix the range from what was observed; a quantizer that saw nothing raises."""
        if not self.observing:
            return
        if self._seen_lo is None:
            raise RuntimeError("activation quantizer observed no finite values during calibration")
        lo, hi = self._seen_lo.reshape(1, 1), self._seen_hi.reshape(1, 1)
        if self.method != "minmax":
            sample = torch.cat(self._samples).reshape(1, -1).to(lo.device)
            lo, hi = choose_range(sample, self.fmt, self.method, self.percentile,
                                  lo=None if self.method == "percentile" else lo,
                                  hi=None if self.method == "percentile" else hi)
        self.lo = lo.reshape(()).to(self.lo.device)
        self.hi = hi.reshape(()).to(self.hi.device)
        self.observing = False
        self._samples, self._seen_lo, self._seen_hi = [], None, None

    def extra_repr(self) -> str:
        return f"fmt={self.fmt.name if self.fmt else None}, method={self.method}"
