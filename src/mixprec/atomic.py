"""Every file mixprec writes is written here: whole or not at all, and checked before the work.

A file is written to a temporary name in its own directory, flushed, fsync'ed and renamed over the
target (``os.replace`` is atomic on POSIX), so a kill, a full disk or a crash leaves the old file or
the new one, never a torn one. The temporary name is short and fixed in length
(``.mixprec-<8 hex>.tmp``), so a target name that fits the file system also fits its temporary.
An ``OSError`` while writing (no space, read-only, permission) becomes an :class:`OutputError`
that names the file. :func:`check_output_dir` and :func:`check_output_file` find the same faults
before any work is done.
"""
from __future__ import annotations

import json
import math
import os
import uuid
from pathlib import Path
from typing import Any, Callable, IO

from .errors import OutputError

_UMASK = os.umask(0)
os.umask(_UMASK)


def write_atomic(path: str | os.PathLike, write: Callable[[IO], None] | bytes, text: bool = False) -> Path:
    """Write ``path`` through a temporary file: ``write(f)`` fills it (or ``write`` is the bytes)."""
    path = Path(path)
    tmp = path.parent / f".mixprec-{uuid.uuid4().hex[:8]}.tmp"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "x" if text else "xb", **({"newline": "", "encoding": "utf-8"} if text else {})) as f:
            os.chmod(tmp, 0o666 & ~_UMASK)  # results are meant to be shared like any new file
            if isinstance(write, (bytes, bytearray)):
                f.write(write)
            else:
                write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # again: a writer given the name (safetensors' save_file) makes it 0600
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}; {_advice(exc)}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: str | os.PathLike, data: Any) -> Path:
    """JSON, always valid: NaN and infinities are written as the strings "nan", "inf", "-inf"
    (``float()`` reads them back)."""
    def write(f: IO) -> None:
        json.dump(finite_json(data), f, indent=2, default=_json_default, allow_nan=False)
        f.write("\n")
    return write_atomic(path, write, text=True)


def save_torch_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """torch.save through a temporary file. A write that stops part-way (a full disk, a file size limit) is the
    OutputError naming the file that every other write gives: torch.save reports it as a RuntimeError of its
    archive writer."""
    import errno

    import torch

    def write(f) -> None:
        try:
            torch.save(obj, f)
        except RuntimeError as exc:
            if not any(s in str(exc) for s in ("inline_container", "PytorchStreamWriter", "unexpected pos")):
                raise
            raise OSError(errno.ENOSPC, "the write stopped part-way (a full disk or a file size limit?)") from exc
    return write_atomic(path, write)


def finite_json(value: Any) -> Any:
    """``value`` with every non-finite float replaced by its string ("nan", "inf", "-inf")."""
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy arrays/scalars, tensors
        return finite_json(value.tolist())
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _advice(exc: OSError) -> str:
    import errno
    if exc.errno == errno.ENOSPC or exc.errno == errno.EDQUOT:
        return "free some space or choose another output location"
    if exc.errno == errno.ENAMETOOLONG:
        return "choose a shorter output name"
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return "choose a directory you can write to"
    return "choose another output location"


def check_output_dir(path: str | os.PathLike, what: str = "--out") -> Path:
    """Before any work: ``path`` is a directory that exists or can be made, and a file can be created
    in it (not a file, not read-only, names fit)."""
    path = Path(path)
    limit = _name_max(Path("."))
    for part in path.parts:
        if len(os.fsencode(part)) > limit:
            raise OutputError(f"{what} {path}: the name {part[:40]}... is longer than the file system allows "
                              f"({limit} bytes); choose a shorter name")
    try:
        if path.exists() and not path.is_dir():
            raise OutputError(f"{what} {path} is an existing file, not a directory; give a directory (it is "
                              "created if missing)")
        existing = path
        while not existing.exists() and existing.parent != existing:
            existing = existing.parent
    except OSError as exc:
        raise OutputError(f"{what} {path}: {exc.strerror or exc}; {_advice(exc)}") from exc
    if not existing.is_dir():
        raise OutputError(f"{what} {path}: {existing} is a file, so the directory cannot be made")
    _probe(existing, what, path)
    return path


def check_output_file(path: str | os.PathLike, what: str = "--out") -> Path:
    """Before any work: ``path`` can be written as a file (its directory is checked as above)."""
    path = Path(path)
    parent = path.parent
    if parent.exists() and not parent.is_dir():  # said of the file to write, not as if a directory were asked for
        raise OutputError(f"{what} {path}: {parent} is an existing file, so no file can be written inside it; give a "
                          "path whose folder is a directory (it is created if missing)")
    check_output_dir(parent, what)
    if len(os.fsencode(path.name)) > _name_max(Path(".")):
        raise OutputError(f"{what} {path}: the file name is longer than the file system allows; choose a shorter one")
    if path.is_dir():
        example = f"model{path.suffix}" if path.suffix and path.suffix != ".json" else "plan.json"
        raise OutputError(f"{what} {path} is a directory; give a file name, e.g. {path / example}")
    return path


def _name_max(directory: Path) -> int:
    try:
        return int(os.pathconf(directory, "PC_NAME_MAX"))
    except (OSError, ValueError):
        return 255


def _probe(directory: Path, what: str, target: Path) -> None:
    """Create and remove a file in ``directory``: the one sure test that writing works there."""
    probe = directory / f".mixprec-{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(probe, "xb") as f:
            f.write(b"\0")
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise OutputError(f"{what} {target}: cannot write in {directory}: {exc.strerror or exc}; "
                          f"{_advice(exc)}") from exc
    finally:
        probe.unlink(missing_ok=True)
