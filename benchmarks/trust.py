"""Trust report: how well each sensitivity metric ranks the groups, against the measured
single-group drop of the real task metric, and what each metric costs.

    python benchmarks/trust.py resnet20 efficientnet-lite0 minilm

Candidate: w4a8 (w4 weight-only for MiniLM). The truth is the `task` table: every group alone at
the candidate, evaluated on the model's full evaluation set (cached and resumable under
benchmarks/results/tmp/). Writes benchmarks/results/trust_<model>.json and .md.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

from mixprec import __version__
from mixprec.builtin import get_builtin
from mixprec.candidates import parse_candidates
from mixprec.errors import MissingDataError, SpecError
from mixprec.groups import discover_groups
from mixprec.plan import write_json_atomic
from mixprec.sensitivity.analyze import analyze
from mixprec.sensitivity.trust import format_report, rank_correlation

RESULTS = Path(__file__).parent / "results"
CANDIDATE = {"minilm": "w4", "smollm2": "w4"}
METRICS = ("roundoff", "sqnr", "kl", "hessian", "fisher", "local")


def run(name: str, samples: int | None, eval_limit: int | None, metrics: list[str], device: str = "cpu",
        candidate: str | None = None) -> dict:
    builtin = get_builtin(name)
    model = builtin.model().to(device)
    data = builtin.calibration(samples or builtin.default_calibration_samples)
    groups = discover_groups(model, builtin.example_input())
    cands = parse_candidates(candidate or CANDIDATE.get(name, "w4a8"))
    tag = f"{name}_{cands[0].name}" + (f"_limit{eval_limit}" if eval_limit else "")
    truth = analyze(model, groups, cands, data, metric="task", run_dir=RESULTS / "tmp" / f"trust_{tag}",
                    evaluate=lambda m: builtin.evaluate(m, limit=eval_limit), arguments={"eval": f"{name}:{eval_limit}"})
    rows = []
    for metric in metrics:
        start = time.perf_counter()
        table = analyze(model, groups, cands, data, metric=metric, progress=False)
        seconds = time.perf_counter() - start
        rows.append({"metric": metric, "spearman": rank_correlation(table, truth), "seconds": round(seconds, 2),
                     "values": table.values[:, 0].tolist()})
        print(f"{name:<18} {metric:<9} Spearman {rows[-1]['spearman']:6.3f}  {seconds:7.1f} s", flush=True)
    rows.append({"metric": "task", "spearman": 1.0, "seconds": truth.metadata["seconds"],
                 "values": truth.values[:, 0].tolist(), "float_value": truth.metadata.get("task_float_value")})
    return {"model": name, "candidate": cands[0].name, "groups": groups.names,
            "calibration_samples": samples or builtin.default_calibration_samples,
            "evaluation": builtin.evaluation_source, "eval_limit": eval_limit, "rows": rows,
            "command": "python " + " ".join(sys.argv),
            "environment": {"mixprec": __version__, "torch": torch.__version__, "machine": platform.machine(),
                            "threads": torch.get_num_threads(), "device": str(next(model.parameters()).device),
                            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}}


def markdown(report: dict) -> str:
    lines = [f"# Trust report: {report['model']} at {report['candidate']}", "",
             f"Spearman rank correlation of each metric's table with the measured single-group drop "
             f"({report['evaluation']}; {len(report['groups'])} groups; "
             f"{report['calibration_samples']} calibration samples). The `task` row is the measurement itself; "
             "its time is the cost of measuring it (cached runs report the time of the last resume).", "",
             "| metric | Spearman | seconds |", "|---|---|---|"]
    for r in sorted(report["rows"], key=lambda r: -(r["spearman"] if r["spearman"] == r["spearman"] else -2)):
        lines.append(f"| {r['metric']} | {r['spearman']:.3f} | {r['seconds']:.1f} |")
    lines += ["", f"Command: `{report['command']}`; torch {report['environment']['torch']}, "
              f"{report['environment']['machine']}, {report['environment']['threads']} threads, "
              f"device {report['environment']['device']} {report['environment'].get('gpu') or ''}."]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--samples", type=int, help="calibration samples (default: the model's default)")
    parser.add_argument("--eval-limit", type=int, help="evaluate the truth on the first N samples only")
    parser.add_argument("--metrics", default=",".join(METRICS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--candidate", help="candidate to measure (default w4a8; w4 for the language models)")
    args = parser.parse_args()
    for name in args.models:
        try:
            report = run(name, args.samples, args.eval_limit, args.metrics.split(","), args.device, args.candidate)
        except (MissingDataError, SpecError) as exc:
            print(f"skipping {name}: {exc}")
            continue
        suffix = (f"_{args.candidate}" if args.candidate else "") + (f"_limit{args.eval_limit}" if args.eval_limit else "")
        write_json_atomic(RESULTS / f"trust_{name}{suffix}.json", report)
        (RESULTS / f"trust_{name}{suffix}.md").write_text(markdown(report))
        print(format_report(report["rows"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
