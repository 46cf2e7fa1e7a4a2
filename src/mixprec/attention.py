"""Explicit attention: nn.MultiheadAttention with its projections as Linear layers mixprec can quantize.

``nn.MultiheadAttention`` keeps its input projections as one ``in_proj_weight`` parameter and reads
its ``out_proj`` weight directly, without calling the module; ``nn.TransformerEncoderLayer`` and
``nn.TransformerEncoder`` in eval mode may run all of it as one fused kernel. Hooks, fake-quantized
layers and exported integer kernels see none of that. mixprec.canonical replaces every
``nn.MultiheadAttention`` of a copy of the model by an :class:`ExplicitAttention` computing the same
function through four ``nn.Linear`` layers, ``q_proj``, ``k_proj``, ``v_proj`` and ``out_proj``
(the names Hugging Face models use), so self-attention's three projections are found reading one
tensor and tied into one group like any other layers.

What depends on the inputs' ranks and masks runs in functions torch.fx keeps whole, so a model of blocks
written around nn.MultiheadAttention traces with its projections as graph nodes (forked measurement, join
quantizers); torch's nn.TransformerEncoder(Layer), nn.TransformerDecoder and nn.Transformer, whose fused-path,
causal-mask and shape checks branch on tensor values, run as their Traced forms here (the same function,
without the checks).

The projections are copies of the attention's weights. An ``nn.TransformerEncoder`` of the copy no
longer turns a padded batch into a nested tensor: its layers then compute the padded positions too
(the fused path leaves them at zero), as in training.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["ExplicitAttention", "TracedEncoderLayer", "TracedEncoder", "TracedDecoder", "TracedTransformer",
           "attention_modules", "make_explicit"]


class ExplicitAttention(nn.Module):
    """``nn.MultiheadAttention``'s forward, with ``q_proj``/``k_proj``/``v_proj``/``out_proj`` called as layers.

    Same signature and outputs: ``(output, weights or None)``; batch-first or not, unbatched inputs,
    boolean or additive masks, ``key_padding_mask``, ``bias_k``/``bias_v``, ``add_zero_attn``,
    ``kdim``/``vdim``, dropout in training.
    """

    # read by nn.TransformerEncoderLayer's and nn.TransformerEncoder's fused-path checks: a None
    # in_proj_bias makes them call this module (and the feed-forward layers) as modules
    in_proj_bias = None

    @property
    def in_proj_weight(self) -> torch.Tensor | None:
        """The q/k/v weights stacked, as nn.MultiheadAttention holds them, for a forward that reads them itself
        (it then computes with the layers' weights outside their calls, so they stay float:
        mixprec.groups.weights_read_outside); None where the keys' or values' width differs, as there."""
        if not self._qkv_same_embed_dim:
            return None
        return torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight])

    def __init__(self, embed_dim: int, num_heads: int, *, kdim: int | None = None, vdim: int | None = None,
                 bias: bool = True, add_bias_kv: bool = False, add_zero_attn: bool = False, dropout: float = 0.0,
                 batch_first: bool = False):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, embed_dim // num_heads
        self.kdim, self.vdim = kdim or embed_dim, vdim or embed_dim
        self._qkv_same_embed_dim = self.kdim == embed_dim and self.vdim == embed_dim
        self.batch_first, self.dropout, self.add_zero_attn = batch_first, dropout, add_zero_attn
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(self.kdim, embed_dim, bias=bias)
        self.v_proj = nn.Linear(self.vdim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.bias_k = nn.Parameter(torch.zeros(1, 1, embed_dim)) if add_bias_kv else None
        self.bias_v = nn.Parameter(torch.zeros(1, 1, embed_dim)) if add_bias_kv else None

    @classmethod
    def from_float(cls, mha: nn.MultiheadAttention) -> "ExplicitAttention":
        """The same function as ``mha``, its weights copied into the four layers."""
        e = mha.embed_dim
        with torch.random.fork_rng(devices=[]):  # the layers' initialisation, overwritten below, leaves the RNG be
            out = cls(e, mha.num_heads, kdim=mha.kdim, vdim=mha.vdim, bias=mha.in_proj_bias is not None,
                      add_bias_kv=mha.bias_k is not None, add_zero_attn=mha.add_zero_attn, dropout=mha.dropout,
                      batch_first=mha.batch_first)
        ref = mha.out_proj.weight
        out = out.to(device=ref.device, dtype=ref.dtype)
        with torch.no_grad():
            if mha._qkv_same_embed_dim:
                weights = mha.in_proj_weight.split(e)
            else:
                weights = (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight)
            layers = (out.q_proj, out.k_proj, out.v_proj)
            for layer, w in zip(layers, weights):
                layer.weight.copy_(w)
            if mha.in_proj_bias is not None:
                for layer, b in zip(layers, mha.in_proj_bias.split(e)):
                    layer.bias.copy_(b)
            out.out_proj.weight.copy_(mha.out_proj.weight)
            if mha.out_proj.bias is not None:
                out.out_proj.bias.copy_(mha.out_proj.bias)
            if mha.bias_k is not None:
                out.bias_k.copy_(mha.bias_k)
                out.bias_v.copy_(mha.bias_v)
        return out.train(mha.training)

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, batch_first={self.batch_first}"

    def forward(self, query, key, value, key_padding_mask=None, need_weights: bool = True, attn_mask=None,
                average_attn_weights: bool = True, is_causal: bool = False):
        # the projections are called as modules; what depends on the inputs' ranks and masks happens in functions
        # torch.fx keeps whole (fx.wrap), so a model built of these traces (forks, join quantizers)
        query_, key_, value_, padding = _batch_first(query, key, value, key_padding_mask, self.batch_first)
        q, k, v = self.q_proj(query_), self.k_proj(key_), self.v_proj(value_)
        attended, weights = _attend(q, k, v, attn_mask, padding, self.bias_k, self.bias_v, self.num_heads,
                                    self.add_zero_attn, self.dropout if self.training else 0.0, need_weights,
                                    average_attn_weights, is_causal)
        return _restore(self.out_proj(attended), weights, query, self.batch_first)


def _batch_first(query, key, value, key_padding_mask, batch_first: bool):
    """The inputs as (batch, sequence, features), an unbatched call given a batch of one."""
    if query.dim() == 2:
        return (query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0),
                None if key_padding_mask is None else key_padding_mask.unsqueeze(0))
    if not batch_first:
        return query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1), key_padding_mask
    return query, key, value, key_padding_mask


def _attend(q, k, v, attn_mask, key_padding_mask, bias_k, bias_v, num_heads: int, add_zero_attn: bool,
            dropout: float, need_weights: bool, average_attn_weights: bool, is_causal: bool):
    """Attention of the projected (batch, sequence, features) q, k, v: the heads' outputs joined again, and the
    attention weights (or None), as nn.MultiheadAttention computes them."""
    b, length, width = q.shape
    head_dim = width // num_heads
    # as nn.MultiheadAttention: without padding or weights, is_causal replaces attn_mask by a causal mask
    # over every key, the bias_k and zero-attention slots included
    causal = is_causal and key_padding_mask is None and not need_weights
    mask = None if causal else _mask(attn_mask, key_padding_mask, is_causal, b, num_heads, length, k.shape[1], q)
    if bias_k is not None:
        k = torch.cat([k, bias_k.expand(b, 1, -1)], 1)
        v = torch.cat([v, bias_v.expand(b, 1, -1)], 1)
        mask = None if mask is None else F.pad(mask, (0, 1))
    heads = (b, -1, num_heads, head_dim)
    q, k, v = (t.reshape(heads).transpose(1, 2) for t in (q, k, v))
    if add_zero_attn:
        zeros = k.new_zeros(b, num_heads, 1, head_dim)
        k, v = torch.cat([k, zeros], 2), torch.cat([v, zeros], 2)
        mask = None if mask is None else F.pad(mask, (0, 1))
    weights = None
    if need_weights:
        scores = (q * (1.0 / math.sqrt(head_dim))) @ k.transpose(-2, -1)
        if mask is not None:
            scores = scores + mask
        weights = scores.softmax(-1)
        attended = F.dropout(weights, dropout) @ v if dropout else weights @ v
        if average_attn_weights:
            weights = weights.mean(1)
    else:
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal)
    return attended.transpose(1, 2).reshape(b, length, width), weights


def _restore(out, weights, query, batch_first: bool):
    """(output, weights) in the layout of ``query``: unbatched, or sequence first."""
    if query.dim() == 2:
        return out.squeeze(0), None if weights is None else weights.squeeze(0)
    if not batch_first:
        out = out.transpose(0, 1)
    return out, weights


def _mask(attn_mask, key_padding_mask, is_causal: bool, b: int, num_heads: int, length: int, source: int, like):
    """One additive mask of shape (batch or 1, heads or 1, length, source) in ``like``'s dtype, or None."""
    dtype = like.dtype
    if attn_mask is None and is_causal:
        attn_mask = torch.ones(length, source, dtype=torch.bool, device=like.device).triu(1)
    mask = None
    if attn_mask is not None:
        mask = _additive(attn_mask, dtype)
        mask = mask.reshape(1, 1, length, source) if mask.dim() == 2 else mask.reshape(b, num_heads, length, source)
    if key_padding_mask is not None:
        padding = _additive(key_padding_mask, dtype).reshape(b, 1, 1, source)
        mask = padding if mask is None else mask + padding
    return mask


for _name in ("_batch_first", "_attend", "_restore"):  # whole calls in a torch.fx graph
    torch.fx.wrap(_name)


def _additive(mask: torch.Tensor, dtype) -> torch.Tensor:
    """A boolean mask (True: not attended) as 0 / -inf; an additive mask as it is."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    return mask.to(dtype)


def attention_modules(model: nn.Module) -> list[str]:
    """Names of the ``nn.MultiheadAttention`` modules of ``model``."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]


class TracedEncoderLayer(nn.TransformerEncoderLayer):
    """nn.TransformerEncoderLayer's own computation without its fused-path checks, which branch on tensor shapes:
    the same function, which torch.fx traces. Its masks go to the attention as given (ExplicitAttention reads
    boolean and additive masks alike)."""

    def forward(self, src, src_mask=None, src_key_padding_mask=None, is_causal: bool = False):
        x = src
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), src_mask, src_key_padding_mask, is_causal=is_causal)
            return x + self._ff_block(self.norm2(x))
        x = self.norm1(x + self._sa_block(x, src_mask, src_key_padding_mask, is_causal=is_causal))
        return self.norm2(x + self._ff_block(x))


class TracedEncoder(nn.TransformerEncoder):
    """nn.TransformerEncoder's layers in turn, without nested tensors or the check that a mask is causal (which
    compares tensors); a causal mask not declared causal is applied as the mask it is, with the same result."""

    def forward(self, src, mask=None, src_key_padding_mask=None, is_causal: bool | None = None):
        output = src
        for layer in self.layers:
            output = layer(output, src_mask=mask, src_key_padding_mask=src_key_padding_mask, is_causal=bool(is_causal))
        return output if self.norm is None else self.norm(output)


class TracedDecoder(nn.TransformerDecoder):
    """nn.TransformerDecoder's layers in turn, without the check that a mask is causal (see TracedEncoder)."""

    def forward(self, tgt, memory, tgt_mask=None, memory_mask=None, tgt_key_padding_mask=None,
                memory_key_padding_mask=None, tgt_is_causal: bool | None = None, memory_is_causal: bool = False):
        output = tgt
        for layer in self.layers:
            output = layer(output, memory, tgt_mask=tgt_mask, memory_mask=memory_mask,
                           tgt_key_padding_mask=tgt_key_padding_mask, memory_key_padding_mask=memory_key_padding_mask,
                           tgt_is_causal=bool(tgt_is_causal), memory_is_causal=memory_is_causal)
        return output if self.norm is None else self.norm(output)


class TracedTransformer(nn.Transformer):
    """nn.Transformer's encoder then decoder, without its checks of the inputs' shapes."""

    def forward(self, src, tgt, src_mask=None, tgt_mask=None, memory_mask=None, src_key_padding_mask=None,
                tgt_key_padding_mask=None, memory_key_padding_mask=None, src_is_causal: bool | None = None,
                tgt_is_causal: bool | None = None, memory_is_causal: bool = False):
        memory = self.encoder(src, mask=src_mask, src_key_padding_mask=src_key_padding_mask, is_causal=src_is_causal)
        return self.decoder(tgt, memory, tgt_mask=tgt_mask, memory_mask=memory_mask,
                            tgt_key_padding_mask=tgt_key_padding_mask, memory_key_padding_mask=memory_key_padding_mask,
                            tgt_is_causal=tgt_is_causal, memory_is_causal=memory_is_causal)


_TRACED = {nn.TransformerEncoderLayer: TracedEncoderLayer, nn.TransformerEncoder: TracedEncoder,
           nn.TransformerDecoder: TracedDecoder, nn.Transformer: TracedTransformer}


def make_explicit(model: nn.Module, names: list[str]) -> None:
    """Replace ``model``'s (a copy's) nn.MultiheadAttention modules ``names`` by ExplicitAttention, in place, and
    run its nn.TransformerEncoder(Layer), nn.TransformerDecoder and nn.Transformer modules as their Traced forms (the same
    parameters and function; padded positions are computed instead of being skipped by nested tensors)."""
    for name in names:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child,
                ExplicitAttention.from_float(model.get_submodule(name)).train(model.get_submodule(name).training))
    for module in model.modules():
        if type(module) in _TRACED:  # exactly torch's classes: a subclass may compute something else
            module.__class__ = _TRACED[type(module)]
        if isinstance(module, nn.TransformerEncoder):
            module.use_nested_tensor = False


def sequence_first_modules(model: nn.Module) -> list[str]:
    """The modules of ``model`` that read (sequence, batch, ...) inputs: attention, transformer layers and RNNs
    built with batch_first=False (torch's default for them)."""
    return [n for n, m in model.named_modules()
            if isinstance(m, (nn.MultiheadAttention, ExplicitAttention, nn.TransformerEncoderLayer,
                              nn.TransformerDecoderLayer, nn.RNNBase)) and not getattr(m, "batch_first", True)]
