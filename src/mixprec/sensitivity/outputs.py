"""Shared loop of the output-based metrics (sqnr, kl): compare the network output with one group
quantized against the float output, on every calibration batch.

Traceable models go through :class:`ForkedForward` (the float prefix is shared by every fork);
others made of a stack of blocks through :class:`BlockForward` (the blocks before a group's are
answered from one recorded float pass); the rest run one full forward per (group, candidate, batch).
``prefix`` picks: "auto" (fx, else blocks, else full forwards), "fx", "blocks" or "none".
"""
from __future__ import annotations

import math
import warnings
from typing import Callable

import torch

from ..batches import output_tensor, run_model
from .context import MeasureContext, quantized_group
from .divergence import on_real_tokens, token_mask
from ..offload import should_move
from ..streaming import stream_of
from ..capture import first_tensor, forward
from .blocks import Away, BlockForward, NotBlocked, fetch
from .forked import ForkedForward, NotTraceable

PREFIX_MODES = ("auto", "fx", "blocks", "none")

# (float output, quantized output) -> (numerator, denominator) summed over batches; value = num / den
Divergence = Callable[[torch.Tensor, torch.Tensor], tuple[float, float]]


class OutputRunner:
    """Holds the float outputs and the traced graph across chunks of one analysis."""

    def __init__(self, ctx: MeasureContext, use_fx: bool = True, prefix: str | None = None):
        prefix = prefix or ("auto" if use_fx else "none")
        if prefix not in PREFIX_MODES:
            from ..errors import SpecError
            raise SpecError(f"prefix must be one of {', '.join(PREFIX_MODES)}, got {prefix!r}")
        self.ctx = ctx
        self.forward_equivalents = 0.0
        macs = {l.name: l.macs or 0 for l in ctx.groups.layers}
        self.forked = None
        self.blocks = None
        self.fallback_reason = ""
        # a streamed model (mixprec.streaming) runs its forks block-major: each block fetched once per group;
        # fx would trace through the blocks, past the hooks that bring them onto the device
        self.stream = stream_of(ctx.model)
        if self.stream is not None and prefix == "fx":
            raise ValueError("a streamed model shares its float prefix by blocks, not fx: use prefix='blocks' or 'auto'")
        if prefix == "auto" and self.stream is not None:
            prefix = "blocks"
        if prefix in ("auto", "fx"):
            try:
                self.forked = ForkedForward(ctx.model, macs, ctx.inputs(0) if ctx.data else None)
            except NotTraceable as exc:
                self.fallback_reason = str(exc)
        if self.forked is None and prefix in ("auto", "blocks"):
            try:
                self.blocks = BlockForward(ctx.model, macs)
            except NotBlocked as exc:
                self.fallback_reason = "; ".join(r for r in (self.fallback_reason, str(exc)) if r)
        if self.blocks is not None and self.stream is not None:
            self.blocks.record_calls = True
        # the float outputs, on the model's device, or in page-locked CPU memory where it lacks room for
        # all of them (mixprec.offload): an LM's logits on 64 x 1,024 tokens are 16.8 GB in bfloat16
        self._reference: dict[int, torch.Tensor | Away] = {}
        self._park: bool | None = None
        # per batch, where the last float pass stopped and its live values: the next chunk goes on from there
        self._checkpoints: dict[int, tuple[int, dict]] = {}

    @property
    def prefix_sharing(self) -> str:
        """How the float prefix is shared: "fx", "blocks" or "none" (one full forward per entry)."""
        return "fx" if self.forked is not None else "blocks" if self.blocks is not None else "none"

    def reference(self, batch: int) -> torch.Tensor:
        if batch not in self._reference:
            with torch.no_grad():
                out = None
                if self.blocks is not None:
                    try:
                        out = self.blocks.float_pass(batch, self.ctx.inputs(batch))
                    except NotBlocked as exc:
                        self.blocks, self.fallback_reason = None, str(exc)
                    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
                        # the plain pass below names the batch where the model itself fails on it; where it runs,
                        # the failure was the block record's, and full forwards take over
                        forward(self.ctx.model, self.ctx.inputs(batch), batch, self.ctx.device)
                        self.blocks = None
                        self.fallback_reason = f"the blocks' float pass failed ({type(exc).__name__}: {exc})"
                if out is None:  # a batch the model fails on is named (capture.forward)
                    out = forward(self.ctx.model, self.ctx.inputs(batch), batch, self.ctx.device)
            ref = output_tensor(out).detach()  # its own dtype: divergences compute in float32
            if self._park is None:  # decided at the first batch, for all of them
                self._park = should_move(ref.device, ref.numel() * ref.element_size() * len(self.ctx.data))
            self._reference[batch] = Away(ref) if self._park else ref
            self.forward_equivalents += 1
        return self._float_output(batch)

    def _float_output(self, batch: int) -> torch.Tensor:
        ref = self._reference[batch]
        return fetch(ref) if isinstance(ref, Away) else ref

    def measure(self, group_indices: list[int], divergence: Divergence) -> dict[tuple[int, int], float]:
        ctx = self.ctx
        sums = {(g, c): [0.0, 0.0] for g in group_indices for c in range(len(ctx.candidates))}
        if self.blocks is not None:
            for b in range(len(ctx.data)):
                self.reference(b)  # records every block's output (or finds the blocks unusable)
        if self.blocks is not None:
            self._measure_blocks(group_indices, divergence, sums)
            return ratio_values(ctx, sums, "output")
        entries, recorded = len(sums), [0]
        for b in range(len(ctx.data)):
            ref = self.reference(b)
            recorded[0] = 0
            scored = on_real_tokens(divergence, token_mask(ctx.inputs(b), ref))  # a padded batch: real tokens alone

            def record(key, output):
                num, den = scored(ref, output_tensor(output))
                sums[key][0] += num
                sums[key][1] += den
                recorded[0] += 1
                if ctx.on_batch is not None:  # progress inside the batch: one tick per entry measured
                    ctx.on_batch((b + recorded[0] / max(entries, 1)) / len(ctx.data))

            if self.forked is not None:
                fork_points: dict[int, list] = {}
                for g in group_indices:
                    group = ctx.groups.groups[g]
                    at = self.forked.first_node(group.layer_names)
                    for c, cand in enumerate(ctx.candidates):
                        fork_points.setdefault(at, []).append(
                            ((g, c), lambda group=group, cand=cand: ctx.quantized_modules(group, cand)))
                before = self.forked.executed_macs
                self._checkpoints[b] = self.forked.forks(ctx.inputs(b), fork_points, record,
                                                         self._checkpoints.get(b))
                self.forward_equivalents += (self.forked.executed_macs - before) / max(self.forked.full_macs, 1)
            else:
                for g in group_indices:
                    group = ctx.groups.groups[g]
                    for c, cand in enumerate(ctx.candidates):
                        with quantized_group(ctx.model, ctx.quantized_modules(group, cand)) as model:
                            with torch.no_grad():
                                record((g, c), run_model(model, ctx.inputs(b)))
                        self.forward_equivalents += 1
            if ctx.on_batch is not None:
                ctx.on_batch((b + 1) / len(ctx.data))
        return ratio_values(ctx, sums, "output")


    def _measure_blocks(self, group_indices: list[int], divergence: Divergence, sums: dict) -> None:
        ctx, blocks = self.ctx, self.blocks
        for i, g in enumerate(group_indices):
            if i and ctx.on_batch is not None:  # progress: one tick per group measured (every batch and candidate)
                ctx.on_batch(i / len(group_indices))
            group = ctx.groups.groups[g]
            skipped = blocks.fork_block(group.layer_names)
            if self.stream is not None and blocks.chained and skipped < len(blocks.modules):
                self._fork_block_major(g, skipped, divergence, sums)
                continue
            modules = [ctx.quantized_modules(group, cand) for cand in ctx.candidates]
            for b in range(len(ctx.data)):  # batch by batch: a float output kept in CPU memory comes back once
                self._score_batch(g, b, modules, divergence, sums, skipped, blocks.cost(skipped))
            del modules
            ctx.forget_weights(group.layer_names)  # a group's forks are all done: free its quantized weights


    def _fork_block_major(self, g: int, skipped: int, divergence: Divergence, sums: dict) -> None:
        """One group's forks on a streamed model: block by block from the group's block, every candidate
        and batch through each block while it is on the device; then the model's code after the blocks
        (norm, head) on the last block's fork outputs. The same operations on the same values as
        running the model for each fork."""
        ctx, blocks = self.ctx, self.blocks
        group = ctx.groups.groups[g]
        n, batches = len(blocks.modules), range(len(ctx.data))
        if blocks.blocks[skipped] in self.stream.blocks:  # the group's weights quantized on the device
            self.stream.load(self.stream.blocks.index(blocks.blocks[skipped]))
        modules = [ctx.quantized_modules(group, cand) for cand in ctx.candidates]
        state: dict[tuple[int, int], tuple] = {}
        for c, replaced in enumerate(modules):
            with quantized_group(ctx.model, replaced), torch.no_grad():
                for b in batches:
                    state[c, b] = blocks.capture_call(b, skipped, ctx.inputs(b))
        outputs: dict[tuple[int, int], torch.Tensor] = {}
        for k in range(skipped, n):
            module = blocks.modules[k]
            for c, replaced in enumerate(modules):
                with quantized_group(ctx.model, replaced), torch.no_grad():
                    for b in batches:
                        args, kwargs = state.pop((c, b))
                        out = first_tensor(module(*args, **kwargs))
                        if k + 1 < n:
                            state[c, b] = blocks.block_call(b, k + 1, out)
                        else:
                            outputs[c, b] = out
        for b in batches:  # every block answers from the record, the last with the fork's output
            self._score_batch(g, b, modules, divergence, sums, n, blocks.cost(skipped), outputs)
        del modules
        ctx.forget_weights(group.layer_names)

    def _score_batch(self, g: int, b: int, modules: list, divergence: Divergence, sums: dict, skipped: int,
                     cost: float, lasts: dict | None = None) -> None:
        """Each candidate's output on batch ``b`` against the float one, blocks 0..skipped-1 answering from
        the record (the last of them with ``lasts[c, b]``, a block-major fork's output, where given)."""
        ctx, blocks = self.ctx, self.blocks
        ref = self._float_output(b)  # once per batch: a float output kept in CPU memory comes back once
        scored = on_real_tokens(divergence, token_mask(ctx.inputs(b), ref))  # a padded batch: real tokens alone
        for c, replaced in enumerate(modules):
            last = None if lasts is None else lasts.pop((c, b))
            with quantized_group(ctx.model, replaced) as model, torch.no_grad():
                with blocks.skipping(b, skipped, last=last):
                    output = run_model(model, ctx.inputs(b))
            num, den = scored(ref, output_tensor(output))
            sums[(g, c)][0] += num
            sums[(g, c)][1] += den
            self.forward_equivalents += cost


def ratio_values(ctx: MeasureContext, sums: dict, what: str) -> dict[tuple[int, int], float]:
    """num / den per entry; a non-finite ratio (NaN/Inf ``what``) is recorded as +inf with a warning."""
    values = {}
    for (g, c), (num, den) in sums.items():
        value = num / den if den > 0 else (0.0 if num == 0 else math.inf)
        if not math.isfinite(value):
            warnings.warn(f"sensitivity of group {ctx.groups.groups[g].name} at {ctx.candidates[c].name} "
                          f"is not finite (NaN/Inf {what}); recorded as +inf", RuntimeWarning, stacklevel=3)
            value = math.inf
        values[(g, c)] = value
    return values
