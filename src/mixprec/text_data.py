"""Text files as calibration data (``text:FILE``) and as an evaluation (``ppl:FILE``).

The file is tokenized whole, with the model's own tokenizer, into one token stream. The stream is
cut in two halves: evaluation reads the first half, calibration the second, so the two never share
a token whatever the options (and a file used for both gives both).

    text:FILE[?windows=N&length=L&seed=S&batch=B]   N windows of L tokens drawn at random (seed S)
                                                    from the aligned windows of the second half;
                                                    batches of B windows (default 32 x 512, seed 0, 4)
    ppl:FILE[?windows=N&length=L]                   perplexity on the first N windows of L tokens of
                                                    the first half, each window on its own (default:
                                                    every window of 512 tokens that fits)
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qsl

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from .progress import tqdm

from .batches import output_tensor
from .errors import SpecError
from .evaluation import EvalResult

DEFAULT_WINDOWS = 32
DEFAULT_LENGTH = 512
DEFAULT_BATCH = 4


def split_spec(spec: str, prefix: str) -> tuple[str, dict[str, str]]:
    """``prefix:PATH?key=value&...`` -> (PATH, {key: value})."""
    body = spec[len(prefix):]
    path, _, query = body.partition("?")
    if not path:
        raise SpecError(f"{spec!r}: give a path after {prefix!r}, e.g. {prefix}corpus.txt")
    try:
        options = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)))
    except ValueError as exc:
        raise SpecError(f"{spec!r}: options after '?' must look like key=value&key=value") from exc
    return path, options


def _int_option(spec: str, options: dict[str, str], key: str, default: int | None, minimum: int) -> int | None:
    if key not in options:
        return default
    try:
        value = int(options[key])
    except ValueError:
        raise SpecError(f"{spec!r}: {key}={options[key]!r} is not an integer") from None
    if value < minimum:
        raise SpecError(f"{spec!r}: {key} must be at least {minimum}, got {value}")
    return value


def _check_keys(spec: str, options: dict[str, str], allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise SpecError(f"{spec!r}: unknown option(s) {unknown}; options: {', '.join(allowed)}")


@dataclass(frozen=True)
class TextSplit:
    """The token stream of a file and its two halves: [0, half) evaluation, [half, total) calibration."""
    ids: torch.Tensor  # 1-D int64
    path: Path

    @property
    def half(self) -> int:
        return len(self.ids) // 2

    def calibration_windows(self, count: int, length: int, seed: int) -> tuple[torch.Tensor, list[int]]:
        """``count`` windows of ``length`` tokens from the second half: (count, length) ids and their starts."""
        slots = (len(self.ids) - self.half) // length
        if count > slots:
            raise SpecError(f"{self.path} has {len(self.ids)} tokens; calibration reads the second half "
                            f"({len(self.ids) - self.half} tokens), which holds {slots} windows of {length} tokens, "
                            f"and {count} {'is' if count == 1 else 'are'} needed; ask for fewer or shorter windows, or "
                            "give a longer text")
        chosen = np.sort(np.random.default_rng(seed).choice(slots, size=count, replace=False))
        starts = [self.half + int(s) * length for s in chosen]
        return torch.stack([self.ids[s:s + length] for s in starts]), starts

    def evaluation_windows(self, count: int | None, length: int) -> torch.Tensor:
        """The first ``count`` windows of ``length`` tokens (default: all that fit the first half)."""
        fit = self.half // length
        if fit < 1 or (count is not None and count > fit):
            raise SpecError(f"{self.path} has {len(self.ids)} tokens; evaluation reads the first half ({self.half} "
                            f"tokens), which holds {fit} windows of {length} tokens, and "
                            f"{f'{count} were asked for' if count else 'at least 1 is needed'}; ask for fewer or "
                            "shorter windows, or give a longer text")
        count = fit if count is None else count
        return self.ids[: count * length].view(count, length)


_STREAMS: dict[tuple, torch.Tensor] = {}  # (file, size, mtime, tokenizer) -> token stream, this process only


def token_split(path: str | Path, tokenizer, tokenizer_key: str) -> TextSplit:
    """The whole file as one token stream, cached per process by (file, size, mtime, tokenizer)."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"text file {path} does not exist")
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, tokenizer_key)
    if key not in _STREAMS:
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SpecError(f"{path} is not UTF-8 text (byte {exc.start}); give a plain text file") from None
        ids = tokenizer(text, return_attention_mask=False, verbose=False)["input_ids"]
        if len(_STREAMS) >= 4:
            _STREAMS.pop(next(iter(_STREAMS)))
        _STREAMS[key] = torch.tensor(ids, dtype=torch.int64)
    return TextSplit(_STREAMS[key], path)


def note_long_windows(spec: str, length: int, tokenizer_key: str) -> None:
    """An EvaluationNote where windows are longer than the positions the model was trained on
    (``max_position_embeddings`` in its folder's config.json): a rotary model computes them all the same, past
    what it learned (a model with a position table fails on them, with its own error)."""
    import json
    import warnings

    from .errors import EvaluationNote
    try:
        config = json.loads((Path(tokenizer_key) / "config.json").read_text())
    except (OSError, ValueError):
        return
    positions = config.get("max_position_embeddings") if isinstance(config, dict) else None
    if isinstance(positions, int) and length > positions:
        warnings.warn(f"{spec!r}: windows of {length} tokens are longer than the {positions} positions the model "
                      "was trained on (max_position_embeddings): it is measured past what it learned; give "
                      f"length={positions} or less", EvaluationNote, stacklevel=3)


def calibration_batches(spec: str, tokenizer, tokenizer_key: str, limit: int | None = None) -> list[torch.Tensor]:
    """``text:FILE?...`` -> batches of token windows (LongTensor (B, L)); ``limit`` caps the windows."""
    path, options = split_spec(spec, "text:")
    _check_keys(spec, options, ("windows", "length", "seed", "batch"))
    count = _int_option(spec, options, "windows", DEFAULT_WINDOWS, 1)
    if limit is not None:
        count = min(count, limit) if "windows" in options else limit
    length = _int_option(spec, options, "length", DEFAULT_LENGTH, 2)
    note_long_windows(spec, length, tokenizer_key)
    seed = _int_option(spec, options, "seed", 0, 0)
    batch = _int_option(spec, options, "batch", DEFAULT_BATCH, 1)
    windows, _ = token_split(path, tokenizer, tokenizer_key).calibration_windows(count, length, seed)
    return list(windows.split(batch))


def perplexity(model: nn.Module, windows: torch.Tensor, batch_tokens: int = 2048) -> tuple[float, int]:
    """exp(mean next-token NLL) over the rows of ``windows`` (count, length), each row on its own (no
    context carried over). Returns (ppl, predicted tokens)."""
    count, length = windows.shape
    device = next(model.parameters(), torch.empty(0)).device
    nll, predicted = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in tqdm(windows.split(max(1, batch_tokens // length)), desc=f"perplexity {count}x{length}",
                              leave=False, disable=None):
                batch = batch.to(device)
                logits = output_tensor(model(batch))
                nll += F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch[:, 1:].flatten(),
                                       reduction="sum").item()
                predicted += batch[:, 1:].numel()
    finally:
        model.train(was_training)
    return math.exp(nll / predicted), predicted


def perplexity_evaluation(spec: str, tokenizer, tokenizer_key: str) -> Callable[[nn.Module], EvalResult]:
    """``ppl:FILE?...`` -> a function model -> EvalResult (perplexity, lower is better)."""
    path, options = split_spec(spec, "ppl:")
    _check_keys(spec, options, ("windows", "length"))
    count = _int_option(spec, options, "windows", None, 1)
    length = _int_option(spec, options, "length", DEFAULT_LENGTH, 2)
    note_long_windows(spec, length, tokenizer_key)
    split = token_split(path, tokenizer, tokenizer_key)
    windows = split.evaluation_windows(count, length)  # checked now, before any measurement
    digest = hashlib.sha256(windows.numpy().tobytes()).hexdigest()[:12]

    def evaluate(model: nn.Module) -> EvalResult:
        try:
            ppl, tokens = perplexity(model, windows)
        except (RuntimeError, IndexError, ValueError) as exc:
            from .batches import input_hint
            from .errors import EvaluationError
            raise EvaluationError(f"--eval {spec}: the model failed on its windows of shape "
                                  f"{tuple(windows.shape)}: {str(exc).splitlines()[0]}.{input_hint(model, windows)}"
                                  ) from exc
        return EvalResult("perplexity", ppl, higher_is_better=False,
                          details={"file": str(path), "windows": int(windows.shape[0]), "length": length,
                                   "tokens": tokens, "first_token": 0, "token_ids_sha256": digest})
    evaluate.__qualname__ = f"perplexity({spec})"
    return evaluate
