"""A tiny random Llama checkpoint folder with its own tokenizer, written with save_pretrained, and
the text it was trained on: what `hf:DIR` and `text:FILE` read in the tests (no download)."""
from __future__ import annotations

from pathlib import Path

import torch

TEXT = ("The quick brown fox jumps over the lazy dog. " * 3 + "Pack my box with five dozen liquor jugs. "
        "How vexingly quick daft zebras jump! Sphinx of black quartz, judge my vow. ") * 40


def write_checkpoint(folder: Path, layers: int = 3, tie: bool = False, seed: int = 0, hidden: int = 32) -> Path:
    """hidden 32: heads of 8; 64: heads of 16 (what ONNX Runtime's GroupQueryAttention runs on CPU)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.train_from_iterator([TEXT], trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>")
    config = LlamaConfig(vocab_size=len(fast), hidden_size=hidden, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=tie)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def write_text(path: Path) -> Path:
    path.write_text(TEXT, encoding="utf-8")
    return path
