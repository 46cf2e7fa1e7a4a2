"""The command line's start: a Ctrl-C while ``mixprec`` imports torch (the first seconds of every command) ends it
with one line, as an interruption later does, not with a traceback of the imports.

Only where the process is the ``mixprec`` command; :func:`restore` puts back the handler it replaced once
the command runs (mixprec.cli.main), where its own interruption handling takes over.
"""
from __future__ import annotations

import os
import signal
import sys

_replaced: list = []  # the SIGINT handler this replaced, while it is in place


def _interrupted(signum, frame) -> None:
    print("mixprec: interrupted", file=sys.stderr, flush=True)
    os._exit(130)


def restore() -> None:
    """The SIGINT handler there was before the import (nothing where none was replaced)."""
    if _replaced:
        signal.signal(signal.SIGINT, _replaced.pop())


if sys.argv and os.path.basename(sys.argv[0]) == "mixprec" and signal.getsignal(signal.SIGINT) is \
        signal.default_int_handler:
    try:
        _replaced.append(signal.signal(signal.SIGINT, _interrupted))
    except ValueError:  # not the main thread: nothing to replace
        pass
