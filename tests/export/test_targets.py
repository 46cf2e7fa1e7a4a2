import importlib

import pytest

from mixprec.candidates import parse_candidate
from mixprec.errors import CandidateError
from mixprec.export.checks import check_target
from mixprec.export.targets import TARGETS, get_onnx_target, get_target, nbits_block_size, realise
from mixprec.profiles import PROFILE_TARGETS, PROFILES


def test_block_size_lies_inside_mixprec_groups():
    assert nbits_block_size(128, 576) == 128
    assert nbits_block_size(96, 576) == 32  # blocks of 32 never cross a group of 96
    assert nbits_block_size(24, 576) is None  # no power-of-two factor >= 16
    assert nbits_block_size(None, 576) == 128 and nbits_block_size(None, 40) == 32 and nbits_block_size(None, 8) == 16


@pytest.mark.parametrize("cand,kind,expected", [
    ("w8a8", "Conv2d", "qdq"), ("w4a8", "Linear", "qdq"), ("w4g128", "Linear", "nbits"), ("w8", "Linear", "nbits"),
    ("w4", "Conv2d", "dq_weight"), ("w8a16", "Linear", "dq_weight"), ("w16a16", "Conv2d", "fp16"), ("fp32", "Linear", "float"),
])
def test_realisations(cand, kind, expected):
    assert realise(parse_candidate(cand), kind, 256).kind == expected


@pytest.mark.parametrize("cand", ["fp8", "bf16", "w4x2a8", "w8a4", "w8a8-asym", "w4g32a8", "w12a8"])
def test_what_ort_cpu_cannot_run(cand):
    assert isinstance(realise(parse_candidate(cand), "Linear", 256), str)


def test_every_target_profile_is_runnable_on_its_target():
    assert PROFILE_TARGETS["gguf"] == "gguf"
    for profile, target in PROFILE_TARGETS.items():  # gguf's through mixprec.export.gguf.check_plan
        layers = {f"l{i}": ("Linear", (64, 256), parse_candidate(c)) for i, c in enumerate(PROFILES[profile])}
        assert len(check_target(target, layers, reduce_range=profile.endswith("avx2"))) == len(layers)


@pytest.mark.parametrize("target,cand,why", [
    ("ort-cpu", "q4_0", "llama.cpp runs it"), ("gguf", "w4g32", "no GGUF type is exactly this candidate"),
    ("compressed-tensors", "w12", "12-bit integer weights")])
def test_check_target_is_the_check_of_the_target(target, cand, why):
    with pytest.raises(CandidateError) as info:
        check_target(target, {"a": ("Linear", (64, 256), parse_candidate(cand)),
                              "b": ("Linear", (64, 256), parse_candidate("fp32"))})
    message = str(info.value)
    assert "1 layer(s)" in message and why in message and TARGETS[target].candidates in message


def test_unknown_target():
    with pytest.raises(CandidateError, match="ort-cpu.*gguf.*compressed-tensors"):
        get_target("tensorrt")


def test_onnx_functions_name_the_writer_of_other_targets():
    assert get_onnx_target("ort-cpu").name == "ort-cpu"
    with pytest.raises(CandidateError, match=r"profile writes ONNX files; .*write_compressed_tensors"):
        get_onnx_target("compressed-tensors", "profile")


@pytest.mark.parametrize("cand,kind,inputs,block", [("w8a8d32", "Linear", 256, 32), ("w4g64a8d64", "Linear", 256, 64),
                                                    ("w4g128a8d32", "Linear", 256, 32), ("w8a8d128", "Linear", 64, 128)])
def test_dynamic_block_inputs_are_matmulnbits_at_accuracy_level_4(cand, kind, inputs, block):
    r = realise(parse_candidate(cand), kind, inputs)
    assert (r.kind, r.block_size, r.accuracy_level) == ("nbits", block, 4)
    assert realise(parse_candidate("w8"), "Linear", 256).accuracy_level is None  # the export's argument


@pytest.mark.parametrize("cand,kind", [("w8a8d32", "Conv2d"), ("w4g64a8d24", "Linear"), ("w4g48a8d32", "Linear"),
                                       ("w4a4d32", "Linear")])
def test_dynamic_block_inputs_ort_cpu_cannot_run(cand, kind):
    assert isinstance(realise(parse_candidate(cand), kind, 256), str)


def test_other_targets_refuse_dynamic_block_inputs():
    from mixprec.export.compressed_tensors import layer_scheme
    from mixprec.export.cuda import realise as cuda_realise
    assert "MatMulNBits" in layer_scheme(parse_candidate("w4g64a8d64"), "Linear", 256)
    assert isinstance(cuda_realise(parse_candidate("w4g64a8d64"), "Linear", (64, 256)), str)


def test_export_to_a_target_of_its_own_names_the_real_calls():
    import pytest

    from mixprec.errors import CandidateError
    from mixprec.export.targets import get_onnx_target
    with pytest.raises(CandidateError, match=r"deploy_cuda\(model, plan, data, device=...\) and save_cuda"):
        get_onnx_target("cuda")
    with pytest.raises(CandidateError, match=r"export_gguf\(model, plan, out"):
        get_onnx_target("gguf")


@pytest.mark.parametrize("vnni", [False, True])
def test_analyze_for_ort_cpu_names_the_8_bit_weights_a_cpu_without_vnni_saturates(monkeypatch, vnni):
    import warnings

    import torch
    from torch import nn

    import mixprec
    export = importlib.import_module("mixprec.export")  # the package (mixprec.export is also a function)
    from mixprec.errors import TargetNote
    monkeypatch.setattr(export, "cpu_has_vnni", lambda: vnni)
    assert export.saturation_note(parse_candidate(c) for c in ("w7a8", "w8", "w8a16", "w8a8d32", "fp32")) is None
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    data = [torch.randn(4, 8) for _ in range(2)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mixprec.analyze(model, data, "w4a8,w8a8", target="ort-cpu", progress=False)
        mixprec.analyze(model, data, "w4a8,w8a8", progress=False)  # no target: nothing to say
    notes = [str(w.message) for w in caught if issubclass(w.category, TargetNote)]
    if vnni:
        assert notes == []
    else:
        assert len(notes) == 1 and "planned as w8a8 " in notes[0] and "w7a8" in notes[0] and "w4a8" not in notes[0]


def test_the_command_line_prints_the_target_note_as_a_note(monkeypatch, capsys, tmp_path):
    import warnings

    export = importlib.import_module("mixprec.export")  # the package (mixprec.export is also a function)
    from mixprec.cli import main
    monkeypatch.setattr(export, "cpu_has_vnni", lambda: False)
    before = warnings.showwarning
    assert main(["analyze", "--model", "demo-cnn", "--profile", "ort-cpu", "--calibration-samples", "64",
                 "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    assert "note: this CPU has no VNNI" in err and "UserWarning" not in err
    assert warnings.showwarning is before  # restored for the rest of the process
