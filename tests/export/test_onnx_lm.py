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


def tiny(arch: str, hidden: int = 32) -> CausalLM:
    """hidden 32: heads of 8, written as the traced step; 64: heads of 16, with fused decoder ops."""
    import transformers as t
    torch.manual_seed(0)
    if arch == "llama":
        lm = t.LlamaForCausalLM(t.LlamaConfig(vocab_size=64, hidden_size=hidden, intermediate_size=64,
                                              num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                              tie_word_embeddings=True))
    elif arch == "qwen2":
        lm = t.Qwen2ForCausalLM(t.Qwen2Config(vocab_size=64, hidden_size=hidden, intermediate_size=64,
                                              num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
    else:
        lm = t.GPT2LMHeadModel(t.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=64))
        conv1d_to_linear(lm)
    return CausalLM(lm.eval()).eval()


@pytest.mark.parametrize("arch,hidden", [("llama", 32), ("llama", 64), ("qwen2", 64), ("gpt2", 32)])
def test_one_file_runs_the_prompt_and_each_decoded_token_as_simulated(tmp_path, arch, hidden):
    """hidden 64: Llama and Qwen2 written with fused decoder ops; 32: the traced step."""
    model = tiny(arch, hidden)
    data = [torch.randint(0, 64, (2, 12)) for _ in range(2)]
    groups = discover_groups(model, data[0])
    plan = Plan.uniform(groups, "w8")
    result = export(model, plan, data, out=tmp_path / "lm.onnx", accuracy_level=0, progress=False)
    exported, simulated = OrtModule(result.path), apply(model, plan, data, progress=False)
    cache = exported.kv_cache
    assert any("with its KV cache" in n for n in result.notes)
    fused = any(n.startswith("written with ONNX Runtime's fused decoder ops") for n in result.notes)
    assert fused == (hidden == 64)
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
    assert exported.kv_cache is None and exported.input_names == ["input_ids"]  # as forward names it, as with a cache
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


def _ops(path) -> set[str]:
    import onnx
    return {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}


def _nodes(path) -> int:
    import onnx
    return len(onnx.load(str(path), load_external_data=False).graph.node)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_a_llama_family_step_is_written_with_fused_decoder_ops_and_computes_the_traced_steps_logits(tmp_path, arch):
    """decoder 'fused' (the default): GroupQueryAttention and RMSNorm ops, the plan's formats on the same
    layers as the traced step's, and the same logits, prompt and cached steps, batch of 2."""
    from mixprec.errors import MixprecError
    model = tiny(arch, hidden=64)  # heads of 16 (GroupQueryAttention's CPU kernel)
    data = [torch.randint(0, 64, (2, 12)) for _ in range(2)]
    plan = Plan.uniform(discover_groups(model, data[0]), "w4g16")
    fused = export(model, plan, data, out=tmp_path / "fused.onnx", accuracy_level=0, progress=False)
    traced = export(model, plan, data, out=tmp_path / "traced.onnx", accuracy_level=0, progress=False,
                    decoder="traced")
    assert any(n.startswith("written with ONNX Runtime's fused decoder ops") for n in fused.notes)
    assert not any("fused decoder ops" in n for n in traced.notes)
    assert {"GroupQueryAttention", "SkipSimplifiedLayerNormalization"} <= _ops(fused.path)
    assert "GroupQueryAttention" not in _ops(traced.path)
    # every layer is the same format on both graphs: MatMulNBits, or the Gather of the embedding
    assert {r["layer"]: r["op_written"] for r in fused.layers} == {r["layer"]: r["op_written"] for r in traced.layers}
    assert all(r["low_precision"] for r in fused.layers)
    assert _nodes(fused.path) < _nodes(traced.path) / 2  # no shape arithmetic
    a, b = OrtModule(fused.path), OrtModule(traced.path)
    assert a.input_names == b.input_names and a.output_names == b.output_names
    tokens = torch.randint(0, 64, (2, 9))
    torch.testing.assert_close(a(tokens), b(tokens), rtol=0, atol=1e-4)
    feed = a.prompt_inputs(tokens[:, :5])
    (la, *pa), (lb, *pb) = a(tokens[:, :5], **feed), b(tokens[:, :5], **feed)
    torch.testing.assert_close(la, lb, rtol=0, atol=1e-4)
    step = {"position_ids": np.array([[5], [5]]), "attention_mask": np.ones((2, 6), dtype=np.int64)}
    la = a(tokens[:, 5:6], **step, **dict(zip(a.kv_cache["past"], pa)))[0]
    lb = b(tokens[:, 5:6], **step, **dict(zip(b.kv_cache["past"], pb)))[0]
    torch.testing.assert_close(la, lb, rtol=0, atol=1e-4)
    with pytest.raises(MixprecError, match="decoder must be one of fused, traced"):
        export(model, plan, data, out=tmp_path / "x.onnx", progress=False, decoder="fast")


def test_the_fused_step_says_why_a_model_is_written_traced():
    import transformers as t
    from mixprec.export.decoder_graph import fused_step, unsupported
    small = dict(vocab_size=64, hidden_size=64, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                 num_key_value_heads=2)
    assert "architecture 'gpt2'" in unsupported(tiny("gpt2"))
    gelu = CausalLM(t.LlamaForCausalLM(t.LlamaConfig(hidden_act="gelu", **small)).eval())
    assert "activation is 'gelu'" in unsupported(gelu)
    window = CausalLM(t.MistralForCausalLM(t.MistralConfig(sliding_window=8, max_position_embeddings=64,
                                                           **small)).eval())
    assert "sliding window of 8" in unsupported(window)
    dynamic = CausalLM(t.LlamaForCausalLM(t.LlamaConfig(rope_scaling={"rope_type": "dynamic", "factor": 2.0},
                                                        **small)).eval())
    assert "scaled by the sequence's length ('dynamic')" in unsupported(dynamic)
    assert unsupported(nn_linear := torch.nn.Linear(2, 2)) == "not a Hugging Face causal language model"
    assert fused_step(nn_linear, torch.zeros(1, 4, dtype=torch.long), 17) == (
        None, "not a Hugging Face causal language model")
    assert "head size 8 is not a multiple of 16" in unsupported(tiny("llama"))
    llama = tiny("llama", hidden=64)
    assert unsupported(llama) is None
    assert fused_step(llama, torch.zeros(1, 1, dtype=torch.long), 17)[1].startswith("the example input")
    graph, why = fused_step(llama, torch.randint(0, 64, (1, 8)), 17)
    assert why is None and graph.graph.input[0].name == "input_ids"
    with torch.no_grad():  # a model whose layers compute something else than Llama's is caught by the check
        llama.lm.model.layers[0].mlp.act_fn = torch.nn.GELU()
    from mixprec.export import decoder_graph
    decoder_graph._CHECKED.clear()
    graph, why = fused_step(llama, torch.randint(0, 64, (1, 8)), 17)
    assert graph is None and "logits differ from the model's" in why


@pytest.mark.parametrize("tie", [True, False])
def test_the_fused_graph_holds_a_tied_weight_once_even_when_copied(tie):
    """apply's float copies of a tied embedding and output layer are equal tensors, not one: written once, as
    torch's exporter dedups them (an FP32 file of SmolLM2 was 113 MB larger without this)."""
    from mixprec.export.decoder_graph import build
    model = tiny("llama", hidden=64) if tie else tiny("qwen2", hidden=64)
    lm = model.lm
    if tie:
        lm.lm_head.weight = torch.nn.Parameter(lm.model.embed_tokens.weight.detach().clone())
    graph = build(model, 17)
    held = sorted(i.name for i in graph.graph.initializer if "embed_tokens" in i.name or "lm_head" in i.name)
    assert held == (["lm.model.embed_tokens.weight"] if tie else ["lm.lm_head.weight", "lm.model.embed_tokens.weight"])


def test_a_file_larger_than_the_plan_names_a_tied_weight_written_for_each_use(tmp_path):
    """The plan prices a tied embedding once; the file holds its rows for the lookup and its codes for the output
    layer: the size note says so, not only that the graph adds structure."""
    model = tiny("llama", hidden=64)
    tokens = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    groups = discover_groups(model, tokens)
    plan = Plan.uniform(groups, "w4g16")
    plan.metadata["predicted_costs"] = {"bytes": 1000.0}  # far below what any file holds
    result = export(model, plan, [tokens], out=tmp_path / "m.onnx", progress=False)
    note = next(n for n in result.notes if n.startswith("the file holds"))
    assert "share a weight with another, which the plan prices once and the file holds once for each" in note
