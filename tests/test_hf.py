"""hf:DIR checkpoints, text:FILE calibration windows and ppl:FILE perplexity, on a tiny Llama that
the test writes with save_pretrained (random weights, its own small tokenizer)."""
import json
import shutil

import pytest
import torch
from torch import nn

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

import mixprec  # noqa: E402
from mixprec.cli import main  # noqa: E402
from mixprec.errors import SpecError  # noqa: E402
from mixprec.hf import check_dtype, load  # noqa: E402
from mixprec.specs import load_data, load_eval  # noqa: E402
from mixprec.text_data import token_split  # noqa: E402
from tiny_llama import write_checkpoint, write_text  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return write_checkpoint(root / "tiny-llama"), write_text(root / "corpus.txt")


def copy_of(checkpoint, tmp_path):
    return shutil.copytree(checkpoint, tmp_path / "copy")


def test_analyze_solve_quantize_from_a_checkpoint_and_a_text_file(checkpoint, tmp_path, capsys):
    folder, text = checkpoint
    data = f"text:{text}?windows=6&length=48&batch=3"
    assert main(["analyze", "--model", f"hf:{folder}", "--data", data, "--candidates", "w4a8,w8a8",
                 "--metric", "kl", "--out", str(tmp_path / "run")]) == 0
    table = json.loads((tmp_path / "run" / "sensitivity.json").read_text())
    # four groups per block, and the embedding table and the output layer, each with its own candidates
    assert {"lm.lm_head", "lm.model.embed_tokens"} <= set(table["groups"]) and len(table["groups"]) == 3 * 4 + 2
    assert main(["solve", str(tmp_path / "run"), "--budget", "bytes=0.9x", "--out", str(tmp_path / "plan.json")]) == 0
    guard = json.loads((tmp_path / "plan.json").read_text())["metadata"]["guard"]
    # the guard scores a causal LM's calibration windows on their own next tokens, per window
    assert guard["divergence"] == "nll" and guard["samples"] == 6 and guard["measured"]["mixed"] > 0
    assert main(["solve", str(tmp_path / "run"), "--budget", "bytes=0.9x", "--search", "local", "--evaluations", "6",
                 "--out", str(tmp_path / "local.json")]) == 0
    logged = [json.loads(line)["result"]["name"] for line in (tmp_path / "run" / "divergences.jsonl").open()]
    assert len(logged) > 2 and set(logged) == {"nll"}  # the local search scores the text's next tokens too
    assert main(["quantize", "--model", f"hf:{folder}", "--data", data, "--plan", str(tmp_path / "plan.json"),
                 "--eval", f"ppl:{text}?windows=4&length=48", "--out", str(tmp_path / "q")]) == 0
    result = json.loads((tmp_path / "q" / "result.json").read_text())
    assert result["metric_name"] == "perplexity" and result["metric"] > 1
    assert result["metric_details"]["windows"] == 4 and result["metric_details"]["first_token"] == 0


def test_python_api_takes_the_same_spec_strings(checkpoint):
    folder, text = checkpoint
    analysis = mixprec.analyze(f"hf:{folder}", f"text:{text}?windows=4&length=32", "w8a8", metric="sqnr",
                               evaluate=f"ppl:{text}?windows=2&length=32", progress=False)
    assert analysis.model_name == f"hf:{folder}" and analysis.table.complete
    assert analysis.evaluate(analysis.model).name == "perplexity"
    result = mixprec.quantize(f"hf:{folder}", f"text:{text}?windows=4&length=32", "bits=6", candidates="w4g16,w8",
                              evaluate=f"ppl:{text}?windows=2&length=32", progress=False)  # quantize takes them too
    assert result.costs["bits_per_weight"] <= 6 and result.evaluation.name == "perplexity"


def test_calibration_windows_come_from_the_second_half_and_evaluation_from_the_first(checkpoint):
    folder, text = checkpoint
    spec = f"hf:{folder}"
    batches = load_data(f"text:{text}?windows=5&length=40&seed=3&batch=2", model_spec=spec)
    assert [tuple(b.shape) for b in batches] == [(2, 40), (2, 40), (1, 40)]
    from mixprec.hf import tokenizer_for
    split = token_split(text, *tokenizer_for(spec, "text:"))
    windows, starts = split.calibration_windows(5, 40, seed=3)
    assert min(starts) >= split.half and torch.equal(torch.cat(batches), windows)
    assert split.evaluation_windows(None, 40).numel() <= split.half
    # another seed, other windows; the same seed, the same windows
    assert split.calibration_windows(5, 40, seed=4)[1] != starts
    assert split.calibration_windows(5, 40, seed=3)[1] == starts


def test_a_text_too_short_names_the_numbers(checkpoint):
    folder, text = checkpoint
    with pytest.raises(SpecError, match=r"holds \d+ windows of 1000 tokens, and 50 are needed"):
        load_data(f"text:{text}?windows=50&length=1000", model_spec=f"hf:{folder}")
    with pytest.raises(SpecError, match=r"holds \d+ windows of 4000 tokens, and at least 1 is needed"):
        load_eval(f"ppl:{text}?length=4000", f"hf:{folder}")


def test_dtype_is_the_one_asked_for(checkpoint):
    folder, _ = checkpoint
    assert next(load(f"hf:{folder}?dtype=bf16").parameters()).dtype == torch.bfloat16
    assert next(load(f"hf:{folder}").parameters()).dtype == torch.float32
    with pytest.raises(SpecError, match="dtype 'int3' is not one of"):
        load(f"hf:{folder}?dtype=int3")


def test_a_dtype_the_device_cannot_run_is_named(monkeypatch):
    model = torch.nn.Linear(2, 2).to(torch.float16)

    def refuse(*args, **kwargs):
        raise RuntimeError('"addmm_impl_cpu_" not implemented for \'Half\'')
    monkeypatch.setattr(torch.Tensor, "__matmul__", refuse)
    with pytest.raises(SpecError, match="cannot run the model's dtype float16"):
        check_dtype(model, "cpu")


def test_missing_config_shard_tokenizer_and_truncated_shard_are_named(checkpoint, tmp_path):
    folder, text = checkpoint
    broken = copy_of(folder, tmp_path)
    (broken / "config.json").unlink()
    with pytest.raises(SpecError, match="config.json is missing"):
        load(f"hf:{broken}")

    broken = copy_of(folder, tmp_path / "b")
    shard = broken / "model.safetensors"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(SpecError, match=r"model.safetensors is .*(corrupt|truncated)"):
        load(f"hf:{broken}")

    broken = copy_of(folder, tmp_path / "c")
    (broken / "model.safetensors").rename(broken / "model-00001-of-00002.safetensors")
    (broken / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    with pytest.raises(SpecError, match="shard .*model-00002-of-00002.safetensors is missing"):
        load(f"hf:{broken}")

    broken = copy_of(folder, tmp_path / "d")
    (broken / "tokenizer.json").unlink()
    with pytest.raises(SpecError, match="has no tokenizer"):
        load_data(f"text:{text}", model_spec=f"hf:{broken}")

    with pytest.raises(SpecError, match="needs --model hf:DIR"):
        load_data(f"text:{text}", model_spec="resnet20")


def test_a_tied_embedding_is_one_group_whose_weight_is_counted_once(tmp_path):
    from mixprec.costs import cost_tables
    from mixprec.groups import discover_groups
    from mixprec.pipeline import quantize_plan
    from mixprec.plan import Plan
    folder = write_checkpoint(tmp_path / "tied", layers=2, tie=True)
    model = load(f"hf:{folder}")
    tokens = torch.arange(24).view(2, 12)
    groups = discover_groups(model, tokens)
    tied = groups["lm.{model.embed_tokens,lm_head}"]
    assert tied.tied_by == "shared weight"
    tables = cost_tables(groups, ["fp32", "w4g16"], model)
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())  # the tied tensor once
    assert tables.uniform("bytes", "fp32") == model_bytes
    assert tables.uniform("bits_per_weight", "fp32") == pytest.approx(32.0)
    # the table is stored once, at the group's format: its bytes are those of one (vocab, hidden) matrix
    row = groups.names.index(tied.name)
    vocab, hidden = model.lm.lm_head.weight.shape
    assert tables.tables["bytes"][row, 1] < vocab * hidden * 4.5 / 8 + vocab * 4
    plan = Plan.uniform(groups, "w4g16")
    quantized = quantize_plan(model, plan, [tokens], groups, rounding="gptq", progress=False).model
    embedding = quantized.lm.model.embed_tokens.layer.weight
    assert torch.equal(embedding, quantized.lm.lm_head.layer.weight)
    assert not torch.equal(embedding, model.lm.lm_head.weight)


def test_two_processes_give_the_single_process_table_with_block_prefixes(checkpoint, tmp_path):
    """The sharded path of a model fx cannot trace (forks from block inputs), under torchrun with gloo."""
    import os
    import subprocess
    import sys
    folder, text = checkpoint
    args = ["analyze", "--model", f"hf:{folder}", "--data", f"text:{text}?windows=4&length=32&batch=2",
            "--candidates", "w4a8,w8a8", "--metric", "kl", "--chunk-size", "2"]
    assert main(args + ["--out", str(tmp_path / "one")]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}  # gloo, on a machine with GPUs too
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "mixprec.cli", *args, "--out", str(tmp_path / "two")], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    one, two = (json.loads((tmp_path / k / "sensitivity.json").read_text()) for k in ("one", "two"))
    assert one["metadata"]["prefix_sharing"] == two["metadata"]["prefix_sharing"] == "blocks"
    flat = lambda rows: [v for row in rows for v in row]  # noqa: E731
    assert two["groups"] == one["groups"] and flat(two["values"]) == pytest.approx(flat(one["values"]), rel=1e-6)


def test_gpt2_conv1d_layers_become_linear_layers_with_the_same_outputs(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel
    from mixprec.groups import discover_groups
    from mixprec.hf import conv1d_to_linear
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=64)).eval()
    tokens = torch.randint(0, 64, (2, 12))
    with torch.no_grad():
        before = model(input_ids=tokens).logits
    # a GPT-2 given in Python: its Conv1D layers are groups too (mixprec.canonical), the model left as it is
    given = discover_groups(model, tokens)
    assert [n for n in given.notes if "Conv1D" in n] == [
        "8 transformers Conv1D layer(s) (e.g. transformer.h.0.attn.c_attn) run as the equivalent nn.Linear"]
    assert {"transformer.h.0.attn.c_attn", "transformer.h.1.mlp.c_proj"} <= {l.name for l in given.layers}
    assert type(model.transformer.h[0].attn.c_attn).__name__ == "Conv1D"
    model.save_pretrained(tmp_path / "gpt2")
    assert conv1d_to_linear(model) == 2 * 4  # c_attn, c_proj, c_fc and the MLP's c_proj per block
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=tokens).logits, before, rtol=1e-5, atol=1e-5)
    loaded = load(f"hf:{tmp_path / 'gpt2'}")
    groups = discover_groups(loaded, tokens)
    assert not any("Conv1D" in n for n in groups.notes)
    assert {"lm.transformer.h.0.attn.c_attn", "lm.transformer.h.1.mlp.c_proj"} <= {l.name for l in groups.layers}
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens), before, rtol=1e-5, atol=1e-5)


def test_the_ort_cpu_lm_profile_plans_what_matmulnbits_computes(checkpoint, tmp_path, capsys):
    """--profile ort-cpu-lm: a8d candidates, no join quantizers, and the exported file's perplexity is the
    simulated one (MatMulNBits at accuracy_level 4, its int8 inputs simulated)."""
    from mixprec.joins import default_joins
    from mixprec.profiles import profile_candidates
    assert not default_joins(nn.Linear(2, 2), "ort-cpu", profile_candidates("ort-cpu-lm"))[0]  # no int8 QDQ layer
    folder, text = checkpoint
    data = f"text:{text}?windows=4&length=32&batch=2"
    assert main(["analyze", "--model", f"hf:{folder}", "--data", data, "--profile", "ort-cpu-lm", "--metric", "kl",
                 "--out", str(tmp_path / "run")]) == 0
    assert main(["solve", str(tmp_path / "run"), "--budget", "bits=6", "--out", str(tmp_path / "plan.json")]) == 0
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert not plan["metadata"].get("joins") and all("a8d" in c or c == "fp32" for c in plan["assignments"].values())
    capsys.readouterr()
    assert main(["export", "--model", f"hf:{folder}", "--data", data, "--plan", str(tmp_path / "plan.json"),
                 "--eval", f"ppl:{text}?windows=2&length=32", "--out", str(tmp_path / "m.onnx")]) == 0
    report = json.loads((tmp_path / "m.report.json").read_text())
    simulated, exported = report["simulated"]["value"], report["exported"]["value"]
    assert abs(exported - simulated) <= 1e-3 * simulated
    # mixprec evaluate reads the ppl: spec with the tokenizer of the folder the report names
    assert report["source_model"] == f"hf:{folder.resolve()}"
    capsys.readouterr()
    evaluate = ["evaluate", "--model", str(tmp_path / "m.onnx"), "--eval", f"ppl:{text}?windows=2&length=32"]
    assert main(evaluate) == 0
    assert float(capsys.readouterr().out.splitlines()[0].split()[-1]) == pytest.approx(exported, rel=1e-6)
    report.pop("source_model")
    (tmp_path / "m.report.json").write_text(json.dumps(report))
    assert main(evaluate) == 2 and "mixprec evaluate --tokenizer hf:DIR" in capsys.readouterr().err
    assert main(evaluate + ["--tokenizer", f"hf:{folder}"]) == 0
    assert float(capsys.readouterr().out.splitlines()[0].split()[-1]) == pytest.approx(exported, rel=1e-6)
    assert main(["evaluate", "--model", f"hf:{folder}", "--eval", f"ppl:{text}?windows=2&length=32"]) == 0


def test_an_encoder_decoder_folder_is_refused_with_the_way_to_quantize_it(tmp_path):
    from transformers import T5Config, T5ForConditionalGeneration
    from mixprec.errors import SpecError
    from mixprec.specs import load_model
    T5ForConditionalGeneration(T5Config(vocab_size=32, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2,
                                        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
                               ).save_pretrained(tmp_path / "t5")
    with pytest.raises(SpecError, match="encoder-decoder .*decoder_input_ids"):
        load_model(f"hf:{tmp_path / 't5'}")


def _tiny_bert(folder, head: bool):
    from transformers import BertConfig, BertForSequenceClassification, BertModel
    torch.manual_seed(0)
    config = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=3)
    (BertForSequenceClassification if head else BertModel)(config).eval().save_pretrained(folder)
    return folder


def test_an_encoder_saved_with_its_classifier_keeps_it_and_takes_dict_batches_with_a_mask(tmp_path):
    from mixprec.specs import load_model, prepare
    folder = _tiny_bert(tmp_path / "bert", head=True)
    model = load_model(f"hf:{folder}")
    ids = torch.randint(0, 64, (4, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[:, 8:] = 0
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask)
        assert logits.shape == (4, 3)  # the task head's logits, not the hidden state
        assert not torch.allclose(logits, model(input_ids=ids))  # the mask is used
    data = tmp_path / "data.py"
    data.write_text("import torch\ndef calib():\n    g = torch.Generator().manual_seed(0)\n"
                    "    ids = torch.randint(0, 64, (4, 12), generator=g)\n"
                    "    return [{'input_ids': ids, 'attention_mask': torch.ones_like(ids)}] * 2\n")
    _, batches, example, groups = prepare(f"hf:{folder}", f"{data}:calib")
    assert example["input_ids"].shape == (1, 12)  # the first sample of a dict batch
    assert any(name.endswith("classifier") for name in groups.names)


def test_a_bare_encoder_still_gives_its_last_hidden_state(tmp_path):
    from mixprec.specs import load_model
    model = load_model(f"hf:{_tiny_bert(tmp_path / 'bare', head=False)}")
    with torch.no_grad():
        assert model(torch.randint(0, 64, (2, 5))).shape == (2, 5, 32)


def test_an_image_model_folder_is_refused_with_how_to_load_it(tmp_path):
    from transformers import ViTConfig, ViTForImageClassification
    from mixprec.specs import load_model
    ViTForImageClassification(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                        intermediate_size=64, image_size=32, patch_size=8)).save_pretrained(tmp_path / "vit")
    with pytest.raises(SpecError, match="pixel_values, not token ids.*file.py:function"):
        load_model(f"hf:{tmp_path / 'vit'}")


def test_export_gives_no_top1_agreement_for_a_bare_encoders_hidden_state(tmp_path):
    pytest.importorskip("onnxruntime")
    from mixprec.export import export
    from mixprec.groups import discover_groups
    from mixprec.plan import Plan
    from mixprec.specs import load_model
    ids = [torch.randint(0, 64, (4, 12), generator=torch.Generator().manual_seed(i)) for i in range(2)]
    for head in (False, True):
        model = load_model(f"hf:{_tiny_bert(tmp_path / f'bert{head}', head=head)}")
        plan = Plan.uniform(discover_groups(model, ids[0][:1]), "w8a8")
        result = export(model, plan, ids, target="ort-cpu", out=tmp_path / f"b{head}.onnx", progress=False)
        assert ("calibration" in result.agreement) == head  # classes only where the head gives them


def test_the_note_on_untraceable_joins_of_a_hugging_face_model_fits_it(tmp_path):
    pytest.importorskip("onnxruntime")
    from mixprec.export import export
    from mixprec.groups import discover_groups
    from mixprec.plan import Plan
    from mixprec.specs import load_model
    ids = [torch.randint(0, 64, (4, 12), generator=torch.Generator().manual_seed(0))]
    model = load_model(f"hf:{_tiny_bert(tmp_path / 'bert', head=True)}")
    plan = Plan.uniform(discover_groups(model, ids[0][:1]), "w8a8")
    result = export(model, plan, ids, target="ort-cpu", out=tmp_path / "b.onnx", progress=False)
    note = next(n for n in result.notes if "tracing failed" in n)
    assert "Hugging Face models do not trace" in note and "data-dependent" not in note


def test_a_sliding_window_model_exports_without_a_cache_and_equals_its_simulation(tmp_path):
    # a cached step traced on one example keeps that example's sliding-window mask: wrong at other lengths
    pytest.importorskip("onnxruntime")
    from transformers import MistralConfig, MistralForCausalLM

    from mixprec.export import OrtModule, export
    from mixprec.groups import discover_groups
    from mixprec.plan import Plan
    from mixprec.specs import load_model
    torch.manual_seed(0)
    MistralForCausalLM(MistralConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                     num_attention_heads=4, num_key_value_heads=2, sliding_window=8,
                                     max_position_embeddings=128)).save_pretrained(tmp_path / "swa")
    model = load_model(f"hf:{tmp_path / 'swa'}")
    ids = [torch.randint(0, 64, (2, 32), generator=torch.Generator().manual_seed(i)) for i in range(2)]
    plan = Plan.uniform(discover_groups(model, ids[0][:1]), "fp32")
    result = export(model, plan, ids, target="ort-cpu", out=tmp_path / "swa.onnx", progress=False)
    assert any("without a KV cache" in n for n in result.notes)
    other = torch.randint(0, 64, (1, 20), generator=torch.Generator().manual_seed(5))  # another length
    with torch.no_grad():
        assert torch.allclose(OrtModule(result.path)(other), model(other), atol=1e-4)


def test_export_writes_a_llama_folder_with_fused_decoder_ops_unless_told_traced(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    folder = write_checkpoint(tmp_path / "llama64", layers=2, hidden=64)
    text = write_text(tmp_path / "corpus.txt")
    data = f"text:{text}?windows=2&length=16"
    common = ["export", "--model", f"hf:{folder}", "--data", data, "--uniform", "w8a8d32"]
    assert main(common + ["--out", str(tmp_path / "fused.onnx")]) == 0
    assert "written with ONNX Runtime's fused decoder ops" in capsys.readouterr().out
    assert main(common + ["--decoder", "traced", "--out", str(tmp_path / "traced.onnx")]) == 0
    assert "fused decoder ops" not in capsys.readouterr().out
    fused = json.loads((tmp_path / "fused.report.json").read_text())
    traced = json.loads((tmp_path / "traced.report.json").read_text())
    assert [l["op_written"] for l in fused["layers"]] == [l["op_written"] for l in traced["layers"]]
    for report in (fused, traced):  # both compute the simulation (None: exactly)
        assert report["sqnr_db"]["calibration"] is None or report["sqnr_db"]["calibration"] > 40
    with pytest.raises(SystemExit) as exit_:
        main(common + ["--decoder", "fast", "--out", str(tmp_path / "x.onnx")])
    assert exit_.value.code == 2 and "--decoder: invalid choice: 'fast'" in capsys.readouterr().err


def test_windows_longer_than_the_model_s_positions_get_a_note(tmp_path):
    """A rotary model computes windows past max_position_embeddings without an error: its perplexity there was given
    without a word."""
    import json
    import warnings

    from mixprec.errors import EvaluationNote
    from mixprec.text_data import note_long_windows
    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 512}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        note_long_windows("ppl:w.txt?length=256", 256, str(tmp_path))
        note_long_windows("ppl:w.txt?length=1024", 1024, str(tmp_path))
    said = [str(w.message) for w in caught if issubclass(w.category, EvaluationNote)]
    assert len(said) == 1 and "1024 tokens are longer than the 512 positions" in said[0]


def _padded_and_alone(checkpoint, side: str):
    """Six texts of several lengths: each alone, and in two batches padded on ``side`` with an attention mask."""
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(checkpoint[0])
    tokenizer.pad_token, tokenizer.padding_side = "<unk>", side
    texts = [t + "." for t in checkpoint[1].read_text().split(".")[1:13:2]]
    alone = [{"input_ids": tokenizer(t, return_tensors="pt")["input_ids"]} for t in texts]
    padded = [dict(tokenizer(texts[i:i + 3], padding=True, return_tensors="pt")) for i in (0, 3)]
    assert all(bool((b["attention_mask"] == 0).any()) for b in padded)
    return alone, padded


@pytest.mark.parametrize("side", ["left", "right"])
def test_a_padded_batch_of_an_hf_model_gives_each_text_its_logits_alone(checkpoint, side):
    model = load(f"hf:{checkpoint[0]}")
    alone, padded = _padded_and_alone(checkpoint, side)
    with torch.no_grad():
        for b, batch in enumerate(padded):
            logits = model(**batch)
            for row in range(3):
                real = batch["attention_mask"][row].bool()
                assert torch.allclose(logits[row][real], model(**alone[3 * b + row])[0], atol=1e-4)


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_leaves_the_sensitivity_table_as_the_texts_alone_give_it(checkpoint, side):
    """sqnr and kl sum over the real tokens alone: the padded positions' logits are no text (left padded, a layer
    came out 17x as sensitive)."""
    model = load(f"hf:{checkpoint[0]}")
    alone, padded = _padded_and_alone(checkpoint, side)
    for metric in ("sqnr", "kl"):
        tables = [mixprec.analyze(model, data, candidates="w3g16,w8", metric=metric, progress=False).table
                  for data in (alone, padded)]
        assert torch.allclose(torch.tensor(tables[0].values), torch.tensor(tables[1].values), rtol=2e-3)


def test_a_folder_or_text_file_without_its_prefix_is_named_with_the_prefix(checkpoint):
    from mixprec.specs import load_model
    folder, text = checkpoint
    with pytest.raises(SpecError, match=f"give it as --model hf:{folder}"):
        load_model(str(folder))
    with pytest.raises(SpecError, match=f"is --data text:{text}"):
        load_data(str(text))
    with pytest.raises(SpecError, match=f"is --eval ppl:{text}"):
        load_eval(str(text))
    with pytest.raises(SpecError, match="ppl: is the prefix of --eval ppl:FILE"):
        load_data(f"ppl:{text}")


@pytest.mark.parametrize("side", ["left", "right"])
def test_a_padded_batch_calibrates_activation_ranges_on_its_real_tokens(checkpoint, side):
    """min/max ranges of every layer's input, calibrated on the padded batches, are those of the texts alone."""
    from mixprec.quantizers import ActivationQuantizer
    model = load(f"hf:{checkpoint[0]}")
    alone, padded = _padded_and_alone(checkpoint, side)
    groups = mixprec.discover_groups(model, alone[0])
    plan = mixprec.Plan.uniform(groups, "w8a8")
    ranges = []
    for data in (alone, padded):
        q = mixprec.apply(model, plan, data, activation_range="minmax", progress=False)
        ranges.append({n: (float(m.lo), float(m.hi)) for n, m in q.named_modules()
                       if isinstance(m, ActivationQuantizer) and m.fmt is not None})
    assert ranges[0].keys() == ranges[1].keys() and ranges[0]
    for name, (lo, hi) in ranges[0].items():
        assert ranges[1][name] == pytest.approx((lo, hi), rel=1e-3, abs=1e-4), name
