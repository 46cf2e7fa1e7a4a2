"""Cost tables C_k[group, candidate] for each budget kind, plus the constant part of the model.

- ``bytes``: weights at their bit-width plus every scale and zero-point (a w4g128 weight
  costs 4 + 16/128 bits), plus the input quantizer's scale/zero-point; ``fixed`` holds
  everything not quantized (biases, norms, embeddings, excluded layers) at its dtype size.
- ``bops``: MACs x weight bits x activation bits (van Baalen et al., "Bayesian Bits", sec. 4),
  MACs per sample of the example input.
- ``bits_per_weight``: weight storage bits of the group / all weights of the quantizable
  layers, so the row sums add up to the model's average bits per weight.
A plan's cost is ``fixed[k] + sum_g table[k][g, choice[g]]``.

Multipoint candidates (``w4x2``, mixprec.multipoint) cost what each channel really uses, so they
need the number of points of every output channel (chosen on calibration data; ``points``:
candidate -> layer -> one digit per channel, as ``mixprec analyze`` records them): a channel with
p points stores p B-bit planes of its row plus p sets of scales (and zero-points), every channel
of the layer stores its point count (ceil(log2 K) bits), and its MACs count p times in BOPs.
Without the counts an entry is unknown: reading it raises, never a guess.
"""
from __future__ import annotations

import math
from pathlib import Path
from dataclasses import dataclass, field

import numpy as np
from torch import nn

from .candidates import Candidate, parse_candidate
from .errors import CandidateError
from .formats import SCALE_BITS, IntFormat, is_dynamic
from .groups import Layer, ModelGroups
from .solvers.problem import plan_costs

COST_KINDS = ("bytes", "bops", "bits_per_weight")


def weight_storage_bits(layer: Layer, candidate: Candidate, points: str | None = None) -> int:
    """Storage bits of the layer's weight; ``points`` (one digit per output channel) for multipoint.
    A weight shared with an earlier layer (``layer.weight_of``) is stored there: 0 here."""
    if layer.weight_of:
        return 0
    if candidate.weight is None:  # float: the layer keeps the model's own weight (16 bits in a bfloat16 model)
        return layer.params * layer.float_bits
    if not candidate.multipoint:
        return candidate.weight.storage_bits(layer.weight_shape)
    counts = _counts(layer, candidate, points)
    out = layer.weight_shape[0]
    # one point of one channel: its row's codes and its share of the scales (zero-points)
    per_point = candidate.weight.storage_bits((1, *layer.weight_shape[1:]))
    return sum(counts) * per_point + out * math.ceil(math.log2(candidate.points))


def _counts(layer: Layer, candidate: Candidate, points: str | None) -> list[int]:
    if points is None:
        raise CandidateError(f"the cost of {candidate.name} on layer {layer.name!r} depends on how many points each "
                             "output channel takes, which is chosen on calibration data; measure it with `mixprec "
                             f"analyze --candidates ...,{candidate.name}` (its run records the counts) or quantize "
                             "with calibration data")
    counts = [int(c) for c in points]
    if len(counts) != layer.weight_shape[0] or not all(1 <= c <= candidate.points for c in counts):
        raise CandidateError(f"multipoint counts of layer {layer.name!r} at {candidate.name} do not fit it "
                             f"({layer.weight_shape[0]} channels, 1..{candidate.points} points each); re-run "
                             "`mixprec analyze`")
    return counts


def input_quantizer_bits(candidate: Candidate, layer: Layer | None = None) -> int:
    fmt = candidate.activation
    if layer is not None and layer.kind == "Embedding":  # its input is token ids: nothing to quantize
        return 0
    if fmt is None or not (isinstance(fmt, IntFormat) or getattr(fmt, "scaled", False)) or is_dynamic(fmt):
        return 0  # nothing stored: float inputs, or scales computed from the values at run time
    zero_point = fmt.bits if isinstance(fmt, IntFormat) and not fmt.symmetric else 0
    return SCALE_BITS + zero_point


def layer_bops(layer: Layer, candidate: Candidate, points: str | None = None) -> float:
    """MACs x weight bits x activation bits; a multipoint channel's MACs count once per point."""
    points_per_channel = 1.0
    if candidate.multipoint:
        counts = _counts(layer, candidate, points)
        points_per_channel = sum(counts) / len(counts)
    if layer.macs is None:
        return float("nan")
    if candidate.weight is None:  # float: the model's own weights and inputs (16 bits each in a bfloat16 model)
        return float(layer.macs) * layer.float_bits * layer.float_bits
    return float(layer.macs) * points_per_channel * candidate.weight_bits * candidate.activation_bits


@dataclass(frozen=True)
class CostTables:
    groups: tuple[str, ...]
    candidates: tuple[str, ...]
    tables: dict[str, np.ndarray]  # kind -> (G, C)
    fixed: dict[str, float]  # kind -> constant part of the model
    # (group, candidate) -> why the entry is unknown (multipoint without point counts); NaN in the tables
    unknown: dict[tuple[str, str], str] = field(default_factory=dict)

    def total(self, kind: str, choice: dict[str, str]) -> float:
        """Cost of a plan given as group -> candidate name."""
        for g in self.groups:
            if (g, choice[g]) in self.unknown:
                raise CandidateError(self.unknown[(g, choice[g])])
        col = {c: j for j, c in enumerate(self.candidates)}
        indices = np.array([col[choice[g]] for g in self.groups], dtype=int)
        return plan_costs(indices, np.zeros(self.tables[kind].shape), {kind: self.tables[kind]}, self.fixed)[1][kind]

    def uniform(self, kind: str, candidate: str) -> float:
        return self.total(kind, {g: candidate for g in self.groups})

    def to_dict(self) -> dict:
        if self.unknown:
            raise CandidateError(next(iter(self.unknown.values())))
        return {"groups": list(self.groups), "candidates": list(self.candidates),
                "tables": {k: v.tolist() for k, v in self.tables.items()}, "fixed": dict(self.fixed)}

    @classmethod
    def from_dict(cls, data: dict) -> "CostTables":
        """The tables ``to_dict`` wrote; a cost that is negative or infinite (a hand-edited file: solve would
        call any budget met) is a ValueError naming it. NaN is an entry not known yet (multipoint)."""
        groups, candidates = tuple(data["groups"]), tuple(data["candidates"])
        tables = {k: np.array(v, dtype=float) for k, v in data["tables"].items()}
        fixed = {k: float(v) for k, v in data["fixed"].items()}
        for kind, table in tables.items():
            if table.shape != (len(groups), len(candidates)):
                raise ValueError(f"the {kind} table is {table.shape}, not {len(groups)} groups x {len(candidates)} "
                                 "candidates")
            bad = np.argwhere(~np.isnan(table) & ~(np.isfinite(table) & (table >= 0)))
            if len(bad):
                g, c = bad[0]
                raise ValueError(f"{kind} of group {groups[g]!r} at {candidates[c]} is {float(table[g, c])!r}: a cost is a "
                                 "finite number >= 0")
        for kind, value in fixed.items():
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"the fixed {kind} is {value!r}: a cost is a finite number >= 0")
        return cls(groups, candidates, tables, fixed)


def other_param_bytes(model: nn.Module, groups: ModelGroups) -> float:
    """Bytes of every parameter that no group quantizes (biases, norms, embeddings, excluded layers)."""
    # by storage: a weight shared by two layers (tied embeddings) is one parameter, under one of its names
    # (named_modules and data_ptr, not get_submodule and id: TorchScript modules have neither reliably)
    modules = dict(model.named_modules())
    quantized = {modules[l.name].weight.data_ptr() for l in groups.layers}
    return float(sum(p.numel() * p.element_size() for p in model.parameters()
                     if p.numel() == 0 or p.data_ptr() not in quantized))


def cost_tables(groups: ModelGroups, candidates: list[Candidate | str], model: nn.Module | None = None,
                points: dict[str, dict[str, str]] | None = None) -> CostTables:
    """``points``: multipoint candidate -> layer -> points per output channel (mixprec.multipoint);
    a multipoint entry without them is NaN and listed in ``unknown`` (reading it raises)."""
    cands = [parse_candidate(c) for c in candidates]
    points = points or {}
    all_weights = sum(l.params for l in [*groups.layers, *groups.excluded] if not l.weight_of)
    shape = (len(groups), len(cands))
    tables = {k: np.zeros(shape) for k in COST_KINDS}
    unknown: dict[tuple[str, str], str] = {}
    for i, group in enumerate(groups):
        for j, cand in enumerate(cands):
            counts = {l.name: points.get(cand.name, {}).get(l.name) for l in group.layers}
            try:
                wbits = sum(weight_storage_bits(l, cand, counts[l.name]) for l in group.layers)
                bops = sum(layer_bops(l, cand, counts[l.name]) for l in group.layers)
            except CandidateError as exc:
                if any(c is not None for c in counts.values()):
                    raise  # counts given but wrong: a real error, not a missing measurement
                unknown[(group.name, cand.name)] = str(exc)
                for k in COST_KINDS:
                    tables[k][i, j] = np.nan
                continue
            tables["bytes"][i, j] = (wbits + sum(input_quantizer_bits(cand, l) for l in group.layers)) / 8
            tables["bops"][i, j] = bops
            tables["bits_per_weight"][i, j] = wbits / all_weights
    excluded = groups.excluded  # float layers: the model's own width (16 bits in a bfloat16 model)
    fixed = {
        "bytes": other_param_bytes(model, groups) if model is not None else float("nan"),
        "bops": float(sum(l.macs * l.float_bits ** 2 for l in excluded))
        if all(l.macs is not None for l in excluded) else float("nan"),
        "bits_per_weight": sum(l.params * l.float_bits for l in excluded if not l.weight_of) / all_weights,
    }
    return CostTables(tuple(groups.names), tuple(c.name for c in cands), tables, fixed, unknown)


def format_bytes(n: float) -> str:
    if math.isnan(n):
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} GB"


def format_count(n: float) -> str:
    if math.isnan(n):
        return "?"
    for unit, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:.0f}"


REST_OF_MODEL = "*"


def load_cost_csv(path: str, groups: dict[str, list[str]], candidates: list[str]) -> tuple[np.ndarray, float]:
    """A cost table of any kind from a CSV file, e.g. latency measured per layer on the target.

    Long form, one row per entry: ``layer,candidate,latency_ms`` (first column a group or a layer
    name, the value in the third column). Wide form: ``layer,w4a8,w8a8,...``, one column per
    candidate. A group costs its own row or else the sum of its layers' rows; a row named ``*``
    is the constant part (the rest of the model). Returns the (G, C) table, NaN where the file
    has no entry (the caller disallows those), and the constant part (0 without a ``*`` row).
    """
    import csv
    from .errors import SpecError
    file = Path(path)
    if not file.is_file():
        raise SpecError(f"cost table {path} not found; give a CSV such as: layer,candidate,latency_ms")
    try:
        with file.open(newline="", encoding="utf-8") as f:
            rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise SpecError(f"{path} is not a text CSV file ({exc}); give rows such as layer,candidate,latency_ms") from None
    if len(rows) < 2:
        raise SpecError(f"{path}: a header and at least one row are needed, e.g. 'layer,candidate,latency_ms'")
    header = [h.strip() for h in rows[0]]
    entries: dict[tuple[str, str], float] = {}
    fixed = 0.0

    def number(text: str, line: int) -> float:
        try:
            value = float(text)
        except ValueError:
            raise SpecError(f"{path} line {line}: {text!r} is not a number") from None
        if not math.isfinite(value) or value < 0:
            raise SpecError(f"{path} line {line}: {text!r} is not a cost; costs are finite numbers >= 0 "
                            "(a latency, a size, an energy)")
        return value

    long_form = len(header) >= 3 and header[1].lower() == "candidate"
    if not long_form and len(header) >= 2 and header[1].lower() == "candidate":
        raise SpecError(f"{path}: the header {','.join(header)!r} has no value column; the long form is "
                        "name,candidate,value (e.g. 'layer,candidate,latency_ms'), the wide form "
                        "name,<candidate>,<candidate>,... (e.g. 'layer,w4a8,w8a8')")
    seen: dict[tuple[str, str], int] = {}  # entry -> the line that gave it
    for line, row in enumerate(rows[1:], start=2):
        cells = [c.strip() for c in row]
        if long_form:
            if len(cells) < 3:
                raise SpecError(f"{path} line {line}: expected name,candidate,value")
            items = [(cells[1], cells[2])]
        else:
            items = list(zip(header[1:], cells[1:]))
        for cand, value in items:
            if value == "":
                continue
            if cells[0] == REST_OF_MODEL:
                fixed = number(value, line)
                continue
            try:
                cand = parse_candidate(cand).name
            except Exception as exc:
                raise SpecError(f"{path} line {line}: {exc}") from None
            value = number(value, line)
            if (cells[0], cand) in entries and entries[(cells[0], cand)] != value:
                raise SpecError(f"{path} line {line}: ({cells[0]}, {cand}) costs {value:g} here and "
                                f"{entries[(cells[0], cand)]:g} on line {seen[(cells[0], cand)]}; keep one row per "
                                "entry")
            entries[(cells[0], cand)] = value
            seen.setdefault((cells[0], cand), line)
    names = {name for name, _ in entries}
    known = set(groups) | {layer for layers in groups.values() for layer in layers}
    unknown = sorted(names - known)
    if unknown:
        raise SpecError(f"{path} names {len(unknown)} unknown group(s)/layer(s), e.g. {unknown[:3]}; names must be "
                        f"this run's groups or layers, e.g. {sorted(known)[:3]}")
    table = np.full((len(groups), len(candidates)), np.nan)
    for i, (group, layers) in enumerate(groups.items()):
        for j, cand in enumerate(candidates):
            if (group, cand) in entries:
                table[i, j] = entries[(group, cand)]
            elif all((layer, cand) in entries for layer in layers):
                table[i, j] = sum(entries[(layer, cand)] for layer in layers)
    empty = [g for g, row in zip(groups, table) if np.isnan(row).all()]
    if empty:
        raise SpecError(f"{path} has no entry for {len(empty)} group(s), e.g. {empty[:3]}; add a row per layer "
                        f"and candidate, e.g. '{groups[empty[0]][0]},{candidates[0]},1.25'")
    return table, fixed
