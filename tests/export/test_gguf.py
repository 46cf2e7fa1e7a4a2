"""GGUF export: a tiny random Llama written at per-tensor GGUF types reads back exactly as simulated; the
errors; mixprec's q8_0/q4_0 simulation against the gguf package's own quantizers (hypothesis)."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")
from gguf import GGMLQuantizationType as T  # noqa: E402
from gguf.quants import dequantize, quantize  # noqa: E402

from mixprec.apply import apply  # noqa: E402
from mixprec.candidates import GGUF_FORMATS, parse_candidate  # noqa: E402
from mixprec.errors import CandidateError, ModelError  # noqa: E402
from mixprec.export.gguf import _permute_rows, _unpermute_rows, export_gguf, gguf_type, read_back  # noqa: E402
from mixprec.plan import Plan  # noqa: E402
from mixprec.quantizers import quantize_weight, weight_qparams  # noqa: E402

QTYPES = {"q8_0": T.Q8_0, "q4_0": T.Q4_0}


def tiny_llama(hidden=64, layers=3, tie=False, vocab=300, seed=0, init=0.02):
    from transformers import LlamaConfig, LlamaForCausalLM
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         tie_word_embeddings=tie, initializer_range=init)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def tiny_causal_lm(arch: str, layers=3, init=0.02, seed=0):
    """A tiny Llama, Mistral or Qwen2 (its q/k/v biases set to non-zero values, so that they are written)."""
    if arch == "llama":
        return tiny_llama(layers=layers, init=init, seed=seed)
    import transformers
    config_class, model_class = {"mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
                                 "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM)}[arch]
    config = config_class(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                          tie_word_embeddings=False, initializer_range=init)
    torch.manual_seed(seed)
    model = model_class(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("proj.bias"):
                p.normal_(0, 0.5)
    return model


def linear_names(model):
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]


def plan_of(assignments: dict[str, str]) -> Plan:
    return Plan(dict(assignments), {n: [n] for n in assignments})


def mixed_plan(model) -> Plan:
    cycle = ["q4_0", "q8_0", "fp16", "q4_0", "q8_0"]
    return plan_of({n: cycle[i % len(cycle)] for i, n in enumerate(linear_names(model))})


def tensors(path):
    return {t.name: t for t in gguf.GGUFReader(str(path)).tensors}


def gguf_values(tensor) -> np.ndarray:
    return np.asarray(dequantize(tensor.data, tensor.tensor_type), np.float32).reshape(
        tuple(int(d) for d in reversed(tensor.shape)))


# ---------------------------------------------------------------- export

@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2"])
def test_mixed_plan_reads_back_as_simulated(tmp_path, arch):
    model = tiny_causal_lm(arch)
    plan = mixed_plan(model)
    result = export_gguf(model, plan, tmp_path / "m.gguf", progress=False)
    simulated = apply(model, plan, None, weight_method="minmax", progress=False)
    written = tensors(result.path)
    architecture = gguf.MODEL_ARCH.QWEN2 if arch == "qwen2" else gguf.MODEL_ARCH.LLAMA
    fields = gguf.GGUFReader(str(result.path)).fields
    assert fields["general.architecture"].contents() == gguf.MODEL_ARCH_NAMES[architecture]
    names = gguf.get_tensor_name_map(architecture, 3)
    seen_types = set()
    for layer, cand in plan.layer_candidates().items():
        name = names.get_name(layer) + ".weight"
        tensor = written[name]
        assert tensor.tensor_type == T[gguf_type(cand)]
        seen_types.add(tensor.tensor_type.name)
        values = gguf_values(tensor)
        want = simulated.get_submodule(layer).layer.weight.detach().numpy()
        if layer.endswith(("q_proj", "k_proj")) and arch != "qwen2":  # permuted for llama.cpp's llama RoPE
            heads = 4 if layer.endswith("q_proj") else 2
            assert not np.array_equal(values, want)
            assert np.array_equal(values, _permute_rows(want, heads))
            values = _unpermute_rows(values, heads)
        assert np.array_equal(values, want), layer
        if cand != "fp16":  # quantized: not the float weight
            assert not np.array_equal(values, model.get_submodule(layer).weight.detach().numpy())
    assert seen_types == {"Q4_0", "Q8_0", "F16"}
    assert np.array_equal(gguf_values(written["token_embd.weight"]), model.model.embed_tokens.weight.detach().numpy())
    if arch == "qwen2":  # Q, K and V's biases, F32, as they are (qwen2 rotates halves, as HF Qwen2)
        bias = model.model.layers[1].self_attn.k_proj.bias.detach().numpy()
        assert written["blk.1.attn_k.bias"].tensor_type == T.F32
        assert np.array_equal(gguf_values(written["blk.1.attn_k.bias"]).ravel(), bias)
    assert written["output_norm.weight"].tensor_type == T.F32
    assert result.readback["exact"] == result.readback["tensors"] == len(written) and not result.readback["mismatched"]
    assert result.size_bytes == result.path.stat().st_size
    assert result.type_counts() == dict(Counter(gguf_type(c) for c in plan.layer_candidates().values()))
    block_bytes = {"Q4_0": 18, "Q8_0": 34}  # a block of 32: 4.5 and 8.5 bits per weight
    for row in result.tensors:
        if row["type"] in block_bytes:
            assert row["bytes"] == np.prod(row["shape"]) // 32 * block_bytes[row["type"]]


def test_a_llamas_q_and_k_biases_are_permuted_with_their_rows(tmp_path):
    """attention_bias=True: llama.cpp's converter permutes q_proj.bias and k_proj.bias as it permutes their
    weights' rows (its llama architecture rotates adjacent pairs); v_proj.bias is written as it is."""
    from transformers import LlamaConfig, LlamaForCausalLM
    config = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         tie_word_embeddings=False, attention_bias=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("proj.bias"):
                p.normal_(0, 0.5)
    plan = plan_of({n: "q8_0" for n in linear_names(model) if n != "lm_head"})
    result = export_gguf(model, plan, tmp_path / "m.gguf", progress=False)
    written = tensors(result.path)
    attention = model.model.layers[0].self_attn
    for gguf_name, module, heads in (("blk.0.attn_q.bias", attention.q_proj, 4), ("blk.0.attn_k.bias", attention.k_proj, 2)):
        bias = module.bias.detach().numpy()
        values = gguf_values(written[gguf_name]).ravel()
        assert written[gguf_name].tensor_type == T.F32
        assert not np.array_equal(values, bias) and np.array_equal(values, _permute_rows(bias, heads))
    assert np.array_equal(gguf_values(written["blk.0.attn_v.bias"]).ravel(), attention.v_proj.bias.detach().numpy())
    assert {r["name"]: r["permuted"] for r in result.tensors}["blk.0.attn_k.bias"]
    assert result.readback["exact"] == result.readback["tensors"] and not result.readback["mismatched"]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_model_exports_its_codes_and_says_how_the_simulation_rounds_them(tmp_path, dtype):
    """A bfloat16/float16 model simulates code x scale rounded to its type; the file holds the codes and
    scales (llama.cpp multiplies them unrounded), and they round to exactly the simulated weights."""
    model = tiny_llama(layers=1).to(dtype)
    plan = mixed_plan(model)
    result = export_gguf(model, plan, tmp_path / "m.gguf", progress=False)
    assert result.readback["exact"] == result.readback["tensors"] and not result.readback["mismatched"]
    assert any(str(dtype).replace("torch.", "") in n and "code x scale" in n for n in result.notes)
    simulated = apply(model, plan, None, weight_method="minmax", progress=False)
    written = tensors(result.path)
    up = "model.layers.0.mlp.up_proj"
    name = "blk.0.ffn_up.weight"
    assert written[name].tensor_type in (T.Q4_0, T.Q8_0)
    held = torch.from_numpy(gguf_values(written[name]).astype(np.float32))
    assert torch.equal(held.to(dtype), simulated.get_submodule(up).layer.weight.detach())


def test_read_back_catches_a_changed_block(tmp_path):
    model = tiny_llama(layers=1)
    plan = plan_of({n: "q4_0" for n in linear_names(model)})
    result = export_gguf(model, plan, tmp_path / "m.gguf", progress=False)
    simulated = apply(model, plan, None, weight_method="minmax", progress=False)
    expected = {"blk.0.ffn_up.weight": simulated.get_submodule("model.layers.0.mlp.up_proj").layer.weight.detach(),
                "blk.0.attn_q.weight": simulated.get_submodule("model.layers.0.self_attn.q_proj").layer.weight.detach()}
    permuted = {"blk.0.attn_q.weight": 4}
    assert read_back(result.path, expected, permuted)["mismatched"] == []
    assert read_back(result.path, expected, {})["mismatched"] == ["blk.0.attn_q.weight"]  # the permutation counts
    offset = int(tensors(result.path)["blk.0.ffn_up.weight"].data_offset)
    raw = bytearray(result.path.read_bytes())
    raw[offset + 5] ^= 0x11  # two codes of the first block
    result.path.write_bytes(bytes(raw))
    check = read_back(result.path, expected, permuted)
    assert check["mismatched"] == ["blk.0.ffn_up.weight"] and check["max_abs_error"]["blk.0.ffn_up.weight"] > 0


def test_tied_output_is_read_from_the_embedding_unless_planned(tmp_path):
    model = tiny_llama(layers=1, tie=True)
    layers = [n for n in linear_names(model) if n != "lm_head"]
    result = export_gguf(model, plan_of({n: "q8_0" for n in layers}), tmp_path / "a.gguf", progress=False)
    assert "output.weight" not in tensors(result.path)
    result = export_gguf(model, plan_of({**{n: "q8_0" for n in layers}, "lm_head": "q4_0"}), tmp_path / "b.gguf",
                         float_type="f16", progress=False)
    written = tensors(result.path)
    assert written["output.weight"].tensor_type == T.Q4_0 and written["token_embd.weight"].tensor_type == T.F16
    assert result.readback["mismatched"] == []
    both = {"model.embed_tokens": "q8_0", "lm_head": "q8_0"}  # one tied group: the same blocks, written once
    result = export_gguf(model, plan_of({**{n: "q4_0" for n in layers}, **both}), tmp_path / "c.gguf", progress=False)
    written = tensors(result.path)
    assert "output.weight" not in written and written["token_embd.weight"].tensor_type == T.Q8_0
    assert result.readback["mismatched"] == [] and result.type_counts()["Q8_0"] == 1


def test_metadata_and_vocabulary(tmp_path):
    from transformers import AutoTokenizer
    from tiny_llama import write_checkpoint
    tokenizer = AutoTokenizer.from_pretrained(write_checkpoint(tmp_path / "ckpt", layers=1))
    model = tiny_llama(layers=2, vocab=len(tokenizer))
    result = export_gguf(model, mixed_plan(model), tmp_path / "m.gguf", tokenizer=tokenizer, tokenizer_pre="smollm",
                         progress=False)
    fields = gguf.GGUFReader(str(result.path)).fields
    value = {k: fields[k].contents() for k in fields}
    assert value["general.architecture"] == "llama"
    assert (value["llama.block_count"], value["llama.embedding_length"], value["llama.feed_forward_length"]) == (2, 64, 128)
    assert (value["llama.attention.head_count"], value["llama.attention.head_count_kv"]) == (4, 2)
    assert value["llama.rope.dimension_count"] == 16 and value["llama.vocab_size"] == len(tokenizer)
    assert value["tokenizer.ggml.model"] == "gpt2" and value["tokenizer.ggml.pre"] == "smollm"
    tokens = value["tokenizer.ggml.tokens"]
    assert len(tokens) == len(tokenizer) and tokens[tokenizer.unk_token_id] == "<unk>"
    assert tokens[tokenizer.convert_tokens_to_ids("The")] == "The" and len(value["tokenizer.ggml.merges"]) > 0
    assert value["general.file_type"] == gguf.LlamaFileType.MOSTLY_Q4_0  # the most common planned type
    assert result.notes == []


def test_non_gguf_candidates_are_refused_with_every_layer(tmp_path):
    model = tiny_llama(layers=1)
    assignments = {n: "q4_0" for n in linear_names(model)}
    assignments.update({"model.layers.0.mlp.up_proj": "w4g32", "model.layers.0.self_attn.v_proj": "w8"})
    with pytest.raises(CandidateError) as info:
        export_gguf(model, plan_of(assignments), tmp_path / "m.gguf", progress=False)
    message = str(info.value)
    assert "2 layer(s)" in message and "model.layers.0.mlp.up_proj (w4g32)" in message
    assert "model.layers.0.self_attn.v_proj (w8)" in message and "q8_0" in message and "q4_0" in message
    assert not (tmp_path / "m.gguf").exists()


def test_inputs_not_whole_blocks_are_refused(tmp_path):
    model = tiny_llama(hidden=48, layers=1)  # 48 inputs: a block and a half (all but down_proj: 96)
    with pytest.raises(CandidateError) as info:
        export_gguf(model, plan_of({n: "q8_0" for n in linear_names(model)}), tmp_path / "m.gguf", progress=False)
    message = str(info.value)
    assert "7 layer(s)" in message and "multiple of 32" in message and "model.layers.0.self_attn.q_proj" in message
    assert "down_proj" not in message
    result = export_gguf(model, plan_of({n: "fp16" for n in linear_names(model)}), tmp_path / "m.gguf", progress=False)
    assert result.readback["mismatched"] == []  # F16 has no blocks


def test_other_models_and_names_are_refused(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(64, 64))
    with pytest.raises(ModelError, match="model type llama, mistral, qwen2"):
        export_gguf(model, plan_of({"0": "q8_0"}), tmp_path / "m.gguf")
    with pytest.raises(Exception, match=r"\.gguf"):
        export_gguf(tiny_llama(layers=1), plan_of({"lm_head": "q8_0"}), tmp_path / "m.onnx")


def test_a_wrapped_llama_and_rounded_weights(tmp_path):
    from mixprec.builtin.smollm2 import CausalLM
    model = CausalLM(tiny_llama(layers=1)).eval()
    plan = plan_of({f"lm.{n}": "q4_0" for n in linear_names(model.lm)})
    data = [torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(i)) for i in range(2)]
    nearest = apply(model, plan, data, progress=False)
    static = apply(model, plan, data, rounding="gptq", rounding_options={"static_groups": True}, progress=False)
    layer = "lm.model.layers.0.mlp.down_proj"
    assert not torch.equal(static.get_submodule(layer).layer.weight, nearest.get_submodule(layer).layer.weight)
    result = export_gguf(model, plan, tmp_path / "m.gguf", quantized=static, progress=False)
    assert result.readback["mismatched"] == [] and result.type_counts() == {"Q4_0": 8}
    adaround = apply(model, plan, data, rounding="adaround", rounding_options={"iterations": 20}, progress=False)
    result = export_gguf(model, plan, tmp_path / "a.gguf", quantized=adaround, progress=False)
    assert result.readback["mismatched"] == []  # AdaRound dequantizes with the float16 scale too
    regrouped = apply(model, plan, data, rounding="gptq", progress=False)  # scales chosen on the updated weights
    with pytest.raises(ModelError, match="static_groups=True"):
        export_gguf(model, plan, tmp_path / "r.gguf", quantized=regrouped, progress=False)


# ---------------------------------------------------------------- the simulation against gguf.quants

BLOCKS = hnp.arrays(np.float32, st.tuples(st.integers(1, 6), st.just(32)),
                    elements=st.floats(-1e3, 1e3, width=32, allow_subnormal=False))


@settings(max_examples=300, deadline=None)
@given(blocks=BLOCKS, name=st.sampled_from(sorted(QTYPES)))
def test_simulation_equals_gguf_quants_except_at_ties(blocks, name):
    fmt = GGUF_FORMATS[name]
    sim = quantize_weight(torch.from_numpy(blocks), fmt, "mse").numpy()  # the format's own minmax, whatever is asked
    ref_blocks, swaps = blocks.copy(), []
    if name == "q4_0":
        # ggml's d comes from the first element of largest magnitude, mixprec's from the negative one when both
        # signs reach it: with that one first, both take the same d
        for i, row in enumerate(ref_blocks):
            amax = np.abs(row).max()
            if amax > 0 and (row == amax).any() and (row == -amax).any():
                j = int(np.argmax(row == -amax))
                row[[0, j]] = row[[j, 0]]
                swaps.append((i, j))
    ref = dequantize(quantize(ref_blocks, QTYPES[name]), QTYPES[name])
    for i, j in swaps:
        ref[i, [0, j]] = ref[i, [j, 0]]
    scale, _ = weight_qparams(torch.from_numpy(blocks), fmt, "minmax")
    step = np.abs(scale.to(torch.float16).to(torch.float32).numpy())
    v = np.abs(blocks.astype(np.float64) / scale.numpy().astype(np.float64))
    # a tie (round half to even here, half away from zero in ggml) or a near tie that ggml's x * (1/d) and
    # float32 arithmetic decide the other way: there, and only there, the two take adjacent codes
    near_tie = np.abs(v - np.floor(v) - 0.5) < 1e-4
    differ = sim != ref
    assert not (differ & ~near_tie).any(), (blocks[differ & ~near_tie], sim[differ & ~near_tie], ref[differ & ~near_tie])
    assert np.array_equal(np.abs(sim - ref)[differ], step[differ])


def test_a_tie_rounds_to_even_and_the_file_keeps_mixprec_codes(tmp_path):
    block = np.zeros((1, 32), np.float32)
    block[0, 0], block[0, 1] = 127.0, 2.5  # Q8_0: d = 1, 2.5 is a tie
    sim = quantize_weight(torch.from_numpy(block), GGUF_FORMATS["q8_0"]).numpy()
    ref = dequantize(quantize(block, T.Q8_0), T.Q8_0)
    assert sim[0, 1] == 2.0 and ref[0, 1] == 3.0  # half to even; ggml's roundf: half away from zero
    model = tiny_llama(layers=1)
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[:] = torch.from_numpy(np.tile(block, (128, 2)))
    result = export_gguf(model, plan_of({"model.layers.0.mlp.up_proj": "q8_0"}), tmp_path / "m.gguf", progress=False)
    assert gguf_values(tensors(result.path)["blk.0.ffn_up.weight"])[0, 1] == 2.0


# ---------------------------------------------------------------- llama.cpp itself, where it is installed

@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2"])
def test_llama_cpp_runs_the_file_as_simulated(tmp_path, arch):
    llama_cpp = pytest.importorskip("llama_cpp")
    # weights 5x the usual initialisation, so that attention (and the RoPE layout of Q and K) matters: with
    # Q/K left unpermuted the logits below are off by 73 % of their largest value (fp32), 79 % (mixed)
    model = tiny_causal_lm(arch, layers=2, init=0.1)
    ids = torch.randint(0, 300, (1, 24), generator=torch.Generator().manual_seed(1))
    for plan, tolerance in ((plan_of({n: "fp32" for n in linear_names(model)}), 5e-3), (mixed_plan(model), 0.1)):
        result = export_gguf(model, plan, tmp_path / "m.gguf", progress=False)
        simulated = apply(model, plan, None, weight_method="minmax", progress=False)
        with torch.no_grad():
            want = simulated(input_ids=ids).logits[0].numpy()
        llm = llama_cpp.Llama(str(result.path), n_ctx=64, logits_all=True, verbose=False, n_threads=1)
        llm.eval(ids[0].tolist())
        got = np.asarray(llm.scores[: ids.shape[1]], np.float32)
        del llm
        # fp32: the same model up to llama.cpp's float16 KV cache; mixed: llama.cpp also rounds the inputs of
        # Q8_0/Q4_0 matmuls to Q8_0 blocks, which the weight-only simulation does not (2.5 % measured)
        assert np.abs(got - want).max() < tolerance * np.abs(want).max()
        assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.999


def test_the_gguf_target_refuses_a_model_gguf_export_cannot_write_before_measuring():
    """--profile gguf (target="gguf") plans for a file only Llama-family Hugging Face LMs become: a plain PyTorch
    LM is refused at once, with the way to simulate GGUF's types without the target."""
    import mixprec
    from mixprec.errors import MixprecError
    model = torch.nn.Sequential(torch.nn.Embedding(16, 8), torch.nn.Linear(8, 16)).eval()
    data = [torch.randint(0, 16, (2, 5))]
    with pytest.raises(MixprecError, match=r"the gguf target: GGUF export writes.*--candidates q8_0,q4_0,fp16"):
        mixprec.analyze(model, data, "q8_0,q4_0,fp16", target="gguf", progress=False)
    assert mixprec.analyze(model, data, "q8_0,q4_0,fp16", progress=False).table.complete  # simulated: fine
