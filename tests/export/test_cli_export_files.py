"""mixprec export --target gguf | compressed-tensors on a tiny random Llama checkpoint folder (hf:DIR with its
own tokenizer): the file or folder written, read back exactly, the report beside it; the errors before any work."""
import json

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")
gguf = pytest.importorskip("gguf")

import mixprec  # noqa: E402
from mixprec.cli import main  # noqa: E402
from mixprec.errors import CandidateError  # noqa: E402
from mixprec.hf import load  # noqa: E402
from mixprec.plan import Plan  # noqa: E402
from tiny_llama import write_checkpoint, write_text  # noqa: E402

LAYERS = 3 * 7 + 2  # seven Linear layers a block, the embedding and the output layer


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return write_checkpoint(root / "tiny-llama"), write_text(root / "corpus.txt")


def fields(path):
    reader = gguf.GGUFReader(str(path))
    return reader, {t.name: t for t in reader.tensors}


def test_uniform_q4_0_to_gguf_reads_back_exactly_with_the_folder_tokenizer(checkpoint, tmp_path, capsys):
    folder, _ = checkpoint
    out = tmp_path / "tiny.gguf"
    assert main(["export", "--model", f"hf:{folder}", "--uniform", "q4_0", "--target", "gguf", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "GGUF tensor" in text and "Q4_0" in text
    assert f"read back (gguf.GGUFReader): {LAYERS + 7}/{LAYERS + 7} tensors exactly as written: the simulated weights" in text
    assert "pre-tokenizer 'default'" in text and "not re-evaluated" not in text  # no --eval: no metric
    report = json.loads((tmp_path / "tiny.gguf.report.json").read_text())
    assert report["target"] == "gguf" and report["types"] == {"Q4_0": LAYERS} and report["simulated"] is None
    assert report["readback"]["exact"] == report["readback"]["tensors"] and not report["readback"]["mismatched"]
    reader, tensors = fields(out)
    assert reader.fields["tokenizer.ggml.model"].contents() == "gpt2"
    assert tensors["blk.0.attn_q.weight"].tensor_type.name == "Q4_0"
    assert report["size_bytes"] == out.stat().st_size


def test_a_mixed_plan_file_to_gguf_with_f16_outside_and_the_simulated_metric(checkpoint, tmp_path, capsys):
    folder, text_file = checkpoint
    model = load(f"hf:{folder}")
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    cycle = ["q8_0", "q4_0", "fp16", "fp32"]
    assignments = {n: cycle[i % len(cycle)] for i, n in enumerate(linears)}
    Plan(assignments, {n: [n] for n in assignments}).save(tmp_path / "plan.json")
    out = tmp_path / "mixed.gguf"
    assert main(["export", "--model", f"hf:{folder}", "--plan", str(tmp_path / "plan.json"), "--target", "gguf",
                 "--float-type", "f16", "--eval", f"ppl:{text_file}?windows=2&length=32", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "simulated perplexity" in printed and "the gguf export itself was not re-evaluated" in printed
    assert "float16 tensors outside the plan their float32 weights rounded to float16" in printed
    report = json.loads((tmp_path / "mixed.gguf.report.json").read_text())
    assert report["simulated"]["name"] == "perplexity"
    assert report["readback"]["exact"] == report["readback"]["tensors"]
    _, tensors = fields(out)
    assert tensors["token_embd.weight"].tensor_type.name == "F16"  # outside the plan, 2-D: --float-type
    assert tensors["blk.0.attn_norm.weight"].tensor_type.name == "F32"  # norms stay F32
    written = {t["layer"]: t["type"] for t in report["tensors"] if t["layer"]}
    assert {written[n] for n in linears} == {"Q8_0", "Q4_0", "F16", "F32"}
    assert all(written[n] == {"q8_0": "Q8_0", "q4_0": "Q4_0", "fp16": "F16", "fp32": "F32"}[c]
               for n, c in assignments.items())


def test_uniform_w4g32_to_compressed_tensors(checkpoint, tmp_path, capsys):
    folder, _ = checkpoint
    out = tmp_path / "ct"
    assert main(["export", "--model", f"hf:{folder}", "--uniform", "w4g32", "--exclude", "lm.model.embed_tokens",
                 "--target", "compressed-tensors", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "group_0: pack-quantized, weights 4-bit int group 32; 22 layer(s)" in text
    assert "30 tensors, exactly the simulated weights" in text  # 22 quantized, the embedding, 7 norms
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "compressed-tensors" and len(config["config_groups"]["group_0"]["targets"]) == 22
    report = json.loads((out / "mixprec-report.json").read_text())
    assert report["target"] == "compressed-tensors" and report["readback"]["exact"] and report["simulated"] is None
    assert (out / "tokenizer.json").is_file()  # copied from the hf: folder
    # the folder mixprec wrote may be written again
    assert main(["export", "--model", f"hf:{folder}", "--uniform", "w8", "--exclude", "lm.model.embed_tokens",
                 "--target", "compressed-tensors", "--out", str(out)]) == 0


def test_a_candidate_gguf_cannot_write_is_one_error_listing_the_layers(checkpoint, tmp_path, capsys, monkeypatch):
    import sys
    folder, _ = checkpoint
    monkeypatch.setattr(sys.modules["mixprec.apply"], "apply", lambda *a, **k: pytest.fail("quantized before the check"))
    assert main(["export", "--model", f"hf:{folder}", "--uniform", "w4g32", "--target", "gguf",
                 "--out", str(tmp_path / "x.gguf")]) == 2
    err = capsys.readouterr().err
    assert f"target gguf cannot write {LAYERS} layer(s)" in err and "lm.model.layers.0.self_attn.q_proj (w4g32)" in err
    assert "gguf writes: q8_0 (Q8_0), q4_0 (Q4_0)" in err and "Traceback" not in err
    assert not (tmp_path / "x.gguf").exists()


def test_the_rounding_asked_for_is_what_the_gguf_file_holds(checkpoint, tmp_path, capsys):
    """--rounding gptq --static-groups: the file holds GPTQ's codes (other blocks than nearest's), read back
    exactly; without --data there is nothing for GPTQ to read, which is said before any work."""
    folder, text_file = checkpoint
    data = f"text:{text_file}?windows=2&length=32"
    nearest, gptq = tmp_path / "nearest.gguf", tmp_path / "gptq.gguf"
    base = ["export", "--model", f"hf:{folder}", "--uniform", "q4_0", "--target", "gguf"]
    assert main(base + ["--out", str(nearest)]) == 0
    assert main(base + ["--data", data, "--rounding", "gptq", "--static-groups", "--out", str(gptq)]) == 0
    assert "tensors exactly as written: the simulated weights" in capsys.readouterr().out
    _, a = fields(nearest)
    _, b = fields(gptq)
    assert a.keys() == b.keys()
    differ = [n for n in a if n.endswith("ffn_up.weight") and bytes(a[n].data) != bytes(b[n].data)]
    assert differ  # GPTQ moved codes
    assert main(base + ["--rounding", "gptq", "--static-groups", "--out", str(tmp_path / "x.gguf")]) == 2
    assert "gptq rounding reads calibration batches: give --data" in capsys.readouterr().err


def test_gptq_with_dynamic_groups_is_refused_before_it_runs(checkpoint, tmp_path, capsys, monkeypatch):
    """Its group scales are its own, not the file's: refused before GPTQ runs, whether asked for or recorded in
    the plan, and without a note that the file holds GPTQ's weights."""
    import sys
    folder, text_file = checkpoint
    data = f"text:{text_file}?windows=2&length=32"
    monkeypatch.setattr(sys.modules["mixprec.apply"], "apply", lambda *a, **k: pytest.fail("rounded before the check"))
    assert main(["export", "--model", f"hf:{folder}", "--data", data, "--uniform", "q4_0", "--target", "gguf",
                 "--rounding", "gptq", "--out", str(tmp_path / "x.gguf")]) == 2
    err = capsys.readouterr().err
    assert "GPTQ with dynamic groups" in err and "--static-groups" in err and "Traceback" not in err
    model = load(f"hf:{folder}")
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    plan = Plan({n: "w4g32" for n in linears}, {n: [n] for n in linears}, metadata={"rounding": "gptq"})
    plan.save(tmp_path / "plan.json")
    for target, out in (("ort-cpu", "x.onnx"), ("compressed-tensors", "ct")):
        assert main(["export", "--model", f"hf:{folder}", "--data", data, "--plan", str(tmp_path / "plan.json"),
                     "--target", target, "--out", str(tmp_path / out)]) == 2
        captured = capsys.readouterr()
        assert "the plan was chosen with gptq-rounded weights" in captured.err and "--static-groups" in captured.err
        assert "they are what the file holds" not in captured.out


def test_bad_outs_are_refused_before_the_model_loads(checkpoint, tmp_path, capsys, monkeypatch):
    import mixprec.cli as cli
    folder, _ = checkpoint
    monkeypatch.setattr(cli, "_setup", lambda args: pytest.fail("the model was loaded before --out was checked"))
    base = ["export", "--model", f"hf:{folder}", "--uniform", "q8_0"]
    assert main(base + ["--target", "gguf", "--out", str(tmp_path / "model.onnx")]) == 2
    assert "--out must name a .gguf file for --target gguf" in capsys.readouterr().err
    assert main(base + ["--target", "compressed-tensors", "--out", str(folder)]) == 2  # the source checkpoint
    assert "holds files mixprec did not write" in capsys.readouterr().err
    assert main(base + ["--target", "ort-cpu", "--float-type", "f16", "--out", str(tmp_path / "m.onnx")]) == 2
    assert "--float-type is an option of --target gguf" in capsys.readouterr().err


def test_python_api_names_the_writer_of_each_target():
    assert {"export_gguf", "write_compressed_tensors", "deploy_cuda"} <= set(mixprec.__all__)
    from mixprec.export import TARGETS
    assert set(TARGETS) == {"ort-cpu", "gguf", "compressed-tensors", "cuda"}
    with pytest.raises(CandidateError, match=r"mixprec.export.export_gguf\(model, plan, out"):
        mixprec.export(torch.nn.Linear(4, 4), Plan({}, {}), None, target="gguf", out="m.gguf")


def test_an_onnx_file_and_a_gguf_file_of_one_name_keep_a_report_each():
    from mixprec.export import report_path
    assert report_path("m.onnx").name == "m.report.json"  # as it always was: mixprec evaluate reads it
    assert report_path("m.gguf").name == "m.gguf.report.json"
    assert report_path("m.onnx") != report_path("m.gguf")


def test_the_gguf_pre_tokenizer_is_given_on_the_command_line(checkpoint, tmp_path, capsys):
    """The note said 'pass tokenizer_pre=', which only Python could."""
    folder, _ = checkpoint
    out = tmp_path / "tiny.gguf"
    assert main(["export", "--model", f"hf:{folder}", "--uniform", "q8_0", "--target", "gguf", "--tokenizer-pre",
                 "llama-bpe", "--out", str(out)]) == 0
    assert "pre-tokenizer 'default'" not in capsys.readouterr().out
    assert fields(out)[0].fields["tokenizer.ggml.pre"].contents() == "llama-bpe"
    assert main(["export", "--model", "demo-cnn", "--uniform", "w8a8", "--tokenizer-pre", "llama-bpe", "--out",
                 str(tmp_path / "x.onnx")]) == 2
    assert "--tokenizer-pre is an option of --target gguf" in capsys.readouterr().err
