import json

import pytest

pytest.importorskip("onnxruntime")

from mixprec.cli import main  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_export_then_evaluate_the_onnx_file(capsys, tmp_path):
    out = tmp_path / "demo.onnx"
    assert main(["export", "--model", "demo-cnn", "--uniform", "w7a8", "--out", str(out), "--threads", "1",
                 "--calibration-samples", "64"]) == 0
    text = capsys.readouterr().out
    assert "ONNX Runtime runs" in text and "QLinearConv" in text and "simulated top1" in text
    assert "top-1 agreement of exported and simulated outputs on the evaluation data" in text
    assert "differ: a top-1 accuracy gap from these alone has a standard error of at most" in text
    report = json.loads((tmp_path / "demo.report.json").read_text())
    n, agree = report["outputs"]["evaluation"], report["agreement"]["evaluation"]
    assert n == 597 and abs(report["noise"] - 100 * ((1 - agree) / n) ** 0.5) < 1e-12  # the demo's held-out images
    assert report["exported"]["name"] == "top1" and abs(report["exported"]["value"] - report["simulated"]["value"]) < 1
    assert main(["evaluate", "--model", str(out), "--eval", "demo-cnn", "--threads", "1"]) == 0
    assert capsys.readouterr().out.strip().splitlines() == [f"top1 {report['exported']['value']:.6g}",
                                                            f"samples {n}"]  # the evaluation's details too


def test_export_errors_are_one_line(capsys, tmp_path):
    assert main(["export", "--model", "demo-cnn", "--uniform", "fp8", "--out", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err
    assert "target ort-cpu cannot run 4 layer(s)" in err and "Traceback" not in err
    assert "--profile ort-cpu or --profile ort-cpu-avx2 or --profile ort-cpu-lm" in err  # the profiles that plan for it
    assert main(["evaluate", "--model", str(tmp_path / "missing.onnx"), "--eval", "demo-cnn"]) == 2
    assert "not found" in capsys.readouterr().err


def test_a_bad_out_is_refused_before_the_model_loads(capsys, tmp_path, monkeypatch):
    import mixprec.cli as cli
    monkeypatch.setattr(cli, "_setup", lambda args: pytest.fail("the model was loaded before --out was checked"))
    assert main(["export", "--model", "demo-cnn", "--uniform", "w8a8", "--out", str(tmp_path / "model.pt")]) == 2
    assert "must name an .onnx file" in capsys.readouterr().err
    (tmp_path / "dir.onnx").mkdir()
    assert main(["export", "--model", "demo-cnn", "--uniform", "w8a8", "--out", str(tmp_path / "dir.onnx")]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_a_plan_chosen_with_gptq_weights_exports_them(capsys, tmp_path):
    """A plan measured with GPTQ-rounded weights deploys them: the file's codes are GPTQ's, not nearest's."""
    import torch
    import mixprec
    from mixprec.builtin import get_builtin
    from mixprec.export import OrtModule
    b = get_builtin("demo-cnn")
    model, data = b.model(), b.calibration(64)
    plan = mixprec.Plan.uniform(mixprec.discover_groups(model, data[0]), "w4a8",
                                {"rounding": "gptq", "rounding_options": mixprec.GPTQ().options()})
    path = plan.save(tmp_path / "plan.json")
    base = ["export", "--model", "demo-cnn", "--plan", str(path), "--calibration-samples", "64", "--threads", "1"]
    assert main(base + ["--out", str(tmp_path / "gptq.onnx")]) == 0
    assert "chosen with gptq-rounded weights; they are what the file holds" in capsys.readouterr().out
    assert main(base + ["--static-groups", "--out", str(tmp_path / "x.onnx")]) == 2  # a gptq switch alone
    assert "are options of --rounding gptq" in capsys.readouterr().err
    assert main(base + ["--rounding", "nearest", "--out", str(tmp_path / "nearest.onnx")]) == 0
    x = data[-1]
    gptq = mixprec.apply(model, plan, data, rounding="gptq", progress=False, joins=True)
    with torch.no_grad():
        want = gptq(x)
    got, other = OrtModule(tmp_path / "gptq.onnx")(x), OrtModule(tmp_path / "nearest.onnx")(x)
    assert (got - want).abs().max() < (other - want).abs().max()  # the file holds GPTQ's weights
    assert (got.argmax(1) == want.argmax(1)).float().mean() > 0.95


def test_a_pin_given_with_a_plan_is_applied_on_export_and_the_target_error_says_how(capsys, tmp_path):
    from mixprec.plan import Plan
    # a plan written per layer: the target cannot run fp8; the error names the pin that fixes it
    Plan({"conv1": "fp8", "conv2": "w8a8", "conv3": "w8a8", "fc": "w8a8"},
         {n: [n] for n in ("conv1", "conv2", "conv3", "fc")}).save(tmp_path / "plan.json")
    base = ["export", "--model", "demo-cnn", "--plan", str(tmp_path / "plan.json"), "--calibration-samples", "32",
            "--threads", "1"]
    assert main(base + ["--out", str(tmp_path / "a.onnx")]) == 2
    assert "--pin 'conv1=fp32'" in capsys.readouterr().err
    assert main(base + ["--pin", "conv1=fp32", "--out", str(tmp_path / "b.onnx")]) == 0
    assert "pin applied: group conv1: fp8 in the plan, fp32 by its pin" in capsys.readouterr().out
    rows = {r["layer"]: r for r in json.loads((tmp_path / "b.report.json").read_text())["layers"]}
    assert rows["conv1"]["candidate"] == "fp32" and rows["conv2"]["candidate"] == "w8a8"


@pytest.mark.parametrize("target, option", [("gguf", ["--threads", "2"]), ("gguf", ["--accuracy-level", "0"]),
                                            ("compressed-tensors", ["--decoder", "traced"]),
                                            ("ort-cpu", ["--dtype", "float16"]), ("ort-cpu", ["--device", "cpu"])])
def test_an_option_of_another_target_is_refused_before_anything_is_written(tmp_path, capsys, target, option):
    out = tmp_path / ("m.gguf" if target == "gguf" else "m.onnx" if target == "ort-cpu" else "ct")
    assert main(["export", "--model", "demo-cnn", "--uniform", "w8a8", "--target", target, *option,
                 "--out", str(out)]) == 2
    assert f"{option[0]} is an option of" in capsys.readouterr().err and not out.exists()


def test_gguf_of_a_model_it_cannot_hold_says_so_before_any_layer_format(tmp_path, capsys):
    assert main(["export", "--model", "demo-cnn", "--uniform", "q8_0", "--target", "gguf",
                 "--out", str(tmp_path / "m.gguf")]) == 2
    err = capsys.readouterr().err
    assert "GGUF export writes Hugging Face causal LMs" in err and "blocks of 32" not in err


def test_evaluate_says_when_the_folder_a_file_was_exported_from_is_gone_and_text_is_not_an_evaluation(tmp_path,
                                                                                                    capsys):
    """The tokenizer folder an ONNX file's report names had moved: the error blamed a --model hf:... never given."""
    out = tmp_path / "demo.onnx"
    assert main(["export", "--model", "demo-cnn", "--uniform", "w8", "--out", str(out), "--threads", "1",
                 "--calibration-samples", "32"]) == 0
    report = tmp_path / "demo.report.json"
    report.write_text(json.dumps({**json.loads(report.read_text()), "source_model": f"hf:{tmp_path / 'moved'}"}))
    capsys.readouterr()
    assert main(["evaluate", "--model", str(out), "--eval", "ppl:" + str(tmp_path / "t.txt")]) == 2
    err = capsys.readouterr().err
    assert "was exported from" in err and "no longer exists" in err and "--tokenizer hf:DIR" in err
    assert main(["evaluate", "--model", str(out), "--eval", "text:" + str(tmp_path / "t.txt")]) == 2
    assert "--eval ppl:" in capsys.readouterr().err
