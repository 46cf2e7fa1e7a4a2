"""The report of a run: the Pareto curve, the sensitivity heat-map and one chosen plan, written as
PNGs plus one self-contained HTML file (images embedded, no network, no scripts).

    write_report(out_dir, pareto, table, costs=None, select=None) -> out_dir / "report.html"

``pareto`` is the dict ``mixprec pareto`` writes (pareto.json); ``table`` the sensitivity table of
the same run; ``costs`` (optional) adds each group's share of the plan's cost. matplotlib is
imported inside the functions that draw, so ``import mixprec`` does not pay for it.
"""
from __future__ import annotations

import base64
import html
import io
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .atomic import write_atomic
from .errors import MixprecError, SpecError
from .front import Front

if TYPE_CHECKING:
    from .costs import CostTables
    from .sensitivity.table import SensitivityTable

NEAR_REFERENCE = 0.01  # default plan: the cheapest one within 1 % (relative) of the float model
MAX_LABELLED_GROUPS = 300  # the heat-map names every group up to this many, every k-th beyond
UNIFORM_MARKERS = ("s", "^", "D", "v", "P", "X", "h", "<", ">", "p", "d", "8")
NOT_MEASURED = "not measured: run mixprec pareto --eval SPEC"
KIND_LABELS = {"bops": "BOPs per sample", "bytes": "model size", "bits_per_weight": "bits per weight"}


@dataclass(frozen=True)
class _Measured:
    """One plan with a measured metric: a front point, a uniform candidate or a search result."""
    source: str  # "front", "uniform" or "search"
    label: str
    predicted: float
    value: float


def write_report(out_dir: str | os.PathLike, pareto: dict, table: "SensitivityTable",
                 costs: "CostTables | None" = None, select: int | None = None) -> Path:
    """Write pareto.png, heatmap.png (and predicted_vs_measured.png when plans were measured) and
    report.html into ``out_dir``; return the path of report.html.

    ``select`` indexes ``pareto["points"]``; by default the cheapest measured point within 1 % of the
    float reference, else the best measured one, else (nothing measured) the middle of the front.
    """
    _check(pareto, table, costs, select)
    if select is None:
        select, why = _default_select(pareto)
    else:
        why = f"given: select={select}"
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    measured = _measured_plans(pareto)
    pngs = {"pareto.png": _pareto_png(pareto, select),
            "heatmap.png": _heatmap_png(table, pareto["points"][select]["assignments"])}
    spearman = _spearman(measured) if measured else None
    if measured:
        pngs["predicted_vs_measured.png"] = _scatter_png(pareto, measured, spearman)
    else:  # a scatter left by an earlier report of this directory would no longer match
        (out_dir / "predicted_vs_measured.png").unlink(missing_ok=True)
    for name, data in pngs.items():
        write_atomic(out_dir / name, data)
    page = _html(pareto, table, costs, select, why, pngs, measured, spearman)
    path = out_dir / "report.html"
    write_atomic(path, page.encode("utf-8"))
    return path


# ----------------------------------------------------------------------------- validation

def _check(pareto: Any, table: "SensitivityTable", costs: "CostTables | None", select: Any) -> None:
    if not isinstance(pareto, dict):
        raise SpecError(f"the pareto data must be a dict (the contents of pareto.json), got {type(pareto).__name__}")
    missing = [k for k in ("kind", "points") if k not in pareto]
    if missing:
        raise SpecError(f"pareto.json has no {' or '.join(repr(k) for k in missing)}; it is not the output of "
                        "`mixprec pareto RUN`: run that command again and pass its pareto.json")
    kind, points = pareto["kind"], pareto["points"]
    if not isinstance(kind, str) or not kind:
        raise SpecError(f"pareto.json 'kind' must be a budget kind name such as 'bops', got {kind!r}")
    if not isinstance(points, list) or not points:
        raise SpecError("pareto.json has no points; run `mixprec pareto RUN` again (it writes at least one plan)")
    if pareto.get("metric") not in (None, table.metric):
        raise SpecError(f"pareto.json was made from a {pareto['metric']!r} sensitivity table but the table given "
                        f"measures {table.metric!r}: pareto.json and the sensitivity table come from different runs; "
                        "pass the run directory pareto.json was made from")
    groups, candidates = set(table.groups), set(table.candidates)
    for i, point in enumerate(points):
        if not isinstance(point, dict):
            raise SpecError(f"pareto.json point {i} is not an object; regenerate pareto.json with `mixprec pareto`")
        cost = point.get("costs", {}).get(kind) if isinstance(point.get("costs"), dict) else None
        if not _is_number(cost) or not math.isfinite(cost):
            raise SpecError(f"pareto.json point {i} has no finite {kind!r} cost (its 'costs' must hold the budget "
                            "kind of the front); regenerate pareto.json with `mixprec pareto`")
        if not _is_number(point.get("predicted_sensitivity")):
            raise SpecError(f"pareto.json point {i} has no numeric 'predicted_sensitivity'; "
                            "regenerate pareto.json with `mixprec pareto`")
        assignments = point.get("assignments")
        if not isinstance(assignments, dict):
            raise SpecError(f"pareto.json point {i} has no 'assignments' (group -> candidate); "
                            "regenerate pareto.json with `mixprec pareto`")
        unknown = sorted(set(assignments) - groups)
        absent = sorted(groups - set(assignments))
        bad_cands = sorted({str(c) for c in assignments.values()} - candidates)
        if unknown or absent or bad_cands:
            detail = "; ".join(s for s in (
                f"groups not in the table: {_some(unknown)}" if unknown else "",
                f"table groups with no candidate: {_some(absent)}" if absent else "",
                f"candidates not in the table: {_some(bad_cands)}" if bad_cands else "") if s)
            raise SpecError(f"pareto.json point {i} does not fit the sensitivity table ({detail}): pareto.json and "
                            "the sensitivity table come from different runs; pass the run directory pareto.json "
                            "was made from")
    names = set()
    for where, entry in _entries_with_measured(pareto):
        measured = entry.get("measured")
        if measured is None:
            continue
        if isinstance(measured, dict) and measured.get("value") in ("inf", "-inf"):  # as JSON holds an infinity
            measured["value"] = float(measured["value"])  # (a ruined plan's perplexity: a measurement, kept)
        if not isinstance(measured, dict) or not _is_number(measured.get("value")) or \
                not isinstance(measured.get("higher_is_better"), bool):
            raise SpecError(f"pareto.json {where}: 'measured' must be null or "
                            '{"name": ..., "value": number, "higher_is_better": true|false}, got ' f"{measured!r}")
        names.add(str(measured.get("name")))
    if len(names) > 1:
        raise SpecError(f"pareto.json mixes measured metrics ({', '.join(sorted(names))}); evaluate every plan with "
                        "the same --eval so that they can be compared")
    if select is not None and (type(select) is not int or not 0 <= select < len(points)):
        raise SpecError(f"select={select!r} is out of range: pareto.json has {len(points)} points, "
                        f"choose an index from 0 to {len(points) - 1}")
    if costs is not None:
        if set(costs.groups) != groups:
            raise SpecError("the cost tables and the sensitivity table list different groups: they come from "
                            "different runs; pass the costs.json of the run the table was measured in")
        lacking = sorted({str(c) for p in points for c in p["assignments"].values()} - set(costs.candidates))
        if lacking:
            raise SpecError(f"the cost tables have no column for {_some(lacking)}; pass the costs.json of the run "
                            "the table was measured in")


def _entries_with_measured(pareto: dict):
    yield "reference", {"measured": pareto.get("reference")}
    for i, point in enumerate(pareto["points"]):
        yield f"point {i}", point
    for name, entry in (pareto.get("uniform") or {}).items():
        yield f"uniform {name!r}", entry if isinstance(entry, dict) else {}
    for i, entry in enumerate(pareto.get("searches") or []):
        yield f"search {i}", entry if isinstance(entry, dict) else {}


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _some(names: list[str], n: int = 5) -> str:
    return ", ".join(repr(x) for x in names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


# ----------------------------------------------------------------------------- choosing the plan

def _default_select(pareto: dict) -> tuple[int, str]:
    points, kind, reference = pareto["points"], pareto["kind"], pareto.get("reference")
    measured = [i for i, p in enumerate(points) if p.get("measured")]
    if not measured:
        return len(points) // 2, "the middle point of the front (no plan was measured)"
    name = points[measured[0]]["measured"].get("name", "metric")
    if reference:
        ref, higher = reference["value"], reference["higher_is_better"]
        tolerance = NEAR_REFERENCE * abs(ref)
        near = [i for i in measured
                if (ref - points[i]["measured"]["value"] if higher else points[i]["measured"]["value"] - ref)
                <= tolerance]
        if near:
            i = min(near, key=lambda i: points[i]["costs"][kind])
            return i, (f"the cheapest plan whose measured {name} is within {NEAR_REFERENCE:.0%} of the float "
                       f"model's {_num(ref)}")
    higher = points[measured[0]]["measured"]["higher_is_better"]
    best = (max if higher else min)(measured, key=lambda i: points[i]["measured"]["value"])
    far = f" (none is within {NEAR_REFERENCE:.0%} of the float model)" if reference else ""
    return best, f"the plan with the best measured {name}{far}"


def _measured_plans(pareto: dict) -> list[_Measured]:
    plans = []

    def add(source: str, label: str, entry: Any) -> None:
        if isinstance(entry, dict) and entry.get("measured"):
            predicted = entry.get("predicted_sensitivity")
            plans.append(_Measured(source, label, float(predicted) if _is_number(predicted) else math.nan,
                                   float(entry["measured"]["value"])))

    for i, point in enumerate(pareto["points"]):
        add("front", f"#{i}", point)
    for name, entry in (pareto.get("uniform") or {}).items():
        add("uniform", str(name), entry)
    for entry in pareto.get("searches") or []:
        add("search", str(entry.get("name", "search")), entry)
    return plans


def _measured_info(pareto: dict) -> tuple[str, bool] | None:
    """(name, higher_is_better) of the measured metric, or None when nothing was measured."""
    for _, entry in _entries_with_measured(pareto):
        if entry.get("measured"):
            return str(entry["measured"].get("name", "metric")), entry["measured"]["higher_is_better"]
    return None


def _spearman(plans: list[_Measured]) -> tuple[float, float, int] | None:
    """(rho, p-value, n) between predicted sensitivity and the measured metric over the distinct plans (a front
    plan that is also a uniform plan counts once: the same plan twice would overstate the significance), None
    below 3 plans."""
    pairs = list(dict.fromkeys((p.predicted, p.value) for p in plans
                               if math.isfinite(p.predicted) and math.isfinite(p.value)))
    if len(pairs) < 3:
        return None
    from scipy.stats import spearmanr
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant input: rho is nan, reported as undefined below
        result = spearmanr([a for a, _ in pairs], [b for _, b in pairs])
    return float(result[0]), float(result[1]), len(pairs)


# ----------------------------------------------------------------------------- figures

def _new_figure(width: float, height: float):
    # A Figure with its own Agg canvas: no pyplot, so no global backend switch and no figure registry.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def _plain(text: Any) -> str:
    """User text for a matplotlib label: '$' would start mathtext."""
    return str(text).replace("$", r"\$")


def _cost_formatter(kind: str):
    from .costs import format_bytes, format_count
    if kind == "bytes":
        return format_bytes
    if kind == "bops":
        return format_count
    if kind == "bits_per_weight":
        return lambda v: "?" if math.isnan(v) else f"{v:.3g}"
    return lambda v: "?" if math.isnan(v) else f"{v:.4g}"


def _kind_label(kind: str) -> str:
    return KIND_LABELS.get(kind, kind.replace("_", " "))


def _set_sensitivity_scale(axis_setter, values: list[float]) -> None:
    finite = [v for v in values if math.isfinite(v)]
    positive = [v for v in finite if v > 0]
    if not positive or max(positive) / min(positive) < 100:
        return
    if len(positive) == len(finite):
        axis_setter("log")
    elif min(finite) >= 0:
        axis_setter("symlog", linthresh=min(positive))


def _pareto_png(pareto: dict, select: int) -> bytes:
    from matplotlib.ticker import FuncFormatter
    kind, points = pareto["kind"], pareto["points"]
    fmt = _cost_formatter(kind)
    info = _measured_info(pareto)
    uniform = {str(k): v for k, v in (pareto.get("uniform") or {}).items() if isinstance(v, dict)}
    searches = [s for s in pareto.get("searches") or [] if isinstance(s, dict)]
    fig = _new_figure(8.5, 8.5 if info else 5.0)
    axes = fig.subplots(2 if info else 1, 1, sharex=True, squeeze=False)[:, 0]
    order = sorted(range(len(points)), key=lambda i: points[i]["costs"][kind])

    def cost(entry: dict) -> float:
        v = (entry.get("costs") or {}).get(kind)
        return float(v) if _is_number(v) else math.nan

    def draw(ax, value, front_label: str) -> list[float]:
        """Front, uniform candidates, searches and the selected plan with y = value(entry); the y values."""
        ys = []
        xs = [points[i]["costs"][kind] for i in order if value(points[i]) is not None]
        front = [value(points[i]) for i in order if value(points[i]) is not None]
        ax.plot(xs, front, "-o", color="C0", markersize=4, label=front_label, zorder=3)
        ys += front
        for j, (name, entry) in enumerate(uniform.items()):
            y = value(entry)
            if y is None or not math.isfinite(cost(entry)):
                continue
            ax.plot([cost(entry)], [y], UNIFORM_MARKERS[j % len(UNIFORM_MARKERS)], color=f"C{(j + 1) % 10}",
                    markersize=8, label=f"uniform {_plain(name)}", zorder=4)
            ax.annotate(_plain(name), (cost(entry), y), textcoords="offset points", xytext=(6, 4), fontsize=8)
            ys.append(y)
        for entry in searches:
            y = value(entry)
            if y is None or not math.isfinite(cost(entry)):
                continue
            ax.plot([cost(entry)], [y], "*", color="black", markersize=12,
                    label=_plain(entry.get("name", "search")), zorder=5)
            ys.append(y)
        y = value(points[select])
        if y is not None:
            ax.plot([points[select]["costs"][kind]], [y], "o", markersize=14, markerfacecolor="none",
                    markeredgecolor="red", markeredgewidth=2, label=f"selected plan #{select}", zorder=6)
        ax.grid(True, alpha=0.3)
        return ys

    def predicted(entry: dict) -> float | None:
        v = entry.get("predicted_sensitivity")
        return float(v) if _is_number(v) else None

    ys = draw(axes[0], predicted, "Pareto front")
    _set_sensitivity_scale(axes[0].set_yscale, ys)
    axes[0].set_ylabel(f"predicted sensitivity ({_plain(pareto.get('metric') or '?')}, lower is better)")
    axes[0].legend(fontsize=8, loc="best")
    model = pareto.get("model") or "model"
    axes[0].set_title(_plain(f"{model}: {pareto.get('metric') or '?'} sensitivity vs {_kind_label(kind)}"))
    if info:
        name, higher = info

        def measured(entry: dict) -> float | None:  # an infinite measurement (a ruined plan) is not drawn
            m = entry.get("measured")
            return float(m["value"]) if m and math.isfinite(float(m["value"])) else None

        draw(axes[1], measured, "Pareto front (measured)")
        reference = pareto.get("reference")
        if reference and math.isfinite(float(reference["value"])):
            ref = float(reference["value"])
            axes[1].axhline(ref, color="grey", linestyle="--", label=f"float model {_num(ref)}")
            band = (ref - NEAR_REFERENCE * abs(ref), ref) if higher else (ref, ref + NEAR_REFERENCE * abs(ref))
            axes[1].axhspan(*band, color="grey", alpha=0.12, label=f"within {NEAR_REFERENCE:.0%} of float")
        axes[1].set_ylabel(_plain(f"measured {name} ({'higher' if higher else 'lower'} is better)"))
        axes[1].legend(fontsize=8, loc="best")
    axes[-1].set_xlabel(_plain(_kind_label(kind)))
    axes[-1].xaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt(v)))
    fig.tight_layout()
    return _png(fig)


def _heatmap_png(table: "SensitivityTable", chosen: dict[str, str]) -> bytes:
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Patch, Rectangle
    values = table.values
    n_groups, n_cands = values.shape
    finite = np.isfinite(values)
    positive = values[finite & (values > 0)]
    floor = float(positive.min()) / 10 if positive.size else 1e-12
    clipped = finite & (values <= 0)
    safe = np.full(values.shape, floor)
    safe[finite] = np.maximum(values[finite], floor)
    logs = np.log10(safe)
    data = np.ma.masked_array(logs, mask=~finite)

    row_in = 0.32 if n_groups <= 30 else 0.16  # 0.16 in holds one line of 7-point text
    top_in, bottom_in = 1.5, 0.5  # colour bar and candidate names above, legend below
    height = top_in + bottom_in + row_in * min(n_groups, MAX_LABELLED_GROUPS)
    label_chars = min(max((len(g) for g in table.groups), default=4), 48)
    width = max(5.0, 1.0 + 0.065 * label_chars + 0.9 * n_cands)
    fig = _new_figure(width, height)
    fig.subplots_adjust(top=1 - top_in / height, bottom=bottom_in / height, left=0.05, right=0.95)
    ax = fig.add_subplot()
    image = ax.imshow(data, aspect="auto", cmap="viridis", interpolation="nearest")
    # the colour bar goes on top, above the candidate names, so that a tall map still shows it at once
    axes_in = height - top_in - bottom_in
    bar = fig.colorbar(image, cax=ax.inset_axes([0.0, 1 + 0.6 / axes_in, 1.0, 0.14 / axes_in]),
                       orientation="horizontal")
    bar.ax.xaxis.set_ticks_position("top")
    bar.ax.xaxis.set_label_position("top")
    bar.set_label(_plain(f"log10 {table.metric} sensitivity (lower is better)"
                         + (f"\nvalues <= 0 drawn at {floor:.1e}" if clipped.any() else "")), fontsize=9)

    legend = []
    for mask, hatch, text in ((np.isposinf(values) | np.isneginf(values), "//", "not allowed / failed (inf)"),
                              (np.isnan(values), "..", "not measured (NaN)")):
        rows, cols = np.nonzero(mask)
        if rows.size:
            ax.add_collection(PatchCollection([Rectangle((c - 0.5, r - 0.5), 1, 1) for r, c in zip(rows, cols)],
                                              facecolor="#d9d9d9", edgecolor="#7f7f7f", linewidth=0, hatch=hatch))
            legend.append(Patch(facecolor="#d9d9d9", edgecolor="#7f7f7f", hatch=hatch, label=text))
    col = {c: j for j, c in enumerate(table.candidates)}
    picked = [(i, col[chosen[g]]) for i, g in enumerate(table.groups) if g in chosen]
    if picked:
        ax.add_collection(PatchCollection([Rectangle((c - 0.5, r - 0.5), 1, 1) for r, c in picked], facecolor="none",
                                          edgecolor="red", linewidth=2 if n_groups <= 30 else 1.2, zorder=3))
        legend.append(Patch(facecolor="none", edgecolor="red", linewidth=2, label="selected plan"))
    if n_groups * n_cands <= 150:  # small tables: print the numbers too
        for r in range(n_groups):
            for c in range(n_cands):
                v = values[r, c]
                if math.isfinite(v):
                    shade = (logs[r, c] - data.min()) / max(float(data.max() - data.min()), 1e-12)
                    ax.text(c, r, f"{v:.2g}", ha="center", va="center", fontsize=7,
                            color="black" if shade > 0.6 else "white")

    step = max(1, math.ceil(n_groups / MAX_LABELLED_GROUPS))
    rows = range(0, n_groups, step)
    ax.set_yticks(list(rows))
    ax.set_yticklabels([_plain(_short(table.groups[r], 48)) for r in rows], fontsize=7 if n_groups > 30 else 9)
    ax.set_xticks(range(n_cands))
    ax.set_xticklabels([_plain(c) for c in table.candidates], fontsize=9)
    ax.xaxis.tick_top()
    ax.set_ylabel("quantizer group" + (f" (every {step}th named)" if step > 1 else ""))
    if legend:
        ax.legend(handles=legend, loc="upper center", bbox_to_anchor=(0.5, 0), fontsize=8,
                  ncol=len(legend), frameon=False, borderaxespad=0.5)
    return _png(fig)


def _scatter_png(pareto: dict, plans: list[_Measured], spearman: tuple[float, float, int] | None) -> bytes:
    name, higher = _measured_info(pareto)
    fig = _new_figure(6.5, 4.8)
    ax = fig.add_subplot()
    ruined = [p for p in plans if not math.isfinite(p.value)]  # an infinite perplexity: kept, but not a point
    plans = [p for p in plans if math.isfinite(p.value)]
    if ruined:
        ax.text(0.01, 0.01, f"{len(ruined)} plan(s) measured {name} = inf, not drawn", transform=ax.transAxes,
                fontsize=8, color="grey")
    style = {"front": ("o", "C0", "Pareto front"), "uniform": ("s", "C1", "uniform"),
             "search": ("*", "black", "search")}
    for source, (marker, color, label) in style.items():
        mine = [p for p in plans if p.source == source]
        if mine and source == "front":  # rings over the other markers: a front plan that is a uniform plan shows as both
            ax.scatter([p.predicted for p in mine], [p.value for p in mine], marker=marker, facecolors="none",
                       edgecolors=color, linewidths=1.5, s=90, label=label, zorder=4)
        elif mine:
            ax.scatter([p.predicted for p in mine], [p.value for p in mine], marker=marker, color=color,
                       s=60 if marker == "*" else 30, label=label, zorder=3)
        if source != "front":
            for p in mine:
                ax.annotate(_plain(p.label), (p.predicted, p.value), textcoords="offset points", xytext=(5, 3),
                            fontsize=8)
    reference = pareto.get("reference")
    if reference and math.isfinite(float(reference["value"])):
        ax.axhline(float(reference["value"]), color="grey", linestyle="--", label="float model")
    _set_sensitivity_scale(ax.set_xscale, [p.predicted for p in plans])
    ax.set_xlabel(_plain(f"predicted sensitivity ({pareto.get('metric') or '?'}, lower is better)"))
    ax.set_ylabel(_plain(f"measured {name} ({'higher' if higher else 'lower'} is better)"))
    ax.set_title(f"Spearman rho = {spearman[0]:.3f} (n = {spearman[2]} distinct plans)"
                 if spearman and math.isfinite(spearman[0])
                 else "predicted vs measured")
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def _short(name: str, n: int) -> str:
    return name if len(name) <= n else name[: n // 2 - 1] + "…" + name[-(n - n // 2):]


# ----------------------------------------------------------------------------- HTML

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1150px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.9em; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.selected td { background: #fff3c4; font-weight: 600; }
img { max-width: 100%; border: 1px solid #eee; } .scroll { max-height: 85vh; overflow: auto; }
.note { color: #555; } code { background: #f3f3f3; padding: 0 0.2em; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(v: Any) -> str:
    return f"{v:.4g}" if _is_number(v) else "?"


def _table_html(header: list[str], rows: list[tuple[list[tuple[str, bool]], bool]]) -> str:
    """``rows``: (cells as (escaped text, numeric?), selected?)."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(
        ('<tr class="selected">' if sel else "<tr>")
        + "".join(f'<td class="num">{c}</td>' if num else f"<td>{c}</td>" for c, num in cells) + "</tr>\n"
        for cells, sel in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>\n{body}</tbody></table>"


def _img(name: str, data: bytes, alt: str) -> str:
    uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    return (f'<p><a href="{_e(name)}"><img src="{uri}" alt="{_e(alt)}"></a><br>'
            f'<span class="note">full size: <a href="{_e(name)}">{_e(name)}</a></span></p>')


def _measured_cells(entry: dict, reference: dict | None) -> list[tuple[str, bool]]:
    m = entry.get("measured")
    if not m:
        return [("", True)] + ([("", True)] if reference else [])
    cells = [(_e(_num(m["value"])), True)]
    if reference:
        drop = m["value"] - reference["value"]
        cells.append((_e(f"{drop:+.3g}" if drop else "0"), True))
    return cells


def _html(pareto: dict, table: "SensitivityTable", costs: "CostTables | None", select: int, why: str,
          pngs: dict[str, bytes], measured: list[_Measured], spearman: tuple[float, float, int] | None) -> str:
    kind, points = pareto["kind"], pareto["points"]
    model, metric = pareto.get("model") or "unknown model", pareto.get("metric") or table.metric
    reference = pareto.get("reference")
    info = _measured_info(pareto)
    mname = info[0] if info else "metric"
    kinds = [kind] + sorted({k for p in points for k in (p.get("costs") or {}) if k != kind
                             and all(_is_number((q.get("costs") or {}).get(k)) for q in points)})
    fmts = {k: _cost_formatter(k) for k in kinds}
    any_measured = any(p.get("measured") for p in points)
    any_search = any("search" in p for p in points)
    parts = [f"<h1>mixprec report: {_e(model)}</h1>",
             f"<p>sensitivity metric <b>{_e(metric)}</b>, budget kind <b>{_e(kind)}</b> ({_e(_kind_label(kind))}); "
             f"{len(points)} plans on the front, {len(table.groups)} quantizer groups, candidates "
             f"{_e(', '.join(table.candidates))}; {len(pareto.get('excluded') or [])} layer(s) left in float."
             + (f" Float model: {_e(reference.get('name', mname))} = {_e(_num(reference['value']))}." if reference
                else "") + "</p>"]

    parts.append("<h2>Trade-off curve</h2>")
    parts.append(_img("pareto.png", pngs["pareto.png"], "Pareto curve"))

    header = ["#"] + [f"{_kind_label(k)}" for k in kinds] + [f"predicted {metric}"]
    if any_measured:
        header += [f"measured {mname}"] + (["vs float"] if reference else [])
    header += ["candidates used"] + (["search"] if any_search else [])
    rows = []
    for i, p in enumerate(points):
        used = sorted({str(c) for c in p["assignments"].values()})
        cells = [(_e(f"{i} (selected)" if i == select else i), False)]
        cells += [(_e(fmts[k](float(p["costs"][k]))), True) for k in kinds]
        cells.append((_e(_num(p["predicted_sensitivity"])), True))
        if any_measured:
            cells += _measured_cells(p, reference)
        cells.append((_e(f"{len(used)}: {', '.join(used)}"), False))
        if any_search:
            cells.append((_e(p.get("search", "")), False))
        rows.append((cells, i == select))
    parts.append("<h2>Plans on the front</h2>" + _table_html(header, rows))

    uniform = {str(k): v for k, v in (pareto.get("uniform") or {}).items() if isinstance(v, dict)}
    searches = [s for s in pareto.get("searches") or [] if isinstance(s, dict)]
    if uniform or searches:
        extra_measured = any(e.get("measured") for e in [*uniform.values(), *searches])
        header = ["plan", _kind_label(kind), f"predicted {metric}"]
        if extra_measured:
            header += [f"measured {mname}"] + (["vs float"] if reference else [])
        header += ["evaluations"] if searches else []
        rows = []
        for label, entry in [(f"uniform {n}", e) for n, e in uniform.items()] + \
                            [(str(s.get("name", "search")), s) for s in searches]:
            c = (entry.get("costs") or {}).get(kind)
            cells = [(_e(label), False), (_e(fmts[kind](float(c)) if _is_number(c) else "?"), True),
                     (_e(_num(entry.get("predicted_sensitivity"))), True)]
            if extra_measured:
                cells += _measured_cells(entry, reference)
            if searches:
                cells.append((_e(entry.get("evaluations", "")), True))
            rows.append((cells, False))
        parts.append("<h2>Uniform candidates and searches</h2>" + _table_html(header, rows))
        if _front_flags(pareto, "better_when_cheaper"):
            from .front import INVERTED
            parts.append(f"<p class=\"note\"><b>Better when cheaper:</b> {_e(INVERTED)}.</p>")
        below = _front_flags(pareto, "below_cheaper")
        if below:
            parts.append("<p class=\"note\"><b>Measured below a cheaper plan:</b> " + "; ".join(
                f"front plan {i} measures worse than the cheaper plan {j}" for i, j in below)
                + ". The sensitivities, each measured alone, mispredict these plans: pick the cheaper one, or solve "
                "at that budget with <code>--search local</code>, which measures its moves.</p>")
        above = _front_flags(pareto, "uniform_above_front")
        if above:
            guarded = any(p.get("guard") for p in pareto.get("plans", []))
            advice = ("the guard, deciding on the calibration data, kept the mixed plans there, and the evaluation "
                      "measures otherwise: prefer the uniform plan, or solve at that budget with <code>--search "
                      "local</code>" if guarded else "prefer the uniform plan (or solve with the guard on)")
            parts.append(f"<p class=\"note\"><b>Above the front:</b> uniform {_e(', '.join(above))} measure(s) better "
                         f"than every plan of the front that costs no more. The mixed plans do not improve on "
                         f"uniform there; {advice}.</p>")

    parts.append("<h2>Sensitivity heat-map</h2>"
                 f"<p class=\"note\">S[group, candidate] for {len(table.groups)} groups, log10 colour scale; "
                 "hatched cells are not allowed (inf) or not measured (NaN); red outlines mark the selected plan.</p>"
                 f"<div class=\"scroll\">{_img('heatmap.png', pngs['heatmap.png'], 'sensitivity heat-map')}</div>")

    parts.append(_selected_html(pareto, table, costs, select, why))

    parts.append("<h2>Predicted vs measured</h2>")
    if not measured:
        parts.append(f"<p>{_e(NOT_MEASURED)}</p>")
    else:
        higher = info[1]
        if spearman is None:
            parts.append(f"<p>Only {len(measured)} measured plan(s): a rank correlation needs at least 3.</p>")
        elif not math.isfinite(spearman[0]):
            parts.append(f"<p>Spearman rank correlation: undefined (the predicted or the measured values of the "
                         f"{spearman[2]} plans are all equal).</p>")
        else:
            rho, p_value, n = spearman
            parts.append(f"<p>Spearman rank correlation between predicted sensitivity and measured {_e(mname)}: "
                         f"<b>&rho; = {rho:.3f}</b> (n = {n} distinct plans, p = {p_value:.2g}). Lower sensitivity should "
                         f"mean {'higher' if higher else 'lower'} {_e(mname)}, so a metric that ranks plans "
                         f"perfectly gives &rho; = {'-1' if higher else '+1'}.</p>")
        parts.append(_img("predicted_vs_measured.png", pngs["predicted_vs_measured.png"], "predicted vs measured"))

    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>mixprec report: {_e(model)} ({_e(metric)}, {_e(kind)})</title>"
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")


def _selected_html(pareto: dict, table: "SensitivityTable", costs: "CostTables | None", select: int,
                   why: str) -> str:
    kind, point = pareto["kind"], pareto["points"][select]
    assignments = point["assignments"]
    layers = pareto.get("groups") or {}
    col = {c: j for j, c in enumerate(table.candidates)}
    cost_kinds, cost_col, sums = [], {}, {}
    if costs is not None:
        cost_kinds = ([kind] if kind in costs.tables else []) + sorted(k for k in costs.tables if k != kind)
        cost_col = {c: j for j, c in enumerate(costs.candidates)}
        cost_row = {g: i for i, g in enumerate(costs.groups)}
        entry_cost = {k: {g: float(costs.tables[k][cost_row[g], cost_col[assignments[g]]]) for g in table.groups}
                      for k in cost_kinds}
        sums = {k: sum(v.values()) for k, v in entry_cost.items()}
    header = ["group", "layers", "candidate", f"sensitivity ({table.metric})"]
    header += [f"{_kind_label(k)} (share of groups)" for k in cost_kinds]
    rows = []
    for i, g in enumerate(table.groups):
        cand = str(assignments[g])
        cells = [(_e(g), False), (_e(", ".join(map(str, layers.get(g, [])))), False), (_e(cand), False),
                 (_e(_num(float(table.values[i, col[cand]]))), True)]
        for k in cost_kinds:
            v = entry_cost[k][g]
            share = f" ({100 * v / sums[k]:.1f}%)" if sums[k] else ""
            cells.append((_e(_cost_formatter(k)(v) + share), True))
        rows.append((cells, False))
    counts: dict[str, int] = {}
    for c in assignments.values():
        counts[str(c)] = counts.get(str(c), 0) + 1
    summary = ", ".join(f"{c} x{n}" for c, n in sorted(counts.items()))
    measured = point.get("measured")
    excluded = pareto.get("excluded") or []
    return (f"<h2>Selected plan: #{select}</h2>"
            f"<p>Chosen as {_e(why)}. "
            f"{_e(_kind_label(kind))} {_e(_cost_formatter(kind)(float(point['costs'][kind])))}, "
            f"predicted {_e(table.metric)} {_e(_num(point['predicted_sensitivity']))}"
            + (f", measured {_e(measured.get('name', 'metric'))} {_e(_num(measured['value']))}" if measured else "")
            + f"; candidates: {_e(summary)}.</p>" + _table_html(header, rows)
            + (f"<p class=\"note\">left in float: {_e(', '.join(map(str, excluded)))}</p>" if excluded else ""))


def _front_flags(pareto: dict, flag: str) -> list:
    """What Front.<flag>() finds in ``pareto`` (below_cheaper, uniform_above_front, better_when_cheaper)."""
    try:
        return getattr(Front.from_dict(pareto), flag)()
    except (KeyError, TypeError, ValueError, AttributeError, MixprecError):
        return []  # a hand-made or partial pareto.json: no flag rather than no report
