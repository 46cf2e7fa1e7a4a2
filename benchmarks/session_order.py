"""Does the order in which ONNX Runtime sessions are made change what a latency comparison measures?

    python benchmarks/session_order.py minilm [--batch-size 1] [--trials 3]

For a built-in model: its FP32 and uniform int8 exports, timed in one process as earlier benchmarks did
(rounds alternating the two files, both sessions made once, FP32 first or int8 first), and as
``export_ort.latency_feeds`` does now (every round makes both sessions anew, in an order rotated by one
file). Prints and saves the speed-up of int8 over FP32 each way. Writes
benchmarks/results/session_order_<model>.json and .md.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from export_ort import RESULTS, THREADS, _cpu, _ort_version, latency_feeds  # noqa: E402
from run import save_result  # noqa: E402

from mixprec import __version__  # noqa: E402
from mixprec.builtin import get_builtin  # noqa: E402
from mixprec.export import cpu_has_vnni, export  # noqa: E402
from mixprec.export.latency import _feed, _resize  # noqa: E402
from mixprec.export.ort import make_session  # noqa: E402
from mixprec.groups import discover_groups  # noqa: E402
from mixprec.plan import Plan  # noqa: E402


def made_once(paths: dict, feeds: dict, rounds: int, per_round: int) -> dict:
    """The former way: each session made once, in ``paths``' order, then rounds alternating the files."""
    sessions = {k: make_session(p, THREADS) for k, p in paths.items()}
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for k, s in sessions.items():
        for _ in range(max(3, per_round // 4)):
            s.run(None, feeds[k])
    for _ in range(rounds):
        for k, s in sessions.items():
            for _ in range(per_round):
                start = time.perf_counter()
                s.run(None, feeds[k])
                times[k].append(1000 * (time.perf_counter() - start))
    return {k: statistics.median(v) for k, v in times.items()}


def run(name: str, batch: int, trials: int, rounds: int) -> dict:
    builtin = get_builtin(name)
    model = builtin.model().eval()
    calibration = builtin.calibration(64)
    groups = discover_groups(model, builtin.example_input())
    int8 = "w8a8" if cpu_has_vnni() else "w7a8"
    per_round = 30 if batch == 1 else 3
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = {c: Path(tmp) / f"{c}.onnx" for c in ("fp32", int8)}
        for cand, path in paths.items():
            export(model, Plan.uniform(groups, cand), calibration, "ort-cpu", path, progress=False, threads=THREADS)
        example = calibration[0][0] if isinstance(calibration[0], (tuple, list)) else calibration[0]
        x = _resize(example[:1] if hasattr(example, "shape") else example, batch)
        feeds = {k: _feed(make_session(p, THREADS), x) for k, p in paths.items()}
        for trial in range(trials):
            for way, order in (("made once, FP32 first", ("fp32", int8)), ("made once, int8 first", (int8, "fp32")),
                               ("made anew each round, rotated", ("fp32", int8))):
                ordered = {k: paths[k] for k in order}
                if way.startswith("made once"):
                    t = made_once(ordered, feeds, rounds, per_round)
                else:
                    t = latency_feeds({k: (lambda p=p: make_session(p, THREADS)) for k, p in ordered.items()},
                                      feeds, rounds, per_round)
                rows.append({"trial": trial, "way": way, "fp32_ms": t["fp32"], "int8_ms": t[int8],
                             "speedup": t["fp32"] / t[int8]})
                print(f"{way}: FP32 {t['fp32']:.3f} ms, {int8} {t[int8]:.3f} ms, {rows[-1]['speedup']:.3f}x", flush=True)
    return {"model": name, "int8": int8, "batch_size": batch, "trials": trials, "rounds": rounds,
            "per_round": per_round, "rows": rows, "threads": THREADS,
            "command": "python benchmarks/session_order.py " + " ".join(sys.argv[1:]),
            "environment": {"mixprec": __version__, "onnxruntime": _ort_version(), "cpu": _cpu(),
                            "vnni": cpu_has_vnni()}}


def markdown(r: dict) -> str:
    env = r["environment"]
    lines = [f"## Latency comparisons and the order of making sessions: {r['model']}", "",
             f"FP32 against uniform {r['int8']} exports of {r['model']}, batch {r['batch_size']}, {r['threads']} "
             f"threads, {env['cpu']} (VNNI {'yes' if env['vnni'] else 'no'}), onnxruntime {env['onnxruntime']}; "
             f"{r['trials']} trials of each way in one process. Made once: both sessions made at the start (in "
             "the order named) and timed in rounds alternating the files, as the export and latency benchmarks "
             "did before; made anew: every round makes both sessions again in an order rotated by one file (what "
             "`export_ort.latency_feeds` does now).", "",
             "| way | speed-ups of the trials | median |", "|---|---|---|"]
    for way in dict.fromkeys(row["way"] for row in r["rows"]):
        ups = [row["speedup"] for row in r["rows"] if row["way"] == way]
        lines.append(f"| {way} | {', '.join(f'{u:.2f}x' for u in ups)} | {statistics.median(ups):.2f}x |")
    lines += ["", f"`{r['command']}`"]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    result = run(args.model, args.batch_size, args.trials, args.rounds)
    RESULTS.mkdir(exist_ok=True)
    save_result(RESULTS / f"session_order_{args.model}_b{args.batch_size}", result, markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
