import json
import os
import subprocess
import sys

import pytest

from mixprec.cli import main


def values(run):
    return json.loads((run / "sensitivity.json").read_text())["values"]


def test_analyze_writes_json_and_csv_and_resumes(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["analyze", "--model", "demo-cnn", "--candidates", "w2a8,w4a8,w8a8", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "most sensitive groups" in out and "forward-equivalents" in out
    table = values(run)
    assert len(table) == 4 and all(len(row) == 3 for row in table)
    assert (run / "sensitivity.csv").read_text().splitlines()[0] == "group,w2a8,w4a8,w8a8"
    # resuming a finished run measures nothing again and gives the same table
    log = (run / "entries.rank0.jsonl").read_text()
    assert main(["analyze", "--resume", str(run)]) == 0
    assert (run / "entries.rank0.jsonl").read_text() == log and values(run) == table


def test_analyze_errors(tmp_path, capsys):
    assert main(["analyze", "--resume", str(tmp_path)]) == 2
    assert "not an analysis run directory" in capsys.readouterr().err
    assert main(["analyze", "--model", "demo-cnn", "--out", str(tmp_path / "r"), "--metric", "nope"]) == 2
    assert "unknown sensitivity metric" in capsys.readouterr().err


def test_two_processes_give_the_single_process_table(tmp_path):
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    args = ["analyze", "--model", "demo-cnn", "--candidates", "w2a8,w4a8,w8a8", "--chunk-size", "1"]
    assert main(args + ["--out", str(single)]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}  # gloo, on a machine with GPUs too
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "mixprec.cli", *args, "--out", str(sharded)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in sharded.glob("entries.rank*.jsonl")) == ["entries.rank0.jsonl", "entries.rank1.jsonl"]
    # each rank measured a disjoint share
    shares = [{tuple(json.loads(l).values())[:2] for l in (sharded / f"entries.rank{r}.jsonl").read_text().splitlines()}
              for r in (0, 1)]
    assert shares[0] and shares[1] and not shares[0] & shares[1]
    flat = lambda rows: [v for row in rows for v in row]
    assert flat(values(sharded)) == pytest.approx(flat(values(single)), rel=1e-6)


def test_sigkill_mid_run_then_resume_recomputes_nothing_finished(tmp_path):
    import signal
    import time
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "mixprec.cli", "analyze", "--model", "demo-cnn", "--candidates",
           "w2a8,w3a8,w4a8,w6a8,w8a8", "--chunk-size", "1", "--out", str(run)]
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    log = run / "entries.rank0.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (log.exists() and log.read_text().count("\n") >= 5):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "sensitivity.json").exists(), "the run finished before it could be killed"
    finished = [json.loads(l) for l in log.read_text().splitlines()]
    assert 5 <= len(finished) < 20
    assert main(["analyze", "--resume", str(run)]) == 0
    entries = [json.loads(l) for l in log.read_text().splitlines()]
    assert entries[:len(finished)] == finished  # nothing finished was measured again
    assert len(entries) == 20 and len({(e["group"], e["candidate"]) for e in entries}) == 20
    fresh = tmp_path / "fresh"
    assert main(["analyze", "--model", "demo-cnn", "--candidates", "w2a8,w3a8,w4a8,w6a8,w8a8", "--out", str(fresh)]) == 0
    flat = lambda rows: [v for row in rows for v in row]
    assert flat(values(run)) == pytest.approx(flat(values(fresh)), rel=1e-9)


def test_analyze_says_when_its_table_shows_some_of_the_groups(tmp_path, capsys):
    (tmp_path / "deep.py").write_text(
        "import torch\nfrom torch import nn\n\n"
        "def build():\n    torch.manual_seed(0)\n"
        "    return nn.Sequential(*[nn.Sequential(nn.Linear(8, 8), nn.ReLU()) for _ in range(12)]).eval()\n\n"
        "def data():\n    torch.manual_seed(1)\n    return [torch.randn(16, 8) for _ in range(2)]\n")
    assert main(["analyze", "--model", f"{tmp_path / 'deep.py'}:build", "--data", f"{tmp_path / 'deep.py'}:data",
                 "--candidates", "w2a8,w8a8", "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "most sensitive 10 of 12 groups" in out and "sensitivity.csv (every group)" in out
    assert len(values(tmp_path / "run")) == 12
