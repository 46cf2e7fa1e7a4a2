"""Progress bars: tqdm's, except where they are written to something other than a terminal (a log file,
a CI job's output). There a bar that would erase itself when done (``leave=False``) cannot: it ends its
line instead, so that what is printed next starts a line of its own rather than after the bar's last
state and a run of spaces."""
from __future__ import annotations

import sys
from typing import Any

from tqdm.auto import tqdm as _tqdm


def _terminal(stream: Any) -> bool:
    stream = stream if stream is not None else sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def tqdm(*args: Any, **kwargs: Any) -> _tqdm:
    """``tqdm.auto.tqdm(*args, **kwargs)``; ``leave=False`` holds on a terminal only."""
    if kwargs.get("leave", True) is False and not _terminal(kwargs.get("file")):
        kwargs["leave"] = True
    return _tqdm(*args, **kwargs)
