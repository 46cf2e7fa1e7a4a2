"""A causal LM exported to ONNX Runtime with its KV cache: one file runs a prompt (an empty cache) and each
decoded token (the cache so far), both equal to the simulated model; tiny random Llama, Qwen2 and GPT-2."""
import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("transformers")

from mixprec.export import OrtModule, export  # noqa: E402
from mixprec.apply import apply  # noqa: E402
from mixprec.groups import discover_groups  # noqa: E402
from mixprec.hf import CausalLM, conv1d_to_linear  # noqa: E402
from mixprec.plan import Plan  # noqa: E402


def tiny(arch: str) -> CausalLM:
    import transformers as t
    torch.manual_seed(0)
    if arch == "llama":
        lm = t.LlamaForCausalLM(t.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                              num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True))
    elif arch == "qwen2":
        lm = t.Qwen2ForCausalLM(t.Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                              num_attention_heads=4, num_key_value_heads=2))
    else:
        lm = t.GPT2LMHeadModel(t.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=64))
        conv1d_to_linear(lm)
    return CausalLM(lm.eval()).eval()


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_one_file_runs_the_prompt_and_each_decoded_token_as_simulated(tmp_path, arch):
    model = tiny(arch)
    data = [torch.randint(0, 64, (2, 12)) for _ in range(2)]
    groups = discover_groups(model, data[0])
    plan = Plan.uniform(groups, "w8")
    result = export(model, plan, data, out=tmp_path / "lm.onnx", accuracy_level=0, progress=False)
    exported, simulated = OrtModule(result.path), apply(model, plan, data, progress=False)
    cache = exported.kv_cache
    assert any("with its KV cache" in n for n in result.notes)
    assert cache["layers"] == 2 and exported.input_names[:3] == ["input_ids", "position_ids", "attention_mask"]
    assert exported.output_names[1:] == cache["present"] and len(cache["past"]) == 4
    tokens = torch.randint(0, 64, (1, 10))
    with torch.no_grad():
        expected = simulated(tokens)
    # token ids alone: a prompt with an empty cache, the logits only (what evaluation functions call)
    torch.testing.assert_close(exported(tokens), expected, rtol=0, atol=1e-4)
    # a prompt of 6 tokens, then 4 decoded one at a time on the growing cache
    feed = exported.prompt_inputs(tokens[:, :6])
    logits, *present = exported(tokens[:, :6], **{k: v for k, v in feed.items()})
    torch.testing.assert_close(logits, expected[:, :6], rtol=0, atol=1e-4)
    for t in range(6, 10):
        step = {"position_ids": np.array([[t]]), "attention_mask": np.ones((1, t + 1), dtype=np.int64),
                **dict(zip(cache["past"], present))}
        logits, *present = exported(tokens[:, t:t + 1], **step)
        assert tuple(present[0].shape[2:]) == (t + 1, cache["shapes"][0][1])
        torch.testing.assert_close(logits[:, 0], expected[:, t], rtol=0, atol=1e-4)


def test_prompts_too_short_to_trace_a_cache_export_without_one(tmp_path):
    model = tiny("llama")
    data = [torch.randint(0, 64, (2, 2))]
    result = export(model, Plan.uniform(discover_groups(model, data[0]), "w8"), data, out=tmp_path / "lm.onnx",
                    accuracy_level=0, progress=False)
    exported = OrtModule(result.path)
    assert exported.kv_cache is None and exported.input_names == ["input"]
    assert any("without a KV cache" in n for n in result.notes)  # said, with why
    assert json.dumps(result.to_dict())  # the report is written as before


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_a_hugging_face_model_given_in_python_exports_and_reads_back_as_its_output(tmp_path, arch):
    import transformers as t
    torch.manual_seed(0)
    lm = (t.LlamaForCausalLM(t.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                           num_attention_heads=4, num_key_value_heads=2)) if arch == "llama" else
          t.GPT2LMHeadModel(t.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=64))).eval()
    data = [torch.randint(0, 64, (2, 12)) for _ in range(2)]
    groups = discover_groups(lm, data[0])  # GPT-2's Conv1D layers are groups too (mixprec.canonical)
    assert len(groups.layers) >= 2 * 4 + 1
    plan = Plan.uniform(groups, "w8")
    result = export(lm, plan, data, out=tmp_path / "lm.onnx", accuracy_level=0, progress=False)  # no cache object
    assert lm.config.use_cache is True  # the model is given back as it came
    tokens = torch.randint(0, 64, (3, 9))  # another batch and length
    with torch.no_grad():
        expected = apply(lm, plan, data, progress=False)(tokens).logits
    out = OrtModule(result.path)(tokens)
    torch.testing.assert_close(out.logits, expected, rtol=0, atol=1e-4)  # read as the model's output is read
    assert out["logits"] is out.logits and out[0] is out.logits
