"""Target cuda: planned Linear layers become torch's low-bit kernels with the simulation's codes and scales.

On a machine without a GPU the same modules run the kernels' CPU twins (int4, int8) and _scaled_mm on the
CPU (fp8), so the codes, scales, packing and the artifact's round trip are checked here; the GPU kernels
themselves are measured by benchmarks/cuda_deploy.py.
"""
import json

import pytest
import torch
from torch import nn

from mixprec.apply import apply
from mixprec.errors import CandidateError
from mixprec.export.cuda import (CudaLayer, Fp8Linear, Int4Linear, Int8Linear, check_plan, deploy_cuda, load_cuda,
                                 model_dtype, save_cuda)
from mixprec.groups import discover_groups
from mixprec.plan import Plan


@pytest.fixture(autouse=True)
def no_grad():
    with torch.no_grad():
        yield


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.up = nn.Linear(128, 64)
        self.mid = nn.Linear(64, 64, bias=False)
        self.fp8 = nn.Linear(64, 32)
        self.head = nn.Linear(32, 16)
        self.last = nn.Linear(16, 8)

    def forward(self, x):
        x = torch.relu(self.up(x))
        x = torch.relu(self.mid(x))
        return self.last(torch.relu(self.head(torch.relu(self.fp8(x)))))


def data(n=2, size=16):
    g = torch.Generator().manual_seed(4)
    return [torch.randn(size, 3, 128, generator=g) for _ in range(n)]


def plan_for(model, batches, assignments):
    p = Plan.uniform(discover_groups(model, batches[0]), "fp32")
    p.assignments.update(assignments)
    return p


PLAN = {"up": "w4g32", "mid": "w8", "fp8": "fp8", "head": "w3g32-asym", "last": "fp16"}


def test_each_candidate_runs_its_kernel_with_the_simulated_weights():
    model, batches = Mlp().eval(), data()
    plan = plan_for(model, batches, PLAN)
    deployment = deploy_cuda(model, plan, batches, device="cpu", dtype=torch.float32, progress=False)
    kinds = {r["layer"]: r["kind"] for r in deployment.layers}
    assert kinds == {"up": "int4", "mid": "int8", "fp8": "fp8", "head": "int4", "last": "half"}
    modules = dict(deployment.model.named_modules())
    assert isinstance(modules["up"], Int4Linear) and modules["up"].group == 32
    assert isinstance(modules["mid"], Int8Linear) and isinstance(modules["fp8"], Fp8Linear)
    simulated = apply(model, plan, batches, progress=False)
    x = batches[0]
    a, b = simulated(x), deployment.model(x)
    # tinygemm keeps scales in bfloat16 and fp8 outputs are bfloat16: within a percent, not bit for bit
    assert float((a - b).abs().max()) < 2e-2 * float(a.abs().max())
    # each layer alone: the deployed int8 layer is the simulated one to float rounding
    mid_in = torch.relu(model.up(x))
    sim_mid = dict(simulated.named_modules())["mid"]
    assert torch.allclose(modules["mid"](mid_in), sim_mid(mid_in), atol=1e-4, rtol=1e-4)
    assert not deployment.fallbacks


def test_the_model_runs_in_the_dtype_most_planned_layers_compute_in():
    fp16, bf16 = CudaLayer("half", dtype="float16"), CudaLayer("half", dtype="bfloat16")
    int4, int8, fp8 = CudaLayer("int4", group=64), CudaLayer("int8"), CudaLayer("fp8")
    assert model_dtype({"a": fp16, "b": fp16, "c": int8}, "cuda") == torch.float16  # no cast at all
    assert model_dtype({"a": fp16, "b": fp16, "c": int4}, "cuda") == torch.float16  # one layer casts, not two
    assert model_dtype({"a": fp16, "b": int4, "c": fp8}, "cuda") == torch.bfloat16
    assert model_dtype({"a": fp16, "b": bf16}, "cuda") == torch.bfloat16  # a tie keeps bfloat16
    assert model_dtype({"a": int8}, "cuda:1") == torch.bfloat16
    assert model_dtype({"a": fp16}, "cpu") == torch.float32  # the kernels' CPU twins compute in float32
    model, batches = Mlp().eval(), data()
    plan = plan_for(model, batches, {"up": "fp16", "mid": "fp16", "fp8": "w8", "head": "fp16", "last": "fp32"})
    assert deploy_cuda(model, plan, batches, device="cpu", progress=False).dtype == "float32"
    assert deploy_cuda(model, plan, batches, device="cpu", dtype="float16", progress=False).dtype == "float16"
    with pytest.raises(Exception, match="dtype 'half' is not one of auto, bfloat16, float16, float32"):
        deploy_cuda(model, plan, batches, device="cpu", dtype="half", progress=False)


def test_int4_codes_and_zeros_reproduce_asymmetric_groups():
    model, batches = Mlp().eval(), data()
    plan = plan_for(model, batches, PLAN)
    deployment = deploy_cuda(model, plan, batches, device="cpu", dtype=torch.float32, progress=False)
    t = deployment.tensors["head"]
    w = (t["codes"].float() - 8) * t["scales"].repeat_interleave(32, 1) + t["zeros"].repeat_interleave(32, 1)
    simulated = dict(apply(model, plan, batches, progress=False).named_modules())["head"].layer.weight
    assert torch.allclose(w, simulated, atol=1e-6)
    assert int(t["codes"].max()) <= 7  # 3-bit codes in the 4-bit container


def test_artifact_round_trip(tmp_path):
    model, batches = Mlp().eval(), data()
    plan = plan_for(model, batches, PLAN)
    deployment = deploy_cuda(model, plan, batches, device="cpu", dtype=torch.float32, progress=False)
    save_cuda(deployment, tmp_path / "art")
    manifest = json.loads((tmp_path / "art" / "mixprec-cuda.json").read_text())
    assert {r["layer"]: r["group"] for r in manifest["layers"]}["up"] == 32
    loaded = load_cuda(Mlp().eval(), tmp_path / "art", device="cpu")
    x = batches[1]
    assert torch.equal(loaded.model(x), deployment.model(x))
    assert [r["kernel"] for r in loaded.layers] == [r["kernel"] for r in deployment.layers]


def test_what_cuda_cannot_run_is_one_error_listing_the_layers():
    conv = nn.Conv2d(3, 8, 3)
    lin = nn.Linear(96, 32)
    from mixprec.candidates import parse_candidate as c
    with pytest.raises(CandidateError) as err:
        check_plan({"conv": ("Conv2d", tuple(conv.weight.shape), c("w4")),
                    "a": ("Linear", (32, 96), c("w8a8")),
                    "b": ("Linear", (32, 96), c("w4g64")),
                    "ok": ("Linear", (32, 96), c("w4g32"))})
    text = str(err.value)
    assert "3 layer(s)" in text and "conv" in text and "integer inputs" in text and "group 64" in text
    assert "ok (" not in text


MLP_PY = '''
import torch
from torch import nn


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16)).eval()
'''


def test_cli_export_cuda_writes_an_artifact_that_loads(tmp_path, capsys):
    import numpy as np

    from mixprec.cli import main

    (tmp_path / "user.py").write_text(MLP_PY)
    np.savez(tmp_path / "data.npz", inputs=torch.randn(16, 64, generator=torch.Generator().manual_seed(2)).numpy())
    spec = ["--model", f"{tmp_path / 'user.py'}:model", "--data", str(tmp_path / "data.npz")]
    out = tmp_path / "art"
    assert main(["export", *spec, "--uniform", "w4g32", "--target", "cuda", "--device", "cpu", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "_weight_int4pack_mm_for_cpu" in printed and "CPU twins" in printed
    report = json.loads((out / "mixprec-cuda-report.json").read_text())
    assert [r["kind"] for r in report["layers"]] == ["int4", "int4", "int4"]
    import importlib.util
    spec_ = importlib.util.spec_from_file_location("user_mlp", tmp_path / "user.py")
    user = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(user)
    loaded = load_cuda(user.model(), out, device="cpu")
    assert loaded.model(torch.randn(3, 64)).shape == (3, 16)
    # a plan the target cannot run is refused before any work, with every layer named
    assert main(["export", *spec, "--uniform", "w8a8", "--target", "cuda", "--device", "cpu",
                 "--out", str(tmp_path / "no")]) == 2
    assert "integer inputs" in capsys.readouterr().err
    # the same export again into its own folder replaces it; a folder of other files is refused
    assert main(["export", *spec, "--uniform", "w8", "--target", "cuda", "--device", "cpu", "--out", str(out)]) == 0
    assert {r["kind"] for r in json.loads((out / "mixprec-cuda-report.json").read_text())["layers"]} == {"int8"}
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert main(["export", *spec, "--uniform", "w8", "--target", "cuda", "--device", "cpu", "--out", str(other)]) == 2
    assert "holds files mixprec did not write" in capsys.readouterr().err


def test_an_embedding_with_a_forward_of_its_own_keeps_it_when_deployed(tmp_path):
    # OPT's learned positions subclass nn.Embedding with a forward taking a mask and adding an offset: a plain
    # lookup in its place broke the model (an internal error)
    transformers = pytest.importorskip("transformers")
    from mixprec.specs import load_model
    torch.manual_seed(0)
    transformers.OPTForCausalLM(transformers.OPTConfig(
        vocab_size=64, hidden_size=32, ffn_dim=64, num_hidden_layers=1, num_attention_heads=4,
        max_position_embeddings=64, word_embed_proj_dim=32)).save_pretrained(tmp_path / "opt")
    model = load_model(f"hf:{tmp_path / 'opt'}")
    ids = [torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(i)) for i in range(2)]
    plan = Plan.uniform(discover_groups(model, ids[0][:1]), "w8")
    deployment = deploy_cuda(model, plan, ids, device="cpu", dtype=torch.float32, progress=False)
    simulated = apply(model, plan, ids, progress=False)
    with torch.no_grad():
        assert torch.allclose(deployment.model(ids[0]), simulated(ids[0]), atol=1e-3)
    row = next(r for r in deployment.layers if r["layer"].endswith("embed_positions"))
    assert "own forward" in row["kernel"]
