"""Resolve the --model, --data and --eval specs of the command line.

--model  ``path/to/file.py:function`` or ``package.module:function`` (returns an nn.Module),
         a TorchScript file (``.pt``/``.pth``/``.ts`` saved with torch.jit.save), a built-in name, or
         ``hf:DIR[?dtype=bf16]``, a Hugging Face checkpoint folder (mixprec.hf).
--data   ``file.py:function`` / ``package.module:function`` returning an iterable of input batches
         or of (inputs, labels) pairs; a ``.npz`` file (arrays ``inputs``/``x``/``images``/``data``
         and optionally ``labels``/``y``); a ``.pt`` file holding a tensor (N, ...), a list of
         batches, or a dict with ``inputs`` (and ``labels``); ``text:FILE[?windows=N&length=L&seed=S]``,
         token windows of a text file tokenized by an hf: model's tokenizer (mixprec.text_data).
--eval   ``file.py:function`` / ``package.module:function`` taking the model and returning a float
         (higher is better) or a dict with a main metric (see mixprec.evaluation); or
         ``ppl:FILE[?windows=N&length=L]``, perplexity of an hf: causal LM on a text file.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

from .canonical import canonical
from .capture import map_tensors
from .batches import (batch_size, check_batched, check_finite, in_model_precision, refuse_dataset, sizes_note,
                      split_item, tensors_of)
from .builtin import BUILTINS, get_builtin
from .candidates import parse_candidate
from .errors import EvaluationError, SpecError, notify
from .evaluation import EvalResult, to_eval_result
from .groups import ModelGroups, discover_groups
from . import hf, text_data

DEFAULT_BATCH_SIZE = 32


def _names_a_file(target: str) -> bool:
    """Whether the part of a ``target:function`` spec before the colon is a file path (else a module name)."""
    return target.endswith(".py") or "/" in target or "\\" in target


def absolute_spec(spec: str | None) -> str | None:
    """``spec`` with the file or folder it names made absolute (a built-in name, a package.module:function and any
    spec naming no file as given), so that a run directory's recorded specs load from any working directory."""
    if not spec or is_builtin(spec):
        return spec
    for prefix in ("hf:", "text:", "ppl:"):  # a folder or file, then ?options
        if spec.startswith(prefix):
            path, sep, query = spec[len(prefix):].partition("?")
            return f"{prefix}{Path(path).expanduser().resolve()}{sep}{query}" if path else spec
    target, sep, attr = spec.rpartition(":")
    if sep and target and attr and _names_a_file(target):  # file.py:function
        return f"{Path(target).expanduser().resolve()}:{attr}"
    if not sep and Path(spec).expanduser().exists():  # a data file, a TorchScript model
        return str(Path(spec).expanduser().resolve())
    return spec


def spec_source_hash(spec: str | None) -> str | None:
    """The sha256 (first 16 hex digits) of the file a ``file.py:function`` spec names and of the modules beside it
    that it imports (fingerprint.source_files), else None: a cache keyed by the spec alone would keep serving what
    the function measured before its file, or a helper it calls, was edited."""
    target, sep, _ = (spec or "").rpartition(":")
    path = Path(target)
    if not sep or not target or not _names_a_file(target) or not path.is_file():
        return None
    import hashlib
    from .fingerprint import source_files
    digest = hashlib.sha256()
    for file in source_files(path):  # the file and the helpers beside it that it imports
        digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def resolve_callable(spec: str, what: str) -> Callable:
    """``file.py:function`` or ``package.module:function`` -> the function."""
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise SpecError(f"{what} spec {spec!r} must look like path/to/file.py:function or package.module:function"
                        + _text_hint(spec, what))
    if _names_a_file(target):
        path = Path(target)
        if not path.is_file():
            raise SpecError(f"{what} spec {spec!r}: file {path} does not exist")
        module_name = f"_mixprec_user_{path.stem}_{abs(hash(str(path.resolve())))}"
        loader_spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[module_name] = module
        sys.path.insert(0, str(path.resolve().parent))
        try:
            loader_spec.loader.exec_module(module)
        except Exception as exc:
            raise SpecError(f"{what} spec {spec!r}: importing {path} failed: {type(exc).__name__}: {exc}"
                            f"{_frame_in(exc, path)}") from exc
        finally:
            sys.path.remove(str(path.resolve().parent))
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            prefix = {"ppl": "--eval ppl:FILE (a perplexity over a text file)", "text": "--data text:FILE (calibration "
                      "text)", "hf": "--model hf:DIR (a Hugging Face folder)"}.get(target.lower())
            raise SpecError(f"{what} spec {spec!r}: cannot import module {target!r} ({exc})"
                            + (f"; {target}: is the prefix of {prefix}, not of {what}" if prefix else "")) from exc
    fn = getattr(module, attr, None)
    if fn is None:
        import difflib
        import inspect
        # the file's own functions and classes first: names it imported (torch, dataclass, Path) are noise here
        names = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
        own = [n for n in names if getattr(inspect.getmodule(getattr(module, n)), "__name__", None) == module.__name__]
        close = difflib.get_close_matches(attr, own or names, n=3, cutoff=0.6)
        listed = own or names
        raise SpecError(f"{what} spec {spec!r}: {target} has no attribute {attr!r}"
                        + (f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else "")
                        + f" (its functions and classes: {listed[:15]}{' ...' if len(listed) > 15 else ''})")
    if not callable(fn):
        raise SpecError(f"{what} spec {spec!r}: {attr!r} is not callable")
    return fn


def is_builtin(spec: str) -> bool:
    return spec in BUILTINS


def is_code(spec: str, option: str) -> bool:
    """Whether loading ``spec`` for ``option`` (model, data, eval) runs code that is not mixprec's:
    file.py:function and package.module:function are imported and called, and a TorchScript model
    file holds code. Built-in names, .npz/.pt data files (read without unpickling), Hugging Face folders
    (hf:, safetensors only, never remote code), text: data and ppl: evaluations are not code."""
    if not spec or is_builtin(spec) or spec.startswith(("hf:", "text:", "ppl:")):
        return False
    if option == "data" and ":" not in spec and spec.endswith((".npz", ".pt")):
        return False
    return True


def _not_a_model(spec: str) -> SpecError:
    folder = Path(spec).expanduser()
    hint = (f"; {spec} is a Hugging Face checkpoint folder (it holds config.json): give it as --model hf:{spec}"
            if (folder / "config.json").is_file() else
            f"; a Hugging Face checkpoint folder is given as --model hf:DIR" if folder.is_dir() else "")
    return SpecError(f"--model {spec!r} is not a built-in name ({', '.join(BUILTINS)}), a Hugging Face folder "
                     "(hf:DIR), a TorchScript file (.pt/.pth/.ts) or file.py:function / package.module:function"
                     + hint)


def _text_hint(spec: str, option: str) -> str:
    """For a plain text file given where a spec is expected: the prefix that reads it."""
    if not spec.lower().endswith((".txt", ".text", ".md", ".raw")):
        return ""
    if option == "--data":
        return f"; a text file of calibration text for a language model is --data text:{spec}"
    return f"; the perplexity of a causal language model over a text file is --eval ppl:{spec}"


def check_model_spec(spec: str) -> None:
    """A SpecError for a ``--model`` that names no kind of model mixprec reads (before anything is loaded)."""
    if not (is_builtin(spec) or hf.is_hf(spec) or ":" in spec or spec.endswith((".pt", ".pth", ".ts", ".pt2"))):
        raise _not_a_model(spec)


def load_model(spec: str) -> nn.Module:
    """The float model named by ``spec``, in eval mode."""
    if is_builtin(spec):
        model = get_builtin(spec).model()
    elif hf.is_hf(spec):
        model = hf.load(spec)
    elif spec.endswith((".pt", ".pth", ".ts")) and ":" not in spec:
        path = Path(spec)
        if not path.is_file():
            raise SpecError(f"model file {path} does not exist")
        try:
            model = torch.jit.load(str(path), map_location="cpu")
        except RuntimeError as exc:
            written = (path.parent / "plan.json").is_file() and (path.parent / "result.json").is_file()
            raise SpecError(f"{path} is not a TorchScript file ({_torch_file_kind(path) or str(exc).splitlines()[0]}); "
                            + (f"it is the state dict `mixprec quantize` wrote beside {path.parent / 'plan.json'}: "
                               "evaluate the quantized model with `mixprec quantize --model YOUR_MODEL --data DATA "
                               f"--plan {path.parent / 'plan.json'} --eval SPEC --out DIR`, or in Python load it "
                               "onto apply(model, Plan.load(plan.json), data, calibrate=False) with "
                               "load_state_dict(torch.load(path, weights_only=True)) (README, 'quantize')"
                               if written else
                               "save the model with torch.jit.save(torch.jit.script(model), path), or give "
                               "file.py:function, a function that builds the model (and loads its weights with "
                               "torch.load(path, weights_only=True))")) from exc
    elif spec.endswith(".pt2") and ":" not in spec:
        raise SpecError(f"--model {spec!r} is a torch.export program: its layers are calls of aten operators, not "
                        "modules mixprec can quantize; give file.py:function returning the nn.Module it was exported "
                        "from")
    elif ":" in spec:
        fn = resolve_callable(spec, "--model")
        try:
            model = fn()
        except Exception as exc:
            raise SpecError(f"--model {spec!r}: calling {fn.__name__}() failed: {type(exc).__name__}: {exc} "
                            f"({user_frame(exc, fn)})" + _no_arguments_hint(fn, "model")) from exc
    else:
        raise _not_a_model(spec)
    if not isinstance(model, nn.Module):
        hint = ("; that is a state dict: build the model in the function, load it there "
                "(model.load_state_dict(torch.load(path, weights_only=True))) and return the model"
                if isinstance(model, dict) and model and all(isinstance(v, torch.Tensor) for v in model.values())
                else "")
        raise SpecError(f"--model {spec!r} gave a {type(model).__name__}, expected a torch.nn.Module{hint}")
    if any(m.training for m in model.modules()) and spec not in _TOLD_TRAINING:
        _TOLD_TRAINING.add(spec)  # once per model, however often it is loaded
        notify(f"--model {spec!r} gave a model in training mode (model.train()): it is measured, quantized and "
               "exported in eval mode, dropout off and batch-norm statistics as they are; return model.eval() "
               "to silence this", verbose=True)
    return canonical(model).eval()


_TOLD_TRAINING: set[str] = set()


def _torch_file_kind(path: Path) -> str | None:
    """What a .pt file that is not TorchScript holds, read without unpickling anything but tensors: a state dict
    (or another container of tensors), or a pickled object (torch.save(model)); None where it is neither."""
    import zipfile
    try:
        names = zipfile.ZipFile(path).namelist()
    except (zipfile.BadZipFile, OSError):
        return "it is not a zip archive, as torch writes"
    if not any(n.endswith("/data.pkl") for n in names):
        return None
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return ("it was saved with torch.save(model): a pickled model, which mixprec does not unpickle, since "
                "loading it runs code")
    if isinstance(loaded, dict) and loaded and all(isinstance(v, torch.Tensor) for v in loaded.values()):
        return f"it holds a state dict of {len(loaded)} tensors, the weights without the model's code"
    return f"it holds a {type(loaded).__name__} saved with torch.save, not a model"


# the names of the inputs and of their labels (or targets) in a .npz file or a .pt dict
INPUT_KEYS = ("inputs", "x", "images", "data")
LABEL_KEYS = ("labels", "y", "targets")


def load_data(spec: str, batch_size: int = DEFAULT_BATCH_SIZE, limit: int | None = None,
              model_spec: str | None = None) -> list:
    """Batches (inputs, or (inputs, labels)) from ``spec``; ``limit`` caps the number of samples.
    ``text:`` data is tokenized by the tokenizer of ``model_spec`` (an hf: model). One-hot labels are read as
    the classes they mark (batches.one_hot_as_classes), as the Python API reads them."""
    from .batches import one_hot_as_classes
    return one_hot_as_classes(_load_data(spec, batch_size, limit, model_spec))


def _load_data(spec: str, batch_size: int, limit: int | None, model_spec: str | None) -> list:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise SpecError(f"--calibration-samples must be an integer of at least 1, got {limit!r}")
    if spec.startswith("text:"):
        return text_data.calibration_batches(spec, *hf.tokenizer_for(model_spec, spec), limit=limit)
    if is_builtin(spec):
        builtin = get_builtin(spec)
        return builtin.calibration(limit or builtin.default_calibration_samples)
    path = Path(spec)
    if spec.endswith(".npz") and (":" not in spec or path.is_file()):  # a file whose path holds ':' too
        if not path.is_file():
            raise SpecError(f"--data file {path} does not exist")
        arrays = _read_npz(path)
        inputs = _pick(arrays, INPUT_KEYS, path)
        if inputs.ndim == 0:
            raise SpecError(f"--data {path}: the inputs are a single number; give an array of shape (N, ...)")
        labels = next((arrays[k] for k in LABEL_KEYS if k in arrays), None)
        if labels is not None and labels.ndim == 0:
            raise SpecError(f"--data {path}: the labels are a single number; give one label per input, an array "
                            f"of shape ({len(inputs)},)")
        return _batch(torch.from_numpy(inputs), None if labels is None else torch.from_numpy(labels), batch_size, limit)
    if spec.endswith(".pt") and (":" not in spec or path.is_file()):  # a file whose path holds ':' too
        if not path.is_file():
            raise SpecError(f"--data file {path} does not exist")
        obj = _read_pt(path)
        if isinstance(obj, torch.Tensor):
            if not obj.dim():
                raise SpecError(f"--data {path} holds a single number; give a tensor of shape (N, ...)")
            return _batch(obj, None, batch_size, limit)
        key = next((k for k in INPUT_KEYS if isinstance(obj, dict) and k in obj), None)
        if key is not None:  # the keys a .npz file takes, too
            labels = next((obj[k] for k in LABEL_KEYS if obj.get(k) is not None), None)
            if not isinstance(obj[key], torch.Tensor) or not obj[key].dim() or (
                    labels is not None and not isinstance(labels, torch.Tensor)):
                raise SpecError(f"--data {path}: {key!r} (and {'/'.join(repr(k) for k in LABEL_KEYS)}) must be "
                                "tensors of shape (N, ...)")
            return _batch(obj[key], labels, batch_size, limit)
        # two tensors of N rows each: in a tuple, torch.save((x, y), path), inputs and their labels or targets
        # (class labels, masks, regression targets, a denoiser's clean images); in a list, batches
        pair = isinstance(obj, (list, tuple)) and len(obj) == 2 and all(
            isinstance(t, torch.Tensor) and t.dim() for t in obj) and len(obj[0]) == len(obj[1])
        if pair and isinstance(obj, tuple):
            return _batch(obj[0], obj[1], batch_size, limit)
        if isinstance(obj, (list, tuple)):
            if pair and obj[0].shape[1:] != obj[1].shape[1:]:
                raise SpecError(f"--data {path} holds a list of two tensors of {len(obj[0])} rows and other shapes, "
                                f"{tuple(obj[0].shape)} and {tuple(obj[1].shape)}: a list is read as batches, which "
                                "share one layout. For inputs and their labels or targets, save a tuple, "
                                "torch.save((x, y), path), or a dict, torch.save({'inputs': x, 'labels': y}, path)")
            return _cap(obj, limit, f"--data {path}")
        raise SpecError(f"--data {path}: expected a tensor, a list of batches or a dict with 'inputs', "
                        f"got {type(obj).__name__}")
    if ":" in spec:
        fn = resolve_callable(spec, "--data")
        try:
            data = fn()
        except Exception as exc:
            raise SpecError(f"--data {spec!r}: calling {fn.__name__}() failed: {type(exc).__name__}: {exc} "
                            f"({user_frame(exc, fn)})" + _no_arguments_hint(fn, "data")) from exc
        refuse_dataset(data, f"--data {spec!r} returned", "dataset")
        if isinstance(data, (torch.Tensor, np.ndarray)) or not hasattr(data, "__iter__"):
            raise SpecError(f"--data {spec!r} returned a {type(data).__name__}, expected an iterable of batches "
                            "(a list or a generator of tensors, (inputs, labels) pairs or dicts of tensors)")
        return _cap(data, limit, f"--data {spec!r}")
    raise SpecError(f"--data {spec!r} is not a built-in name, a .npz/.pt file, text:FILE (a language model's "
                    f"calibration text) or file.py:function{_text_hint(spec, '--data')}")


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a .npz file, numeric or boolean only; never unpickles."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic[:2] != b"PK":
        raise SpecError(f"--data {path} is not a .npz archive (a zip of .npy arrays); save the calibration "
                        "arrays with numpy.savez(path, inputs=x, labels=y)")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as exc:  # zip, header and array readers of an untrusted file: each means "not a data file"
        if "pickle" in str(exc) or "Object arrays" in str(exc):
            reason = "it holds pickled (object) data, which mixprec never loads"
        else:
            reason = f"it is not a readable .npz archive ({type(exc).__name__}: {exc})"
        raise SpecError(f"--data {path}: {reason}; save numeric arrays with numpy.savez(path, inputs=x, "
                        "labels=y)") from exc
    for name, array in arrays.items():
        if not isinstance(array, np.ndarray):
            raise SpecError(f"--data {path}: member {name!r} is not a .npy array; save the arrays with "
                            "numpy.savez(path, inputs=x)")
        if array.dtype.kind not in "biuf":
            raise SpecError(f"--data {path}: array {name!r} has dtype {array.dtype}; calibration arrays must be "
                            "numbers or booleans (float inputs, integer token ids or labels)")
    if not arrays:
        raise SpecError(f"--data {path} holds no arrays; save them with numpy.savez(path, inputs=x)")
    return arrays


def _read_pt(path: Path) -> Any:
    """A .pt data file through torch.load(weights_only=True): tensors and plain containers only."""
    import pickle
    import warnings
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of a file it then refuses
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise SpecError(f"--data {path} holds Python objects other than tensors and plain containers, and "
                        "mixprec never unpickles them (torch.load with weights_only=True refused it); save "
                        "tensors, e.g. torch.save({'inputs': x, 'labels': y}, path)") from exc
    except Exception as exc:  # the reader of an untrusted file fails in many ways; each means "not a data file"
        first = str(exc).split(".")[0].splitlines()[0] if str(exc) else type(exc).__name__
        raise SpecError(f"--data {path} is not a file torch.save wrote ({first}); save the calibration tensors "
                        "with torch.save({'inputs': x}, path)") from exc


def _pick(arrays: dict, keys: tuple[str, ...], path: Path) -> np.ndarray:
    for k in keys:
        if k in arrays:
            return arrays[k]
    if len(arrays) == 1:
        return next(iter(arrays.values()))
    raise SpecError(f"--data {path}: no array named one of {keys}; arrays: {sorted(arrays)}. An .npz holds one input "
                    "array (and labels); a model of several inputs takes a .pt file of batches or a file.py:function "
                    "that returns them (dicts or tuples of tensors)")


def _batch(inputs: torch.Tensor, labels: torch.Tensor | None, batch_size: int, limit: int | None) -> list:
    if labels is not None and len(labels) != len(inputs):
        raise SpecError(f"the data file holds {len(inputs)} inputs and {len(labels)} labels; give one label per input "
                        "(or no labels: the label-free metrics need none)")
    if limit is not None:
        inputs = inputs[:limit]
        labels = None if labels is None else labels[:limit]
    if inputs.dtype in (torch.float64, torch.float16, torch.bfloat16):
        inputs = inputs.float()
    out = []
    for start in range(0, len(inputs), batch_size):
        x = inputs[start:start + batch_size]
        out.append(x if labels is None else (x, labels[start:start + batch_size]))
    return out


ENDLESS = 10_000  # batches read without a cap before the data is taken for endless


def _cap(batches: Iterable, limit: int | None, source: str) -> list:
    """The batches of a list or a user's iterable (numpy arrays made tensors), each checked to hold a tensor,
    up to ``limit`` samples: the last batch is cut so that exactly ``limit`` are taken. An error raised by the
    user's iterable is reported as theirs."""
    out, seen, it = [], 0, iter(batches)
    while limit is None or seen < limit:
        try:
            item = next(it)
        except StopIteration:
            break
        except Exception as exc:
            raise SpecError(f"{source}: reading batch {len(out)} failed: {type(exc).__name__}: {exc}") from exc
        item = tensors_of(item)
        if not out:
            check_batched([item])  # single samples are refused before any is cut as if it were a batch
        if limit is None and len(out) >= ENDLESS:
            raise SpecError(f"{source} gave {ENDLESS:,} batches and is still going: is it endless (itertools.cycle, a "
                            "generator that loops)? Cap it with --calibration-samples N")
        inputs = split_item(item)[0]
        try:
            n = batch_size(inputs)
        except (TypeError, IndexError):
            if inputs is None or isinstance(inputs, (int, float, str, bytes)) or not hasattr(inputs, "__len__") \
                    or (isinstance(inputs, torch.Tensor) and not inputs.dim()):
                raise SpecError(f"{source}: batch {len(out)} is a {type(item).__name__} holding no tensor with a "
                                "batch axis; each batch must be a tensor, an (inputs, labels) pair or a dict of "
                                "tensors") from None
            out.append(item)  # a batch of plain values (a model that tokenizes its own texts): as it is
            seen += len(inputs)
            continue
        if limit is not None and seen + n > limit:  # the last batch cut to the samples asked for
            keep = limit - seen
            item = map_tensors(item, lambda t, n=n, keep=keep: t[:keep] if t.dim() and t.shape[0] == n else t)
            n = keep
        out.append(item)
        seen += n
    return out


def load_eval(spec: str, model_spec: str | None = None) -> Callable[[nn.Module], EvalResult]:
    """A function model -> EvalResult from a built-in name, file.py:function or ``ppl:FILE`` (with the
    tokenizer of ``model_spec``, an hf: causal language model)."""
    if spec.startswith("ppl:"):
        if hf.is_hf(model_spec or "") and not hf.is_causal(model_spec):
            raise SpecError(f"--eval {spec!r} is a perplexity, and {model_spec!r} is not a causal language model")
        return text_data.perplexity_evaluation(spec, *hf.tokenizer_for(model_spec, spec))
    if is_builtin(spec):
        builtin_evaluate = get_builtin(spec).evaluate
        return lambda model: builtin_evaluate(model)
    if spec.startswith("text:"):  # a data spec: its windows calibrate; a perplexity over them is ppl:
        raise SpecError(f"--eval {spec!r}: text:FILE is calibration data (--data); the perplexity of a causal "
                        f"language model over a text file is --eval ppl:{spec[len('text:'):]}")
    fn = resolve_callable(spec, "--eval")
    _check_takes_the_model(fn, spec)

    def evaluate(model: nn.Module) -> EvalResult:
        try:
            value = fn(model)
        except Exception as exc:
            raise EvaluationError(f"--eval {spec} raised {type(exc).__name__}: {exc} ({user_frame(exc, fn)})") from exc
        return to_eval_result(value, f"--eval {spec}")
    return evaluate


def _check_takes_the_model(fn: Callable, spec: str) -> None:
    """An --eval function is called with the model alone: one that cannot be is refused when it is loaded, before
    any quantization (it failed after it, with the error located in mixprec)."""
    import inspect
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # a built-in or a C function: nothing to read
        return
    try:
        signature.bind(object())
    except TypeError as exc:
        raise SpecError(f"--eval {spec}: the function is called with the model as its one argument, fn(model), but "
                        f"its signature is {fn.__name__}{signature} ({exc}); give it one parameter for the model, "
                        "e.g. def evaluate(model): ... return accuracy") from None


def _frame_in(exc: BaseException, path: Path) -> str:
    """' (file line N, in name)': where in the file ``path`` an error raised while importing it was raised ("" where
    no frame is in it: a SyntaxError says its line itself)."""
    frame = _innermost_frame(exc, str(path))
    return f" ({frame.filename} line {frame.lineno}, in {frame.name})" if frame else ""


def _innermost_frame(exc: BaseException, source: str | None):
    """The innermost frame of ``exc``'s traceback in the file ``source`` (None where none is)."""
    import traceback
    if source is None:
        return None
    mine = [f for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename).resolve() == Path(source).resolve()]
    return mine[-1] if mine else None


def user_frame(exc: BaseException, fn: Callable) -> str:
    """Where in the user's code ``exc`` was raised: the innermost frame in the file that defines ``fn``
    (else the innermost frame), as 'file line N, in name'."""
    import inspect
    import traceback
    try:  # a decorated function (@torch.no_grad()): the user's own, not the decorator's file
        fn = inspect.unwrap(fn)
    except ValueError:
        pass
    code = getattr(fn, "__code__", None)
    source = getattr(code, "co_filename", None)
    frame = _innermost_frame(exc, source) or next(iter(traceback.extract_tb(exc.__traceback__)[-1:]), None)
    own = str(Path(__file__).parent)  # raised by mixprec's call itself (the function takes other arguments)
    if frame is not None and str(Path(frame.filename).resolve()).startswith(own) and code is not None:
        return f"{source} line {code.co_firstlineno}, {getattr(fn, '__qualname__', fn)} defined there"
    if frame is None:
        return f"in {getattr(fn, '__qualname__', fn)}"
    return f"{frame.filename} line {frame.lineno}, in {frame.name}"


def parse_device(spec: str | torch.device, option: str = "--device") -> torch.device:
    """A --device value (``option``: how the caller names it, e.g. ``device=`` in Python) that this torch can run
    on, else a SpecError saying what is available."""
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError) as exc:
        raise SpecError(f"{option} {spec!r} is not a torch device; use cpu, cuda or cuda:N") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SpecError(f"{option} {spec}: this torch ({torch.__version__}) has no CUDA device available; "
                            f"use {option} cpu, or install a CUDA build of torch on a machine with a GPU")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise SpecError(f"{option} {spec}: there are {torch.cuda.device_count()} CUDA device(s), "
                            f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    elif device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise SpecError(f"{option} {spec}: MPS is not available here; use {option} cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise SpecError(f"{option} {spec}: mixprec runs on cpu, cuda or mps")
    return device


def parse_pins(items: list[str]) -> dict[str, str]:
    """``--pin PATTERN=CANDIDATE`` items as a dict."""
    pins = {}
    for item in items:
        pattern, sep, cand = item.partition("=")
        if not sep or not pattern or not cand:
            raise SpecError(f"--pin {item!r} must look like PATTERN=CANDIDATE, e.g. conv1=w8a8")
        cand = parse_candidate(cand).name
        if pins.get(pattern, cand) != cand:
            raise SpecError(f"--pin {pattern}={pins[pattern]} and --pin {item} pin the same layers to two "
                            "candidates; keep one")
        pins[pattern] = cand
    return pins


def prepare(model_spec: str, data_spec: str | None = None, calibration_samples: int | None = None,
            ties: list[str] = (), excludes: list[str] = (), pins: list[str] = (),
            needs_data: bool = True) -> tuple[nn.Module, list | None, Any, ModelGroups]:
    """Model, calibration batches, example input and quantizer groups from the command-line specs;
    a built-in model brings its own calibration set, pins and excludes."""
    model = load_model(model_spec)
    builtin = get_builtin(model_spec) if is_builtin(model_spec) else None
    all_pins = dict(builtin.default_pins) if builtin else {}
    all_pins.update(parse_pins(list(pins)))
    all_excludes = (list(builtin.default_excludes) if builtin else []) + list(excludes)
    data = None
    if data_spec:
        data = load_data(data_spec, limit=calibration_samples, model_spec=model_spec)
        if not data:
            raise SpecError(f"--data {data_spec} holds no samples: give at least one batch")
    elif builtin is not None and needs_data:
        if calibration_samples is not None and calibration_samples < 1:
            raise SpecError(f"--calibration-samples must be at least 1, got {calibration_samples}")
        data = builtin.calibration(calibration_samples or builtin.default_calibration_samples)
    if data:
        data = in_model_precision(data, model)  # float64 arrays as float32, as the Python API takes them
        check_finite(data, f"--data {data_spec}" if data_spec else f"the calibration data of {model_spec}")
    if builtin is not None:
        example = builtin.example_input()
    elif hf.is_hf(model_spec):  # one sequence is enough to tie the projections and count MACs per token
        example = _first_row(split_item(data[0])[0]) if data else hf.example_input(model)
    elif data:
        example = split_item(data[0])[0]
    else:
        example = None
    groups = discover_groups(model, example, ties=list(ties), exclude=all_excludes, pins=all_pins)
    if data_spec and data:
        import dataclasses
        groups = dataclasses.replace(groups, notes=groups.notes + tuple(_data_notes(data, data_spec,
                                                                                    calibration_samples)))
    return model, data, example, groups


# fewer calibration samples than this get a note: activation ranges and sensitivities measured on a handful
# vary from one handful to the next
FEW_SAMPLES = 16


def _data_notes(data: list, data_spec: str, calibration_samples: int | None) -> list[str]:
    """Notes on the calibration data a user gave: fewer samples than --calibration-samples asked for, or very few."""
    try:
        count = sum(batch_size(split_item(item)[0]) for item in data)
    except (TypeError, IndexError):  # batches of plain values (a model that tokenizes its own texts)
        return []
    notes = []
    if calibration_samples is not None and count < calibration_samples:
        notes.append(f"--calibration-samples {calibration_samples} asked for more samples than --data {data_spec} "
                     f"holds: all {count} are used")
    if count < FEW_SAMPLES:
        notes.append(f"only {count} calibration sample(s): activation ranges and sensitivities measured on so few "
                     "vary from one set to the next; the built-in models calibrate on 128 to 512 images (32 text windows)")
    sizes = sizes_note(data)
    if sizes:
        notes.append(sizes)
    return notes


def _first_row(inputs: Any) -> Any:
    """The first sample of a batch: of a tensor, or of each tensor in a dict, tuple or list of them."""
    if isinstance(inputs, torch.Tensor):
        return inputs[:1]
    if isinstance(inputs, dict):
        return {k: _first_row(v) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(_first_row(v) for v in inputs)
    return inputs


def resolve_specs(model: nn.Module | str, data: Any, evaluate: Any = None,
                  calibration_samples: int | None = None) -> tuple[nn.Module, Any, Any, dict[str, Any]]:
    """For the Python API: a model, data or evaluation given as a spec string (``"hf:DIR"``,
    ``"text:FILE"``, ``"ppl:FILE"``, a built-in name...) loaded as the command line would; anything
    else passed through. Returns (model, data, evaluate, the specs given, as run arguments)."""
    model_spec = model if isinstance(model, str) else None
    given = {k: v for k, v in (("model", model_spec), ("data", data if isinstance(data, str) else None),
                               ("eval", evaluate if isinstance(evaluate, str) else None),
                               ("calibration_samples", calibration_samples)) if v is not None}
    if isinstance(data, str):
        data = load_data(data, limit=calibration_samples, model_spec=model_spec)
    elif data is None and model_spec is not None and is_builtin(model_spec):
        builtin = get_builtin(model_spec)
        data = builtin.calibration(calibration_samples or builtin.default_calibration_samples)
    if isinstance(evaluate, str):
        evaluate = load_eval(evaluate, model_spec)
    if model_spec is not None:
        model = load_model(model_spec)
    return model, data, evaluate, given


def _no_arguments_hint(fn, option: str) -> str:
    """What to do where the --model/--data function wants arguments: mixprec calls it with none."""
    import inspect
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a builtin or C function: no signature to read
        return ""
    required = [p.name for p in parameters if p.default is inspect.Parameter.empty
                and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if not required:
        return ""
    return (f"; mixprec calls a --{option} function with no arguments, and {fn.__name__}() requires "
            f"{', '.join(required)}: give {'it a default' if len(required) == 1 else 'them defaults'}, or wrap it in "
            "a function that takes none")
