"""GPTQ: Frantar, Ashkboos, Hoefler, Alistarh, "GPTQ: Accurate post-training quantization for
generative pre-trained transformers" (ICLR 2023); reference code IST-DASLab/gptq, gptq.py.

The weight is quantized column by column; the error of each quantized column is spread onto the
columns not quantized yet through the inverse Hessian of the layer-wise loss ||WX - QX||^2,
H = 2 X X^T / n (X: the layer's inputs, one column per token, sample or conv patch). Linear
layers take their inputs as they are; Conv1d/Conv2d inputs are unfolded into the patches their
weight multiplies (im2col, as the reference does; capture.layer_columns), one Hessian per convolution group.

Scales: per-channel (and per-tensor) scales are fixed once from the float weights with
quantize_weight's range method, so the grid is nearest rounding's. A grouped scale is chosen
when the group's first column is quantized, from the group's current (error-updated) weights
(the reference's static_groups=False). With act-order that is the group's first column in the
processing order, so groups stay contiguous in the original column order: what a grouped kernel
stores and what the costs count. static_groups=True fixes them from the float weights instead.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..capture import add_moments
from ..errors import RoundingError, RoundingNote
from ..formats import IntFormat
from ..quantizers import choose_range, fake_quant_int, int_qparams, weight_qparams
from .config import RoundingConfig

@dataclass(frozen=True)
class GPTQ(RoundingConfig):
    """GPTQ's options, with the reference code's defaults except act-order, which is on: mixprec keeps each
    group's columns together whatever the order they are quantized in, so act-order changes only the rounding,
    never the format or the kernel that runs it, and it is much better at 4 bits (SmolLM2-135M at w4g64:
    perplexity 49.91 plain, 42.08 with act-order; benchmarks/results/rounding_smollm2_gptq_options.json)."""
    name: ClassVar[str] = "gptq"
    sequential: ClassVar[bool] = True  # inputs from the model whose earlier layers are already quantized (sec. 4)
    act_order: bool = True
    block_size: int = 128
    percdamp: float = 0.01
    static_groups: bool = False

    def __post_init__(self):
        for name in ("act_order", "static_groups"):
            if not isinstance(getattr(self, name), bool):
                raise RoundingError(f"gptq option {name} must be True or False, got {getattr(self, name)!r}")
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int) or self.block_size < 1:
            raise RoundingError(f"gptq option block_size must be a positive integer (128 in the paper), "
                                f"got {self.block_size!r}")
        if not isinstance(self.percdamp, (int, float)) or not 0 <= self.percdamp < 1:
            raise RoundingError(f"gptq option percdamp must be in [0, 1) (0.01 in the paper), got {self.percdamp!r}")

    def observe(self, state: list | None, layer: nn.Module, x: torch.Tensor) -> list:
        """Accumulate [sum of x x^T per convolution group, number of columns] from one call's input."""
        return add_moments(state, layer, x)

    def round_layer(self, layer: nn.Module, state: list, fmt: IntFormat, weight_method: str) -> torch.Tensor:
        return round_layer(layer, state, fmt, weight_method, **self.options())

    def round_step(self, layers: dict[str, nn.Module], states: dict[str, list], formats: dict[str, IntFormat],
                   weight_method: str) -> dict[str, torch.Tensor]:
        """Linear layers that read one input (Q/K/V, gate/up) at one format share the Hessian, and
        GPTQ treats every output row alike given it: their rows go through one column loop
        (:func:`stack_rows`), a third of the loops for Q/K/V."""
        short = [name for name in layers if states[name][1] < states[name][0].shape[-1]]  # rows < inputs
        if short and not _SAID_SHORT:  # once a process: an LLM's every layer would say it again
            _SAID_SHORT.append(short[0])
            rows, inputs = states[short[0]][1], states[short[0]][0].shape[-1]
            warnings.warn(f"GPTQ: layer {short[0]} saw {rows} input rows on the calibration data, fewer than its "
                          f"{inputs} inputs (and others may too), so its Hessian is singular and GPTQ's updates fit "
                          "those few rows, which can end far worse than nearest rounding; give more calibration "
                          f"samples (several times {inputs} rows)", RoundingNote, stacklevel=2)
        out: dict[str, torch.Tensor] = {}
        for names in stack_rows(layers, states, formats):
            if len(names) == 1:
                out[names[0]] = self.round_layer(layers[names[0]], states[names[0]], formats[names[0]], weight_method)
                continue
            weights = [layers[name].weight.detach() for name in names]
            rounded = round_weight(torch.cat(weights), states[names[0]], formats[names[0]], weight_method,
                                   **self.options())
            for name, part in zip(names, rounded.split([w.shape[0] for w in weights])):
                out[name] = part.clone()
        return out


_SAID_SHORT: list[str] = []  # the layer a process first said had fewer input rows than inputs


def stack_rows(layers: dict[str, nn.Module], states: dict[str, list], formats: dict[str, IntFormat]) -> list[list[str]]:
    """The layers in runs that may be rounded as one: nn.Linear with the same input width, weight
    dtype and device, format, and Hessian (the same calibration inputs); the others alone."""
    runs: list[list[str]] = []
    for name, layer in layers.items():
        last = runs[-1][0] if runs else None
        if (last is not None and isinstance(layer, nn.Linear) and isinstance(layers[last], nn.Linear)
                and layer.weight.shape[1] == layers[last].weight.shape[1]
                and layer.weight.dtype == layers[last].weight.dtype and layer.weight.device == layers[last].weight.device
                and formats[name] == formats[last] and states[name][1] == states[last][1]
                and torch.equal(states[name][0], states[last][0])):
            runs[-1].append(name)
        else:
            runs.append([name])
    return runs


ROW_CHUNK_ELEMENTS = 1 << 27  # a layer's rows go through GPTQ this many weights at a time (float32 work copies)


def round_layer(layer: nn.Module, state: list, fmt: IntFormat, weight_method: str, **options) -> torch.Tensor:
    return round_weight(layer.weight.detach(), state, fmt, weight_method, **options)


def round_weight(weight: torch.Tensor, state: list, fmt: IntFormat, weight_method: str, *, act_order: bool,
                 block_size: int, percdamp: float, static_groups: bool) -> torch.Tensor:
    """``weight`` rounded by GPTQ from its inputs' ``state``, in its dtype. Rows are independent given the
    Hessian, so a large weight (an LLM's output layer) goes a chunk of rows at a time: its float32 copies,
    grids and result stay a few GB, not several copies of the whole layer."""
    source = weight.reshape(weight.shape[0], -1)
    hessians = 2 * state[0] / state[1]  # H = 2 X X^T / n (sec. 3)
    rows = source.shape[0] // hessians.shape[0]
    out = torch.empty(source.shape, dtype=weight.dtype, device=weight.device)
    step = max(1, ROW_CHUNK_ELEMENTS // max(1, source.shape[1]))
    for g, H in enumerate(hessians):  # output channels of convolution group g read only its input channels
        for start in range(g * rows, (g + 1) * rows, step):
            r = slice(start, min(start + step, (g + 1) * rows))
            W = source[r].float()
            scale, zero_point = weight_qparams(W, fmt, weight_method)
            out[r] = gptq(W, H, scale, zero_point, fmt, weight_method, act_order=act_order, block_size=block_size,
                          percdamp=percdamp, static_groups=static_groups)[0].to(weight.dtype)
            del W, scale, zero_point
    return out.reshape(weight.shape)


@torch.no_grad()
def gptq(weight: torch.Tensor, hessian: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
         fmt: IntFormat, method: str = "mse", *, act_order: bool = False, block_size: int = 128,
         percdamp: float = 0.01, static_groups: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Algorithm 1 of the paper on float32 ``weight`` (rows, columns) with ``hessian`` (columns, columns).

    ``scale``/``zero_point`` (rows, columns) give every weight's grid; grouped entries are chosen
    anew at each group's start unless ``static_groups``. Returns (quantized weight, scale,
    zero_point), each (rows, columns), in the original column order.
    """
    W, H = weight.clone(), hessian
    scale, zero_point = scale.clone(), zero_point.clone()
    columns = W.shape[1]
    dead = torch.diag(H) == 0
    if bool(dead.any()):  # a column no input reaches: its value never matters; the reference sets it to 0
        H = H.clone()  # the caller's Hessian stays as it was (a layer's row chunks share it)
        H[dead, dead] = 1
        W[:, dead] = 0
    # act-order (sec. 4, "Additional details"): columns with the largest H_pp first (else no copies)
    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(columns, device=W.device)
    if act_order:
        W, H, scale, zero_point = W[:, perm], H[perm][:, perm], scale[:, perm], zero_point[:, perm]
    regroup = fmt.granularity == "group" and not static_groups
    # the group of the column at each position, and each group's positions (all at or after its first),
    # worked out once on the host: the column loop below never waits for the device
    group = (perm // fmt.group_size).tolist() if regroup else []
    positions: dict[int, list[int]] = {}
    for position, g in enumerate(group):
        positions.setdefault(g, []).append(position)
    members_of = {g: slice(p[0], p[-1] + 1) if p[-1] - p[0] == len(p) - 1 else torch.tensor(p, device=W.device)
                  for g, p in positions.items()}  # a slice (a view) where a group's columns stay together
    started: set[int] = set()
    Hinv = _inverse_cholesky(H, percdamp)  # H^-1 = Cholesky(H^-1)^T (sec. 4, step 3)
    del H
    Q = torch.zeros_like(W)
    for i1 in range(0, columns, block_size):  # lazy batch updates (sec. 4, step 2)
        i2 = min(i1 + block_size, columns)
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        for i in range(i2 - i1):
            p = i1 + i
            if regroup and group[p] not in started:
                members = members_of[group[p]]  # all at or after p
                current = W[:, members] - Err1[:, :i] @ Hinv[i1:p, members].contiguous()  # with the pending updates
                s, z = int_qparams(*choose_range(current, fmt, method), fmt)
                scale[:, members], zero_point[:, members] = s, z
                started.add(group[p])
            w = W1[:, i]
            q = fake_quant_int(w, scale[:, p], zero_point[:, p], fmt)
            Q[:, p] = q
            err = (w - q) / Hinv[p, p]  # E = (W_:,p - Q_:,p) / [H^-1]_pp
            W1[:, i:] -= err.unsqueeze(1) @ Hinv[p, p:i2].unsqueeze(0)  # W_:,p: -= E [H^-1]_p,p:
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]  # the block's errors onto all later columns at once
    if not act_order:
        return Q, scale, zero_point
    inverse = torch.argsort(perm)
    return Q[:, inverse], scale[:, inverse], zero_point[:, inverse]


def _inverse_cholesky(H: torch.Tensor, percdamp: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + lambda I)^-1, lambda = percdamp * mean diag(H), more if H stays singular."""
    mean = torch.diag(H).mean()
    damp = percdamp * mean
    for _ in range(6):
        damped = H.clone()
        damped.diagonal().add_(damp)  # H + damp I, without an identity matrix as large as H
        L, info = torch.linalg.cholesky_ex(damped)
        del damped
        if int(info) == 0:
            inverse = torch.cholesky_inverse(L)
            del L  # one Hessian-sized matrix fewer at the peak (a down projection's is 14336^2 floats)
            U, info = torch.linalg.cholesky_ex(inverse, upper=True)
            del inverse
            if int(info) == 0:
                return U
        damp = torch.maximum(damp * 10, 1e-6 * mean)
    raise RoundingError("GPTQ: the Hessian of a layer's inputs is not positive definite even with 1000x the "
                        "dampening; give more (or more varied) calibration data, or raise percdamp")
