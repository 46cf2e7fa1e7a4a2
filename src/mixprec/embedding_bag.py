"""nn.EmbeddingBag as an embedding look-up followed by the bag's reduction, so that its table is quantized
like any embedding's and exports as one.

torch's ``nn.EmbeddingBag`` computes the look-up and the reduction in one fused kernel, whose table
mixprec could not reach (it stayed float, with a note) and whose ONNX export by torch is a Loop that
ONNX Runtime refuses to load. :class:`ExplicitEmbeddingBag` is an ``nn.Embedding`` (so groups, swapping,
rounding and export treat its table as an embedding's: weight-only, rows) whose forward takes the
bag's arguments and computes

    rows   = weight[input]                                   (a Gather)
    keep   = bag membership of each entry, minus padding_idx entries
    sum    = sum over the bag of keep * per_sample_weights * rows
    mean   = sum / max(1, number kept)
    max    = max over the kept rows (0 for an empty bag)

with the bags given as torch gives them: a 2-D input, one bag per row; or a 1-D input with ``offsets``
(the start of each bag; with ``include_last_offset`` the last offset is the end of the last bag).
Empty bags give zeros, as torch's. A bag with ``max_norm`` (which renormalizes the table in place at
each look-up) is left as it is.
"""
from __future__ import annotations

import torch
import torch.fx
from torch import nn
from torch.nn import functional as F

__all__ = ["ExplicitEmbeddingBag", "bag_modules", "make_explicit_bags"]


@torch.fx.wrap
def _reduce_bags(rows: torch.Tensor, input: torch.Tensor, offsets: torch.Tensor | None,
                 per_sample_weights: torch.Tensor | None, mode: str, padding_idx: int | None,
                 include_last_offset: bool) -> torch.Tensor:
    """(bags, dim): the reduction of ``rows`` (input's look-up) over each bag (see the module docstring)."""
    if input.dim() == 2:
        if offsets is not None:
            raise ValueError("an EmbeddingBag's offsets go with a 1-D input only; a 2-D input is one bag per row")
        keep = torch.ones_like(input, dtype=torch.bool)
        weights = per_sample_weights
        member = None
    elif input.dim() == 1:
        if offsets is None or offsets.dim() != 1:
            raise ValueError("an EmbeddingBag with a 1-D input needs 1-D offsets (the start of each bag)")
        n = input.shape[0]
        starts = offsets[:-1] if include_last_offset else offsets
        ends = offsets[1:] if include_last_offset else torch.cat([offsets[1:], offsets.new_full((1,), n)])
        position = torch.arange(n, device=input.device)
        member = (position[None, :] >= starts[:, None]) & (position[None, :] < ends[:, None])  # (bags, entries)
        keep = member
        weights = None if per_sample_weights is None else per_sample_weights[None, :]
    else:
        raise ValueError(f"an EmbeddingBag takes a 1-D or 2-D input, got {input.dim()}-D")
    if padding_idx is not None:
        keep = keep & (input != padding_idx)[None, :] if member is not None else keep & (input != padding_idx)
    if mode == "max":
        if keep.shape[1] == 0:  # no entries at all: every bag is empty
            return rows.new_zeros(keep.shape[0], rows.shape[-1])
        expanded = rows if member is None else rows[None, :, :].expand(keep.shape[0], -1, -1)
        low = torch.finfo(rows.dtype).min
        best = expanded.masked_fill(~keep[..., None], low).amax(dim=1)
        return torch.where(keep.any(dim=1, keepdim=True), best, torch.zeros_like(best))
    scale = keep.to(rows.dtype)
    if weights is not None:
        scale = scale * weights.to(rows.dtype)
    total = (scale[..., None] * rows).sum(dim=1) if member is None else scale @ rows
    if mode == "mean":
        total = total / keep.sum(dim=1, keepdim=True).clamp(min=1).to(rows.dtype)
    return total


class ExplicitEmbeddingBag(nn.Embedding):
    """An ``nn.EmbeddingBag``'s table as an ``nn.Embedding`` (the same Parameter), its reduction written out."""

    def __init__(self, bag: nn.EmbeddingBag):
        nn.Module.__init__(self)  # nn.Embedding's own __init__ would make a new table
        self.num_embeddings, self.embedding_dim = bag.num_embeddings, bag.embedding_dim
        self.padding_idx = bag.padding_idx
        self.max_norm, self.norm_type = None, bag.norm_type
        self.scale_grad_by_freq, self.sparse = bag.scale_grad_by_freq, bag.sparse
        self.weight = bag.weight
        self.mode, self.include_last_offset = bag.mode, bag.include_last_offset

    def forward(self, input: torch.Tensor, offsets: torch.Tensor | None = None,
                per_sample_weights: torch.Tensor | None = None) -> torch.Tensor:
        if per_sample_weights is not None and self.mode != "sum":
            raise ValueError(f"per_sample_weights go with an EmbeddingBag of mode 'sum', this one's is {self.mode!r}")
        rows = F.embedding(input, self.weight)
        return _reduce_bags(rows, input, offsets, per_sample_weights, self.mode, self.padding_idx,
                            self.include_last_offset)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, mode={self.mode!r}" + (
            f", padding_idx={self.padding_idx}" if self.padding_idx is not None else "")


def bag_modules(model: nn.Module) -> list[str]:
    """Names of the nn.EmbeddingBag modules of ``model`` that :func:`make_explicit_bags` converts (not those
    with ``max_norm``)."""
    return [name for name, m in model.named_modules()
            if isinstance(m, nn.EmbeddingBag) and m.max_norm is None and name]


def make_explicit_bags(model: nn.Module, names: list[str]) -> None:
    """Replace the named bags of ``model`` (a copy: this edits it) with :class:`ExplicitEmbeddingBag`."""
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        bag = parent.get_submodule(child)
        setattr(parent, child, ExplicitEmbeddingBag(bag).train(bag.training))
