"""analyze: fill the sensitivity table S[group, candidate], cached on disk, resumable, shardable.

Groups are measured in chunks (a chunk = consecutive groups, all candidates); a finished chunk
is appended to the run directory's log before the next starts. Under torchrun, chunks are
dealt round-robin to the ranks and rank 0 merges every rank's log into the table.
"""
from __future__ import annotations

import contextlib
import math
import time
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from ..progress import tqdm

from ..batches import check_finite
from ..candidates import Candidate
from ..errors import MixprecError, ModelError
from ..groups import ModelGroups, is_torchscript
from ..quantizers import GRID_VERSION
from . import DEFAULT_METRIC, Metric, metric_config
from .context import MeasureContext
from .outputs import OutputRunner
from ..joins import int8_graph
from ..rounding import RoundingConfig, rounding_config
from ..run_directory import RunDirectory
from .store import data_hash, structure_hash
from .table import SensitivityTable


def _distributed() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def analyze(model: nn.Module, groups: ModelGroups, candidates: list[Candidate], data: list, *,
            metric: str | Metric = DEFAULT_METRIC, run_dir=None, weight_method: str = "mse",
            activation_method: str = "mse", evaluate: Callable | None = None, chunk_size: int | None = None,
            use_fx: bool = True, progress: bool = True, arguments: dict[str, Any] | None = None,
            points: dict[str, dict[str, str]] | None = None, prefix: str | None = None,
            rounding: str | RoundingConfig | None = None) -> SensitivityTable:
    """Sensitivity table of ``model``; with ``run_dir``, finished entries are cached and reused.

    ``metric``: a name of mixprec.sensitivity.METRICS or a config such as ``Hessian(samples=32)``.
    ``points``: multipoint candidate -> layer -> points per channel (mixprec.multipoint.measure_points);
    measured on ``data`` when missing. ``prefix``: how output metrics share the float prefix, "auto"
    (torch.fx, else the stack of blocks, else one full forward per entry), "fx", "blocks" or "none"
    (default: "auto", or "none" with use_fx=False). ``rounding``: a layer-wise rounding ("gptq",
    GPTQ(...), "adaround") the measured weights get instead of nearest (rounding-aware measurement,
    MeasureContext); the entries then say what that rounding will leave of each candidate's damage."""
    config = metric_config(metric)
    rounder = _measure_rounding(rounding)
    metric = config.name
    if config.needs_data and not data:
        raise MixprecError(f"the {metric} metric measures on calibration data, and the data is empty; "
                           "give at least one batch (or use --metric roundoff, which needs none)")
    if config.needs_data:
        check_finite(list(data or []))
    if is_torchscript(model) and metric != "roundoff":
        raise ModelError(f"the {metric} metric runs the model with one group's layers swapped for quantized ones, "
                         "and the layers of a TorchScript model cannot be swapped; give the model as "
                         "file.py:function (an nn.Module), or use --metric roundoff (weights only, no swap)")
    ctx = MeasureContext(model.eval(), groups, list(candidates), list(data or []), weight_method,
                         activation_method, evaluate, progress, points, rounding=rounder)
    if config.needs_labels and not ctx.has_labels:
        raise MixprecError(f"the {metric} metric needs labels: give --data items as (inputs, labels) pairs")
    if metric in CLASS_SCORE_METRICS and ctx.data and ctx.has_labels:
        _refuse_regression(ctx, metric)
    rank, world = _distributed()
    cand_names = [c.name for c in candidates]
    run = None
    done: dict[tuple[str, str], float] = {}
    if run_dir is not None:
        # Only options changed from their defaults are recorded: a default metric's settings are just its name.
        options = config.changed_options()
        settings = {"metric": metric, **({"metric_options": options} if options else {}), "candidates": cand_names,
                    "groups": {g.name: list(g.layer_names) for g in groups},
                    "weight_method": weight_method, "activation_method": activation_method, "grid": GRID_VERSION}
        pins = {g.name: g.pinned for g in groups if g.pinned}
        if metric == "around" and pins:  # the base plan keeps the pins: every entry depends on them
            settings["pins"] = pins
        if rounder is not None:  # nearest (the default) adds no key: older runs stay valid
            settings["rounding"] = {"name": rounder.name, **rounder.options()}
        if int8_graph(model):  # measured with join quantizers (mixprec.joins) and int32 biases (integer_bias)
            settings["joins"] = True
            settings["integer_bias"] = 1
        if config.uses_evaluate:  # the entries depend on which evaluation measured them, and on its code
            settings["eval"] = (arguments or {}).get("eval") or getattr(evaluate, "__qualname__", repr(evaluate))
            source = _eval_code((arguments or {}).get("eval"), evaluate)
            if source is not None:
                settings["eval_source"] = source
        run = run_dir if isinstance(run_dir, RunDirectory) else RunDirectory(run_dir)
        fingerprint = {"model": run.model_hash(model), "data": data_hash(ctx.data), "settings": settings,
                       "structure": structure_hash(model)}
    # one writer: rank 0 holds the run's lock from the check (claim) to the last write (the table)
    with run.lock() if run is not None and rank == 0 else contextlib.nullcontext():
        if run is not None:
            run.claim(fingerprint, arguments, rank)
            ctx.checkpoint = run.path if world == 1 else None  # the run's fingerprint vouches for what it holds
            done = run.entries(config.minimum)
            if run.rejected and progress:
                print(f"note: {run.rejected} line(s) of {run.path}/entries.rank*.jsonl are not valid entries (torn "
                      "by a kill, edited, NaN or out of range); those entries are measured again")
        return _measure(ctx, config, groups, candidates, done, run, rank, world, chunk_size, use_fx, progress,
                        prefix)


CLASS_SCORE_METRICS = ("kl", "hessian", "fisher")  # they read the output as a classifier's scores


def _refuse_regression(ctx: MeasureContext, metric: str) -> None:
    """A metric of class scores on a model whose calibration items carry float targets of its output's shape (a
    regression, however many outputs) would softmax regression values: refused, as for a single output."""
    from ..batches import output_tensor, run_model
    from ..errors import SpecError
    from .divergence import regression_targets
    with torch.no_grad():
        out = output_tensor(run_model(ctx.model, ctx.inputs(0)))
    if regression_targets(ctx.labels(0), out):
        raise SpecError(f"the {metric} metric reads the output {tuple(out.shape)} as a classifier's scores, but the "
                        "calibration items carry float targets of its shape: a regression, whose values have no "
                        "softmax; use sqnr (--metric sqnr; the around metric's auto divergence is 1/SQNR for it too)")


def _measure_rounding(rounding: str | RoundingConfig | None) -> RoundingConfig | None:
    """The rounding config the measurement uses, None for nearest; only layer-wise back-ends qualify."""
    if rounding is None:
        return None
    config = rounding_config(rounding)
    if not config.needs_data:
        return None
    if config.blockwise:
        raise MixprecError(f"rounding-aware measurement rounds each (layer, candidate) alone, and {config.name} "
                           "reconstructs whole blocks of a finished plan; measure with rounding='gptq' (or "
                           "'adaround', or 'nearest') and apply the plan with rounding='brecq'")
    return config


def _measure(ctx: MeasureContext, config: Metric, groups: ModelGroups, candidates: list[Candidate],
             done: dict[tuple[str, str], float], run: RunDirectory | None, rank: int, world: int,
             chunk_size: int | None, use_fx: bool, progress: bool, prefix: str | None = None) -> SensitivityTable:
    """Measure the entries not ``done``, chunk by chunk, each chunk appended to the run's log."""
    metric = config.name
    names = [g.name for g in groups]
    cand_names = [c.name for c in candidates]
    size = chunk_size or max(1, math.ceil(len(groups) / 8))
    chunks = [list(range(i, min(i + size, len(groups)))) for i in range(0, len(groups), size)]
    # dealt in a snake (0 1 1 0 0 1 ...): forks of later groups are cheaper where the prefix is shared, so
    # round-robin would give rank 0 the dearer chunk of every round
    mine = [chunk for k, chunk in enumerate(chunks) if k % (2 * world) in (rank, 2 * world - 1 - rank)]
    pending = [chunk for chunk in mine if any((names[g], c) not in done for g in chunk for c in cand_names)]
    runner = OutputRunner(ctx, use_fx, prefix) if config.needs_outputs else None
    start = since = time.perf_counter()
    total = sum(len(chunk) for chunk in mine) * len(candidates)
    with tqdm(total=total, initial=total - sum(len(c) for c in pending) * len(candidates), unit="entry",
              desc=f"{metric} sensitivity", disable=not progress) as bar:
        state = config.prepare(ctx) if pending else None  # once per analysis, and only if there is work
        for chunk in pending:
            entries, shown = len(chunk) * len(candidates), [0]

            def tick(fraction: float) -> None:  # progress inside a chunk, in whole entries (a fraction of the chunk)
                whole = min(entries, int(fraction * entries + 1e-9))
                if whole > shown[0]:
                    bar.update(whole - shown[0])
                    shown[0] = whole
            ctx.on_batch = tick
            if ctx.rounding is not None:  # the chunk's layers rounded at every candidate, few passes in all
                ctx.round_layers([layer for g in chunk for layer in groups.groups[g].layer_names])
            values = config.measure(ctx, chunk, runner, state)
            ctx.on_batch = None
            ctx._weights.clear()  # each group is measured in one chunk only: free its quantized weights
            named = {(names[g], cand_names[c]): v for (g, c), v in values.items()}
            if run is not None:
                run.append_entries(named, rank)
                now = time.perf_counter()
                run.append_seconds(now - since, rank)
                since = now
            done.update(named)
            if entries > shown[0]:
                bar.update(entries - shown[0])
    if world > 1:
        torch.distributed.barrier()
        if run is not None:
            done = run.entries(config.minimum)
    table = np.full((len(groups), len(candidates)), np.nan)
    for i, g in enumerate(names):
        for j, c in enumerate(cand_names):
            table[i, j] = done.get((g, c), np.nan)
    # a resumed run: the time of every session's chunks, not only this one's (which may have measured nothing)
    logged = run.measured_seconds() if run is not None else None
    seconds = max(logged or 0.0, time.perf_counter() - start)
    metadata = {"seconds": round(seconds, 3), "measured_chunks": len(pending),
                "calibration_batches": len(ctx.data)}
    if ctx.rounding is not None:
        metadata["rounding"] = {"name": ctx.rounding.name, **ctx.rounding.options()}
    if int8_graph(ctx.model):  # join quantizers, and the int32 bias rounding of mixprec.integer_bias
        metadata["joins"] = True
        metadata["integer_bias"] = 1
    if pending:
        metadata.update(config.metadata(state))
    if runner is not None:
        metadata.update(forward_equivalents=runner.forward_equivalents, forked=runner.prefix_sharing != "none",
                        prefix_sharing=runner.prefix_sharing, fallback_reason=runner.fallback_reason)
    result = SensitivityTable(names, cand_names, table, metric, metadata)
    if run is not None and rank == 0 and result.complete:
        run.write_table(result)
    return result


def _eval_code(spec: str | None, evaluate: Callable | None) -> str | None:
    """The hash of the evaluation's code for the run's fingerprint: a ``file.py:function`` spec's file, else the
    function's file, text and bound values (mixprec.fingerprint); None where neither can be read (the run is then
    keyed by the evaluation's name alone, so that it resumes)."""
    from ..fingerprint import fingerprint
    from ..specs import spec_source_hash
    found = spec_source_hash(spec) if isinstance(spec, str) else None
    return found if found is not None or evaluate is None else fingerprint(evaluate)
