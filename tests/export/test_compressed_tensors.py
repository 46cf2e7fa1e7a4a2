"""Export to a compressed-tensors checkpoint: what is written reads back to the simulated weights, bit for bit."""
import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from mixprec.apply import apply  # noqa: E402
from mixprec.errors import CandidateError, ModelError, OutputError, PlanError  # noqa: E402
from mixprec.export.compressed_tensors import (ACCEPTED, WEIGHTS_FILE, load_dequantized, pack_int32, read_back,  # noqa: E402
                                               unpack_int32, write_compressed_tensors)
from mixprec.groups import discover_groups  # noqa: E402
from mixprec.hf import CausalLM  # noqa: E402
from mixprec.plan import Plan  # noqa: E402

try:
    import compressed_tensors  # noqa: F401  (only whether it is installed)
    HAS_CT = True
except ImportError:
    HAS_CT = False
needs_ct = pytest.mark.skipif(not HAS_CT, reason="compressed-tensors is not installed (pip install "
                              "compressed-tensors==0.20.0); mixprec's own reader is tested without it")
READERS = ["mixprec", pytest.param("compressed-tensors", marks=needs_ct)]

VOCAB = 128
# One candidate per group of each block: grouped, per-channel, asymmetric, 3-bit (a code straddles words),
# integer inputs, fp8 and float layers.
MIXED = {"0.self_attn.{q_proj,k_proj,v_proj}": "w4g32", "0.self_attn.o_proj": "w8", "0.mlp.{gate_proj,up_proj}":
         "w4g32-asym", "0.mlp.down_proj": "fp32", "1.self_attn.{q_proj,k_proj,v_proj}": "w8a8",
         "1.self_attn.o_proj": "w4a8", "1.mlp.{gate_proj,up_proj}": "fp8", "1.mlp.down_proj": "w3g32"}
WEIGHT_ONLY = {"0.self_attn.{q_proj,k_proj,v_proj}": "w4g32", "0.self_attn.o_proj": "w8", "0.mlp.{gate_proj,up_proj}":
               "w4g64-asym", "0.mlp.down_proj": "fp32", "1.self_attn.{q_proj,k_proj,v_proj}": "w2g16",
               "1.self_attn.o_proj": "w6", "1.mlp.{gate_proj,up_proj}": "w5g32", "1.mlp.down_proj": "w4-asym"}


def tiny_llama(dtype=torch.float32, seed=0) -> CausalLM:
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(seed)
    return CausalLM(transformers.LlamaForCausalLM(config)).to(dtype).eval()


def batches(n=3):
    generator = torch.Generator().manual_seed(1)
    return [torch.randint(0, VOCAB, (2, 16), generator=generator) for _ in range(n)]


def make_plan(model, choice: dict[str, str], head: str = "fp32") -> Plan:
    groups = discover_groups(model, batches(1)[0])
    plan = Plan.uniform(groups, "fp32")
    for group in plan.assignments:
        key = group.removeprefix("lm.model.layers.")
        plan.assignments[group] = choice.get(key, head if group == "lm.lm_head" else "fp32")
    return plan


def simulated(quantized, plan) -> dict[str, torch.Tensor]:
    return {f"{layer[len('lm.'):]}.weight": quantized.get_submodule(layer).layer.weight.detach()
            for layer in plan.layer_candidates()}


@pytest.fixture(autouse=True)
def no_grad():
    with torch.no_grad():
        yield


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    with torch.no_grad():
        model = tiny_llama()
        plan = make_plan(model, MIXED, head="w8g64")
        quantized = apply(model, plan, batches(), progress=False)
        out = tmp_path_factory.mktemp("ct") / "mixed"
        result = write_compressed_tensors(model, plan, out, quantized=quantized, progress=False)
    return model, plan, quantized, out, result


@pytest.mark.parametrize("reader", READERS)
def test_every_planned_weight_reads_back_bit_for_bit(mixed, reader):
    model, plan, quantized, out, result = mixed
    assert result.readback.exact and result.readback.compared > len(plan.layer_candidates())
    tensors, label = load_dequantized(out, reader)
    assert reader.split("-")[0] in label
    for key, want in simulated(quantized, plan).items():
        got = tensors[key]
        assert got.dtype == want.dtype and got.shape == want.shape
        assert torch.equal(got.view(torch.int32), want.view(torch.int32)), key  # bits, so -0.0 != 0.0
    # the float tensors (embedding, norms, float layers) are the model's own
    for key, value in model.lm.state_dict().items():
        if key.rpartition(".")[0] not in {n[len("lm."):] for n in plan.layer_candidates()}:
            assert torch.equal(tensors[key], value), key
    assert read_back(out, simulated(quantized, plan), reader).exact


def test_the_check_fails_when_a_written_value_changes(mixed, tmp_path):
    from safetensors.torch import load_file, save_file
    _, plan, quantized, out, _ = mixed
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "config.json").write_text((out / "config.json").read_text())
    tensors = load_file(str(out / "model.safetensors"))
    key = "model.layers.0.self_attn.q_proj.weight_scale"
    tensors[key] = tensors[key].clone()
    tensors[key][3, 1] = torch.nextafter(tensors[key][3, 1], torch.tensor(float("inf")))  # one ulp
    save_file(tensors, str(copy / "model.safetensors"))
    check = read_back(copy, simulated(quantized, plan), "mixprec")
    assert not check.exact and list(check.mismatched) == ["model.layers.0.self_attn.q_proj.weight"]
    differ, total = check.mismatched["model.layers.0.self_attn.q_proj.weight"].split(" values")[0].split(" of ")
    assert 0 < int(differ) <= 32 and int(total) == 64 * 64  # within the group of 32 it scales (zero codes stay 0)


def test_config_groups_list_exactly_the_planned_layers(mixed):
    _, plan, _, out, result = mixed
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama" and config["architectures"] == ["LlamaForCausalLM"]
    qc = config["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors" and qc["format"] == "mixed-precision"
    assert qc["quantization_status"] == "compressed"
    layers = {n[len("lm."):]: c for n, c in plan.layer_candidates().items()}
    targets = [t for g in qc["config_groups"].values() for t in g["targets"]]
    float_layers = {n for n, c in layers.items() if c == "fp32"}
    assert sorted(targets) == sorted(set(layers) - float_layers)  # each planned layer once, by its exact name
    assert set(qc["ignore"]) == float_layers - {"model.embed_tokens"}  # the float Linear layers
    by_candidate = {}
    for group in qc["config_groups"].values():
        for target in group["targets"]:
            by_candidate.setdefault(layers[target], set()).add(json.dumps(group, sort_keys=True, default=str)
                                                               .replace(json.dumps(group["targets"]), ""))
    assert all(len(v) == 1 for v in by_candidate.values())  # one scheme per candidate
    scheme = {layers[g["targets"][0]]: g for g in qc["config_groups"].values()}
    assert len(qc["config_groups"]) == len(scheme) == 8  # w4g32 w8 w4g32-asym w8a8 w4a8 fp8 w3g32 w8g64
    w = scheme["w4g32"]
    assert (w["format"], w["input_activations"]) == ("pack-quantized", None)
    assert {k: w["weights"][k] for k in ("num_bits", "type", "symmetric", "strategy", "group_size")} == \
        {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group", "group_size": 32}
    assert scheme["w8"]["weights"]["strategy"] == "channel" and scheme["w8"]["weights"]["group_size"] is None
    assert scheme["w4g32-asym"]["weights"]["symmetric"] is False
    a8 = scheme["w8a8"]
    assert a8["format"] == "int-quantized" and a8["input_activations"]["num_bits"] == 8
    assert a8["input_activations"]["strategy"] == "tensor" and a8["input_activations"]["symmetric"] is False
    assert scheme["w4a8"]["format"] == "int-quantized" and scheme["w4a8"]["weights"]["num_bits"] == 4
    fp8 = scheme["fp8"]
    assert fp8["format"] == "float-quantized" and fp8["weights"]["type"] == "float"
    assert fp8["input_activations"]["type"] == "float"
    report = json.loads((out / "mixprec-report.json").read_text())
    assert report["readback"]["exact"] and len(report["layers"]) == len(layers)


def test_tensors_are_laid_out_as_compressed_tensors_names_them(mixed):
    from safetensors.torch import load_file
    _, _, quantized, out, _ = mixed
    tensors = load_file(str(out / "model.safetensors"))
    q = "model.layers.0.self_attn.q_proj"
    assert tensors[f"{q}.weight_packed"].dtype == torch.int32 and tensors[f"{q}.weight_packed"].shape == (64, 8)
    assert tensors[f"{q}.weight_shape"].tolist() == [64, 64] and tensors[f"{q}.weight_scale"].shape == (64, 2)
    assert f"{q}.weight" not in tensors and f"{q}.weight_zero_point" not in tensors
    assert (tensors[f"{q}.weight_scale"] < 0).any()  # mixprec's signed symmetric scales, as they are
    up = "model.layers.0.mlp.up_proj"
    assert tensors[f"{up}.weight_zero_point"].shape == (128 * 4 // 32, 2)  # packed along the outputs
    k = "model.layers.1.self_attn.k_proj"
    assert tensors[f"{k}.weight"].dtype == torch.int8 and tensors[f"{k}.weight_scale"].shape == (32, 1)
    assert tensors[f"{k}.input_scale"].shape == (1,) and tensors[f"{k}.input_zero_point"].dtype == torch.int8
    layer = quantized.get_submodule(f"lm.{k}").input_quantizer
    assert layer.fmt.bits == 8 and float(tensors[f"{k}.input_scale"]) == pytest.approx(
        float((layer.hi.clamp(min=0) - layer.lo.clamp(max=0)) / 255), rel=1e-6)
    gate = "model.layers.1.mlp.gate_proj"
    assert tensors[f"{gate}.weight"].dtype == torch.float8_e4m3fn and f"{gate}.input_scale" in tensors
    assert tensors["model.layers.1.mlp.down_proj.weight_packed"].shape == (64, 128 * 3 // 32)
    assert "model.layers.0.mlp.down_proj.weight" in tensors and "lm_head.weight_packed" in tensors


@needs_ct
def test_compressed_tensors_accepts_the_config_and_infers_the_written_formats(mixed):
    from compressed_tensors.compressors.format import infer_module_format
    from compressed_tensors.quantization import QuantizationConfig
    _, _, _, out, _ = mixed
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    config = QuantizationConfig.model_validate(qc)
    for name, scheme in config.config_groups.items():
        assert infer_module_format(torch.nn.Linear, scheme).value == qc["config_groups"][name]["format"]


@needs_ct
@pytest.mark.parametrize("bits", range(1, 9))
def test_packing_is_compressed_tensors_own(bits):
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32, unpack_from_int32
    generator = torch.Generator().manual_seed(bits)
    codes = torch.randint(-(1 << (bits - 1)), 1 << (bits - 1), (5, 77), generator=generator)
    ours = pack_int32(codes, bits)
    assert torch.equal(ours, pack_to_int32(codes.to(torch.int8), bits))
    assert torch.equal(unpack_from_int32(ours, bits, torch.Size([5, 77])).long(), codes)


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 7, 8])
def test_unpack_inverts_pack(bits):
    generator = torch.Generator().manual_seed(bits)
    codes = torch.randint(-(1 << (bits - 1)), 1 << (bits - 1), (3, 45), generator=generator)
    assert torch.equal(unpack_int32(pack_int32(codes, bits), bits, 45), codes)


def test_a_weight_only_checkpoint_runs_as_the_simulated_model(tmp_path):
    model = tiny_llama(seed=2)
    plan = make_plan(model, WEIGHT_ONLY, head="w4g32")
    quantized = apply(model, plan, progress=False)  # weight-only: no calibration data needed
    result = write_compressed_tensors(model, plan, tmp_path / "ckpt", quantized=quantized, progress=False)
    assert result.readback.exact
    formats = {g["format"] for g in result.groups.values()}
    assert formats == {"pack-quantized"}
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["quantization_config"]["format"] == \
        "pack-quantized"
    tensors, _ = load_dequantized(tmp_path / "ckpt")
    config = transformers.AutoConfig.from_pretrained(tmp_path / "ckpt", local_files_only=True)
    reloaded = transformers.LlamaForCausalLM(config).eval()
    missing = reloaded.load_state_dict(tensors, strict=False)
    assert not missing.missing_keys and not missing.unexpected_keys
    tokens = batches(1)[0]
    assert torch.equal(reloaded(input_ids=tokens, use_cache=False).logits, quantized(tokens))


def test_a_bf16_model_keeps_float32_scales_and_reads_back_exactly(tmp_path):
    model = tiny_llama(torch.bfloat16, seed=3)
    plan = make_plan(model, {"0.self_attn.{q_proj,k_proj,v_proj}": "w4g32", "1.mlp.down_proj": "w8-asym"})
    result = write_compressed_tensors(model, plan, tmp_path / "bf16", progress=False)
    assert result.readback.exact
    assert any("bfloat16" in n and "float32" in n for n in result.notes)
    tensors, _ = load_dequantized(tmp_path / "bf16", "mixprec")
    assert tensors["model.layers.1.mlp.down_proj.weight"].dtype == torch.float32  # before the model's dtype


def test_inexpressible_candidates_are_listed_before_anything_is_written(tmp_path):
    model = tiny_llama()
    plan = make_plan(model, {"0.self_attn.o_proj": "w4g48", "0.mlp.down_proj": "w12",
                             "1.self_attn.o_proj": "w4x2", "1.mlp.{gate_proj,up_proj}": "fp8e5m2"})
    with pytest.raises(CandidateError) as info:
        write_compressed_tensors(model, plan, tmp_path / "no", progress=False)
    message = str(info.value)
    assert "cannot hold 5 layer(s)" in message
    assert "--profile" not in message and "analyze with --candidates it accepts" in message  # no profile plans for it
    for layer, why in [("lm.model.layers.0.self_attn.o_proj", "group size 48 does not divide the layer's 64 inputs"),
                       ("lm.model.layers.0.mlp.down_proj", "12-bit"), ("lm.model.layers.1.self_attn.o_proj",
                       "multipoint"), ("lm.model.layers.1.mlp.gate_proj", "e4m3"),
                       ("lm.model.layers.1.mlp.up_proj", "e4m3")]:
        assert any(layer in line and why in line for line in message.splitlines()), (layer, message)
    assert ACCEPTED in message
    assert not (tmp_path / "no").exists()


def test_a_quantized_embedding_is_refused():
    model = tiny_llama()
    plan = make_plan(model, {})
    plan.assignments["lm.model.embed_tokens"] = "w8"
    with pytest.raises(CandidateError, match="lm.model.embed_tokens .Embedding, w8.: compressed-tensors quantizes "
                                             "Linear layers here"):
        write_compressed_tensors(model, plan, "unused", progress=False)


@pytest.mark.parametrize("canonical_first", [False, True])
def test_gpt2_conv1d_layers_are_refused_before_anything_is_written(tmp_path, canonical_first):
    from mixprec.canonical import canonical
    config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=1, n_head=2, n_positions=32)
    torch.manual_seed(0)
    model = CausalLM(transformers.GPT2LMHeadModel(config)).eval()
    model = canonical(model) if canonical_first else model  # as the command line hands it over, or as loaded
    plan = Plan.uniform(discover_groups(model, batches(1)[0]), "fp32")
    plan.assignments["lm.transformer.h.0.mlp.c_fc"] = "w8"
    with pytest.raises(PlanError, match=r"1 planned layer\(s\) \(e.g. lm.transformer.h.0.mlp.c_fc\) are transformers "
                                        r"Conv1D layers"):
        write_compressed_tensors(model, plan, tmp_path / "gpt2", progress=False)
    assert not (tmp_path / "gpt2").exists()


def test_a_mixed_checkpoint_says_transformers_did_not_load_it(mixed):
    assert any("schemes (config groups)" in note for note in mixed[4].notes)


def test_a_plan_for_another_model_is_refused(tmp_path):
    plan = make_plan(tiny_llama(), {"0.self_attn.o_proj": "w8"})
    other = torch.nn.Sequential(torch.nn.Linear(8, 8))
    with pytest.raises(PlanError, match="does not have.*another model"):
        write_compressed_tensors(other, plan, tmp_path / "x", progress=False)
    model = tiny_llama()
    wrong = apply(model, make_plan(model, {"0.self_attn.o_proj": "w4"}), progress=False)
    with pytest.raises(PlanError, match="does not hold layer 'lm.model.layers.0.self_attn.o_proj' at w8"):
        write_compressed_tensors(model, plan, tmp_path / "x", quantized=wrong, progress=False)


def test_a_folder_with_other_weights_is_refused(tmp_path):
    (tmp_path / "model-00001-of-00002.safetensors").write_bytes(b"")
    model = tiny_llama()
    with pytest.raises(OutputError, match="model-00001-of-00002.safetensors"):
        write_compressed_tensors(model, make_plan(model, {"0.self_attn.o_proj": "w8"}), tmp_path, progress=False)


def test_a_folder_of_files_mixprec_did_not_write_is_refused_and_one_it_wrote_is_rewritten(tmp_path):
    model = tiny_llama()
    plan = make_plan(model, {"0.self_attn.o_proj": "w8"})
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "config.json").write_text("{}")
    with pytest.raises(OutputError, match="holds files mixprec did not write"):
        write_compressed_tensors(model, plan, tmp_path / "mine", progress=False)
    assert (tmp_path / "mine" / "config.json").read_text() == "{}"
    write_compressed_tensors(model, plan, tmp_path / "ours", progress=False)
    assert write_compressed_tensors(model, plan, tmp_path / "ours", progress=False).readback.exact


def test_a_tied_output_embedding_is_stored_once_and_cannot_take_another_format(tmp_path):
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = CausalLM(transformers.LlamaForCausalLM(config)).eval()
    plan = make_plan(model, {"0.self_attn.o_proj": "w4g32"})
    assert plan.layer_candidates()["lm.lm_head"] == "fp32"  # grouped with the embedding it shares
    result = write_compressed_tensors(model, plan, tmp_path / "tied", progress=False)
    tensors, _ = load_dequantized(tmp_path / "tied")
    assert result.readback.exact and "lm_head.weight" not in tensors and "model.embed_tokens.weight" in tensors
    assert "lm_head" in result.ignore
    alone = Plan({"head": "w8"}, {"head": ["lm.lm_head"]})
    with pytest.raises(ModelError, match="lm_head.weight shares its tensor with model.embed_tokens.weight"):
        write_compressed_tensors(model, alone, tmp_path / "no", progress=False)


@needs_ct
@pytest.mark.parametrize("candidate", ["w4g32", "w3g32-asym", "w8"])
def test_transformers_loads_a_one_scheme_checkpoint_to_the_simulated_model(tmp_path, candidate):
    # transformers' dequantize-on-load decompresses every dense layer with the first config group's scheme,
    # so only a checkpoint with one group goes through it (mixed ones are read by compressed-tensors above)
    model = tiny_llama(seed=4)
    plan = make_plan(model, {})
    for group in plan.assignments:
        if group not in ("lm.model.embed_tokens", "lm.lm_head"):
            plan.assignments[group] = candidate
    quantized = apply(model, plan, progress=False)
    write_compressed_tensors(model, plan, tmp_path / "one", quantized=quantized, progress=False)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "one", local_files_only=True, dtype=torch.float32,
        quantization_config=transformers.CompressedTensorsConfig(dequantize=True)).eval()
    state = loaded.state_dict()
    for key, want in simulated(quantized, plan).items():
        assert torch.equal(state[key], want), key
    tokens = batches(1)[0]
    assert torch.equal(loaded(input_ids=tokens, use_cache=False).logits, quantized(tokens))


def test_an_export_interrupted_while_writing_leaves_no_config_of_other_weights(tmp_path, monkeypatch):
    """A rewrite stopped after the new weights: the folder has no config.json describing the former scheme, stays
    mixprec's (the next export goes into it), and that export is whole."""
    import sys
    ct = sys.modules["mixprec.export.compressed_tensors"]
    model = tiny_llama()
    first, second = make_plan(model, {"0.self_attn.o_proj": "w4g32"}), make_plan(model, {"0.self_attn.o_proj": "w8"})
    out = tmp_path / "ct"
    write_compressed_tensors(model, first, out, progress=False)
    real = ct.write_json_atomic

    def stop_at_the_config(path, data):
        if path.name == "config.json":
            raise KeyboardInterrupt
        real(path, data)
    monkeypatch.setattr(ct, "write_json_atomic", stop_at_the_config)
    with pytest.raises(KeyboardInterrupt):
        write_compressed_tensors(model, second, out, progress=False)
    assert not (out / "config.json").exists()
    assert "being written" in json.loads((out / ct.REPORT_FILE).read_text())["status"]
    monkeypatch.setattr(ct, "write_json_atomic", real)
    result = write_compressed_tensors(model, second, out, progress=False)
    assert result.readback.exact and json.loads((out / "config.json").read_text())["quantization_config"]


def test_a_layer_made_a_few_rows_at_a_time_is_written_as_made_whole(mixed, tmp_path, monkeypatch):
    """Large layers' codes are made in chunks of rows (their float temporaries would take several times the
    weights): with chunks of a row or two, every format of the mixed plan writes the same tensors."""
    from safetensors.torch import load_file
    from mixprec import quantizers
    model, plan, quantized, out, _ = mixed
    monkeypatch.setattr(quantizers, "CHUNK_VALUES", 100)  # 1 or 2 rows of these layers at a time
    write_compressed_tensors(model, plan, tmp_path / "chunked", quantized=quantized, progress=False)
    whole, chunked = load_file(str(out / WEIGHTS_FILE)), load_file(str(tmp_path / "chunked" / WEIGHTS_FILE))
    assert whole.keys() == chunked.keys()
    assert all(torch.equal(whole[k], chunked[k]) for k in whole)


@pytest.mark.parametrize("reader", READERS)
def test_a_4_bit_asymmetric_grouped_layer_of_few_outputs_reads_back(tmp_path, reader):
    """At most 8 outputs: its 4-bit zero-points pack into one int32 row, which compressed-tensors 0.20's
    unpacking could not view (the export stopped with torch's stride error); the note says its loaders fail."""
    from torch import nn
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 4)).eval()
    plan = Plan.uniform(discover_groups(model, torch.randn(8, 64)), "w4g32-asym")
    result = write_compressed_tensors(model, plan, tmp_path / "ckpt", reader=reader, progress=False)
    assert result.readback.exact and result.readback.compared == 2
    assert any("pack their zero-points into one int32 row" in n for n in result.notes)
    wide = nn.Sequential(nn.Linear(64, 16)).eval()  # two rows: no note
    plan = Plan.uniform(discover_groups(wide, torch.randn(8, 64)), "w4g32-asym")
    assert not any("one int32 row" in n for n in write_compressed_tensors(
        wide, plan, tmp_path / "wide", reader=reader, progress=False).notes)
