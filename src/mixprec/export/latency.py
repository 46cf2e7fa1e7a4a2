"""Latency measured on the target: every layer at every candidate, and the whole model, as it deploys.

    profile(model, data, candidates, target="ort-cpu", batch_size=None) -> LatencyProfile
    LatencyProfile.write_csv(path)   the cost table `solve --cost latency_ms=FILE` reads

Two methods:

``graph`` (the default): the whole model is exported at every uniform candidate (each layer at the candidate
where the target runs it, else in float; join quantizers as ``export`` adds them) and timed end to end in an
ONNX Runtime session (all optimisations on, no thread spinning: a few warm-up runs, then runs until REPEATS
runs and MIN_SECONDS have passed, the median kept). ONNX Runtime's own profiler then gives the time of
each layer's kernel inside that graph (the node the layer became after fusion; median over the profiled
runs). Whatever the layers' kernels do not account for (activations, adds, pooling, quantize/dequantize,
the session's own overhead) is the rest of that graph. The ``*`` row is the smallest rest of all the
uniform graphs; each graph's rest above it is shared among its layers in proportion to their kernel times,
so the table predicts every uniform plan's measured time exactly. A mixed plan's prediction is checked,
not promised: ``checks`` random mixed plans are exported, timed and compared with the table (the
float/integer boundaries of a mixed graph cost quantize/dequantize pairs no uniform graph has).

``layers``: each layer is exported alone (a one-layer model, exactly as ``export`` writes it inside a whole
model: mixprec's scales and zero-points, the target's realisation of the candidate) with the input
it sees on the first calibration batch, and timed in its own session, less what a session that only
passes the same input through costs (the call and the copies, which a whole graph pays once, not once
per layer; ``overhead_ms``). A layer at ``fp32`` is timed too, as the float baseline (a layer faster than
the timing noise of that difference comes out at 0). The rest of the model is the float model's
end-to-end median minus the sum of its layers' float medians. Per-layer graphs pay a quantize/dequantize
at their edges that a whole int8 graph fuses away, and an int8 conv inside a whole graph runs with
integer neighbours, so this sum is an estimate to be checked, not a promise (``whole``: every uniform
plan timed as a whole, against it).

Candidates the target cannot run are left out (empty, so the solver never chooses them), with the reason.
"""
from __future__ import annotations

import math
import re
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn
from ..progress import tqdm

from ..atomic import write_atomic
from ..canonical import canonical, in_eval_mode
from ..batches import run_model, split_item
from ..candidates import Candidate, parse_candidate
from ..capture import layer_input, map_tensors, on_inputs
from ..errors import CandidateError, MixprecError
from ..groups import ModelGroups, discover_groups, layer_kind
from ..plan import Plan, write_json_atomic
from ..quantizers import range_methods
from ..sensitivity.store import flatten_tensors
from .profile_log import ProfileLog, profile_folder, profile_keys
from .targets import get_onnx_target, realise

REPEATS = 20
MIN_SECONDS = 0.2
ROTATED_ROUNDS = 3  # rounds of the uniform graphs timed whole, each session made anew in a rotated order
# Each move around a base is entered at the upper end of its paired timing's interval: its measured change plus
# MOVE_SE standard errors. A latency budget is a constraint, so a move counts as saving only what it surely saves,
# and as costing what it may cost. Entered as measured, the solver picks exactly the moves whose noise came out
# negative (each a "free" layer in higher precision); entered as zero when within the noise, it still takes those
# "free" layers at the tightest budget, and each costs real time in the deployed plan.
MOVE_SE = 2.0
OVER_PREDICTED = 1.25  # a uniform plan the around table predicts this much above its measured latency: a note
WARMUP = 3
FLOAT = "fp32"


@dataclass
class LatencyProfile:
    """What ``profile`` measured on a target: per layer and candidate the milliseconds it adds (the cost table
    ``solve --cost latency_ms=FILE`` reads, ``write_csv``), the rest of the model, the float model whole, and each
    uniform plan (and random mixed plans) timed whole against the table's prediction."""
    target: str
    batch_size: int
    threads: int | None
    candidates: list[str]  # the candidates asked for (fp32 is timed as the baseline whether asked or not)
    layers: dict[str, dict[str, float]]  # layer -> candidate -> median ms (NaN: the target cannot run it)
    ops: dict[str, dict[str, str]]  # layer -> candidate -> the op the runtime runs ("" where not run)
    float_model_ms: float
    rest_ms: float  # the float model minus the sum of its layers at fp32, >= 0
    whole: dict[str, dict[str, float]] = field(default_factory=dict)  # uniform candidate -> predicted, measured ms
    skipped: dict[str, str] = field(default_factory=dict)  # "layer/candidate" -> why the target cannot run it
    overhead_ms: dict[str, float] = field(default_factory=dict)  # layer -> a one-layer session's own cost, subtracted
    method: str = "layers"
    checks: list[dict] = field(default_factory=list)  # mixed plans: assignments, predicted and measured ms
    moves: list[dict] = field(default_factory=list)  # around: each move's measured change, its error, what is entered
    decode: int | None = None  # a language model timed at one decoding step on a KV cache of this many tokens
    # layer -> sets of candidates the runtime runs as one kernel there (e.g. w4a8 and w8a8: int8 codes either
    # way), entered at the mean of their timings: a difference between them is noise, not a saving
    same_kernel: dict[str, list[list[str]]] = field(default_factory=dict)

    def predicted_ms(self, assignments: dict[str, str]) -> float:
        """The per-layer estimate of a plan (layer -> candidate): its layers plus the rest."""
        return self.rest_ms + sum(self.layers[layer][cand] for layer, cand in assignments.items())

    def notes(self) -> list[str]:
        """What the user should know about the table before solving with it: around a base, a uniform plan the
        table predicts 1.25x above or below what it measures whole. Above: each move is entered at its change +
        MOVE_SE standard errors, and the margins add up (timings noisy against the moves' size), so budgets near
        that plan's measured latency are out of reach. Below (far from the base, where single moves do not add
        up): plans there measure slower than predicted. Fractions (``latency_ms=0.8x``) are of the measured float
        model either way."""
        notes = []
        if self.same_kernel:
            example = next(iter(self.same_kernel.items()))
            notes.append(f"on {len(self.same_kernel)} layer(s) several candidates run as one kernel (e.g. "
                         f"{', '.join(example[1][0])} on {example[0]}: the same op on the same storage, codes of fewer "
                         "bits in it); each is entered at the mean of their timings, as a difference between them is "
                         "timing noise, not a saving")
        off = [c for c in self.checks if c.get("measured_ms", 0) > 0
               and not 1 / OVER_PREDICTED <= c["predicted_ms"] / c["measured_ms"] <= OVER_PREDICTED]
        if off:
            worst = max(off, key=lambda c: abs(c["predicted_ms"] / c["measured_ms"] - 1))
            notes.append(f"{len(off)} of {len(self.checks)} random plan(s) timed whole are off the table by more than "
                         f"{100 * (OVER_PREDICTED - 1):.0f}% (worst: table {worst['predicted_ms']:.3g} ms, measured "
                         f"{worst['measured_ms']:.3g} ms): the table's timings are noisy (another load on the machine, "
                         "too few --repeats) or the layers do not add up in this graph; profile again on an idle "
                         "machine with more --repeats before solving with it")
        if not self.moves:
            return notes
        for cand, w in self.whole.items():
            measured, predicted = w.get("measured_ms", 0), w["predicted_ms"]
            if not measured > 0:
                continue
            said = f"the table predicts uniform {cand} at {predicted:.3g} ms, measured whole {measured:.3g} ms"
            if predicted > OVER_PREDICTED * measured:
                notes.append(f"{said}: each move is entered at its change + {MOVE_SE:g} standard errors (a budget is a "
                             "constraint), and here those margins add up (the timings are noisy against what a move "
                             "changes, as in a small model), so budgets near this plan's measured latency are out of "
                             "reach; more --repeats narrow the margins, or profile without --around")
            elif predicted * OVER_PREDICTED < measured:
                notes.append(f"{said}: moves timed one at a time around the base do not add up "
                             "this far from it (the graph's boundaries change), so plans near this one measure "
                             "slower than the table says; export and time them, or profile around a candidate "
                             "nearer the budgets you solve for")
        return notes

    def write_csv(self, path: str | Path) -> Path:
        """``layer,candidate,latency_ms`` rows and the ``*`` row (the rest of the model), every value written in
        full (repr) so the table the solver reads is the profile itself; atomically."""
        lines = ["layer,candidate,latency_ms"]
        for layer, row in self.layers.items():
            for cand in self.candidates:
                if math.isfinite(row[cand]):
                    lines.append(f"{layer},{cand},{row[cand]!r}")
        lines.append(f"*,,{self.rest_ms!r}")
        return write_atomic(Path(path), ("\n".join(lines) + "\n").encode())

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "batch_size": self.batch_size, "threads": self.threads,
                "candidates": self.candidates,
                "layers": {k: {c: (v if math.isfinite(v) else None) for c, v in row.items()}
                           for k, row in self.layers.items()},
                "ops": self.ops, "float_model_ms": self.float_model_ms, "rest_ms": self.rest_ms,
                "whole": self.whole, "skipped": self.skipped, "overhead_ms": self.overhead_ms, "method": self.method,
                "checks": self.checks, "moves": self.moves, "decode": self.decode, "same_kernel": self.same_kernel}


class _Single(nn.Module):
    """One layer as a model, for its own ONNX graph."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer(x)


def _resize(value: Any, batch: int) -> Any:
    """``value`` (a tensor or a structure of them) with ``batch`` rows: sliced, or the rows repeated."""
    def rows(t: torch.Tensor) -> torch.Tensor:
        if t.dim() == 0:
            return t
        reps = math.ceil(batch / t.shape[0])
        return t.repeat(reps, *([1] * (t.dim() - 1)))[:batch] if reps > 1 else t[:batch]
    return map_tensors(value, rows)


def time_session(session, feed: dict[str, np.ndarray], repeats: int = REPEATS, min_seconds: float = MIN_SECONDS) -> float:
    """Median milliseconds of ``session.run`` on ``feed`` after WARMUP runs (at least ``repeats`` runs and
    ``min_seconds``, at most 50x ``repeats`` runs)."""
    for _ in range(WARMUP):
        session.run(None, feed)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats or (time.perf_counter() - start < min_seconds and len(times) < 50 * repeats):
        t = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def time_pair(first, second, feed: dict[str, np.ndarray], repeats: int = REPEATS,
              rounds: int = 5) -> tuple[float, float, float]:
    """(first ms, second ms, standard error of their difference) of two sessions on the same ``feed``, timed
    in alternating rounds (WARMUP runs each first, then at least ``rounds`` rounds of about ``repeats`` / 2 runs
    of each, at least MIN_SECONDS / 2 of each in all), so that a drift of the machine's speed hits both alike:
    their difference is what a change costs. Within a round the two take turns at going first (ABBA, an even
    number of rounds), so that a session's place in the round cannot bias the difference; which session was
    made first can (``time_files`` cancels that). The times are the medians of all runs; the standard error
    is that of the mean of the rounds' paired differences (each round's median against the other's)."""
    for session in (first, second):
        for _ in range(WARMUP):
            session.run(None, feed)
    times: tuple[list[float], list[float]] = ([], [])
    differences: list[float] = []
    per_round = max(1, math.ceil(repeats / 2 / rounds))
    spent = [0.0, 0.0]
    # an even number of rounds, so that each session goes first as often as the other
    while len(differences) < max(2, rounds) or min(spent) < MIN_SECONDS / 2 or len(differences) % 2:
        medians = [0.0, 0.0]
        order = (0, 1) if len(differences) % 2 == 0 else (1, 0)
        for i in order:
            session = (first, second)[i]
            run = []
            for _ in range(per_round):
                t = time.perf_counter()
                session.run(None, feed)
                run.append(time.perf_counter() - t)
            times[i].extend(run)
            spent[i] += sum(run)
            medians[i] = statistics.median(run)
        differences.append(medians[1] - medians[0])
        if len(times[0]) >= 50 * repeats and len(differences) % 2 == 0:
            break
    se = statistics.stdev(differences) / math.sqrt(len(differences))
    return 1000 * statistics.median(times[0]), 1000 * statistics.median(times[1]), 1000 * se


def time_files(first: str | Path, second: str | Path, threads: int | None, feed: dict[str, np.ndarray],
               repeats: int = REPEATS, rounds: int = 4) -> tuple[float, float, float]:
    """``time_pair`` of two ONNX files, twice: once with the first file's session made first, once with the
    second's; (first ms, second ms, standard error of their difference), the two measurements averaged. Of
    two sessions of the same file made one after the other, the one made first measured slower (by 1-6 %,
    MiniLM at batch 1 on a 2-core Xeon) whichever ran first in a round, so one order would bias every change."""
    from .ort import make_session
    results = []
    for swapped in (False, True):
        made = [make_session(path, threads) for path in ((second, first) if swapped else (first, second))]
        a, b = reversed(made) if swapped else made
        results.append(time_pair(a, b, feed, repeats, rounds))
        del made, a, b
    return (sum(r[0] for r in results) / 2, sum(r[1] for r in results) / 2,
            math.sqrt(sum(r[2] ** 2 for r in results)) / 2)


def time_rotated(paths: list[str | Path], threads: int | None, feeds: list[dict[str, np.ndarray]],
                 repeats: int = REPEATS, rounds: int = ROTATED_ROUNDS) -> list[float]:
    """Median milliseconds of each ONNX file, each round making every session anew in an order rotated by one file,
    the median over the rounds: one file timed once, just after its export, drifted with the machine and with
    which session was made first (the float SmolLM2 step measured 30.5 ms so, 22.6 ms rotated)."""
    from .ort import make_session
    times: list[list[float]] = [[] for _ in paths]
    for r in range(rounds):
        for k in range(len(paths)):
            i = (k + r) % len(paths)
            session = make_session(paths[i], threads)
            times[i].append(time_session(session, feeds[i], repeats))
            del session
    return [statistics.median(t) for t in times]


def move_counts(moves: list[dict]) -> tuple[int, int]:
    """(moves that surely save time: entered as a saving, moves measured faster than the base within the
    noise: entered as a cost) of a profile's ``moves``."""
    return (sum(1 for m in moves if m["entered_ms"] < 0),
            sum(1 for m in moves if m["change_ms"] < 0 <= m["entered_ms"]))


def _feed(session, inputs: Any, decode: int | None = None) -> dict[str, np.ndarray]:
    """The session's inputs from ``inputs``; a language model's token ids run as a prompt, or with ``decode``
    as one decoding step: the first token of each row on a KV cache of ``decode`` tokens (zeros: the same work
    as any cache of that length)."""
    from .ort import kv_cache, prompt_inputs
    names = [i.name for i in session.get_inputs()]
    if isinstance(inputs, dict):
        values = [inputs[n] for n in names if n in inputs]
    elif isinstance(inputs, (tuple, list)):
        values = list(inputs)
    else:
        values = [inputs]
    feed = {n: v.detach().cpu().numpy() for n, v in zip(names, values)}
    cache = kv_cache(session)
    lm = cache is not None and len(values) == 1  # a language model's token ids
    if decode is not None and not lm:
        raise MixprecError("a decoding step is timed on a language model exported with its KV cache (token ids in, "
                           "logits and the cache out); this model's file has none: profile it without decode")
    if lm:  # a prompt, or its first token on a cache of ``decode`` tokens
        ids = feed[names[0]] if decode is None else feed[names[0]][:, :1]
        feed = {**prompt_inputs(cache, ids, decode or 0), names[0]: ids}
    return feed


def _timed_export(model: nn.Module, plan: Plan, data: list, example: Any, target: str, threads: int | None,
                  repeats: int, weight_method: str, activation_method: str, tmp: Path,
                  output_range: tuple[float, float] | None = None, decode: int | None = None) -> tuple[float, dict]:
    """(median ms, per-layer export rows) of ``model`` quantized by ``plan`` and exported for ``target``.
    output_range: quantize the graph's output to u8 over this range, as the next layer's input quantizer
    does inside a whole int8 graph (ONNX Runtime fuses an integer conv only where its output is quantized)."""
    from . import export
    from .ort import make_session, runtime_kernels
    out = tmp / "model.onnx"
    result = export(model, plan, data, target, out, example_input=example, weight_range=weight_method,
                    activation_range=activation_method, threads=threads, progress=False)
    rows = {r["layer"]: r for r in result.layers}
    if output_range is not None:
        _quantize_output(out, *output_range)
        for name, kernel in runtime_kernels(out, rows).items():
            rows[name].update(kernel)
    session = make_session(out, threads)
    return time_session(session, _feed(session, example, decode), repeats), rows


def _quantize_output(path: Path, lo: float, hi: float) -> None:
    """QuantizeLinear -> DequantizeLinear (u8, per tensor) on the graph's output, in place."""
    import onnx
    from onnx import helper, numpy_helper
    graph_model = onnx.load(str(path))
    graph = graph_model.graph
    output = graph.output[0].name
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / 255 if hi > lo else 1.0
    zero = int(np.clip(round(-lo / scale), 0, 255))
    graph.initializer.extend([numpy_helper.from_array(np.array(scale, dtype=np.float32), "output_qscale"),
                              numpy_helper.from_array(np.array(zero, dtype=np.uint8), "output_qzero")])
    for node in graph.node:
        node.output[:] = [f"{output}_float" if o == output else o for o in node.output]
    graph.node.extend([
        helper.make_node("QuantizeLinear", [f"{output}_float", "output_qscale", "output_qzero"], [f"{output}_q"],
                         name="output/QuantizeLinear"),
        helper.make_node("DequantizeLinear", [f"{output}_q", "output_qscale", "output_qzero"], [output],
                         name="output/DequantizeLinear")])
    onnx.save(graph_model, str(path))


def profile(model: nn.Module, data: Iterable, candidates: str | Iterable[str | Candidate], *,
            groups: ModelGroups | None = None, target: str = "ort-cpu", batch_size: int | None = None,
            threads: int | None = None, repeats: int = REPEATS, weight_range: str | None = None,
            activation_range: str | None = None, whole: bool = True, progress: bool = True, method: str = "graph",
            around: str | None = None, checks: int = 2, seed: int = 0, decode: int | None = None,
            weight_method: str | None = None, activation_method: str | None = None) -> LatencyProfile:
    """Time every layer of ``model``'s groups at every candidate on ``target`` (see the module docstring).

    data: calibration batches (the first gives each layer's input and, for candidates with activation
    quantizers, its calibration); batch_size: rows per timed input (default: the first batch's);
    threads: ONNX Runtime intra-op threads (default: its own); method: ``graph`` (each layer's kernel timed
    inside the whole model at each uniform candidate) or ``layers`` (each layer alone); whole (``layers``):
    also time the whole model at every uniform candidate the target runs, against the per-layer estimate;
    around (``graph``): a candidate; the table is measured around its uniform plan instead (each group moved
    to each other candidate with the rest at ``around``, timed as a whole: the entries are the base graph's
    kernel times plus each move's measured change, so a plan near that operating point is predicted with
    its float/integer boundaries; each move is entered at its measured change plus MOVE_SE standard errors
    of the paired timing, and ``moves`` keeps every measured change); checks (``graph``): random mixed plans (``seed``) timed as a whole against
    the table's prediction; decode (``graph``, a language model exported with its KV cache): time one decoding
    step, a token per row on a KV cache of ``decode`` tokens, instead of the calibration batch as a prompt.
    weight_range, activation_range: mse (default), minmax or percentile, as in ``analyze`` (the former names
    weight_method, activation_method are still taken)."""
    get_onnx_target(target, "profile")
    weight_method, activation_method = range_methods(weight_range, activation_range, weight_method, activation_method)
    if method not in ("graph", "layers"):
        raise MixprecError(f"profile method must be 'graph' or 'layers', got {method!r}")
    batches = [item for item in data]
    if not batches:
        raise MixprecError("profiling needs calibration data: each layer is timed on the input it sees")
    first = split_item(batches[0])[0]
    model = in_eval_mode(canonical(model), False)
    if groups is None:
        groups = discover_groups(model, first)
    if isinstance(candidates, str):
        candidates = [c for c in candidates.split(",") if c.strip()]
    cands = [c if isinstance(c, Candidate) else parse_candidate(c) for c in candidates]
    names = list(dict.fromkeys([FLOAT, *(c.name for c in cands)]))
    if decode is not None and (method != "graph" or decode < 1):
        raise MixprecError(f"decode= is a KV cache of at least 1 token, timed in the whole graph (method='graph'); "
                           f"got decode={decode!r} with method={method!r}")
    if around is not None:
        if method != "graph":
            raise MixprecError("around= (--around) measures in the whole graph: use it with method='graph' "
                               "(--method graph)")
        around = parse_candidate(around).name
        if around not in names:
            raise MixprecError(f"around={around!r} (--around) is not among the candidates {names}; add it to the "
                               "candidates (--candidates)")
    example = first if batch_size is None else _resize(first, batch_size)
    rows = batch_size or _rows(first)
    modules = {l.name: model.get_submodule(l.name) for l in groups.layers}
    skipped: dict[str, str] = {}
    runnable: dict[str, dict[str, bool]] = {}
    for name, layer in modules.items():
        kind = layer_kind(layer)
        for cand in names:
            reason = None
            if cand != FLOAT:
                realised = realise(parse_candidate(cand), kind, int(layer.weight[0].numel()))
                reason = realised if isinstance(realised, str) else None
            runnable.setdefault(name, {})[cand] = reason is None
            if reason is not None:
                skipped[f"{name}/{cand}"] = reason
    asked = [c.name for c in cands]
    if not any(runnable[layer][c] for layer in runnable for c in asked):  # a table with no entry to solve with
        reasons = sorted({skipped[f"{layer}/{c}"] for layer in runnable for c in asked if f"{layer}/{c}" in skipped})
        raise MixprecError(f"the {target} target runs none of the candidates {', '.join(asked)} on any layer of this "
                           f"model ({'; '.join(reasons[:3])}): the table would have no entry; give candidates it runs "
                           "(int8 with 8-bit inputs such as w8a8, weight-only such as w8 or w4g32 for linear layers, "
                           "or fp32)")
    whats = ["graph"] + ([] if around is None else [around]) if method == "graph" else ["layers"]
    keys = profile_keys(model, batches, example, names, whats, target, rows, threads, repeats, weight_method,
                        activation_method, decode)

    def log(what: str) -> ProfileLog:
        """The log that keeps this profile's timings of ``what`` across an interruption (profile_log)."""
        name = f"{'around' if what not in ('graph', 'layers') else what}-{keys[what]}"
        try:
            if what == "graph":  # with the graphs it times
                return ProfileLog(profile_folder() / name / "graphs.jsonl", profile_folder() / name)
            return ProfileLog(profile_folder() / f"{name}.jsonl")
        except OSError:  # no cache to keep it in: nothing is kept
            return ProfileLog(None)
    logs = [log(what) for what in whats]
    with tempfile.TemporaryDirectory(prefix="mixprec_profile_") as tmp:
        if method == "graph":
            result = _profile_graph(model, batches, example, groups, names, [c.name for c in cands], runnable,
                                    skipped, target, rows, threads, repeats, weight_method, activation_method,
                                    Path(tmp), progress, checks, seed, around, decode, *logs)
        else:
            result = _profile_layers(model, batches, example, groups, modules, names, [c.name for c in cands],
                                     runnable, skipped, target, rows, threads, repeats, weight_method,
                                     activation_method, whole, Path(tmp), progress, *logs)
    for done in logs:
        done.remove()
    return result


def kernel_of(row: dict) -> tuple[str, str]:
    """What the runtime runs for an exported layer row: its op and the format written, less the bits of the codes
    (4-bit codes in int8 storage run the int8 kernel of 8-bit codes)."""
    return row["runtime_op"], re.sub(r",? ?\d+-bit codes", "", str(row.get("format", "")))


def pool_same_kernels(layers: dict[str, dict[str, float]], kernels: dict[str, dict[str, tuple]]) -> dict[str, list]:
    """Enter the candidates of a layer that run as one kernel (``kernels``: layer -> candidate -> kernel_of) at the
    mean of their timings, in place; returns layer -> the candidate sets pooled."""
    pooled: dict[str, list[list[str]]] = {}
    for layer, by_cand in kernels.items():
        sets: dict[tuple, list[str]] = {}
        for cand, kernel in by_cand.items():
            if math.isfinite(layers[layer].get(cand, math.nan)):
                sets.setdefault(kernel, []).append(cand)
        for cands in sets.values():
            if len(cands) > 1:
                mean = sum(layers[layer][c] for c in cands) / len(cands)
                for c in cands:
                    layers[layer][c] = mean
                pooled.setdefault(layer, []).append(sorted(cands))
    return pooled


def _plan(groups: ModelGroups, assignments: dict[str, str]) -> Plan:
    """The plan putting each layer (every layer of a group alike) on its candidate in ``assignments``."""
    plan = Plan.uniform(groups, FLOAT)
    for group in groups.groups:
        plan.assignments[group.name] = assignments[group.layer_names[0]]
    return plan


def _uniform_where_runnable(groups: ModelGroups, cand: str, runnable: dict[str, dict[str, bool]]) -> dict[str, str]:
    """Each group at ``cand`` where the target runs it on all of the group's layers, else in float."""
    out: dict[str, str] = {}
    for group in groups.groups:
        ok = all(runnable[layer][cand] for layer in group.layer_names)
        for layer in group.layer_names:
            out[layer] = cand if ok else FLOAT
    return out


def node_times(path: Path, feed: dict[str, np.ndarray], threads: int | None, repeats: int, tmp: Path) -> dict[str, float]:
    """Median milliseconds of each node of the optimised graph at ``path``, from ONNX Runtime's own profiler
    (WARMUP runs first, then ``repeats`` profiled runs)."""
    import json
    from .ort import make_session
    session = make_session(path, threads, profile_prefix=str(tmp / "ort_profile"))
    for _ in range(WARMUP + repeats):
        session.run(None, feed)
    profile_file = session.end_profiling()
    try:
        events = json.loads(Path(profile_file).read_text())
    finally:
        Path(profile_file).unlink(missing_ok=True)
    durations: dict[str, list[float]] = {}
    for event in events:
        if event.get("cat") == "Node" and str(event.get("name", "")).endswith("_kernel_time"):
            durations.setdefault(event["name"][:-len("_kernel_time")], []).append(event["dur"] / 1000.0)
    return {name: statistics.median(d[WARMUP:] if len(d) > WARMUP else d) for name, d in durations.items()}


def _profile_graph(model, batches, example, groups, names, asked, runnable, skipped, target, rows, threads, repeats,
                   weight_method, activation_method, tmp: Path, progress: bool, checks: int, seed: int,
                   around: str | None, decode: int | None, log: ProfileLog,
                   moves_log: ProfileLog | None = None) -> LatencyProfile:
    from . import export
    from .ort import make_session
    graphs: dict[str, dict] = {}  # candidate -> its uniform graph: file, assignments, measured ms, kernel ms per layer
    ops: dict[str, dict[str, str]] = {layer: {} for layer in runnable}
    run_as: dict[str, dict[str, tuple]] = {layer: {} for layer in runnable}  # layer -> candidate -> kernel_of
    todo = [c for c in names if c == FLOAT or any(runnable[l][c] for l in runnable)]
    feeds: dict[str, dict[str, np.ndarray]] = {}  # candidate -> the inputs its graph is timed on
    folder = log.files if log.files is not None else tmp  # kept: the base of --around is one of these
    logged = {c: r for c in todo if (r := _logged_graph(log, c)) is not None}
    if logged and progress:
        print(f"profile: {len(logged)} of the {len(todo)} uniform graphs were exported and timed by an earlier run "
              f"of this profile ({log.files}): they are not timed again")
    for i, cand in enumerate(tqdm(todo, desc=f"timing uniform graphs on {target}", unit="graph",
                                  disable=not progress)):
        assignments = _uniform_where_runnable(groups, cand, runnable)
        record = logged.get(cand)
        if record is None:
            out = folder / f"uniform_{i}.onnx"
            result = export(model, _plan(groups, assignments), batches, target, out, example_input=example,
                            weight_range=weight_method, activation_range=activation_method, threads=threads,
                            progress=False)
            feed = _feed(make_session(out, threads), example, decode)  # the session names the inputs
            nodes = node_times(out, feed, threads, repeats, tmp)
            record = {"kind": "graph", "candidate": cand, "file": out.name, "kernels": {}, "ops": {}, "run_as": {}}
            for row in result.layers:
                called = row.get("runtime_nodes") or [row.get("runtime_node", "")]  # each call of a layer called again
                missing = [node for node in called if node not in nodes]
                if missing:
                    raise MixprecError(f"layer {row['layer']!r}: ONNX Runtime's profile of the uniform {cand} graph "
                                       f"has no node {missing[0] or '(none found)'!r}; time this model with "
                                       "method='layers' (--method layers)")
                record["kernels"][row["layer"]] = sum(nodes[node] for node in called)
                if assignments[row["layer"]] == cand:
                    record["ops"][row["layer"]] = ("float" if cand == FLOAT and row["runtime_op"] == "?"
                                                   else row["runtime_op"])
                    record["run_as"][row["layer"]] = list(kernel_of(row))
            if folder == log.files:
                log.add(record)
        else:
            out = folder / record["file"]
            feed = _feed(make_session(out, threads), example, decode)
        feeds[cand] = feed
        for layer, op in record["ops"].items():
            ops[layer][cand] = op
        for layer, kernel in record["run_as"].items():
            run_as[layer][cand] = tuple(kernel)
        graphs[cand] = {"path": out, "assignments": assignments, "kernels": dict(record["kernels"])}
    # each graph whole, once all are exported, in rotated rounds (timed just after its export, one drifted)
    rotated = time_rotated([g["path"] for g in graphs.values()], threads, [feeds[c] for c in graphs], repeats)
    for g, ms in zip(graphs.values(), rotated):
        g["measured_ms"], g["rest_ms"] = ms, ms - sum(g["kernels"].values())
    rest = max(0.0, min(g["rest_ms"] for g in graphs.values()))
    layers: dict[str, dict[str, float]] = {layer: {c: math.nan for c in names} for layer in runnable}
    for cand, g in graphs.items():
        total = sum(g["kernels"].values())
        extra = g["measured_ms"] - rest - total  # this graph's rest above the smallest, shared by kernel time
        for layer, ms in g["kernels"].items():
            if g["assignments"][layer] == cand:
                share = extra * ms / total if total > 0 else extra / len(g["kernels"])
                layers[layer][cand] = max(0.0, ms + share)
    same_kernel = pool_same_kernels(layers, run_as)
    moves: list[dict] = []
    if around is not None:
        layers, rest, moves = _around(model, batches, example, groups, names, runnable, graphs[around], around, target,
                                      threads, repeats, weight_method, activation_method, tmp, progress, decode,
                                      moves_log)
    for layer in layers:
        for cand in names:
            ops[layer].setdefault(cand, "")
    float_ms = graphs[FLOAT]["measured_ms"]
    result = LatencyProfile(target, rows, threads, asked, layers, ops, float_ms, rest, skipped=skipped,
                            method="graph" if around is None else f"graph around {around}", moves=moves,
                            decode=decode, same_kernel=same_kernel if around is None else {})
    for cand, g in graphs.items():
        if all(a == cand for a in g["assignments"].values()):
            result.whole[cand] = {"predicted_ms": result.predicted_ms(g["assignments"]),
                                  "measured_ms": g["measured_ms"]}
    rng = np.random.default_rng(seed)
    for _ in tqdm(range(checks), desc="timing mixed plans against the table", unit="plan", disable=not progress):
        assignments = {}
        for group in groups.groups:
            options = [c for c in names if all(math.isfinite(layers[l][c]) for l in group.layer_names)]
            pick = options[int(rng.integers(len(options)))]
            assignments.update({layer: pick for layer in group.layer_names})
        record = log.find(kind="check", index=len(result.checks), seed=seed, assignments=assignments)
        if record is not None and _finite_ms(record.get("measured_ms")):
            ms = record["measured_ms"]  # timed by an interrupted run of this profile
        else:
            ms, _ = _timed_export(model, _plan(groups, assignments), batches, example, target, threads, repeats,
                                  weight_method, activation_method, tmp, decode=decode)
            log.add({"kind": "check", "index": len(result.checks), "seed": seed, "assignments": assignments,
                     "measured_ms": ms})
        result.checks.append({"assignments": assignments, "predicted_ms": result.predicted_ms(assignments),
                              "measured_ms": ms})
    return result


def _finite_ms(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def _logged_graph(log: ProfileLog, cand: str) -> dict | None:
    """The record of ``cand``'s uniform graph, exported and timed by an interrupted run, if its file is there."""
    record = log.find(kind="graph", candidate=cand)
    try:
        if (record is None or log.files is None or not (log.files / str(record["file"])).is_file()
                or not all(_finite_ms(v) for v in record["kernels"].values())
                or not all(isinstance(v, str) for v in record["ops"].values())
                or not all(isinstance(k, list) and len(k) == 2 for k in record["run_as"].values())):
            return None
    except (KeyError, TypeError, AttributeError):
        return None
    return record


def _logged_entry(log: ProfileLog, layer: str, cand: str) -> dict | None:
    """The record of a layer's timing at ``cand`` by an interrupted run (``layers`` method), if whole."""
    record = log.find(kind="entry", layer=layer, candidate=cand)
    try:
        if record is None:
            return None
        if record["skipped"] is not None:
            return record if isinstance(record["skipped"], str) else None
        ok = (_finite_ms(record["ms"]) and _finite_ms(record["overhead_ms"]) and isinstance(record["op"], str)
              and isinstance(record["kernel"], list) and len(record["kernel"]) == 2)
    except (KeyError, TypeError):
        return None
    return record if ok else None


def _logged_moves(log: ProfileLog | None) -> dict[tuple[str, str], dict]:
    """(group, candidate) -> the move's record, from the log (a torn or foreign line is skipped: timed again)."""
    out = {}
    for item in log.records if log is not None else []:
        try:
            if all(isinstance(item[k], (int, float)) and math.isfinite(item[k]) for k in ("change_ms", "se_ms")) \
                    and item["se_ms"] >= 0:
                out[(str(item["group"]), str(item["candidate"]))] = item
        except (KeyError, TypeError):
            continue
    return out


def _around(model, batches, example, groups, names, runnable, base_graph: dict, around: str, target, threads,
            repeats, weight_method, activation_method, tmp: Path, progress: bool, decode: int | None = None,
            log: ProfileLog | None = None):
    """(table, rest, moves) measured around the uniform plan at ``around``: a layer's entry at its base
    candidate is its kernel time in the base graph, and at another candidate that plus the measured change of
    the whole graph when its group moves there (the moved graph and the base timed in alternating rounds;
    shared among the group's layers by kernel time). Each change is entered at the upper end of its
    interval, the measured change plus MOVE_SE standard errors of its paired timing; ``moves`` lists every
    move's measured change, its standard error and what was entered."""
    base = base_graph["assignments"]
    kernels, measured = base_graph["kernels"], base_graph["measured_ms"]
    total = sum(kernels.values())
    # profiled kernels can add up to more than the unprofiled run: then they are scaled down to it, rest 0
    scale = measured / total if total > measured > 0 else 1.0
    shares = {layer: ms * scale for layer, ms in kernels.items()}
    rest = max(0.0, measured - sum(shares.values()))
    layers = {layer: {c: math.nan for c in names} for layer in runnable}
    for layer, cand in base.items():
        layers[layer][cand] = shares[layer]
    moves = [(group, cand) for group in groups.groups for cand in names
             if cand != base[group.layer_names[0]] and all(runnable[l][cand] for l in group.layer_names)]
    from . import export
    from .ort import make_session
    feed = _feed(make_session(base_graph["path"], threads), example, decode)  # the uniform graph, exported and timed
    record: list[dict] = []
    logged = _logged_moves(log)
    if logged and progress:
        print(f"profile: {sum((g.name, c) in logged for g, c in moves)} of the {len(moves)} moves were timed by an "
              f"earlier run of this profile ({log.path}): they are not timed again")
    for group, cand in tqdm(moves, desc=f"timing moves around {around} on {target}", unit="graph",
                            disable=not progress):
        assignments = dict(base)
        assignments.update({layer: cand for layer in group.layer_names})
        if (group.name, cand) in logged:  # timed, paired with the base, by an interrupted run of this profile
            measured_delta, se = logged[(group.name, cand)]["change_ms"], logged[(group.name, cand)]["se_ms"]
        else:
            path = tmp / "move.onnx"
            export(model, _plan(groups, assignments), batches, target, path, example_input=example,
                   weight_range=weight_method, activation_range=activation_method, threads=threads, progress=False)
            base_ms, ms, se = time_files(base_graph["path"], path, threads, feed, repeats)
            measured_delta = ms - base_ms  # timed in alternating rounds with the base: the move's own cost
            if log is not None:
                log.add({"group": group.name, "candidate": cand, "change_ms": measured_delta, "se_ms": se})
        delta = measured_delta + MOVE_SE * se  # what the move may cost (or surely saves, where negative)
        record.append({"group": group.name, "candidate": cand, "change_ms": measured_delta, "se_ms": se,
                       "entered_ms": delta, "entered": f"change + {MOVE_SE:g} se"})
        total = sum(shares[l] for l in group.layer_names)
        for layer in group.layer_names:
            part = delta * shares[layer] / total if total > 0 else delta / len(group.layer_names)
            layers[layer][cand] = max(0.0, shares[layer] + part)
    return layers, rest, record


def _profile_layers(model, batches, example, groups, modules, names, asked, runnable, skipped, target, rows, threads,
                    repeats, weight_method, activation_method, whole: bool, tmp: Path, progress: bool,
                    log: ProfileLog) -> LatencyProfile:
    seen: dict[str, torch.Tensor] = {}

    def keep(name, module, args, kwargs):
        seen.setdefault(name, layer_input(args, kwargs).detach())
    with on_inputs(modules, keep), torch.no_grad():
        run_model(model, example)
    layers: dict[str, dict[str, float]] = {}
    ops: dict[str, dict[str, str]] = {}
    overhead: dict[str, float] = {}
    run_as: dict[str, dict[str, tuple]] = {}  # layer -> candidate -> kernel_of
    todo = [(name, c) for name in modules for c in names]
    logged = {(name, c): r for name, c in todo if (r := _logged_entry(log, name, c)) is not None}
    if logged and progress:
        print(f"profile: {len(logged)} of the {len(todo)} entries were timed by an earlier run of this profile "
              f"({log.path}): they are not timed again")
    for name, cand in tqdm(todo, desc=f"timing layers on {target}", unit="entry", disable=not progress):
        layer = modules[name]
        row, oprow = layers.setdefault(name, {}), ops.setdefault(name, {})
        if not runnable[name][cand]:
            row[cand], oprow[cand] = math.nan, ""
            continue
        if name not in seen:
            row[cand], oprow[cand] = math.nan, ""
            skipped[f"{name}/{cand}"] = "not called on the first calibration batch"
            continue
        record = logged.get((name, cand))
        if record is not None:  # timed by an interrupted run of this profile
            if record["skipped"] is not None:
                row[cand], oprow[cand] = math.nan, ""
                skipped[f"{name}/{cand}"] = record["skipped"]
                continue
            overhead.setdefault(name, record["overhead_ms"])
            row[cand], oprow[cand] = record["ms"], record["op"]
            run_as.setdefault(name, {})[cand] = tuple(record["kernel"])
            continue
        realised = None if cand == FLOAT else realise(parse_candidate(cand), layer_kind(layer),
                                                      int(layer.weight[0].numel()))
        single = _Single(layer).eval()  # the layer as it runs in the model, not a module in training mode
        x = seen[name]
        single_groups = discover_groups(single, x)
        plan = Plan.uniform(single_groups, cand)
        output_range = None
        if realised is not None and realised.kind == "qdq":  # inside an int8 graph the output goes on quantized (to the next layer)
            with torch.no_grad():
                y = layer(x)
            output_range = (float(y.min()), float(y.max()))
        try:
            ms, written = _timed_export(single, plan, [x], x, target, threads, repeats, weight_method,
                                        activation_method, tmp, output_range)
        except (CandidateError, MixprecError) as exc:
            row[cand], oprow[cand] = math.nan, ""
            skipped[f"{name}/{cand}"] = str(exc).splitlines()[0]
            log.add({"kind": "entry", "layer": name, "candidate": cand, "skipped": skipped[f"{name}/{cand}"]})
            continue
        op = written["layer"]["runtime_op"]
        if name not in overhead:
            overhead[name] = _overhead(x, threads, repeats, tmp)
        row[cand], oprow[cand] = max(0.0, ms - overhead[name]), ("float" if op == "?" and cand == FLOAT else op)
        run_as.setdefault(name, {})[cand] = kernel_of(written["layer"])
        log.add({"kind": "entry", "layer": name, "candidate": cand, "skipped": None, "ms": row[cand],
                 "op": oprow[cand], "kernel": list(run_as[name][cand]), "overhead_ms": overhead[name]})
    same_kernel = pool_same_kernels(layers, run_as)
    def whole_ms(cand: str, data: list) -> float:
        """The model timed whole at the uniform ``cand`` (logged: an interrupted run's timing is kept)."""
        record = log.find(kind="whole", candidate=cand)
        if record is not None and _finite_ms(record.get("measured_ms")):
            return record["measured_ms"]
        ms = _timed_export(model, Plan.uniform(groups, cand), data, example, target, threads, repeats,
                           weight_method, activation_method, tmp)[0]
        log.add({"kind": "whole", "candidate": cand, "measured_ms": ms})
        return ms
    float_ms = whole_ms(FLOAT, batches[:1])
    rest = max(0.0, float_ms - sum(layers[n][FLOAT] for n in layers if math.isfinite(layers[n][FLOAT])))
    result = LatencyProfile(target, rows, threads, asked, layers, ops, float_ms, rest,
                            skipped=skipped, overhead_ms=overhead, method="layers", same_kernel=same_kernel)
    if whole:
        for cand in names:
            plan = Plan.uniform(groups, cand)
            assignments = plan.layer_candidates()
            if any(not math.isfinite(layers[n][c]) for n, c in assignments.items()):
                continue
            measured = float_ms if cand == FLOAT else whole_ms(cand, batches)
            result.whole[cand] = {"predicted_ms": result.predicted_ms(assignments), "measured_ms": measured}
    return result


def _overhead(x: torch.Tensor, threads: int | None, repeats: int, tmp: Path) -> float:
    """Median ms of a session that only passes ``x`` through (Identity): what every one-layer session
    costs beyond its layer (the call, the input and output copies), which a whole graph pays once."""
    import onnx
    from onnx import helper
    from .ort import make_session
    array = x.detach().cpu().numpy()
    dtype = helper.np_dtype_to_tensor_dtype(array.dtype)  # token ids (an embedding's input) too
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "overhead",
                              [helper.make_tensor_value_info("x", dtype, list(x.shape))],
                              [helper.make_tensor_value_info("y", dtype, list(x.shape))])
    path = tmp / "overhead.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    session = make_session(path, threads)
    return time_session(session, {"x": array}, repeats)


def _rows(value: Any) -> int:
    """Rows of the first tensor in ``value`` (1 for a scalar or none)."""
    first = next(iter(flatten_tensors(value)), None)
    return int(first.shape[0]) if first is not None and first.dim() else 1


def save_profile(result: LatencyProfile, csv_path: str | Path) -> tuple[Path, Path]:
    """Write the CSV cost table and, beside it, the whole profile as JSON."""
    csv_path = Path(csv_path)
    json_path = csv_path.with_suffix(".json")
    result.write_csv(csv_path)
    write_json_atomic(json_path, result.to_dict())
    return csv_path, json_path
