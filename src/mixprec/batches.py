"""What a calibration or evaluation item is, and how a model is called on it.

An item is either the model input or a pair ``(inputs, labels)``. Inputs are a tensor
(``model(x)``), a dict of tensors (``model(**x)``) or a tuple/list of tensors (``model(*x)``).
A 2-tuple is always read as ``(inputs, labels)``: wrap several positional inputs as
``((x1, x2), labels)`` or in a dict.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch


def tensors_of(inputs: Any) -> Any:
    """``inputs`` with every numpy array in it (at any depth of dicts, tuples and lists) as a torch tensor
    sharing its memory where it can, so numpy calibration data works wherever tensors do."""
    if isinstance(inputs, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(inputs)) if inputs.dtype != object else inputs
    if isinstance(inputs, dict):
        return {k: tensors_of(v) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(tensors_of(v) for v in inputs)
    return inputs


def padding_mask(inputs: Any) -> torch.Tensor | None:
    """The (batch, tokens) bool mask of the real tokens of a padded batch of texts: a dict batch's ``attention_mask``
    holding some 0; None for any other batch (nothing to leave out)."""
    mask = inputs.get("attention_mask") if isinstance(inputs, dict) else None
    if not isinstance(mask, torch.Tensor) or mask.ndim != 2:
        return None
    mask = mask != 0
    return None if bool(mask.all()) else mask


def as_batches(data: Any, model: torch.nn.Module | None = None) -> list | None:
    """Calibration data as a list of items (None stays None), numpy arrays in them made tensors and float64
    tensors float32 (numpy's default type; the command line reads data files so too), except for a ``model``
    that computes in float64. A single tensor or array is refused, and so is a map-style Dataset: an iterable of
    batches is wanted, e.g. ``[x]``, ``list(x.split(32))`` or a DataLoader."""
    if data is None:
        return None
    from .errors import SpecError
    if isinstance(data, (torch.Tensor, np.ndarray)):
        split = "list(x.split(32))" if isinstance(data, torch.Tensor) else "[x[i:i + 32] for i in range(0, len(x), 32)]"
        raise SpecError(f"data is one {type(data).__name__} of shape {tuple(data.shape)}: give an iterable of "
                        f"batches, e.g. [x] for one batch or {split} for batches of 32 (iterated itself, it "
                        f"would give one sample at a time, without its batch axis)")
    refuse_dataset(data, "data is", "data")
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, (torch.Tensor, np.ndarray)) for t in data):
        raise SpecError(f"data is one tuple of two {type(data[0]).__name__}s, of shapes {tuple(data[0].shape)} and "
                        f"{tuple(data[1].shape)}: iterated, it is two batches, the second read as inputs; for one "
                        "(inputs, labels) or (inputs, targets) batch give [(x, y)], for batches of 32 "
                        "list(zip(x.split(32), y.split(32))), and for two batches of inputs a list [x1, x2]")
    if isinstance(data, dict):
        raise SpecError("data is one dict: give an iterable of batches, e.g. [batch] for one dict batch of the "
                        "model's keyword arguments, or a list or DataLoader of them")
    if not (hasattr(type(data), "__iter__") or hasattr(type(data), "__getitem__")):  # not iter(): a DataLoader
        raise SpecError(f"data must be an iterable of batches (a list, a generator or a DataLoader), got "  # would
                        f"{type(data).__name__} {data!r:.60}")  # draw a seed and start its workers for nothing
    items = one_hot_as_classes(in_model_precision([tensors_of(item) for item in data], model))
    check_batched(items)
    return items


def one_hot_as_classes(items: list) -> list:
    """(inputs, labels) items whose labels are one-hot float rows (F.one_hot(y).float(), as a training loop with
    MSE or BCE keeps them) with the class index of each row instead, said once: taken as float targets of the
    output's shape, they made a classifier a regression, its guard comparing logits with 0/1 vectors by MSE."""
    def one_hot(label: Any) -> bool:
        return (isinstance(label, torch.Tensor) and label.is_floating_point() and label.dim() == 2
                and label.shape[1] >= 2 and bool(((label == 0) | (label == 1)).all())
                and bool((label.sum(dim=1) == 1).all()))
    pairs = [item for item in items if isinstance(item, (tuple, list)) and len(item) == 2]
    if not pairs or len(pairs) != len(items) or not all(one_hot(label) for _, label in pairs):
        return items
    import warnings

    from .errors import DataNote
    warnings.warn(f"the labels are one-hot float rows ({tuple(pairs[0][1].shape)}): each is taken as the class of "
                  "its 1 (integer labels, as a classifier's cross-entropy reads them), not as float targets of a "
                  "regression", DataNote, stacklevel=3)
    return [type(item)((item[0], item[1].argmax(dim=1))) for item in items]


def in_model_precision(items: list, model: Any) -> list:
    """``items`` with their float64 tensors as float32 (numpy's default float type), unless ``model`` computes in
    float64."""
    double = isinstance(model, torch.nn.Module) and any(p.dtype == torch.float64 for p in model.parameters())
    return items if double else [_single(item) for item in items]


def refuse_dataset(data: Any, said: str, name: str) -> None:
    """A map-style Dataset given as calibration data is a SpecError (``said``: how the message starts, e.g. "data
    is"; ``name``: the Dataset's name in the DataLoader it suggests): iterated, it gives one sample at a time,
    without its batch axis."""
    from torch.utils.data import Dataset, IterableDataset

    from .errors import SpecError
    if isinstance(data, Dataset) and not isinstance(data, IterableDataset):
        raise SpecError(f"{said} a {type(data).__name__}, a Dataset: iterated, it gives one sample at a time, "
                        f"without its batch axis; give batches, e.g. torch.utils.data.DataLoader({name}, "
                        "batch_size=32)")


def check_batched(items: list) -> None:
    """(input, label) items whose label is one number are single samples, not batches: their first axis, taken as the
    batch, is a feature axis (MACs and BOPs per sample come out wrong, and a cap on samples cuts inside one); labels
    whose first axis is not the inputs' are an error too (the guard's label check dropped them without a word)."""
    from .errors import SpecError
    for i, item in enumerate(items):
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            return
        inputs, label = item
        if i and not (isinstance(label, torch.Tensor) and label.dim()):
            continue  # one sample per item is told from the first
        if isinstance(label, torch.Tensor) and label.dim() and isinstance(inputs, (torch.Tensor, dict, tuple, list)):
            try:
                x = first_tensor(inputs)
                rows = int(x.shape[0])
            except (TypeError, IndexError):
                rows = None
            if rows is not None and int(label.shape[0]) != rows:
                hint = (f" The inputs' axis 1 has {int(label.shape[0])}: sequence-first inputs (a model with "
                        "batch_first=False)? Give the data batch-first (and the model batch_first=True), or the "
                        "items without labels" if x.dim() >= 2 and int(x.shape[1]) == int(label.shape[0]) else
                        " If the item is two inputs of the model, not (inputs, labels): a 2-tuple is read as "
                        "(inputs, labels), so give ((a, b), None) or ((a, b), labels), or a dict of keyword inputs")
                raise SpecError(f"calibration item {i} holds {rows} input rows and {int(label.shape[0])} labels: "
                                "the first axis of every input and of the labels is the batch, and they must match "
                                "(labels of another length would be dropped by every check that reads them)." + hint)
        scalar = isinstance(label, (int, float)) and not isinstance(label, bool) or (
            isinstance(label, torch.Tensor) and label.dim() == 0)
        if scalar and isinstance(inputs, torch.Tensor):
            raise SpecError(f"calibration item {i} is (a tensor of shape {tuple(inputs.shape)}, the label "
                            f"{label.item() if isinstance(label, torch.Tensor) else label}): one sample, not a batch "
                            "(its label has no batch axis), and mixprec takes the first axis of every input as the "
                            "batch; give batches, e.g. torch.utils.data.DataLoader(dataset, batch_size=32), or "
                            "(x[None], y[None]) for batches of one")


def _single(item: Any) -> Any:
    """float64 tensors in ``item`` (at any depth) as float32: the precision the model computes in."""
    if isinstance(item, torch.Tensor):
        return item.float() if item.dtype == torch.float64 else item
    if isinstance(item, dict):
        return {k: _single(v) for k, v in item.items()}
    if isinstance(item, (tuple, list)):
        return type(item)(_single(v) for v in item)
    return item


def split_item(item: Any) -> tuple[Any, Any]:
    """Return (inputs, labels or None) for one data item."""
    if isinstance(item, (tuple, list)) and len(item) == 2:
        return item[0], item[1]
    return item, None


def as_items(inputs: list) -> list:
    """Model inputs (one per batch) as data items, each (inputs, None): a model of two arguments is given 2-tuples of
    inputs, which split_item would read as (inputs, labels)."""
    return [(x, None) for x in inputs]


def to_device(inputs: Any, device: torch.device | str) -> Any:
    if isinstance(inputs, torch.Tensor):
        return inputs.to(device)
    if isinstance(inputs, dict):
        return {k: to_device(v, device) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(to_device(v, device) for v in inputs)
    return inputs


def run_model(model: torch.nn.Module, inputs: Any) -> Any:
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def first_tensor(inputs: Any) -> torch.Tensor:
    """The first tensor of the model's inputs, at any depth (a forward(self, batch) given ({"ids": ...},) holds its
    tensors in a dict inside the tuple of arguments)."""
    if isinstance(inputs, torch.Tensor):
        return inputs
    values = inputs.values() if isinstance(inputs, dict) else inputs if isinstance(inputs, (tuple, list)) else ()
    for v in values:
        if isinstance(v, torch.Tensor):
            return v
    for v in values:
        if isinstance(v, (dict, tuple, list)):
            try:
                return first_tensor(v)
            except TypeError:
                continue
    raise TypeError(f"no tensor in model inputs of type {type(inputs).__name__}")


def batch_size(inputs: Any) -> int:
    return int(first_tensor(inputs).shape[0])


def batch_on_axis_one(model: torch.nn.Module, example: Any) -> bool | None:
    """Whether the model, given a tensor input, treats its axis 1 as the batch (a sequence-first model's (sequence,
    batch, ...) input): its output on the input's first slice along axis 1 is the full output's first slice along
    its batch axis (axis 1 of a (sequence, batch, ...) output, axis 0 of a (batch, classes) one). A module with
    batch_first=False may read a tensor the model transposed itself, from a batch-first input. None where it cannot
    be told (an input other than one tensor of 3 or more axes)."""
    if not isinstance(example, torch.Tensor) or example.dim() < 3 or example.shape[1] < 2:
        return None
    try:
        with torch.no_grad():
            full, one = output_tensor(model(example)), output_tensor(model(example[:, :1]))
    except Exception:  # the model refuses axis 1 of another size: not a batch axis
        return False
    rows = example.shape[1]
    if full.dim() >= 2 and full.shape[1] == rows and full.shape[0] != rows:
        first = full[:, :1]
    elif full.dim() >= 1 and full.shape[0] == rows:
        first = full[:1]
    else:
        return False
    if one.shape != first.shape:
        return False
    scale = float(full.abs().max()) or 1.0
    return bool(torch.allclose(one.float(), first.float(), rtol=1e-3, atol=1e-4 * scale))


def _named_output(output: Any) -> torch.Tensor | None:
    """An output's logits or last hidden state (an attribute, as Hugging Face outputs hold them, or a dict key)."""
    for key in ("logits", "last_hidden_state"):
        value = output.get(key) if isinstance(output, dict) else getattr(output, key, None)
        if isinstance(value, torch.Tensor):
            return value
    return None


def _output_items(output: Any) -> list[tuple[str, Any]]:
    """(where, value) of each entry of a dict, dataclass, named tuple, tuple or list output, in order ("['logits']",
    ".boxes", "[0]"); none for a plain tuple or list that does not lead with a tensor (it names no main output)."""
    import dataclasses
    if isinstance(output, dict):
        return [(f"[{k!r}]", v) for k, v in output.items()]
    if dataclasses.is_dataclass(output) and not isinstance(output, type):
        return [(f".{f.name}", getattr(output, f.name)) for f in dataclasses.fields(output)]
    if isinstance(output, tuple) and hasattr(output, "_fields"):  # a named tuple
        return [(f".{name}", v) for name, v in zip(output._fields, output)]
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return [(f"[{i}]", v) for i, v in enumerate(output)]
    return []


def _output_tensors(output: Any) -> list[torch.Tensor]:
    """The tensors among an output's entries (:func:`_output_items`), in order."""
    return [v for _, v in _output_items(output) if isinstance(v, torch.Tensor)]


def output_tensor(output: Any) -> torch.Tensor:
    """The main tensor of a model output: its logits or last hidden state (an attribute, as Hugging Face outputs
    hold them, or a dict key), else the first tensor of a dict, tuple or list that is not a scalar (a loss
    computed beside the outputs when the batch holds labels), else its first tensor."""
    if isinstance(output, torch.Tensor):
        return output
    named = _named_output(output)
    if named is not None:
        return named
    tensors = _output_tensors(output)
    if not tensors:
        raise TypeError(f"cannot find the output tensor in a {type(output).__name__}")
    return next((t for t in tensors if t.dim() > 0), tensors[0])


def outputs_note(output: Any) -> str | None:
    """A note where ``output`` holds several non-scalar tensors and no logits or last hidden state: every
    measurement (sensitivity, the guard, export's checks) reads only the one :func:`output_tensor` picks."""
    if isinstance(output, torch.Tensor):
        return None
    named = _named_output(output)
    if named is not None and type(output).__module__.startswith("transformers."):
        return None  # a Hugging Face output: its logits or hidden state, beside caches and the loss
    tensors = [t for t in _output_tensors(output) if t.dim() > 0]
    if len(tensors) < 2:
        return None
    main = named if named is not None else tensors[0]  # output_tensor's pick
    where = next(w for w, v in _output_items(output) if v is main)
    return (f"the model returns {len(tensors)} output tensors; sensitivity, the guard and export's checks measure "
            f"only output{where} of shape {tuple(main.shape)}: layers that feed only the others are measured as free "
            "to quantize. To weigh them, wrap the model so that it returns the tensor to keep close (e.g. the outputs "
            "concatenated, each scaled as it matters)")


def _per_sample(inputs: Any) -> Any:
    """The shape of one sample of a batch's inputs (each tensor's shape without its first axis), in its structure."""
    if isinstance(inputs, torch.Tensor):
        return tuple(inputs.shape[1:])
    if isinstance(inputs, dict):
        return {k: _per_sample(v) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return [_per_sample(v) for v in inputs]
    return None


def sizes_note(items: list) -> str | None:
    """A note where the calibration batches hold samples of several sizes (sequences or images of several
    lengths): MACs, and so BOPs, are counted per sample on the first batch only."""
    shapes = list(dict.fromkeys(repr(_per_sample(split_item(item)[0])) for item in items))
    if len(shapes) < 2:
        return None
    return (f"the calibration batches hold samples of {len(shapes)} sizes ({shapes[0]}, {shapes[1]}"
            f"{', ...' if len(shapes) > 2 else ''}): MACs and BOPs are counted per sample of the first batch's size "
            f"{shapes[0]}, and a sample of another size costs otherwise (a sequence twice as long, twice the MACs of "
            "its linear layers)")


def describe_shape(inputs: Any) -> Any:
    """The shapes of a batch's tensors in its structure; a list of plain values (a batch's ids or texts) as
    its length and type ("32 x str"), not one entry per value."""
    if isinstance(inputs, torch.Tensor):
        return tuple(inputs.shape)
    if isinstance(inputs, dict):
        return {k: describe_shape(v) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        kinds = {type(v).__name__ for v in inputs}
        if len(inputs) > 3 and len(kinds) == 1 and not isinstance(inputs[0], (torch.Tensor, dict, tuple, list)):
            return f"{len(inputs)} x {kinds.pop()}"
        nested = _nested_shape(inputs)
        if nested is not None:  # numbers in nested lists (a tensor's .tolist()): its shape, not every row
            return f"nested {type(inputs).__name__}s of {nested[1]}, {' x '.join(map(str, nested[0]))} (give tensors)"
        return [describe_shape(v) for v in inputs]
    return type(inputs).__name__


def _nested_shape(value: Any) -> tuple[tuple[int, ...], str] | None:
    """The shape and number type of numbers in nested lists (or tuples) of equal lengths, at least two deep; None
    for anything else."""
    shape: list[int] = []
    level = [value]
    while all(isinstance(v, (list, tuple)) for v in level):
        lengths = {len(v) for v in level}
        if len(lengths) != 1 or not lengths.pop():
            return None
        shape.append(len(level[0]))
        level = [item for v in level for item in v]
    kinds = {type(v).__name__ for v in level}
    if len(shape) < 2 or len(kinds) != 1 or not isinstance(level[0], (int, float)) or isinstance(level[0], bool):
        return None
    return tuple(shape), kinds.pop()


def shapes_compatible(inputs: Any, reference: Any) -> bool:
    """Same structure, and each tensor of the same rank: sizes may differ (token batches in sequence length, a fully
    convolutional model's images in resolution, as the analysis takes them); a batch the model cannot take fails
    in its forward, with the batch named (mixprec.capture.forward)."""
    if isinstance(reference, torch.Tensor):
        return isinstance(inputs, torch.Tensor) and inputs.dim() == reference.dim()
    if isinstance(reference, dict):
        return isinstance(inputs, dict) and inputs.keys() == reference.keys() and all(
            shapes_compatible(inputs[k], reference[k]) for k in reference)
    if isinstance(reference, (tuple, list)):
        return isinstance(inputs, (tuple, list)) and len(inputs) == len(reference) and all(
            shapes_compatible(a, b) for a, b in zip(inputs, reference))
    return True


def check_finite(batches: list, source: str = "the calibration data") -> None:
    """Refuse NaN or infinite float inputs, naming the first bad batch: every sensitivity measured on
    them would be +inf or NaN."""
    from .errors import SpecError
    for index, item in enumerate(batches):
        inputs = split_item(item)[0]
        tensors = [inputs] if isinstance(inputs, torch.Tensor) else \
            list(inputs.values()) if isinstance(inputs, dict) else list(inputs) if isinstance(inputs, (tuple, list)) else []
        for t in tensors:
            if isinstance(t, torch.Tensor) and torch.is_floating_point(t) and not bool(torch.isfinite(t).all()):
                bad = int((~torch.isfinite(t)).sum())
                raise SpecError(f"{source}: batch {index} (0-based) has {bad} NaN or infinite input value(s); "
                                "every measurement on it would be NaN or inf. Clean or drop that batch")


def token_limits(model: torch.nn.Module) -> tuple[int | None, int | None, str]:
    """(vocabulary size, learned positions, where they were read) of a language model: its Hugging Face config's
    ``vocab_size`` and ``n_positions``/``max_position_embeddings`` where a module of it has a config (positions
    only for a model with a position table, not rotary ones), else its largest embedding table's rows."""
    for module in model.modules():
        config = getattr(module, "config", None)
        vocab = getattr(config, "vocab_size", None)
        if isinstance(vocab, int):
            positions = getattr(config, "n_positions", None)
            if positions is None and any("position" in n and isinstance(m, torch.nn.Embedding)
                                         for n, m in module.named_modules()):
                positions = getattr(config, "max_position_embeddings", None)
            return vocab, positions if isinstance(positions, int) else None, f"{type(config).__name__}"
    tables = [m.num_embeddings for m in model.modules() if isinstance(m, torch.nn.Embedding)]
    return (max(tables) if tables else None), None, "its largest nn.Embedding"


def input_hint(model: torch.nn.Module, inputs: Any) -> str:
    """Why a language model would fail on ``inputs``, as a sentence to add to its error, or "": token ids
    outside its vocabulary (a tokenizer of another model) or sequences longer than its position table."""
    try:
        ids = inputs.get("input_ids") if isinstance(inputs, dict) else first_tensor(inputs)
    except TypeError:
        return ""
    if not isinstance(ids, torch.Tensor) or ids.is_floating_point() or ids.is_complex() or ids.numel() == 0:
        return ""
    vocab, positions, source = token_limits(model)
    hints = []
    top = int(ids.max())
    if vocab is not None and (top >= vocab or int(ids.min()) < 0):
        hints.append(f"its token ids reach {top}, and the model's vocabulary ({source}) has {vocab} entries: was the "
                     "data tokenized with another model's tokenizer?")
    if positions is not None and ids.dim() >= 2 and ids.shape[-1] > positions:
        hints.append(f"its sequences are {ids.shape[-1]} tokens long, and the model ({source}) has {positions} "
                     "positions: give shorter windows (e.g. length= in a text: or ppl: spec).")
    return (" " + " ".join(h[0].upper() + h[1:] for h in hints)) if hints else ""


def batch_axis_hint(model: torch.nn.Module, inputs: Any) -> str:
    """A sentence to add to a model's error where its input looks like one sample without its batch axis (a
    dimension fewer than its first convolution takes: a list of samples given where batches are wanted), or ""."""
    try:
        x = first_tensor(inputs)
    except TypeError:
        return ""
    wanted = {torch.nn.Conv1d: 3, torch.nn.Conv2d: 4, torch.nn.Conv3d: 5, torch.nn.ConvTranspose1d: 3,
              torch.nn.ConvTranspose2d: 4, torch.nn.ConvTranspose3d: 5}
    first = next((m for m in model.modules() if type(m) in wanted), None)
    if first is None or not isinstance(x, torch.Tensor) or x.dim() != wanted[type(first)] - 1:
        return ""
    return (f" The input has {x.dim()} dimensions, {tuple(x.shape)}, and the model's first convolution takes "
            f"{wanted[type(first)]} with the batch first: is each calibration item one sample, without its batch "
            "axis? Give batches: a DataLoader (torch.utils.data.DataLoader(dataset, batch_size=32)), or "
            "list(x.split(32)) of a tensor of every sample.")
