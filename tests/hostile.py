"""A tiny model, data and evaluation written as user files into a test's directory, and a way to
run the command line and read its one error line."""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import torch

USER_CODE = '''
import os
import torch
from torch import nn

MARKER = os.environ.get("MIXPREC_TEST_MARKER")
if MARKER:  # importing this file leaves a trace: the tests check that no command ran it unasked
    open(MARKER, "a").write("imported\\n")


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))


def data():
    torch.manual_seed(1)
    return [torch.randn(8, 1, 8, 8) for _ in range(2)]


def nan_data():
    batches = data()
    batches[1][0, 0, 0, 0] = float("nan")
    return batches


def evaluate(m):
    with torch.no_grad():
        return float(m(torch.ones(1, 1, 8, 8)).sum())


def evaluate_nan(m):
    return float("nan")


def evaluate_raises(m):
    raise ValueError("the user's evaluation broke")


def evaluate_text(m):
    return "good"


def evaluate_exits(m):
    raise SystemExit(3)
'''


def user_files(directory: Path) -> Path:
    """Write user.py and data.npz (the calibration data of user.py:data) into ``directory``."""
    (directory / "user.py").write_text(textwrap.dedent(USER_CODE))
    torch.manual_seed(1)
    np.savez(directory / "data.npz", inputs=torch.cat([torch.randn(8, 1, 8, 8) for _ in range(2)]).numpy())
    return directory


def error_line(capsys) -> str:
    """The command's stderr, asserted to be one `mixprec: error:` line without a traceback."""
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.startswith("mixprec: error:")]
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


def interrupted_at(real, call: int, calls: list):
    """``real``, each call counted in ``calls``; the ``call``-th raises KeyboardInterrupt instead (a Ctrl-C there)."""
    def counted(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    return counted
