"""Fingerprints of functions: what a function's results depend on besides its name.

Measured plans are kept in a run's log under a key, so that a plan is never evaluated twice. For an evaluation
given as a function in memory, the key must change whenever the function could answer differently: when its file
is edited, and when it is the same code bound to other values. Two closures made by one factory
(``make_eval(split)`` for two splits), a ``functools.partial`` with other arguments, or defaults of another value
share their name and their source text; keyed by those alone, the second would be served the first one's figures.

:func:`fingerprint` hashes the source file of the function (where it has one: not in a notebook), its own source
text, and every value bound to it: closure cells, defaults, a partial's arguments, a bound method's object.
Values whose content it can read (numbers, strings, containers of them, tensors and arrays, other functions,
modules, classes, devices, dtypes) are hashed; for anything else (a DataLoader, a model, an object of the user's
class) it returns None, and the caller keeps such measurements to this process: correct, though not resumable.
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import types
import uuid
import weakref
from pathlib import Path
from typing import Any, Callable

# tensors and arrays bound to an evaluation are read to hash them up to this many bytes in all (about 2 s); beyond,
# the key gives up instead (a process token)
MAX_HASHED_BYTES = 1 << 30


# the tokens of functions :func:`key` could not fingerprint: one per live function object, never reused by another
# (an id can be, once its object is gone), and never by another process (the uuid)
_TOKENS: "weakref.WeakKeyDictionary[Any, str]" = weakref.WeakKeyDictionary()


class _Unkeyable(Exception):
    """A bound value whose content cannot be hashed."""


class _State:
    """What one fingerprint has visited (by id: recursion) and how many array bytes it has read."""

    def __init__(self):
        self.ids: set[int] = set()
        self.array_bytes = 0


def fingerprint(fn: Callable) -> str | None:
    """sha256 (16 hex digits) of what ``fn``'s results depend on besides its name, or None where a value bound to
    it has no content this can hash (see the module's docstring)."""
    digest = hashlib.sha256()
    try:
        _feed(digest, fn, _State())
    except _Unkeyable:
        return None
    return digest.hexdigest()[:16]


def key(fn: Callable) -> str:
    """:func:`fingerprint`, or where there is none a token of this function object in this process alone, so its
    measurements are reused while it lives and never by other code or another process."""
    found = fingerprint(fn)
    if found is not None:
        return found
    # a bound method is made anew at each attribute access: its object holds the token (one per method name)
    owner, suffix = (fn.__self__, f".{fn.__func__.__qualname__}") if isinstance(fn, types.MethodType) else (fn, "")
    try:
        return _TOKENS.setdefault(owner, f"process-{uuid.uuid4().hex[:16]}") + suffix
    except TypeError:  # not weakly referable: a token for this call alone
        return f"process-{uuid.uuid4().hex[:16]}"


def _feed(digest, value: Any, seen: _State) -> None:
    if value is None or isinstance(value, (bool, int, float, complex, str, bytes)):
        digest.update(repr((type(value).__name__, value)).encode())
        return
    if id(value) in seen.ids:  # a recursive closure, or a container holding itself
        digest.update(b"<seen>")
        return
    seen.ids.add(id(value))
    if isinstance(value, (tuple, list, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        digest.update(f"{type(value).__name__}[{len(items)}]".encode())
        for item in items:
            _feed(digest, item, seen)
        return
    if isinstance(value, dict):
        digest.update(f"dict[{len(value)}]".encode())
        for key in sorted(value, key=repr):
            _feed(digest, key, seen)
            _feed(digest, value[key], seen)
        return
    if _is_array(value):
        _feed_array(digest, value, seen)
        return
    if isinstance(value, functools.partial):
        digest.update(b"partial")
        for part in (value.func, value.args, value.keywords):
            _feed(digest, part, seen)
        return
    if isinstance(value, types.MethodType):
        digest.update(b"method")
        _feed(digest, value.__func__, seen)
        _feed(digest, value.__self__, seen)
        return
    if isinstance(value, types.FunctionType):
        _feed_function(digest, value, seen)
        return
    if isinstance(value, (types.BuiltinFunctionType, types.ModuleType, type)):
        # a built-in, a module or a class: by its qualified name (and a class's source file, where it has one)
        name = f"{getattr(value, '__module__', '')}.{getattr(value, '__qualname__', getattr(value, '__name__', ''))}"
        digest.update(f"{type(value).__name__}:{name}".encode())
        if isinstance(value, type):
            _feed_file(digest, value)
        return
    if _is_simple_torch(value):
        digest.update(f"{type(value).__name__}:{value}".encode())
        return
    raise _Unkeyable(type(value).__name__)


def _feed_function(digest, fn: types.FunctionType, seen: _State) -> None:
    digest.update(f"function:{fn.__module__}.{fn.__qualname__}".encode())
    _feed_file(digest, fn)  # what it calls in its file
    try:  # and its own text: one file can define two functions of one name (the second replacing the first)
        digest.update(inspect.getsource(fn).encode())
    except (OSError, TypeError):  # no source to read: its compiled code
        code = fn.__code__
        digest.update(code.co_code)
        _feed(digest, tuple(c for c in code.co_consts if not isinstance(c, types.CodeType)), seen)
    for cell in fn.__closure__ or ():
        try:
            contents = cell.cell_contents
        except ValueError:  # an empty cell (a variable not yet assigned)
            contents = "<empty cell>"
        _feed(digest, contents, seen)
    _feed(digest, fn.__defaults__, seen)
    _feed(digest, fn.__kwdefaults__, seen)


def _feed_file(digest, obj) -> bool:
    """Hash the file ``obj`` is defined in; False where it has none to read (a notebook cell, exec'd code)."""
    try:
        path = inspect.getsourcefile(obj)
    except TypeError:  # a built-in
        return False
    if not path or not Path(path).is_file():
        return False
    for file in source_files(Path(path)):
        digest.update(file.read_bytes())
    return True


def source_files(path: Path, limit: int = 64) -> list[Path]:
    """``path`` and the user's own modules it imports, read from its import statements (nothing runs): a module
    beside it (``import helper`` or ``from helper import score``: helper.py, or helper/ with its __init__.py and
    the submodules named) and, in turn, what those import beside themselves; at most ``limit`` files. An edit to a
    helper the evaluation calls changes its results as an edit to its own file does. Installed packages are not
    followed (their version is not the user's edit)."""
    import ast
    found, todo = [], [path.resolve()]
    root = path.resolve().parent
    while todo and len(found) < limit:
        file = todo.pop(0)
        if file in found:
            continue
        found.append(file)
        try:
            tree = ast.parse(file.read_bytes())
        except (SyntaxError, ValueError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = file.parent if node.level else root
                for _ in range(max(node.level - 1, 0)):
                    base = base.parent
                module = (node.module or "").split(".")
                names = [".".join([*filter(None, module), alias.name]) for alias in node.names] + \
                    ([node.module] if node.module else [])
                todo += [f for name in names for f in _module_files(base, name)]
                continue
            else:
                continue
            todo += [f for name in names for f in _module_files(root, name)]
    return sorted(found, key=str)


def _module_files(base: Path, dotted: str) -> list[Path]:
    """The files of module ``dotted`` under ``base`` (a.b: a/__init__.py and a/b.py or a/b/__init__.py), where
    they exist."""
    parts, out, here = dotted.split("."), [], base
    for i, part in enumerate(parts):
        package, module = here / part / "__init__.py", here / f"{part}.py"
        if package.is_file():
            out.append(package.resolve())
            here = here / part
        elif module.is_file():
            out.append(module.resolve())
            break
        else:
            break
    return out


def _is_array(value: Any) -> bool:
    module = type(value).__module__ or ""
    return (module.startswith("torch") and type(value).__name__ in ("Tensor", "Parameter")) or \
        (module.startswith("numpy") and type(value).__name__ == "ndarray")


def _feed_array(digest, value: Any, seen: _State) -> None:
    import numpy as np
    import torch

    from .sensitivity.store import hash_tensors
    try:
        tensor = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(value))
    except TypeError:  # an array of objects or strings
        raise _Unkeyable(f"an array of {value.dtype}") from None
    seen.array_bytes += tensor.numel() * tensor.element_size()
    if seen.array_bytes > MAX_HASHED_BYTES:
        raise _Unkeyable(f"more than {MAX_HASHED_BYTES} bytes of arrays")
    digest.update(f"{type(value).__name__}:{hash_tensors([tensor])}".encode())


def _is_simple_torch(value: Any) -> bool:
    import torch
    return isinstance(value, (torch.device, torch.dtype))
