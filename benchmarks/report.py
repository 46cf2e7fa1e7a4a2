"""Generate BENCHMARKS.md from the JSON files in benchmarks/results/ (no figure is typed by hand).

    python benchmarks/report.py
"""
from __future__ import annotations

import json
import re
import math
from pathlib import Path

from mixprec.costs import format_bytes, format_count

RESULTS = Path(__file__).parent / "results"
OUT = Path(__file__).parent.parent / "BENCHMARKS.md"
MODELS = ("resnet20", "resnet56", "efficientnet-lite0", "minilm", "smollm2")
EXAMPLES = ("vit-digits", "byte-gpt", "se-digits")  # models written as a user writes them (examples/), given as file specs


def load(name: str) -> dict | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.is_file() else None


def uniform_section() -> list[str]:
    lines = ["## Uniform candidates on the real models", "",
             "FP32 and every group on one candidate (vision models keep their first and last layer at 8 bits). "
             "Bytes count every scale and zero-point; BOPs are per sample.", ""]
    for model in MODELS:
        report = load(f"uniform_{model}.json")
        if report is None:
            lines += [f"- {model}: not measured yet (`python benchmarks/uniform.py {model}`)", ""]
            continue
        metric = report["rows"][0]["metric_name"]
        lines += [f"### {model}", "", f"Calibration: {report['calibration']} ({report['calibration_samples']} samples). "
                  f"Evaluation: {report['evaluation']}.", "",
                  f"| candidate | {metric} | bytes | BOPs | bits/weight |", "|---|---|---|---|---|"]
        for r in report["rows"]:
            lines.append(f"| {r['candidate']} | {r['metric']:.2f} | {format_bytes(r['bytes'])} | "
                         f"{format_count(r['bops'])} | {r['bits_per_weight']:.3f} |")
        env = report["environment"]
        lines += ["", f"`{report['command']}` — {report['wall_seconds']} s, torch {env['torch']}, "
                  f"{env['threads']} threads.", ""]
    return lines


def speed_section() -> list[str]:
    reports = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("sensitivity_speed*.json"))]
    if not reports:
        return []
    lines = ["## Sensitivity measurement cost", "",
             "Forked forward (the float prefix computed once per batch and shared by every fork: through torch.fx, or "
             "for models fx cannot trace, at block level, the blocks before a group's answered from one recorded float "
             "pass) against the naive loop (one full forward per group x candidate x batch), same data, same run.", ""]
    for report in reports:
        lines += _speed_table(report)
    from range_search import markdown as range_search_markdown
    for path in sorted(RESULTS.glob("range_search_*.json")):
        lines += range_search_markdown(json.loads(path.read_text())).replace("## ", "### ", 1).splitlines() + [""]
    return lines


def _speed_table(report: dict) -> list[str]:
    lines = ["| model | groups | candidates | samples | forward-equivalents (forked / naive) | ratio | "
             "wall s (forked / naive) | ratio | max relative table difference |", "|---|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        sharing = r["forked"].get("prefix_sharing", "fx")
        lines.append(f"| {r['model']} ({sharing}) | {r['groups']} | {r['candidates']} | {r['calibration_samples']} | "
                     f"{r['forked']['forward_equivalents']:.1f} / {r['naive']['forward_equivalents']:.1f} | "
                     f"{r['forward_equivalent_ratio']:.3f} | {r['forked']['seconds']:.1f} / {r['naive']['seconds']:.1f} | "
                     f"{r['wall_time_ratio']:.3f} | {r['max_relative_difference']:.1e} |")
    env = report["environment"]
    device = f", {env['gpu']}" if env.get("gpu") else ""
    lines += ["", f"`{report['command']}` — torch {env['torch']}, {env.get('cpu_count', '?')} CPU cores{device}"
              f"{', ' + env['note'] if env.get('note') else ''}.", ""]
    for r in report["results"]:
        if r["forked"].get("prefix_sharing") != "blocks":
            continue
        ratio, equal = r["forward_equivalent_ratio"], r["max_relative_difference"] <= 1e-5
        met = "met" if ratio <= BLOCK_TARGET and equal else "missed"
        line = (f"- {r['model']}: {ratio:.3f} of the naive forward-equivalents at block level, tables equal within "
                f"{r['max_relative_difference']:.1e} (target: at most {BLOCK_TARGET}x, tables equal within float "
                f"tolerance): **{met}**.")
        if "blocks" in r:
            b = r["blocks"]
            line += (f" Its {b['count']} blocks hold {100 * b['macs_share']:.0f} % of the MACs: a fork from block i "
                     f"runs blocks i to the last and everything after them, {b['mean_fork_cost']:.3f} of a forward "
                     "on average over the blocks; a group before the blocks (an embedding table) pays a whole "
                     "forward per fork.")
        lines.append(line)
    return lines + [""] if lines[-1].startswith("- ") else lines


BLOCK_TARGET = 0.6  # the LLM issue's target for block-level prefix reuse (forward-equivalents against naive)


def solver_section() -> list[str]:
    report = load("solver_speed.json")
    if report is None:
        return []
    lines = ["## Exact solver speed", "", "| groups | candidates | budgets | seconds (optimal) |", "|---|---|---|---|"]
    lines += [f"| {r['groups']} | {r['candidates']} | {r['budgets']} | {r['seconds']:.3f} |" for r in report["rows"]]
    if report.get("fronts"):
        lines += ["", "Pareto front for one budget kind (bytes):", "",
                  "| groups | candidates | points asked | method | seconds | plans kept | largest excess over exact |",
                  "|---|---|---|---|---|---|---|"]
        for r in report["fronts"]:
            gap = r.get("largest_relative_gap_to_exact")
            lines.append(f"| {r['groups']} | {r['candidates']} | {r['points']} | {r['method']} | {r['seconds']:.3f} | "
                         f"{r['plans']} | {'' if gap is None else f'{gap:.2%}'} |")
        lines += ["", "The Lagrangian plans are optimal at their own cost (property-tested against the integer "
                  "program); at a budget between two of them they leave some budget unused, hence the excess."]
    busy = f", load average {report['load_average_at_end']} at the end" if "load_average_at_end" in report else ""
    return lines + ["", f"`{report['command']}` — scipy {report['scipy']}, {report['cpu_count']} CPU cores{busy}; "
                    "optimal means HiGHS with a relative MIP gap of 0 (after reduced-cost fixing).", ""]


def trust_section() -> list[str]:
    reports = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("trust_*.json"))]
    if not reports:
        return []
    metrics = [row["metric"] for row in reports[0]["rows"] if row["metric"] != "task"]
    lines = ["## Trust report: which sensitivity metric ranks groups like the real metric drop", "",
             "Spearman rank correlation of each metric's table with the measured drop of the task metric when "
             "only that group is quantized (every group, full evaluation set); seconds = time to compute the table.",
             "", "| model | candidate | groups | " + " | ".join(metrics) + " | task (truth) s |",
             "|---|---|---|" + "---|" * (len(metrics) + 1)]
    for r in reports:
        rows = {row["metric"]: row for row in r["rows"]}
        cells = [f"{rows[m]['spearman']:.2f} ({rows[m]['seconds']:.1f} s)" if not math.isnan(rows[m]["spearman"])
                 else "n/a" for m in metrics]
        lines.append(f"| {r['model']} | {r['candidate']} | {len(r['groups'])} | " + " | ".join(cells)
                     + f" | {rows['task']['seconds']:.1f} |")
    lines += [""] + [f"- {r['model']}: `{r['command']}` on {r['environment'].get('device', 'cpu')} "
                     f"{r['environment'].get('gpu') or ''}, {r['calibration_samples']} calibration samples"
                     for r in reports] + [""]
    return lines


def run_section() -> list[str]:
    """benchmarks/run.py: mixed vs uniform vs searches per model, with its plot."""
    from run import markdown, targets
    reports = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("run_*.json"))]
    if not reports:
        return []
    lines = ["# Mixed precision against uniform and against the seed papers' searches", "",
             "Made by `python benchmarks/run.py MODEL` (one command per model; the command, machine and versions "
             "are under each table). Every plan is applied and evaluated on the model's whole evaluation split.", "",
             "Summary of the targets:", "", "| model | target | met | figures |", "|---|---|---|---|"]
    for r in reports:
        for t in targets(r):
            figures = (f"{t['note']} ({t['uniform_low']:.2f} vs {t['uniform_high']:.2f}); mixed {t['mixed']:.2f}"
                       if t.get("note") else
                       f"mixed {t['mixed']:.2f} vs uniform {t['uniform_low']:.2f} -> {t['uniform_high']:.2f} "
                       f"({t['recovered']:.0%} of the gap)" if "recovered" in t else
                       "; ".join(f"{v['kind']} of {v['at']}: {v['mixed']:.2f} < {v['uniform']:.2f}"
                                 for v in t.get("violations", [])))
            met = "n/a" if t["met"] is None else "yes" if t["met"] else "no"
            lines.append(f"| {r['model']} | {t['target']} | {met} | {figures} |")
    lines += ["", "Where a target is missed: at the BOPs of uniform W4A8 on the CIFAR ResNets (and at its bytes on "
              "ResNet-56), the exact plan has a lower predicted (sqnr) damage than uniform W4A8 but measures worse: "
              "the single-group sensitivities do not add up there (the trust report below shows that every metric "
              "ranks the ResNet groups only loosely). `refine`, "
              "which measures each lowered group in the context of the plan and re-solves, recovers part of it "
              "(its row in each table). The remaining violations are at plans that collapse (about 10 % top-1 or "
              "less) or within one standard error of the evaluation.", ""]
    for r in reports:
        lines += [markdown(r).replace("## ", "## ", 1), f"![{r['model']}](benchmarks/results/run_{r['model']}_pareto.png)", ""]
    return lines


def ratio1_lines(reports: list[dict]) -> list[str]:
    """At ratio 1.0 (NNCF's default: every layer in 4 bits), mixprec's default plan by rounding, from the files."""
    out = []
    for r in reports:
        rows = [row for row in r["rows"] if "mixprec" in row and row["config"]["ratio"] == 1.0
                and "mixprec_rounding" in r]
        if not rows or not r["command"].count("ratio1"):
            continue
        wins = sum(row["mixprec_at_least_as_good"] for row in rows)
        # ratio 1.0 without AWQ: data-aware NNCF gives the data-free figures, so those rows stand for both
        detail = "; ".join(f"{row['label'].split(',')[0]}{' data-aware AWQ + scale estimation' if row['config'].get('awq') else ''}: "
                           f"NNCF {row['nncf']['value']:.2f}, mixprec {row['mixprec']['value']:.2f} "
                           f"({row['mixprec_guard']})" for row in rows
                           if "data-free" in row["label"] or row["config"].get("awq"))
        out.append(f"- ratio 1.0, mixprec measured and applied with {r['mixprec_rounding']} rounding: at least as "
                   f"good in {wins} of {len(rows)} configurations{' (partial run)' if r.get('partial') else ''}. "
                   f"{detail}.")
    return ["", "At ratio 1.0, where every NNCF layer is in 4 bits (lm_head and embedding pinned at w8 in mixprec):",
            *out] if out else []


def nncf_section() -> list[str]:
    """benchmarks/nncf_compare.py: NNCF's compress_weights against mixprec at equal bits per weight."""
    from nncf_compare import markdown as nncf_markdown
    reports = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("nncf_*.json"))
               if not p.stem.startswith("nncf_codes_")]
    if not reports:
        return []
    lines = [line for r in reports for line in nncf_markdown(r).splitlines()]
    lines += nncf_codes_section()
    lines += ["", "| comparison | mixprec at least as good | where it loses |", "|---|---|---|"]
    for r in reports:
        rows = [row for row in r["rows"] if "mixprec_at_least_as_good" in row]
        losses = sorted({f"ratio {row['config']['ratio']}" for row in rows if not row["mixprec_at_least_as_good"]})
        pins = ", ".join(f"{g}={c}" for g, c in r.get("mixprec_pins", {}).items())
        plan = (f"default plan, {r['mixprec_rounding']} rounding, NNCF grid of {len(r['rows'])}"
                f"{', partial' if r.get('partial') else ''}" if "mixprec_rounding" in r else "exact plan, nearest")
        lines.append(f"| {r['model']}{' (pinned ' + pins + ')' if pins else ''} ({plan}) | "
                     f"{sum(row['mixprec_at_least_as_good'] for row in rows)} of {len(rows)} | "
                     f"{', '.join(losses) or 'nowhere'} |")
    lines += ratio1_lines(reports)
    return lines + ["", "Where mixprec loses on SmolLM2 without pins (the files measured before embeddings became groups): in every configuration where it loses, "
                    "the exact plan puts `lm_head` (tied to the embedding, a fifth of the weights) on w4g64 and "
                    "spends the saved bits on other groups at w8; in every one where it wins, `lm_head` is at w8, "
                    "as NNCF always keeps it. The sqnr table underrates `lm_head` at 4 bits. With `--pin lm_head=w8` "
                    "(the last NNCF table above) mixprec wins at ratios 0.8 and 0.6 too; at ratio 1.0 the remaining budget "
                    "forces some groups to w3g64, and the sqnr table underrates 3-bit damage the same way.", ""]


def _never_worse_targets(model: str, r: dict) -> list[str]:
    """The target rows of one never_worse result: never worse per plan kind, the half gap, the cost."""
    from never_worse import KEYS
    lines = []
    command = r.get("command", "")
    recorded = r.get("environment", {}).get("grid")  # the grid version, recorded since the examples were added
    grid = "signed grid" if (recorded or 0) >= 2 or any(
        s in command for s in ("_signed", "_auto", "_margin", "_local", "--add-candidates")) else "former grid"
    margin = r.get("environment", {}).get("guard_margin")
    added = re.search(r"--add-candidates (\S+)", command)
    ranges = (", weight ranges auto" if "--weight-range auto" in command else "") + (
        f", guard margin {margin:g} SE" if margin is not None else ", guard without a margin") + (
        f", candidates + {added.group(1)}" if added else "") + (
        ", guard given the calibration labels (ce)" if r.get("environment", {}).get("guard_labels") else "")
    rounding = r.get("environment", {}).get("rounding", "nearest")
    if rounding != "nearest":  # every plan, uniform ones too, rounded so: a gap of its own
        ranges += f", every plan rounded by {rounding}"
    for key in [k for k in KEYS if k in r["summary"]]:
        got, total = (int(x) for x in r["summary"][key].split(" of "))
        lines.append(f"| never worse ({key}) | {model} ({r['environment']['device']}, {grid}{ranges}) | {got} of {total} "
                     f"budgets{'' if len(r['rows']) >= (5 if model in ('minilm', 'smollm2') else 10) or model in EXAMPLES else ' (only at ' + ', '.join(sorted({x['at'] for x in r['rows']})) + ')'}"
                     f" | {'yes' if got == total else 'no'} |")
    analysis = (r.get("analysis_seconds") or {}).get("sqnr")
    local = [x["sqnr_local_seconds"] for x in r["rows"] if "sqnr_local_seconds" in x]
    if analysis and local and "--no-local" not in command and "cached" in (r.get("note") or ""):
        lines.append(f"| the local search and its guard add at most 2x the analysis time | {model} "
                     f"({r['environment']['device']}, {grid}{ranges}) | not judged here: {r['note'].split(',')[0]} "
                     "| n/a |")
    elif analysis and local and "--no-local" not in command:  # the search and its guard, one solve call
        worst = max(local) / analysis
        lines.append(f"| the local search and its guard add at most 2x the analysis time | {model} "
                     f"({r['environment']['device']}, {grid}{ranges}) | worst {worst:.2f}x ({max(local):.1f} s; "
                     f"analysis {analysis:.1f} s) | {'yes' if worst <= 2 else 'no'} |")
    gap_row = next((x for x in r["rows"] if "upper" in x), None)
    if gap_row is not None:
        upper, lower = gap_row["upper"]["metric"], gap_row["uniform"]
        if (upper - lower) * (1 if r["reference"]["higher_is_better"] else -1) <= 0:
            lines.append(f"| >= 50 % of the gap to {gap_row['upper']['candidate']} at the {gap_row['kind']} of "
                         f"{gap_row['at']} | {model} ({grid}{ranges}) | no gap: uniform {gap_row['upper']['candidate']} "
                         f"{upper:.2f} is not better than uniform {lower:.2f} (default plan {gap_row['sqnr_guarded']:.2f}) "
                         "| n/a |")
            return lines
        default = (gap_row["sqnr_guarded"] - lower) / (upper - lower)
        why = _gap_bound_reason(model, gap_row) if default < 0.5 and not added and rounding == "nearest" else ""
        se = gap_row.get("standard_error") or 0
        if abs(upper - lower) < se:  # no plan's share of it can be told from the evaluation's noise
            why += (f"; the gap itself, {abs(upper - lower):.2f} points, is less than one standard error of the "
                    f"evaluation ({se:.2f})")
        lines.append(f"| >= 50 % of the gap to {gap_row['upper']['candidate']} at the {gap_row['kind']} of "
                     f"{gap_row['at']} | {model} ({grid}{ranges}) | default {default:.0%} ({gap_row['sqnr_guarded']:.2f}; "
                     f"uniform {lower:.2f}, {gap_row['upper']['candidate']} {upper:.2f}){why} | "
                     f"{'yes' if default >= 0.5 else 'no'} |")
        return lines
    run = load(f"run_{model}.json")
    row = next((x for x in r["rows"] if x["kind"] == "bops" and x["at"] == "w4a8"), None)
    if model.startswith("resnet") and run and row and "w8a8" in run.get("uniform", {}):
        upper, lower = run["uniform"]["w8a8"]["metric"], row["uniform"]
        best = max([k for k in KEYS if k in row], key=lambda k: row[k])
        share = (row[best] - lower) / (upper - lower)
        default = (row["sqnr_guarded"] - lower) / (upper - lower)
        lines.append(f"| >= 50 % of the W4A8 -> W8A8 gap at the BOPs of W4A8 | {model} | default {default:.0%}; "
                     f"best {best} {share:.0%} ({row[best]:.2f}; W4A8 {lower:.2f}, W8A8 {upper:.2f} from "
                     f"run_{model}.json, former grid) | {'yes' if default >= 0.5 else 'no'} (the default plan; "
                     f"{'a' if share >= 0.5 else 'no'} non-default plan reaches it) |")
    if row:
        analysis = r["analysis_seconds"].get("sqnr") or 0
        for key in [k for k in ("sqnr", "around") if f"{k}_local_seconds" in row]:
            extra = row[f"{key}_guard_seconds"] + row[f"{key}_local_seconds"] + (
                r["analysis_seconds"].get(f"around_{row['at']}", 0) if key == "around" else 0)
            lines.append(f"| search + guard <= 2x the analysis time ({key}, at the BOPs of W4A8) | {model} | "
                         f"{extra:.0f} s against {analysis:.0f} s ({extra / analysis:.1f}x) | "
                         f"{'yes' if extra <= 2 * analysis else 'no'} |")
    return lines


def _gap_bound_reason(model: str, gap_row: dict) -> str:
    """Why the half gap is missed, where benchmarks/gap_bound.py measured how much a plan of the same
    candidates closes at that budget (a search that decides on half of the evaluation split) and
    benchmarks/search_time.py what mixprec's own local search reaches given more time and data."""
    r = load(f"gap_bound_{model}.json")
    if not r or (r["kind"], r["at"]) != (gap_row["kind"], gap_row["at"]):
        return ""
    held, searched = r["gap_recovered"]["held_half"]["bound"], r["gap_recovered"]["searched_half"]["bound"]
    found = (f"; plans of these candidates that close it exist: a search deciding on half of the evaluation split's "
             f"own labels (`gap_bound_{model}`, {r['search']['evaluations']} plans, {r['environment']['device']}) found "
             f"one that closes {searched:.0%} there and {held:.0%} on the other half, which it never saw"
             if held >= 0.5 else
             f"; how far plans of these candidates go: a search that decides on half of the evaluation split's own "
             f"labels (`gap_bound_{model}`, {r['search']['evaluations']} plans, {r['environment']['device']}) reached "
             f"{searched:.0%} of the gap there and {held:.0%} on the other half (a short search, not a proof that more "
             f"is out of reach)")
    free = []  # the same search deciding label-free (gap_bound.py --decide kl|pseudo|agreement)
    for suffix, name in (("kl", "KL from the float model, what mixprec's local search minimises"),
                         ("pseudo", "cross-entropy against the float model's top-1"),
                         ("agreement", "top-1 disagreement with the float model")):
        b = load(f"gap_bound_{model}_{suffix}.json")
        if b and (b["kind"], b["at"]) == (r["kind"], r["at"]):
            free.append((b['gap_recovered']['held_half']['bound'], f"{b['gap_recovered']['held_half']['bound']:.0%} "
                         f"by {name} (`gap_bound_{model}_{suffix}`)"))
    if free:
        found += ("; the same search deciding label-free on the same half closed, on the held half, "
                  + ", ".join(text for _, text in free) + (
                      ": closer to the float model is not a higher top-1 here" if max(v for v, _ in free) < 0.5 else
                      ": one label-free divergence holds half of the gap, deciding on 4,500 images"))
    timed = load(f"search_time_{model}.json")
    if timed and timed["rows"]:
        best = max(timed["rows"], key=lambda x: x["gap"] if x["gap"] is not None else -1)
        found += (f"; mixprec decides on calibration data only, and its local search found at most "
                  f"{100 * (best['gap'] or 0):.0f} % with up to {max((x['time_budget'] for x in timed['rows']), key=lambda t: float(t.rstrip('xs')))} the "
                  f"analysis time and {', '.join(sorted({str(x['samples'] or 'the default') for x in timed['rows']}))} "
                  f"calibration samples (`search_time_{model}`)")
    labelled = [(path.stem, json.loads(path.read_text())) for path in sorted(RESULTS.glob(f"search_time_{model}_ce*.json"))]
    rows = [f"{100 * (x['gap'] or 0):.0f} % at {x['time_budget']} (`{stem}`, {r['environment']['device']})"
            for stem, r in labelled for x in r["rows"]]
    if rows:
        found += (f"; deciding on the calibration labels' cross-entropy instead (`--guard-divergence ce`: the search "
                  f"and the guard), it closed {', '.join(rows)}")
    return found + "; with 6-bit activation candidates the default plan closes it (rows 'candidates + w3a6,...')"


def _nncf_targets() -> list[str]:
    """The NNCF target: mixprec's default plan at least as good in every configuration NNCF ran (full grid)."""
    lines = []
    for path in sorted(RESULTS.glob("nncf_smollm2*.json")):
        r = json.loads(path.read_text())
        rows = [x for x in r["rows"] if "mixprec_at_least_as_good" in x]
        if r.get("grid") != "full" or not rows:
            continue
        wins = sum(x["mixprec_at_least_as_good"] for x in rows)
        ranges = r.get("mixprec_weight_range", "mse")
        guard = f"guard margin {r['guard_margin']:g} SE" if "guard_margin" in r else "guard without a margin"
        scope = (f", `solve --search local`, only the rows {r['rows_like']!r}: the target needs all 24"
                 if r.get("rows_like") else ", `solve --search local`" if r.get("search") == "local" else "")
        lines.append(f"| at least as good as NNCF in 24 of 24 configurations | smollm2 (`{path.stem}`, weight ranges "
                     f"{ranges}, {guard}{scope}, {r['environment'].get('gpu') or r['environment']['device']}) | "
                     f"{wins} of {len(rows)}{_nncf_misses(rows, r.get('mixprec_pins'))} | "
                     f"{'yes' if wins == len(rows) == 24 else 'no'} |")
    return lines + _nncf_combined()


def nncf_codes_section() -> list[str]:
    """benchmarks/nncf_codes.py: NNCF at ratio 1.0 against mixprec's uniform plan of the same formats."""
    from nncf_codes import markdown as codes_markdown
    return [line for p in sorted(RESULTS.glob("nncf_codes_*.json"))
            for line in ["", *codes_markdown(json.loads(p.read_text())).splitlines()]]


def _ratio1_codes(label: str, chosen: str | None = None, pins: dict | None = None) -> str:
    """For a configuration at ratio 1.0 where mixprec's default plan was the uniform plan nncf_codes_smollm2 compares
    (``chosen``: the guard's "uniform w4g64-minmax"; ``pins``: the lm_head in w8-asym, as NNCF keeps it), what that
    benchmark measured of it (the same codes, and the perplexity with NNCF's dequantized weights), else ""."""
    path = RESULTS / "nncf_codes_smollm2.json"
    if "ratio 1.0" not in label or not path.is_file():
        return ""
    codes = json.loads(path.read_text())
    mode, group = label.split()[:2]
    row = next((x for x in codes["rows"] if x["mode"].lower() == mode and f"g{x['group_size']}" == group), None)
    embedding = codes.get("embedding", "w8-asym-minmax")
    if row is None or chosen != f"uniform {row['candidate']}" or not pins \
            or any(not str(p).startswith("w8-asym") for p in pins.values()) or embedding not in (pins or {}).values():
        return ""
    four = row["formats"][row["candidate"]]
    same = "the same 4-bit codes" if four["codes_differing"] == 0 else f"{four['codes_differing']:,} 4-bit codes differing"
    return (f" (at ratio 1.0 both are uniform plans, with {same} (`nncf_codes_smollm2`): measured there, "
            f"{row['mixprec']:.3f} against NNCF's {row['nncf']:.3f}, and {row['mixprec_nncf_4bit']:.3f} with the "
            "4-bit layers dequantized as NNCF does, in float16)")


def _nncf_misses(rows: list[dict], pins: dict | None = None) -> str:
    """By how much mixprec's default plan missed, per NNCF configuration it lost (the data-free and data-aware rows
    of one configuration, often the same figures, once); ``pins``: the file's mixprec_pins."""
    missed: dict[tuple, list[str]] = {}
    chosen: dict[tuple, str | None] = {}
    for x in rows:
        if not x["mixprec_at_least_as_good"]:
            ours, theirs = x["mixprec"]["value"], x["nncf"]["value"]
            missed.setdefault((round(ours, 3), round(theirs, 3)), []).append(x["label"].split(",")[0])
            chosen[(round(ours, 3), round(theirs, 3))] = x.get("mixprec_guard")
    if not missed or len(missed) > 4:
        return ""
    said = [f"{' and '.join(sorted(set(labels)))} {ours:.3f} against NNCF's {theirs:.3f} ({100 * (ours / theirs - 1):+.2f} %)"
            f"{_ratio1_codes(labels[0], chosen[(ours, theirs)], pins)}" for (ours, theirs), labels in missed.items()]
    return "; missed: " + "; ".join(said)


def _nncf_combined() -> list[str]:
    """One row for the files that measured the same mixprec configuration on different rows of the grid (--rows):
    their rows together, each label once."""
    groups: dict[str, list[tuple[str, dict]]] = {}
    for path in sorted(RESULTS.glob("nncf_smollm2*.json")):
        r = json.loads(path.read_text())
        if r.get("grid") != "full" or not r.get("rows_like") or r.get("partial"):
            continue
        key = json.dumps([r.get("mixprec_candidates"), r.get("mixprec_pins"), r.get("mixprec_weight_range"),
                          r.get("guard_margin"), r.get("search"), r.get("mixprec_rounding")], sort_keys=True)
        groups.setdefault(key, []).append((path.stem, r))
    lines = []
    for files in groups.values():
        if len(files) < 2:
            continue
        rows = {x["label"]: x for _, r in files for x in r["rows"] if "mixprec_at_least_as_good" in x}
        wins = sum(x["mixprec_at_least_as_good"] for x in rows.values())
        r = files[0][1]
        names = " + ".join(f"`{stem}`" for stem, _ in files)
        lines.append(f"| at least as good as NNCF in 24 of 24 configurations | smollm2 ({names} together, weight ranges "
                     f"{r.get('mixprec_weight_range', 'mse')}, guard margin {r.get('guard_margin', 1):g} SE, `solve "
                     f"--search {r.get('search')}`, rows {' and '.join(repr(f['rows_like']) for _, f in files)}: "
                     f"{len(rows)} of the 24 measured) | {wins} of {len(rows)} | "
                     f"{'yes' if wins == len(rows) == 24 else 'no'} |")
    return lines


def _activation_bits(reports: dict) -> list[str]:
    """Activation bit-widths: the default plan at the BOPs of W4A8 with 8-bit activations only, and with
    6-bit activations among the candidates (never_worse_<model>_labels against _abits_labels, else _margin
    against _abits)."""
    lines = []
    for model in MODELS:
        plain = reports.get(f"{model}_labels") or reports.get(f"{model}_margin")
        wider = reports.get(f"{model}_abits_labels") or reports.get(f"{model}_abits")
        if not plain or not wider:
            continue
        row = lambda r: next(x for x in r["rows"] if x["kind"] == "bops" and x["at"] == "w4a8")  # noqa: E731
        a, b = row(plain), row(wider)
        added = re.search(r"--add-candidates (\S+)", wider["command"]).group(1)
        lines.append(f"| {model} | {a['uniform']:.2f} | {a['sqnr_guarded']:.2f} | {b['sqnr_guarded']:.2f} | "
                     f"{a['upper']['metric']:.2f} | {added} |")
    if not lines:
        return []
    return ["### Activation bit-widths", "",
            "At a BOPs budget a layer pays weight bits x activation bits. With 8-bit activations only, the "
            "default plan at the BOPs of W4A8 is uniform W4A8 (the guard finds no mixed plan that is surely "
            "better); with 6-bit activations among the candidates (`--profile int-cnn-a6`), the exact plan "
            "moves bits from activations to weights and closes most or all of the gap to W8A8 "
            "(`benchmarks/never_worse.py MODEL --add-candidates ...`, evaluation split; uniform plans keep the "
            "first and last layers at w8a8):", "",
            "| model | uniform W4A8 | default plan, a8 candidates | default plan, a6 added | uniform W8A8 | added |",
            "|---|---|---|---|---|---|", *lines, ""]


def _at_budget_targets() -> list[str]:
    """The moonshot: SmolLM2's default plan at perplexity <= 31 at 5.1 bits per weight (benchmarks/at_budget.py)."""
    lines = []
    for path in sorted(RESULTS.glob("at_budget_smollm2*.json")):
        r = json.loads(path.read_text())
        if r["budget"].replace(" ", "") not in ("bits_per_weight=5.1", "bits=5.1"):
            continue
        value = r["plan"]["metric"]["value"]
        rounding = r.get("rounding", "nearest") + "".join(
            f" {k.replace('_', '-')}" for k, v in (r.get("rounding_options") or {}).items() if v)
        search = r["plan"].get("search", "exact")
        rounding += " rounding" + (" (sensitivity measured with it too)" if r.get("rounding_aware") else "")
        if search != "exact":
            budget, evaluations = r["plan"].get("time_budget"), r["plan"].get("evaluations")
            limits = ([f"time budget {budget}"] if budget else ["its default time budget"] * (search == "local")) \
                + [f"at most {evaluations} plans measured"] * bool(evaluations)
            rounding += f", {search} search" + (f" ({', '.join(limits)})" if limits else "")
        lines.append(f"| moonshot: perplexity <= 31 at 5.1 bits per weight | smollm2 (`{path.stem}`, {rounding}, "
                     f"candidates {', '.join(r['candidates'])}) | {value:.2f} (guard: {r['plan']['guard']}) | "
                     f"{'yes' if value <= 31 else 'no'} |")
        n = r.get("final_calibration_samples")
        if n and "final" in r["plan"]["metric"]:
            final = r["plan"]["metric"]["final"]
            uniform = min((u for u in r["uniform"] if "final" in u), key=lambda u: u["final"], default=None)
            versus = f"; best {uniform['variant']} {uniform['final']:.2f} the same way" if uniform else ""
            lines.append(f"| moonshot: perplexity <= 31 at 5.1 bits per weight | smollm2 (`{path.stem}`, the same plan "
                         f"deployed with its {rounding.split(' rounding')[0]} rounding on {n} calibration samples "
                         f"instead of the analysis's {r.get('calibration_samples') or 'default'}) | {final:.2f}"
                         f"{versus} | {'yes' if final <= 31 else 'no'} |")
    return lines


SUMMARY_TARGETS = (  # (what the summary calls it, the target rows it gathers: a pattern on the row's first cell)
    ("never worse than uniform: the default plan (`solve`)", r"never worse \(sqnr_guarded\)"),
    ("never worse than uniform: `solve --search local`", r"never worse \(sqnr_local\)"),
    (">= 50 % of the gap to 8 bits at the cost of 4 bits", r">= 50 % of the"),
    ("the search and the guard add at most 2x the analysis time", r"the local search and its guard|search \+ guard"),
    ("at least as good as NNCF in 24 of 24 configurations", r"at least as good as NNCF"),
    ("moonshot: perplexity <= 31 at 5.1 bits per weight", r"moonshot"),
)


def _target_summary(rows: list[str]) -> list[str]:
    """One line per target of the table below: the models (with the configurations) where every measured row
    meets it, and where some row misses it; read from the rows themselves, so it cannot say other than they do."""
    cells = [[c.strip() for c in row.strip().strip("|").split(" | ")] for row in rows if row.startswith("| ")]
    out = ["", "In short (each line gathers the rows of the table below; a model's configurations, such as more "
           "candidates or `--search local`, are its rows' own):", ""]
    for name, pattern in SUMMARY_TARGETS:
        mine = [c for c in cells if len(c) == 4 and re.match(pattern, c[0])]
        if not mine:
            continue
        met, missed = {}, {}
        for target, model, _, verdict in mine:
            base = model.split(" (")[0]
            (met if verdict == "yes" else missed if verdict == "no" else {}).setdefault(base, []).append(model)
        parts = [f"met in every row: {', '.join(m for m in met if m not in missed) or 'none'}"]
        both = [m for m in missed if m in met]
        if both:
            parts.append(f"met in some rows and missed in others: {', '.join(both)}")
        only = [m for m in missed if m not in met]
        if only:
            parts.append(f"missed: {', '.join(only)}")
        out.append(f"- **{name}**: " + "; ".join(parts) + ".")
    return out + [""]


def never_worse_section() -> list[str]:
    """benchmarks/never_worse.py: mixed against uniform at equal cost, and the targets of the promise."""
    from never_worse import markdown as never_worse_markdown
    reports = {p.stem.removeprefix("never_worse_"): json.loads(p.read_text())
               for p in sorted(RESULTS.glob("never_worse_*.json")) if not p.stem.endswith(".partial")}
    if not reports:
        return []
    lines = ["## Never worse than uniform", "",
             "Targets of the promise, computed from `benchmarks/results/never_worse_*.json` (decisions on calibration "
             "data, metrics on the evaluation split). `sqnr_guarded` is what `mixprec solve` returns by default; "
             "`*_local` is `solve --search local`.", "",
             "| target | model | measured | met |", "|---|---|---|---|"]
    for model in (*MODELS, *EXAMPLES):
        # the run on the current (signed) grid if there is one, else this machine's, else the GPU run (other
        # suffixes are earlier variants)
        # _labels: the guard given the calibration labels (a classifier's consensus with ce), which replaces _margin
        guards = ("_labels",) if f"{model}_labels" in reports else ("_margin", "_signed_margin", "_auto_margin")
        searches = ("_labels_local", "_local")  # both where both ran (another machine, or GPU against CPU)
        wider = ("_abits_labels",) if f"{model}_abits_labels" in reports else ("_abits",)
        current = [reports[f"{model}{v}"] for v in (*guards, *wider, "_w56", "_gptq", *searches)
                   if f"{model}{v}" in reports]  # the guard as solve runs it now (a noise margin; nll for LMs);
        # _abits, _w56: the same with more candidates (6-bit activations; 5- and 6-bit weights); _gptq: every plan
        # rounded by GPTQ; _local: the local search as it runs now (first better move, a time budget of 1x the analysis)
        current = current or [reports[f"{model}{v}"] for v in ("_signed", "_auto") if f"{model}{v}" in reports]
        # _holdout_0: the guard judging a local search's plan on all the calibration batches, the default now
        fallback = reports.get(f"{model}_holdout_0") or reports.get(model) or reports.get(f"{model}_h100")
        if not current and fallback is None:
            lines.append(f"| never worse at every uniform candidate's cost | {model} | not run | no |")
            continue
        for r in current or [fallback]:
            lines += _never_worse_targets(model, r)
    lines += _nncf_targets()
    lines += _at_budget_targets()
    header = lines.index("| target | model | measured | met |")
    lines[header:header] = _target_summary(lines[header + 2:])
    lines += [""] + _activation_bits(reports)
    from gap_bound import markdown as gap_bound_markdown
    for path in sorted(RESULTS.glob("gap_bound_*.json")):
        lines += gap_bound_markdown(json.loads(path.read_text())).splitlines()
    from search_time import markdown as search_time_markdown
    for path in sorted(RESULTS.glob("search_time_*.json")):
        lines += search_time_markdown(json.loads(path.read_text())).splitlines() + [""]
    from at_budget import markdown as at_budget_markdown
    for path in sorted(RESULTS.glob("at_budget_*.json")):
        lines += at_budget_markdown(json.loads(path.read_text())).replace("# ", "### ", 1).splitlines() + [""]
    for path in sorted(RESULTS.glob("guard_divergences_*.json")):
        r = json.loads(path.read_text())
        lines += [f"Which divergence ranks the exact plan against uniform as the evaluation split does: {r['model']} "
                  f"(`{r['command']}`, {r['environment']['device']}; calibration data for the divergences):", "",
                  "| budget | KL exact / uniform | disagreement exact / uniform | 1/SQNR exact / uniform "
                  "| metric exact / uniform | better by the metric | consensus says |", "|---|---|---|---|---|---|---|"]
        for point in r["points"]:
            e, u, b = point["rows"]["exact"], point["rows"]["uniform"], point["better_by"]
            lines.append(f"| {point['kind']} of {point['at']} | {e['kl']:.4f} / {u['kl']:.4f} | "
                         f"{e['agreement']:.4f} / {u['agreement']:.4f} | {e['sqnr']:.4f} / {u['sqnr']:.4f} | "
                         f"{e['metric']:.2f} / {u['metric']:.2f} | {b['metric']} | {b['consensus']} |")
        lines += ["", f"Ranked as the evaluation split does, of {r['n_points']} points: " + ", ".join(
            f"{k} {v}" for k, v in r["agrees_with_metric"].items()) + ".", ""]
    from guard_labels import markdown as guard_labels_markdown
    for path in sorted(RESULTS.glob("guard_labels_*.json")):
        lines += guard_labels_markdown(json.loads(path.read_text())).replace("## ", "### ", 1).splitlines() + [""]
    from guard_noise import markdown as guard_noise_markdown
    from guard_noise_lm import markdown as guard_noise_lm_markdown
    for path in sorted(RESULTS.glob("guard_noise_*.json")):
        r = json.loads(path.read_text())
        text = guard_noise_lm_markdown(r) if path.stem.startswith("guard_noise_lm_") else guard_noise_markdown(r)
        lines += text.replace("## ", "### ", 1).splitlines() + [""]
    from guard_best_rival import markdown as guard_best_rival_markdown
    if (RESULTS / "guard_best_rival.json").exists():
        lines += guard_best_rival_markdown(json.loads((RESULTS / "guard_best_rival.json").read_text())).replace(
            "## ", "### ", 1).splitlines() + [""]
    from guard_veto import markdown as guard_veto_markdown
    if (RESULTS / "guard_veto.json").exists():
        lines += guard_veto_markdown(json.loads((RESULTS / "guard_veto.json").read_text())).replace(
            "## ", "### ", 1).splitlines() + [""]
    for path in sorted(RESULTS.glob("local_search_stages_*.json")):
        r = json.loads(path.read_text())
        rows = r["rows"]
        lines += [f"Local search with and without data stages, {r['model']} at the {r['kind']} of {r['at']} "
                  f"(`{r['command']}`, {r['environment']['device']}; {r['calibration_batches']} calibration batches; "
                  f"uniform {rows['uniform']['metric']:.2f}):", "",
                  "| variant | metric | seconds | full evaluations | screened |", "|---|---|---|---|---|"]
        lines += [f"| {k} | {rows[k]['metric']:.2f} | {rows[k]['seconds']} | {rows[k]['full_evaluations']} | "
                  f"{rows[k]['screened']} |" for k in ("staged", "full")] + [""]
    for model, r in reports.items():
        lines += never_worse_markdown(r).replace("# Never worse", "### Never worse").splitlines() + [""]
    return lines


def mixquant_section() -> list[str]:
    """benchmarks/mixquant.py: MixQuant's allocation with plain asymmetric min-max."""
    from mixquant import markdown as mixquant_markdown
    reports = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("mixquant_*.json"))]
    return [line for r in reports for line in mixquant_markdown(r).splitlines()] + ([""] if reports else [])


def multipoint_section() -> list[str]:
    """benchmarks/multipoint.py: multipoint alone and inside the allocation, at equal bytes."""
    from multipoint import markdown as multipoint_markdown
    reports = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("multipoint_*.json"))]
    return [line for r in reports for line in multipoint_markdown(r).splitlines()] + ([""] if reports else [])


def reconstruction_section() -> list[str]:
    """benchmarks/reconstruction_aware.py: refine measuring plans after BRECQ."""
    from reconstruction_aware import markdown as reconstruction_markdown
    reports = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("reconstruction_aware_*.json"))]
    return [line for r in reports for line in reconstruction_markdown(r).splitlines()] + ([""] if reports else [])


def rounding_section() -> list[str]:
    """benchmarks/rounding.py: the rounding back-ends at uniform candidates, with their wall time."""
    reports = [(path.stem, json.loads(path.read_text())) for path in sorted(RESULTS.glob("rounding_*.json"))]
    if not reports:
        return []
    lines = ["## Rounding back-ends", "", "The same uniform plan (same grid, same bytes) with each rounding; "
             "vision models keep their first and last layer at 8 bits. Seconds: `apply` with that rounding "
             "(nearest: weights plus activation calibration), not the evaluation.", "",
             "| model | candidate | rounding | metric | bytes | apply s | calibration samples | machine |",
             "|---|---|---|---|---|---|---|---|"]
    for _, r in reports:
        env = r["environment"]
        machine = f"{env['device']}, {env.get('cpu_count', '?')} cores, {env['threads']} threads"
        for row in r["rows"]:
            lines.append(f"| {r['model']} | {row['candidate']} | {row['rounding']} | {row['metric']:.2f} | "
                         f"{row['bytes']:,} | {row['apply_seconds']:.1f} | {r['calibration_samples']} | {machine} |")
    lines += [""] + [f"- `{r['command']}` ({name})" if "command" in r else
                     f"- {name}: `python benchmarks/rounding.py {r['model']}` (command not recorded)"
                     for name, r in reports]
    return lines + [""]


def symmetric_grid_section() -> list[str]:
    """benchmarks/symmetric_grid.py: the signed symmetric scale against the former max|x| / qmax."""
    from symmetric_grid import markdown as grid_markdown
    reports = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("symmetric_grid_*.json"))]
    return [line for r in reports for line in grid_markdown(r).splitlines()] + ([""] if reports else [])


def deploy_targets_section() -> list[str]:
    """The targets of deploying what the plan says, computed from the export, latency and GPU result files."""
    from export_ort import TARGET_GAP, gap_noise
    from export_ort_lm import DECODE_PPL, DECODE_SPEEDUP, TARGET_GAP as LM_GAP, fastest_decode_within
    from export_ort_lm import unsimulated as unsimulated_row
    from latency_budget import DROP, SPEED_TARGET, best_within
    rows = []

    def gaps(plans: list[dict], key: str, limit: float, unit: str, samples: int | None = None) -> tuple[str, str]:
        def noise(p: dict) -> str:
            bound = gap_noise(p, samples)
            return "" if bound is None else f" (noise ±{bound:.2f})"
        misses = [f"{p['plan']} {p[key]:+.2f}{unit}{noise(p)}" for p in plans if abs(p[key]) > limit]
        return (f"{len(plans) - len(misses)} of {len(plans)} plans" + (f"; missed: {', '.join(misses)}" if misses else ""),
                "yes" if plans and not misses else "no")

    for path in sorted(RESULTS.glob("export_ort_*.json")):
        r = json.loads(path.read_text())
        lm = path.name.startswith("export_ort_lm_")
        plans = [row for row in r["rows"] if row["plan"] != "fp32"]
        unsimulated = [row for row in plans if lm and unsimulated_row(row)]
        # 8-bit weights on int8 activations on a CPU without VNNI: outside its profile (ort-cpu-avx2 plans w7a8), as
        # its u8 x s8 kernels saturate where the simulation does not, and export says so
        saturating = [row for row in plans if not lm and not r["environment"].get("vnni", True)
                      and re.search(r"\bw8a8\b", row["plan"])]
        plans = [row for row in plans if row not in unsimulated and row not in saturating]
        top1 = not lm and r.get("metric", "top1") == "top1"
        measured, met = gaps(plans, "gap_percent" if lm else "gap", LM_GAP if lm else TARGET_GAP, " %" if lm else "",
                             r.get("evaluation_images") if top1 else None)
        if unsimulated:
            measured += ("; not counted, as export says their simulation leaves out MatMulNBits' int8 inputs "
                         "(accuracy_level 4; plan them as a8d candidates): "
                         + ", ".join(f"{row['plan']} {row['gap_percent']:+.2f} %" for row in unsimulated))
        if saturating:
            measured += ("; not counted, as outside the profile of a CPU without VNNI (`ort-cpu-avx2`: 7-bit weights) "
                         "and said by export to saturate there: "
                         + ", ".join(f"{row['plan']} {row['gap']:+.2f} (agreement {row['agreement']:.2%})"
                                     if isinstance(row.get("agreement"), float) else f"{row['plan']} {row['gap']:+.2f}"
                                     for row in saturating))
        limit = f"{LM_GAP} % perplexity" if lm else f"{TARGET_GAP} point"
        env = r["environment"]
        rows.append(f"| exported within {limit} of simulated (ONNX Runtime CPU) | {r['model']} (`{path.stem}`, "
                    f"{env['cpu']}, VNNI {'yes' if env['vnni'] else 'no'}) | {measured} | {met} |")
    for path in sorted(RESULTS.glob("cuda_deploy_*.json")):
        r = json.loads(path.read_text())
        measured, met = gaps(r["rows"], "gap_percent", 0.5, " %")
        rows.append(f"| deployed within 0.5 % perplexity of simulated (torch's CUDA kernels) | smollm2 (`{path.stem}`) | "
                    f"{measured} | {met} |")
    for path in sorted(RESULTS.glob("latency_budget_*.json")):
        r = json.loads(path.read_text())
        if r["model"] not in ("efficientnet-lite0", "minilm"):
            continue
        for batch in r["batches"]:
            best = best_within(r, batch, "latency")
            figure = (f"{best['speedup']:.2f}x at {best['exported_top1']:.2f} (float {r['fp32_top1']:.2f}; uniform "
                      f"{r['int8']} {batch['uniform_speedup']:.2f}x in the same measurement)" if best else "none")
            rows.append(f"| latency-budgeted plan >= {SPEED_TARGET}x FP32 within {DROP:g} point, batch "
                        f"{batch['batch_size']} | {r['model']} (`{path.stem}`, {r['environment']['cpu']}) | {figure} | "
                        f"{'yes' if best and best['speedup'] >= SPEED_TARGET else 'no'} |")
    for path in sorted(RESULTS.glob("export_ort_lm_*.json")):
        r = json.loads(path.read_text())
        best = fastest_decode_within(r)
        traced = next((row for row in r["rows"] if row["plan"] == "fp32, traced step"), None)
        against_traced = (f"; against FP32 written as the traced step, {traced['latency_ms_decode'] / best['latency_ms_decode']:.2f}x"
                          if best and traced else "")
        figure = (f"{best['speedup_decode']:.2f}x ({best['plan']}; the fastest plan, at any perplexity: "
                  f"{max(row['speedup_decode'] for row in r['rows']):.2f}x{against_traced}; "
                  + ("where each graph's time goes, by op type" if r.get("decoder") == "fused" else "why")
                  + f": `decode_ops_{r['model']}`)" if best else "none within the perplexity")
        rows.append(f"| decode >= {DECODE_SPEEDUP}x FP32 at batch 1 within {DECODE_PPL} % perplexity (ONNX Runtime CPU) "
                    f"| {r['model']} (`{path.stem}`, {r['environment']['cpu']}, VNNI "
                    f"{'yes' if r['environment'].get('vnni') else 'no'}) | {figure} | "
                    f"{'yes' if best and best['speedup_decode'] >= DECODE_SPEEDUP else 'no'} |")
    for path in sorted(RESULTS.glob("cuda_deploy_*.json")):
        r = json.loads(path.read_text())
        reference = r["reference"]["float16 ppl"]
        within = [row for row in r["rows"] if row["deployed_ppl"] <= 1.01 * reference]
        # as CUDA graphs where measured (launches no longer dominate), else eager
        key = "graph_speedup_vs_fp16" if within and all("graph_speedup_vs_fp16" in row for row in within) \
            else "speedup_vs_fp16"
        form = "as CUDA graphs" if key.startswith("graph") else "eager"
        best = max(within, key=lambda row: row[key], default=None)
        need = 1 / (1 - 0.276)
        figure = (f"{best[key]:.2f}x fp16's tokens/s {form} ({best['plan']}; {need:.2f}x needed)" if best
                  else "none within 1 %")
        shapes = RESULTS / "cuda_shapes.json"
        if shapes.exists():  # why: the whole models of both shapes, eager and as CUDA graphs
            by_shape = {x["shape"]: x["rows"] for x in json.loads(shapes.read_text())["shapes"]}
            figure += (f"; why: eager, a model this small decodes at {r['reference']['float16 tokens/s']:.0f}"
                       " tokens/s in float16 (Python and launch costs); as CUDA graphs (`cuda_shapes`, random "
                       "weights) int4 decodes " + ", ".join(
                           f"the {name} shape at {rows[-1]['graph_speedup_vs_fp16']:.2f}x fp16" for name, rows in
                           by_shape.items() if "graph_speedup_vs_fp16" in rows[-1])
                       + "; SmolLM2-135M's int4 plans are far more than 1 % worse, and no larger model is installed "
                       "here to measure at <= 1 %")
        rows.append(f"| more than 27.6 % lower latency than FP16 at <= 1 % drop (H100) | smollm2 (`{path.stem}`) | "
                    f"{figure} | {'yes' if best and best[key] > need else 'no'} |")
    if not rows:
        return []
    return ["## Deploying what the plan says: targets", "",
            "Computed from `benchmarks/results/export_ort_*.json`, `cuda_deploy_*.json` and `latency_budget_*.json`; "
            "each file's section below gives the command and the machine. Noise, after a missed top-1 gap: an upper "
            "bound on the standard error of a gap that is only rounding noise, sqrt(disagreement / images); the int8 "
            "kernels do not compute bit for bit what the simulation computes (`int8_divergence_*`).", "",
            "| target | model (result file) | measured | met |", "|---|---|---|---|", *rows, ""]


def export_section() -> list[str]:
    """benchmarks/export_ort.py: exported against simulated on ONNX Runtime CPU, size and latency."""
    from export_ort import markdown as export_markdown
    from export_ort_lm import markdown as lm_markdown
    reports = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("export_ort_*.json"))
               if not p.name.startswith("export_ort_lm_")]
    from decode_ops import markdown as decode_markdown
    lms = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("export_ort_lm_*.json"))]
    decode = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("decode_ops_*.json"))]
    return ([line for r in reports for line in export_markdown(r).splitlines()] + ([""] if reports else [])
            + [line for r in lms for line in lm_markdown(r).splitlines()] + ([""] if lms else [])
            + [line for r in decode for line in decode_markdown(r).splitlines()])


def divergence_section() -> list[str]:
    """benchmarks/int8_divergence.py: ONNX Runtime's int8 codes against the simulated ones, quantizer by quantizer."""
    from int8_divergence import markdown as divergence_markdown
    reports = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("int8_divergence_*.json"))]
    return [line for r in reports for line in divergence_markdown(r).splitlines() + [""]]


def cuda_section() -> list[str]:
    """benchmarks/cuda_deploy.py: torch's low-bit GPU kernels against float16, deployed against simulated."""
    from cuda_deploy import kernels_markdown, shapes_markdown, smollm2_markdown
    lines = []
    for p in sorted(RESULTS.glob("cuda_*.json")):
        r = json.loads(p.read_text())
        text = {"kernels": kernels_markdown, "shapes": shapes_markdown}.get(r.get("what"), smollm2_markdown)(r)
        lines += text.splitlines() + [""]
    return lines


def profile_section() -> list[str]:
    """benchmarks/profile_ort.py: per-layer latency sum against the whole model on ONNX Runtime CPU."""
    from profile_ort import markdown as profile_markdown
    reports = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("profile_ort_*.json"))]
    return [line for r in reports for line in profile_markdown(r).splitlines()] + ([""] if reports else [])


def session_order_section() -> list[str]:
    """benchmarks/session_order.py: what the order of making ONNX Runtime sessions does to a latency comparison."""
    from session_order import markdown as order_markdown
    reports = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("session_order_*.json"))]
    return [line for r in reports for line in order_markdown(r).splitlines()] + ([""] if reports else [])


def export_memory_section() -> list[str]:
    """benchmarks/export_memory.py: peak memory of each export target against the model's float32 weights."""
    from export_memory import markdown as memory_markdown
    path = RESULTS / "export_memory.json"
    return memory_markdown(json.loads(path.read_text())).splitlines() + [""] if path.is_file() else []


def latency_budget_section() -> list[str]:
    """benchmarks/latency_budget.py: plans under a measured latency budget, exported and re-measured."""
    from latency_budget import markdown as latency_markdown
    reports = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("latency_budget_*.json"))]
    return [line for r in reports for line in latency_markdown(r).splitlines()] + ([""] if reports else [])


def _run_label(r: dict) -> str:
    """A run of llm_scale.py by its --suffix (else the last word of its command)."""
    words = r["command"].split()
    return words[words.index("--suffix") + 1] if "--suffix" in words[:-1] else words[-1]


def _streamed_runs(scale: list[dict]) -> list[str]:
    """Each streamed run (llm_scale.py --stream) against the unstreamed run of the same shape, tokens and
    metric with the lowest peak: time and peak memory per phase, and what the stream copied."""
    lines = []
    for r in scale:
        s = r.get("stream")
        if not s:
            continue
        if r.get("analyze"):  # the same measurement unstreamed
            same = [o for o in scale if not o.get("stream") and o.get("analyze") and o["shape"] == r["shape"]
                    and o["calibration"] == r["calibration"] and o["metric"] == r["metric"]
                    and o.get("processes", 1) == 1 and "quantize" in o["phases"]]
        else:  # the same uniform plan and rounding unstreamed
            same = [o for o in scale if not o.get("stream") and not o.get("analyze") and o["shape"] == r["shape"]
                    and o["calibration"] == r["calibration"] and o.get("rounding") == r.get("rounding")
                    and o["plan"]["candidates_used"] == r["plan"]["candidates_used"]]
        peak = lambda run, phase: run["phases"][phase]["peak_gpu_bytes"] / run["model_bytes"]  # noqa: E731
        text = (f"`{_run_label(r)}` (streamed: the {s['blocks']} decoder layers, "
                f"{s['block_bytes'] / 2**20:.0f} MiB each, wait in page-locked CPU memory and come onto the GPU two at "
                f"a time; {s['fetches']} block copies, {s['fetched_models']:.1f} models' worth of blocks over all phases): "
                + ", ".join(f"{phase} {r['phases'][phase]['seconds']:.1f} s at {peak(r, phase):.2f}x the model"
                            for phase in ("analyze", "solve", "quantize") if phase in r["phases"]))
        if same:
            base = min(same, key=lambda o: max(v.get("peak_gpu_bytes") or 0 for v in o["phases"].values()))
            text += (f"; unstreamed (`{_run_label(base)}`): "
                     + ", ".join(f"{phase} {base['phases'][phase]['seconds']:.1f} s at {peak(base, phase):.2f}x"
                                 for phase in ("analyze", "solve", "quantize") if phase in base["phases"]))
        lines += [text + ".", ""]
    return lines


def _extrapolated_70b(scale: list[dict]) -> list[str]:
    """Each 8b run carried over to Llama-3.1-70B's shape (llm_scale.extrapolate: per-block scaling)."""
    import sys
    sys.path.insert(0, str(Path(__file__).parent))
    from llm_scale import LLAMA_70B, extrapolate, total_params
    runs = [r for r in scale if r["shape"] == "8b" and r.get("processes", 1) == 1]
    if not runs:
        return []
    model = total_params(LLAMA_70B) * 2
    lines = [f"Extrapolated to Llama-3.1-70B's shape (80 blocks, {total_params(LLAMA_70B) / 1e9:.1f}B weights, "
             f"{model / 2**30:.0f} GiB in bfloat16) from each 8b run above, on the same tokens and GPU kind "
             "(`benchmarks/llm_scale.py`, `extrapolate`: analyze grows with blocks^2 x block weights, nearest "
             "quantize with the weights, GPTQ with blocks x the columns its loops visit, peak memory with the model; "
             "for a streamed run, the weights outside the blocks and two blocks change to the 70B's and its "
             "activations and logits stay as measured). Unstreamed, none of it fits one 80 GB GPU: the model alone "
             f"needs {model / 2**30:.0f} GiB. Streamed, the blocks wait in CPU memory (the host needs the "
             f"{model / 2**30:.0f} GiB).", "",
             "| run | analyze s | quantize s | peak GPU |", "|---|---|---|---|"]
    for r in runs:
        e = extrapolate(r["config"], LLAMA_70B, r["phases"], 2 if r["dtype"] in ("bfloat16", "float16") else 4,
                        r.get("rounding", "nearest"), bool(r.get("stream")))
        lines.append(f"| `{_run_label(r)}` | {e.get('analyze_seconds', '-')} | "
                     f"{e.get('quantize_seconds', '-')} | "
                     f"{e['peak_gpu_bytes'] / 2**30:.0f} GiB ({e['peak_gpu_bytes'] / model:.2f}x) |")
    return lines + [""]


def _speed_target(scale: list[dict]) -> list[str]:
    """The 8B analysis-speed target (analysis + solve < 5 minutes with an output metric on 64 x 1,024 tokens)
    against the rate the largest unstreamed run reached: its forks' matmul FLOPs (at most 2 x parameters per
    token per forward-equivalent) over its analysis seconds."""
    runs = [r for r in scale if r["shape"] == "8b" and not r.get("stream") and r["metric"] in ("kl", "sqnr")
            and (r.get("analyze") or {}).get("forward_equivalents") and "analyze" in r["phases"]]
    if not runs:
        return []
    r = max(runs, key=lambda r: r["calibration"]["sequences"] * r["calibration"]["tokens_per_sequence"])
    cal, a = r["calibration"], r["analyze"]
    flops = 2 * r["params"] * a["forward_equivalents"] * cal["batch"] * cal["tokens_per_sequence"]
    seconds = r["phases"]["analyze"]["seconds"]
    rate = flops / seconds
    scale_to = 64 * 1024 / (cal["sequences"] * cal["tokens_per_sequence"])
    solve = r["phases"].get("solve", {}).get("seconds", 0.0)
    need = flops * scale_to / (300 - solve * scale_to)
    return [f"Analysis speed at 64 x 1,024 tokens (target: analysis + solve under 5 minutes on one GPU): the "
            f"{cal['sequences']} x {cal['tokens_per_sequence']} run (`{_run_label(r)}`) ran "
            f"{a['forward_equivalents']:.0f} forward-equivalents of {cal['batch']} x {cal['tokens_per_sequence']} "
            f"tokens, at most {flops / 1e15:.0f} PFLOP of matmuls (2 x parameters per token), in {seconds:.1f} s: "
            f"{rate / 1e12:.0f} TFLOP/s on the {r['environment'].get('device_name', 'GPU')}. The same analysis on "
            f"{scale_to:.0f}x the tokens would take {flops * scale_to / rate:.0f} s at that rate; meeting the target "
            f"needs {need / 1e12:.0f} TFLOP/s sustained through the forks. **Missed**: the forks' arithmetic "
            "itself does not fit the budget at the measured rate; fewer forks (fewer candidates or groups) or "
            "fewer tokens are what would.", ""]


def llm_scale_section() -> list[str]:
    """benchmarks/llm_scale.py and benchmarks/sharded_analysis.py: time and memory at LLM scale, one and
    several GPUs (random weights: only times, memory and equality mean anything)."""
    scale = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("llm_scale_*.json"))]
    sharded = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("sharded_analysis_*.json"))]
    if not scale and not sharded:
        return []
    lines = ["## LLM scale and sharded analysis", "",
             "Random-init Llama shapes (`benchmarks/llm_scale.py`): only the times, forward-equivalents and memory "
             "mean anything.", ""]
    if scale:
        lines += ["| shape | dtype | calibration | metric | phase seconds | peak GPU (x model) | forward-equivalents "
                  "(naive) | device | command |", "|---|---|---|---|---|---|---|---|---|"]
        for r in scale:
            cal = r["calibration"]
            phases = ", ".join(f"{k} {v['seconds']:.1f}" for k, v in r["phases"].items())
            peak = max((v.get("peak_gpu_bytes") or 0) for k, v in r["phases"].items()
                       if not (r.get("stream") and k in ("build", "stream")))  # built on the device, then streamed
            a = r["analyze"]
            fe = (f"{a['forward_equivalents']:.0f} ({a['naive_forward_equivalents']}; {a['prefix_sharing']})"
                  if a and a.get("forward_equivalents") is not None
                  else "not counted by this metric" if a
                  else f"none: uniform {r['plan']['candidates_used'][0]}, rounding {r.get('rounding', 'nearest')}")
            lines.append(f"| {r['shape']} | {r['dtype']} | {cal['sequences']} x {cal['tokens_per_sequence']} | "
                         f"{r['metric'] if a else '-'} | {phases} | {peak / 2**30:.1f} GiB ({peak / r['model_bytes']:.2f}x) | "
                         f"{fe} | "
                         f"{r['environment'].get('device_name', '')} | `{r['command']}` |")
        lines.append("")
        lines += [f"`{_run_label(r)}`: {r['remark']}." for r in scale if r.get("remark")]
        lines += [""] if any(r.get("remark") for r in scale) else []
        lines += _streamed_runs(scale)
        lines += _extrapolated_70b(scale)
        lines += _speed_target(scale)
    for r in sharded:
        one, many = r["one_process"], r["sharded"]
        lines += [f"Sharded analysis, {r['shape']} shape on {r['processes']} processes "
                  f"({_sharded_machine(r)}; `{r['command']}`): the merged table "
                  f"{'equals' if r['max_relative_difference'] == 0 else 'differs from'} the one-process table "
                  f"(largest relative difference {r['max_relative_difference']:.3g} over {r['entries']} entries). "
                  f"analyze {r['analyze_seconds']['1']:.1f} s on one, {r['analyze_seconds'][str(r['processes'])]:.1f} s "
                  f"on {r['processes']}: **{r['speedup']:.2f}x**"
                  + (f" (target 1.8x on 2 GPUs: {'met' if r['speedup'] >= 1.8 else 'missed'})" if r["processes"] == 2
                     else "") + ". The measurement itself took "
                  f"{one['analyze']['table_seconds']:.1f} s against {many['analyze']['table_seconds']:.1f} s on rank 0 "
                  f"({one['analyze']['table_seconds'] / many['analyze']['table_seconds']:.2f}x); rank 0 ran "
                  f"{many['analyze']['forward_equivalents']:.0f} of the {one['analyze']['forward_equivalents']:.0f} "
                  "forward-equivalents; both runs hash the weights for their run directory.", ""]
    return lines


def _sharded_machine(r: dict) -> str:
    """The machine a sharded run names, else the accelerator its one-process run recorded."""
    if r.get("environment", {}).get("machine"):
        return r["environment"]["machine"]
    name = r.get("one_process", {}).get("environment", {}).get("device_name")
    return f"{r['processes']} x {name} (one host), NCCL" if name else r["device"]


def front_speed_section() -> list[str]:
    reports = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("front_speed_*.json"))]
    if not reports:
        return []
    lines = ["## From a model to its Pareto front", "", "Sensitivity analysis (default metric) plus a front of exact "
             "plans (not evaluated, report included), in a fresh run directory.", "",
             "| model | metric | candidates | calibration samples | analysis s | front s | total s | CPU cores |",
             "|---|---|---|---|---|---|---|---|"]
    for r in reports:
        lines.append(f"| {r['model']} | {r['metric']} | {r['candidates']} | {r['calibration_samples']} | "
                     f"{r['analysis_seconds']} | {r['front_seconds']} ({r['points']} points) | {r['total_seconds']} | "
                     f"{r['environment']['cpu_count']} |")
    return lines + [""] + [f"`{r['command']}`, torch {r['environment']['torch']}." for r in reports] + [""]


def weight_cache_section() -> list[str]:
    """benchmarks/weight_cache.py: applying plan after plan with the nearest-weight cache off and on."""
    lines = []
    for path in sorted(RESULTS.glob("weight_cache_*.json")):
        r = json.loads(path.read_text())
        env = r["environment"]
        lines += [f"- {r['model']}: {r['plans']} plans applied in {r['total_seconds']['off']} s without the cache, "
                  f"{r['total_seconds']['on']} s with it ({r['speedup']}x); weights equal bit for bit: "
                  f"{'yes' if r['weights_equal'] else 'NO'} (`{r['command']}`, {env['device']}, torch {env['torch']})."]
    return ["## Measuring many plans: the weight cache", ""] + lines + [""] if lines else []


def gguf_section() -> list[str]:
    """benchmarks/gguf_llama_cpp.py: GGUF files read back exactly, perplexity in llama.cpp against the simulation
    (each result file: SmolLM2 or the tiny Llama, llama.cpp's CPU repacking of weights on or off)."""
    paths = sorted(RESULTS.glob("gguf_llama_cpp*.json"))
    if not paths:
        return []
    lines = ["## GGUF in llama.cpp", ""]
    for path in paths:
        r = json.loads(path.read_text())
        repack = r.get("repack", True)
        flags = (" --tiny" if path.stem.startswith("gguf_llama_cpp_tiny") else "") + ("" if repack else " --no-repack")
        lines += [f"`python benchmarks/gguf_llama_cpp.py --windows {r['windows']}{flags}`: {r['model']}, first "
                  f"{r['windows']} windows of {r['window_tokens']} tokens, llama-cpp-python {r['llama_cpp'] or 'not installed'}, "
                  f"llama.cpp's CPU weight repacking {'on (its default)' if repack else 'off (--no-repack)'}, "
                  f"{r['threads']} CPU threads (a shared CPU: speeds are rough).", "",
                  "| plan | file MiB | tensors read back exactly | simulated perplexity | llama.cpp perplexity "
                  "| prompt / generate tokens/s |", "|---|---|---|---|---|---|"]
        for row in r["rows"]:
            if "readback" not in row:
                lines.append(f"| {row['plan']} | | | {row['simulated_perplexity']:.4f} | | |")
                continue
            cpp = row.get("llama_cpp") or {}
            lines.append(f"| {row['plan']} | {row['size_bytes'] / 2**20:.1f} | {row['readback']['exact']} of "
                         f"{row['readback']['tensors']} | {row['simulated_perplexity']:.4f} | "
                         f"{cpp.get('perplexity', float('nan')):.4f} | {cpp.get('prompt_tokens_per_s', float('nan')):.0f} / "
                         f"{cpp.get('generate_tokens_per_s', float('nan')):.0f} |")
        lines.append("")
    return lines


def _best_rival_remeasured() -> str:
    """The never-worse files measured with the guard's best-rival rule (their environment says so)."""
    names = sorted(p.stem for p in RESULTS.glob("never_worse_*.json")
                   if json.loads(p.read_text()).get("environment", {}).get("guard_rule") == "best_rival")
    return ", ".join(f"`{n}`" for n in names) or "none"


def _best_rival_count() -> str:
    """' (N; M of them worse than uniform by more than one standard error)', from guard_best_rival.json."""
    path = RESULTS / "guard_best_rival.json"
    if not path.exists():
        return " (not run)"
    changed = json.loads(path.read_text())["changed"]
    worse = sum(c["worse_than_uniform_beyond_1se"] for c in changed)
    return f" ({len(changed)}; {worse} of them worse than uniform by more than one standard error)"


def main() -> None:
    lines = ["# Benchmarks", "", "Generated by `python benchmarks/report.py` from `benchmarks/results/*.json`; "
             "every figure comes from those files, each made by the command shown with it.", "",
             "Symmetric integer grids now use a signed scale (all 2^B levels; see \"Symmetric grid\" below). "
             "Measured on it: `symmetric_grid_*`, `never_worse_*_signed`, `never_worse_*_auto`, `never_worse_*_margin`, "
             "`nncf_*_signed`, `nncf_*_auto*`, `guard_noise*`, `weight_cache_*`, `gguf_*`, `profile_ort_*`, `latency_budget_*`, "
             "`export_ort_efficientnet-lite0*`, `export_ort_resnet20`, `export_ort_resnet56`, `export_ort_minilm`, `decode_ops_*` and `at_budget_*_gptq*`; every other "
             "result file was measured with the former grid, max|x| / qmax, "
             "which left the lowest code unused: rerun now, those benchmarks give other figures (at 4 bits and "
             "below, mostly better ones).", "",
             "The guard now calls a difference within one standard error of the paired per-sample difference a tie "
             "(`--guard-margin`, default 1) and scores language models by the next-token NLL of their calibration "
             "text. Measured with it: `never_worse_*_margin` and `nncf_*_margin`; the other never-worse and NNCF files "
             "ran the guard without a margin (and with KL for language models), and their rows say so.", "",
             "The guard now judges the mixed plan against the best uniform rival (the plan it would be replaced by) "
             "instead of against every uniform rival within the budget; with one divergence (language models, "
             "1/SQNR) the two agree. Measured with it: " + _best_rival_remeasured() + "; every other never-worse and "
             "NNCF file ran the former rule: `guard_best_rival` reads their stored guard figures and lists the "
             "decisions the new rule changes" + _best_rival_count() + ".", "",
             "Latency comparisons on ONNX Runtime CPU now make every session anew each round, in an order rotated "
             "by one file, and `profile --around` times each move with its pair of sessions made in both orders: of "
             "two sessions of the same file made one after the other, the one made first measured slower "
             "(`session_order_*`). Measured so: `latency_budget_*`, `session_order_*`, `export_ort_minilm`, `export_ort_resnet20`, `export_ort_resnet56`, `export_ort_resnet20_avx2`, `export_ort_resnet56_avx2`, "
             "`export_ort_efficientnet-lite0`, `export_ort_lm_smollm2` and `export_ort_lm_smollm2_fused_vnni`. "
             "The other `export_ort_*` files (and `decode_ops_*`) made each session once, FP32's first, which "
             "favoured the int8 file: "
             "MiniLM at batch 1 ran 1.79x with FP32's session made first and 1.73x rotated, so read their "
             "speed-ups as a few per cent high.", "",
             "Plans that run as ONNX Runtime's int8 graph (join quantizers) are now simulated with the integer "
             "kernels' int32 bias rounding (`mixprec.integer_bias`). Measured with it: `int8_divergence_*` (both, "
             "side by side), `export_ort_resnet20`, `export_ort_resnet56`, `export_ort_efficientnet-lite0`, "
             "`export_ort_minilm`, `export_ort_resnet20_avx2`, `export_ort_resnet56_avx2`, "
             "`latency_budget_efficientnet-lite0` and `latency_budget_resnet20` (MiniLM has no "
             "join quantizers: torch.fx does not trace it, so nothing of it changes); the simulated figures of "
             "`export_ort_efficientnet-lite0_avx2` leave that rounding out "
             "(the file it exported holds the same int32 biases).", "",
             "GPTQ (`--rounding gptq`) now takes columns in act-order by default (mixprec keeps each group's columns "
             "together, so the format is unchanged; SmolLM2 at w4g64: 49.91 -> 42.08, "
             "`rounding_smollm2_gptq_options`). Measured in the paper's column order, the former default: "
             "`at_budget_smollm2_5p1_w56_gptq`, `_gptq_aware`, `_gptq_aware_local`, `llm_scale_8b_h100_gptq*`, "
             "`nncf_smollm2_lm_head_w8_gptq_ratio1`; `rounding_*` files name each variant's options "
             "(their `gptq` rows: the paper's order). `at_budget_smollm2_5p1_w56_gptq_ao_sg_aware_local` was measured "
             "with act-order and static groups.", "",
             "A Llama-family causal LM now exports with ONNX Runtime's fused decoder ops (GroupQueryAttention, "
             "SkipSimplifiedLayerNormalization; `export(..., decoder=\"fused\")`, the default). Measured so: "
             "`export_ort_lm_smollm2_fused` (with FP32 and uniform w8a8d128 also as the traced step, rows ending "
             "', traced step'); `export_ort_lm_smollm2` was written as the traced step, and on another CPU; "
             "`decode_ops_smollm2` times both graphs.", "",
             "Join quantizers now go only where a layer with integer inputs writes or reads the join's tensors: an "
             "add or concatenation with no such layer beside it (in a mixed plan's float region, or between a "
             "transformer's LayerNorms) stays float. Every result file but `export_ort_lm_smollm2_fused_vnni` (which "
             "has no joins) was measured before; uniform plans of the CNNs, whose every add reads convs, are the "
             "same either way, and the mixed plans with float layers of `latency_budget_*` would have fewer joins "
             "now.", "",
             "The exact solver now shifts each group's row to its least entry and scales the table before HiGHS "
             "(its absolute gap had stopped it above the optimum of tables of tiny sensitivities), the analysis "
             "calibrates activation ranges on as many samples as `apply`, and KL is computed in float64; an "
             "activation's range is calibrated on all of a batch's values where they fit the sample budget, and on "
             "draws without their repeats up to 4x it (so that the same samples in another order give the same "
             "range). Measured with all of these: `never_worse_resnet20_labels_local` and "
             "`never_worse_resnet56_labels_local` (measured again: the same guard decisions at every budget, figures "
             "within 0.1 point of the former, but for local-search points of resnet20, +0.43 at the bops of w4a8); "
             "every other result file was measured before them.", "",
             "The plans of an analysis with join quantizers (`--profile ort-cpu`, `target=\"ort-cpu\"`) are now "
             "measured by the guard, the searches and `pareto --eval` as `apply` and `export` make them: join "
             "quantizers where the plan has integer layers, calibrated with its layers (they were the analysis's, at "
             "every join, calibrated through the float model). The figures of `latency_budget_*` and `export_ort_*` "
             "come from the exported files, as before; the guard decisions of `latency_budget_*` were made the former "
             "way.", ""]
    lines += never_worse_section() + run_section() + nncf_section() + weight_cache_section() + symmetric_grid_section() + mixquant_section() + multipoint_section() + rounding_section() + reconstruction_section() + deploy_targets_section() + export_section() + divergence_section() + cuda_section() + gguf_section() + profile_section() + session_order_section() + export_memory_section() + latency_budget_section() + llm_scale_section() + front_speed_section() + uniform_section() + speed_section() + trust_section() + solver_section()
    OUT.write_text("\n".join(lines))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
