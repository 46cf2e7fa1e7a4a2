import json

import pytest
import torch
from torch import nn

from conftest import load_builtin_or_skip
from mixprec.apply import apply
from mixprec.cli import main
from mixprec.errors import RoundingError
from mixprec.formats import IntFormat
from mixprec.groups import discover_groups
from mixprec.plan import Plan
from mixprec.quantizers import weight_qparams
from mixprec import rounding as rounding_package
from mixprec.rounding import brecq, round_weights
from mixprec.capture import forward

from test_gptq import correlated_inputs, one_thread  # noqa: F401  (tests/rounding is on sys.path: rootdir mode)


class Residual(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, width), nn.Linear(width, width)

    def forward(self, x):
        return x + self.fc2(torch.relu(self.fc1(x)))


class Net(nn.Module):
    """stem -> two residual blocks in a Sequential -> head: two blocks and two single layers."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Linear(64, 32)
        self.stage = nn.Sequential(Residual(32), Residual(32))
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        return self.head(self.stage(torch.relu(self.stem(x))))


LAYERS = ["stem", "stage.0.fc1", "stage.0.fc2", "stage.1.fc1", "stage.1.fc2", "head"]


def plan_of(assignments: dict[str, str]) -> Plan:
    return Plan({f"g_{n}": c for n, c in assignments.items()}, {f"g_{n}": [n] for n in assignments})


def data(n=1024):
    return list(correlated_inputs(n=n).split(256))


def test_blocks_are_the_elements_of_sequentials_and_the_rest_are_single_layers():
    model = Net()
    assert brecq.find_blocks(model, LAYERS) == {"stage.0": ["stage.0.fc1", "stage.0.fc2"],
                                                "stage.1": ["stage.1.fc1", "stage.1.fc2"],
                                                "stem": ["stem"], "head": ["head"]}
    # only planned layers count: a block without any is no block
    assert brecq.find_blocks(model, ["stage.1.fc2", "head"]) == {"stage.1": ["stage.1.fc2"], "head": ["head"]}
    # a ModuleList of transformer-like blocks, and names given explicitly
    layers = nn.ModuleList([Residual(8), Residual(8)])
    assert brecq.find_blocks(layers, ["0.fc1", "1.fc2"]) == {"0": ["0.fc1"], "1": ["1.fc2"]}
    assert brecq.find_blocks(model, LAYERS, ["stage"]) == {"stage": LAYERS[1:5], "stem": ["stem"], "head": ["head"]}
    with pytest.raises(RoundingError, match="overlap"):
        brecq.find_blocks(model, LAYERS, ["stage", "stage.0"])
    with pytest.raises(RoundingError, match="not a module"):
        brecq.find_blocks(model, LAYERS, ["stage.7"])


def output_error(model, weights, x):
    """Mean squared error of the model's output with ``weights`` in (activations float)."""
    with torch.no_grad():
        out = torch.func.functional_call(model, {f"{n}.weight": w for n, w in weights.items()}, (x,))
        return (out - model(x)).pow(2).sum(1).mean().item()


def test_weights_on_the_nearest_grid_and_output_error_below_nearest():
    model = Net().eval()
    plan = plan_of({n: "w3" for n in LAYERS})
    fmt = IntFormat(3, granularity="channel")
    near = round_weights(model, plan, data(), "nearest", progress=False)
    q = round_weights(model, plan, data(), "brecq", progress=False, iterations=300)
    for name, w in q.items():
        W = model.get_submodule(name).weight.detach()
        scale, zero_point = weight_qparams(W, fmt)
        code, down = torch.round(w / scale + zero_point), torch.floor(W / scale) + zero_point
        assert torch.equal(code * scale, w)  # on nearest rounding's grid
        assert torch.all((code == down.clamp(fmt.qmin, fmt.qmax)) | (code == (down + 1).clamp(fmt.qmin, fmt.qmax)))
    x = torch.cat(data())
    assert output_error(model, q, x) < 0.8 * output_error(model, near, x)


def test_block_inputs_come_from_the_reconstructed_quantized_model():
    """Block 2 is reconstructed on the inputs the quantized model gives it once block 1 (and the stem)
    carry their BRECQ weights, with quantized activations, against the float model's outputs."""
    model = Net().eval()
    plan = plan_of({n: "w3a8" for n in LAYERS})
    batches = data()
    options = brecq.BRECQ(iterations=30, fisher=False).options()
    q = round_weights(model, plan, batches, "brecq", progress=False, **options)
    quantized = apply(model, plan, batches, progress=False)
    for name in ["stem", "stage.0.fc1", "stage.0.fc2"]:
        quantized.get_submodule(name).layer.weight = nn.Parameter(q[name], requires_grad=False)
    run = lambda m, x, i: forward(m, x, i, torch.device("cpu"))  # noqa: E731
    inputs, grads = brecq._quantized_side(quantized, "stage.1", batches, None, run)
    outputs = brecq._float_outputs(model, "stage.1", batches, run)
    targets = {n: IntFormat(3, granularity="channel") for n in ["stage.1.fc1", "stage.1.fc2"]}
    options = {k: v for k, v in options.items() if k not in ("fisher", "blocks")}
    floats = {n: model.get_submodule(n).weight for n in targets}
    by_hand = brecq._reconstruct(quantized.get_submodule("stage.1"), "stage.1", floats, targets, inputs,
                                 outputs, None, "mse", **options)
    for name, w in by_hand.items():
        assert torch.equal(q[name], w)
    # the inputs went through stage.0's quantized activations: they differ from the float ones
    with torch.no_grad():
        float_inputs = model.stage[0](torch.relu(model.stem(torch.cat(batches))))
    assert not torch.allclose(torch.cat([a[0] for a, _ in inputs]), float_inputs)


def test_fisher_weight_is_the_kl_gradient_at_the_block_output_plus_one():
    model = Net().eval()
    plan = plan_of({n: "w3" for n in LAYERS})
    batches = data(256)
    quantized = apply(model, plan, batches, progress=False)
    for p in quantized.parameters():
        p.requires_grad_(False)
    run = lambda m, x, i: forward(m, x, i, torch.device("cpu"))  # noqa: E731
    with torch.no_grad():
        reference = [torch.log_softmax(model(b), -1) for b in batches]
    _, grads = brecq._quantized_side(quantized, "stage.0", batches, reference, run)
    x = batches[0]
    z = quantized.stage[0](torch.relu(quantized.stem(x))).detach().requires_grad_(True)
    log_q = torch.log_softmax(quantized.head(quantized.stage[1](z)), -1)
    kl = (reference[0].exp() * (reference[0] - log_q)).sum() / len(x)
    (g,) = torch.autograd.grad(kl, [z])
    assert torch.allclose(grads[0], g.abs() + 1)
    assert grads[0].min() >= 1 and (grads[0] > 1).any()


class Interrupted(BaseException):
    """Stands for Ctrl-C (pytest keeps KeyboardInterrupt for itself)."""


def _interrupted_brecq(monkeypatch, tmp_path, model, plan, batches, options, error):
    """brecq stopped by ``error`` as it starts its third block; then the calls of a resumed run (and its result)."""
    real = brecq._reconstruct
    calls, interrupt = [], [True]

    def interrupted(block, name, *args, **kwargs):
        calls.append(name)
        if interrupt[0] and len(calls) == 3:
            raise error
        return real(block, name, *args, **kwargs)

    monkeypatch.setattr(brecq, "_reconstruct", interrupted)
    with pytest.raises(error):
        round_weights(model, plan, batches, "brecq", progress=False, checkpoint=tmp_path, **options)
    assert len(list(tmp_path.glob("brecq-*.pt"))) == 1
    calls.clear()
    interrupt[0] = False
    resumed = round_weights(model, plan, batches, "brecq", progress=False, checkpoint=tmp_path, **options)
    return calls, resumed


def test_checkpoint_resumes_after_an_interruption(tmp_path, monkeypatch):
    model = Net().eval()
    plan = plan_of({n: "w3" for n in LAYERS})
    batches = data(512)
    options = {"iterations": 20}
    whole = round_weights(model, plan, batches, "brecq", progress=False, **options)
    monkeypatch.setattr(rounding_package, "SAVE_EVERY_S", 0.0)
    calls, resumed = _interrupted_brecq(monkeypatch, tmp_path, model, plan, batches, options, Interrupted)
    assert calls == ["stage.1", "head"]  # stem and stage.0 were done before the interruption
    assert all(torch.equal(whole[n], resumed[n]) for n in LAYERS)
    calls.clear()
    again = round_weights(model, plan, batches, "brecq", progress=False, checkpoint=tmp_path, **options)
    assert calls == [] and all(torch.equal(whole[n], again[n]) for n in LAYERS)
    # other settings are another checkpoint, never the old weights
    round_weights(model, plan, batches, "brecq", progress=False, checkpoint=tmp_path, iterations=10)
    assert len(list(tmp_path.glob("brecq-*.pt"))) == 2 and len(calls) == 4


def test_gptq_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    model = Net().eval()
    plan = plan_of({n: "w3" for n in LAYERS})
    batches = data(512)
    whole = round_weights(model, plan, batches, "gptq", progress=False, checkpoint=tmp_path)
    from mixprec.rounding import gptq
    monkeypatch.setattr(gptq, "round_layer", lambda *a, **k: pytest.fail("a finished layer was rounded again"))
    again = round_weights(model, plan, batches, "gptq", progress=False, checkpoint=tmp_path)
    assert all(torch.equal(whole[n], again[n]) for n in LAYERS)


def test_bad_options_are_clear_errors():
    model = Net().eval()
    plan = plan_of({"stem": "w3"})
    with pytest.raises(RoundingError, match="brecq option fisher must be True"):
        round_weights(model, plan, data(256), "brecq", fisher="yes")
    with pytest.raises(RoundingError, match="brecq option blocks must be a list"):
        round_weights(model, plan, data(256), "brecq", blocks="stage")
    with pytest.raises(RoundingError, match="brecq option iterations must be a positive integer"):
        round_weights(model, plan, data(256), "brecq", iterations=0)


def test_brecq_on_demo_cnn_beats_nearest_at_two_bits(tmp_path):
    builtin, model = load_builtin_or_skip("demo-cnn")
    calibration = builtin.calibration(256)
    plan = Plan.uniform(discover_groups(model, builtin.example_input()), "w2a8")
    nearest = builtin.evaluate(apply(model, plan, calibration, progress=False)).value
    rounded = builtin.evaluate(apply(model, plan, calibration, rounding="brecq", progress=False,
                                     rounding_options={"iterations": 200})).value
    assert rounded > nearest + 10  # 2-bit nearest rounding loses tens of points on this model


def test_cli_quantize_with_brecq(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MIXPREC_CACHE", str(tmp_path / "cache"))
    base = ["quantize", "--model", "demo-cnn", "--uniform", "w3a8", "--rounding", "brecq"]
    assert main(base + ["--rounding-iterations", "20", "--out", str(tmp_path / "b")]) == 0
    result = json.loads((tmp_path / "b" / "result.json").read_text())
    assert result["rounding"] == "brecq" and result["rounding_options"]["iterations"] == 20
    assert list((tmp_path / "cache" / "rounding").glob("brecq-*.pt"))  # resumable
    capsys.readouterr()
    assert main(base + ["--act-order", "--out", str(tmp_path / "x")]) == 2
    assert "--act-order is an option of --rounding gptq" in capsys.readouterr().err


class NoGrad(Net):
    @torch.no_grad()
    def forward(self, x):
        return super().forward(x)


def test_a_forward_without_gradients_is_a_clear_error_that_names_the_roundings_that_need_none():
    model, batches = NoGrad().eval(), data(256)
    plan = plan_of({n: "w4a8" for n in LAYERS})
    with pytest.raises(RoundingError, match="torch.no_grad or torch.inference_mode.*gptq or adaround"):
        round_weights(model, plan, batches, "brecq", progress=False, iterations=2)


def test_a_ctrl_c_keeps_what_was_rounded_even_before_the_first_periodic_save(tmp_path, monkeypatch):
    monkeypatch.setattr(rounding_package, "SAVE_EVERY_S", 1e9)  # no periodic save would come
    calls, _ = _interrupted_brecq(monkeypatch, tmp_path, Net().eval(), plan_of({n: "w3" for n in LAYERS}), data(512),
                                  {"iterations": 20}, KeyboardInterrupt)
    assert calls == ["stage.1", "head"]  # the two blocks done before the Ctrl-C were kept


def test_a_damaged_checkpoint_is_a_note_and_one_that_cannot_be_written_does_not_stop_the_rounding(tmp_path,
                                                                                                   monkeypatch):
    from mixprec import atomic
    from mixprec.errors import RoundingNote
    model = Net().eval()
    plan = plan_of({n: "w3" for n in LAYERS})
    batches = data(512)
    whole = round_weights(model, plan, batches, "gptq", progress=False, checkpoint=tmp_path)
    (path,) = tmp_path.glob("gptq-*.pt")
    path.write_bytes(b"\x80\x04junk")  # not a checkpoint of plain tensors: never unpickled as code
    with pytest.warns(RoundingNote, match="is damaged .*: the rounding starts again"):
        again = round_weights(model, plan, batches, "gptq", progress=False, checkpoint=tmp_path)
    assert all(torch.equal(whole[n], again[n]) for n in LAYERS)
    path.unlink()

    def full(obj, f):  # torch.save's archive writer on a full disk
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 357632 vs 357528")
    monkeypatch.setattr(torch, "save", full)
    with pytest.warns(RoundingNote, match="could not be written .*full disk.*the rounding goes on"):
        rounded = round_weights(model, plan, batches, "gptq", progress=False, checkpoint=tmp_path)
    assert all(torch.equal(whole[n], rounded[n]) for n in LAYERS)
    with pytest.raises(atomic.OutputError, match="cannot write .*model.pt: the write stopped part-way"):
        atomic.save_torch_atomic({"w": torch.ones(1)}, tmp_path / "model.pt")
