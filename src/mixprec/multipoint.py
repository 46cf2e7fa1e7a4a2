"""Multipoint quantization: Liu, Ye, Zhou, Liu, "Post-training quantization with multiple points:
mixed precision without mixed precision" (AAAI 2021, arXiv 2002.09049).

What the paper says (abstract and sec. 3-4): a full-precision weight vector w (one output channel)
is approximated by a linear combination of several vectors of low-bit numbers,
w ~ sum_k a_k Q_k, instead of one; the points are built by an efficient greedy procedure, each
new one fitting what the earlier ones left; and the number of points of each weight vector is
decided adaptively from the error it causes in the layer's output, so that the important channels
get more precision: the "effect of mixed precision" with every point running on the same low-bit
kernel. (Only the abstract and introduction could be read here, not the paper's exact channel-
selection rule or its threshold; the rule below is this library's, and it takes no hyper-
parameter because the allocation solver, not a per-layer knob, decides where candidates go.)

What mixprec does, for a candidate wB[gG]xK (up to K B-bit points per output channel):

    # greedy residual points: a_k Q_k = quantize(residual) on the candidate's own grid,
    # its own scale per channel (per group of G inputs with gG), range method as for w<B>
    r_0 = w
    for k in 1..K:  T_k = quantize_B(r_{k-1});  r_k = r_{k-1} - T_k
    # output error of channel j with k points, H = E[x x^T] over the layer's calibration inputs
    # (for a conv: the unfolded patches its weight multiplies, as in GPTQ)
    e_j(k) = r_jk^T H r_jk
    tau = mean_j e_j(1)                      # the layer's mean channel error with one point
    p_j = 1; while p_j < K and e_j(p_j) > tau and e_j(p_j + 1) < e_j(p_j): p_j += 1
    W_hat_j = sum_{k <= p_j} T_jk

Nearest rounding onto a grid that holds 0 never moves an element farther from its value than 0
does, so |r_k| <= |r_{k-1}| element by element: the weight error never grows with points, and the
rule adds a point only where it lowers the channel's output error. A channel's points depend only
on its weight once p_j is fixed, so the point counts (a digit string per layer, one digit per
output channel) are all that has to be stored to rebuild the weights: the analysis records them
for every (layer, candidate) in costs.json, ``mixprec solve`` copies the chosen ones into the plan,
and apply uses them (or chooses them again from its calibration data when a plan has none).
Costs (mixprec.costs) count every point a channel uses: its B-bit codes and scales, plus the
point count of every channel; BOPs count each channel's MACs once per point.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn
from .progress import tqdm

from .batches import run_model, split_item, to_device
from .candidates import Candidate, parse_candidate
from .capture import add_moments, layer_input, on_inputs
from .errors import MixprecError, ModelError
from .groups import is_torchscript
from .plan import Plan
from .quantizers import quantize_weight

# Per layer and multipoint candidate: one digit per output channel, its number of points ("1121...").
Points = dict[str, str]


def greedy_terms(rows: torch.Tensor, candidate: Candidate, method: str = "mse") -> torch.Tensor:
    """The K greedy terms a_k Q_k of every row of float32 ``rows`` (R, D): term k quantizes the
    residual of terms < k on the candidate's grid. Returns (K, R, D); their sum over k -> rows."""
    terms = []
    residual = rows
    for _ in range(candidate.points):
        term = quantize_weight(residual, candidate.weight, method)
        terms.append(term)
        residual = residual - term
    return torch.stack(terms)


def output_errors(residuals: torch.Tensor, hessian: torch.Tensor) -> torch.Tensor:
    """e_j = r_j^T H r_j for residuals (..., R, D) with H (C, D, D), C convolution groups
    (the rows of group c read only its inputs). Returns (..., R)."""
    groups = hessian.shape[0]
    shape = residuals.shape
    r = residuals.reshape(*shape[:-2], groups, shape[-2] // groups, shape[-1])
    e = ((r.unsqueeze(-2) @ hessian.unsqueeze(1)).squeeze(-2) * r).sum(-1)  # (..., C, R/C)
    return e.reshape(shape[:-1])


def choose_points(terms: torch.Tensor, rows: torch.Tensor, hessian: torch.Tensor) -> torch.Tensor:
    """Points per row (R,) by the rule of the module docstring."""
    residuals = rows.unsqueeze(0) - terms.cumsum(0)  # r_k, k = 1..K
    errors = output_errors(residuals, hessian)  # (K, R)
    tau = errors[0].mean()
    points = torch.ones(rows.shape[0], dtype=torch.long, device=rows.device)
    for k in range(1, terms.shape[0]):  # going from k to k + 1 points
        grow = (points == k) & (errors[k - 1] > tau) & (errors[k] < errors[k - 1])
        points[grow] = k + 1
    return points


def compose(terms: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """sum_{k <= p_j} T_jk for every row j."""
    used = torch.arange(terms.shape[0], device=terms.device).unsqueeze(1) < points.unsqueeze(0)  # (K, R)
    return (terms * used.unsqueeze(-1)).sum(0)


def encode(points: torch.Tensor) -> str:
    return "".join(str(int(p)) for p in points.tolist())


def decode(text: str, rows: int, candidate: Candidate, layer: str) -> torch.Tensor:
    if len(text) != rows or not text.isdigit() or not all(1 <= int(c) <= candidate.points for c in text):
        raise MixprecError(f"stored multipoint counts of layer {layer!r} at {candidate.name} do not fit it: "
                           f"expected {rows} digits 1..{candidate.points}, got {text[:20]!r}...; re-run "
                           "`mixprec analyze` (and `mixprec solve`) for this model")
    return torch.tensor([int(c) for c in text], dtype=torch.long)


def multipoint_weight(weight: torch.Tensor, candidate: Candidate, points: str, method: str = "mse",
                      layer: str = "") -> torch.Tensor:
    """The multipoint fake-quantized weight from its point counts; same shape, dtype and device."""
    rows = weight.detach().to(torch.float32).reshape(weight.shape[0], -1)
    counts = decode(points, rows.shape[0], candidate, layer).to(rows.device)
    return compose(greedy_terms(rows, candidate, method), counts).reshape(weight.shape).to(weight.dtype)


@torch.no_grad()
def input_moments(model: nn.Module, layer_names: Iterable[str], data: Iterable,
                  progress: bool = False) -> dict[str, torch.Tensor]:
    """H = E[x x^T] of every named layer's weight inputs over the calibration data, (C, D, D) per layer.

    One float pass; Linear inputs as they are, Conv inputs unfolded into patches (GPTQ's columns)."""
    layers = {name: model.get_submodule(name) for name in layer_names}
    sums: dict[str, list] = {}  # [sum of x x^T per convolution group, columns], as GPTQ keeps it

    def see(name, module, args, kwargs):
        sums[name] = add_moments(sums.get(name), module, layer_input(args, kwargs))

    device = next(model.parameters()).device
    count = 0
    with on_inputs(layers, see):
        for item in tqdm(data, desc="multipoint: layer inputs", disable=not progress, leave=False):
            run_model(model, to_device(split_item(item)[0], device))
            count += 1
    if count == 0:
        raise MixprecError("multipoint candidates choose each channel's points on calibration data, and the data "
                           "is empty; give --data (or calibration_data=...)")
    unseen = sorted(set(layers) - set(sums))
    if unseen:
        raise MixprecError(f"layer {unseen[0]!r} is not called by the calibration data, so its multipoint points "
                           "cannot be chosen; exclude it or give it a single-point candidate")
    return {name: s / max(n, 1) for name, (s, n) in sums.items()}


def measure_points(model: nn.Module, layers: dict[str, list[Candidate]], data: Iterable | None,
                   method: str = "mse", progress: bool = False) -> dict[str, Points]:
    """Points per channel of every (layer, multipoint candidate): candidate name -> layer -> digits.

    ``layers``: layer name -> candidates to measure (single-point ones are ignored)."""
    wanted = {name: [c for c in cands if c.multipoint] for name, cands in layers.items()}
    wanted = {name: cands for name, cands in wanted.items() if cands}
    if not wanted:
        return {}
    if data is None:
        raise MixprecError("multipoint candidates (e.g. " + next(iter(wanted.values()))[0].name + ") choose each "
                           "channel's number of points on calibration data; give --data (or calibration_data=...)")
    out: dict[str, Points] = {}
    from .groups import NO_COLUMNS
    for name in [n for n in wanted if isinstance(model.get_submodule(n), (nn.Embedding, *NO_COLUMNS))]:
        # a table's rows are looked up, not multiplied by an input; a transposed or 3-D conv's input has no column
        # form for the output error that picks the points: one point per row
        rows = model.get_submodule(name).weight.shape[0]
        for cand in wanted.pop(name):
            out.setdefault(cand.name, {})[name] = "1" * rows
    moments = input_moments(model, wanted, data, progress) if wanted else {}
    for name, cands in wanted.items():
        weight = model.get_submodule(name).weight.detach()
        rows = weight.to(torch.float32).reshape(weight.shape[0], -1)
        for cand in cands:
            terms = greedy_terms(rows, cand, method)
            out.setdefault(cand.name, {})[name] = encode(choose_points(terms, rows, moments[name]).cpu())
    return out


def plan_points(model: nn.Module, plan: Plan, calibration_data: Iterable | None, weight_method: str = "mse",
                points: dict[str, str] | None = None, progress: bool = False) -> dict[str, str]:
    """Points per output channel of every multipoint layer of ``plan``: ``points``, else the plan's
    stored ones, else chosen on ``calibration_data`` (what the analysis would choose on the same data)."""
    candidates = {name: parse_candidate(c) for name, c in plan.layer_candidates().items()}
    given = dict(plan.metadata.get("points") or {}) if points is None else dict(points)
    todo = {name: [c] for name, c in candidates.items() if c.multipoint and name not in given}
    if todo and is_torchscript(model):
        raise ModelError(f"a TorchScript model cannot be hooked to choose multipoint points (layer "
                         f"{next(iter(todo))!r}); use a plan from `mixprec solve`, which stores them, or give the "
                         "model as file.py:function")
    measured = measure_points(model, todo, calibration_data, weight_method, progress)
    for cand, layers in measured.items():
        given.update(layers)
    return {name: given[name] for name, c in candidates.items() if c.multipoint}
