import numpy as np
import pytest
import torch
from torch import nn

from mixprec.errors import SpecError
from mixprec.evaluation import EvalResult, to_eval_result
from mixprec.specs import load_data, load_eval, load_model

USER_FILE = '''
import torch
from torch import nn

def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3))

def data():
    return [torch.randn(5, 4) for _ in range(3)]

def labeled():
    return [(torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])) for _ in range(2)]

def evaluate(model):
    return 0.5

def evaluate_dict(model):
    return {"main": "ppl", "ppl": 12.0, "higher_is_better": False, "tokens": 100}

def broken():
    raise RuntimeError("boom")

def not_a_model():
    return 42
'''


@pytest.fixture()
def user_file(tmp_path):
    path = tmp_path / "user_code.py"
    path.write_text(USER_FILE)
    return path


def test_model_from_file_and_module(user_file):
    model = load_model(f"{user_file}:model")
    assert isinstance(model, nn.Sequential) and not model.training
    assert isinstance(load_model("mixprec.builtin.demo_cnn:DigitsCNN"), nn.Module)


def test_model_from_torchscript(tmp_path):
    path = tmp_path / "m.pt"
    torch.jit.save(torch.jit.script(nn.Linear(3, 2)), str(path))
    assert isinstance(load_model(str(path)), torch.jit.ScriptModule)


def test_model_spec_errors_say_which_part(user_file, tmp_path):
    with pytest.raises(SpecError, match="does not exist"):
        load_model(str(tmp_path / "nope.py") + ":model")
    with pytest.raises(SpecError, match="has no attribute 'missing'"):
        load_model(f"{user_file}:missing")
    with pytest.raises(SpecError, match="cannot import module 'no_such_pkg.mod'"):
        load_model("no_such_pkg.mod:fn")
    with pytest.raises(SpecError, match="calling broken\\(\\) failed: RuntimeError: boom"):
        load_model(f"{user_file}:broken")
    with pytest.raises(SpecError, match="expected a torch.nn.Module"):
        load_model(f"{user_file}:not_a_model")
    with pytest.raises(SpecError, match="not a built-in name"):
        load_model("resnet999")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not torchscript")
    with pytest.raises(SpecError, match="not a TorchScript file.*not a zip archive"):
        load_model(str(bad))


class _Pickled(nn.Linear):
    pass


def test_model_files_saved_another_way_say_what_they_hold_and_nothing_is_unpickled(tmp_path, monkeypatch):
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    with pytest.raises(SpecError, match=r"state dict of 4 tensors.*torch.load\(path, weights_only=True\)"):
        load_model(str(tmp_path / "weights.pt"))
    torch.save(_Pickled(4, 3), tmp_path / "whole.pt")
    loads = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(k.get("weights_only")) or real(*a, **k))
    with pytest.raises(SpecError, match=r"saved with torch.save\(model\): a pickled model, which mixprec does not"):
        load_model(str(tmp_path / "whole.pt"))
    assert loads and all(loads)  # weights_only every time
    exported = torch.export.export(model, (torch.randn(2, 4),))
    torch.export.save(exported, tmp_path / "program.pt2")
    with pytest.raises(SpecError, match="torch.export program.*file.py:function"):
        load_model(str(tmp_path / "program.pt2"))


def test_data_from_function_npz_and_pt(user_file, tmp_path):
    assert len(load_data(f"{user_file}:data")) == 3
    labeled = load_data(f"{user_file}:labeled")
    assert isinstance(labeled[0], tuple) and labeled[0][1].shape == (5,)
    assert len(load_data(f"{user_file}:data", limit=6)) == 2  # stops once 6 samples are reached

    npz = tmp_path / "calib.npz"
    np.savez(npz, inputs=np.random.rand(70, 4).astype(np.float64), labels=np.arange(70))
    batches = load_data(str(npz), batch_size=32)
    assert [b[0].shape[0] for b in batches] == [32, 32, 6] and batches[0][0].dtype == torch.float32

    pt = tmp_path / "calib.pt"
    torch.save(torch.randn(10, 4), pt)
    assert [b.shape[0] for b in load_data(str(pt), batch_size=4)] == [4, 4, 2]
    torch.save({"inputs": torch.randn(6, 4), "labels": torch.zeros(6)}, pt)
    assert len(load_data(str(pt), batch_size=4)[0]) == 2

    with pytest.raises(SpecError, match="no array named"):
        np.savez(npz, a=np.zeros(3), b=np.zeros(3))
        load_data(str(npz))
    with pytest.raises(SpecError, match="does not exist"):
        load_data(str(tmp_path / "missing.npz"))


def test_builtin_name_lists_its_own_data_and_eval():
    batches = load_data("demo-cnn", limit=64)
    assert batches[0].shape[1:] == (1, 8, 8) and sum(b.shape[0] for b in batches) == 64
    evaluate = load_eval("demo-cnn")
    result = evaluate(load_model("demo-cnn"))
    assert result.name == "top1" and 90 < result.value <= 100


def test_eval_results(user_file):
    model = load_model(f"{user_file}:model")
    assert load_eval(f"{user_file}:evaluate")(model) == EvalResult("metric", 0.5)
    result = load_eval(f"{user_file}:evaluate_dict")(model)
    assert (result.name, result.value, result.higher_is_better, result.details) == ("ppl", 12.0, False, {"tokens": 100})
    with pytest.raises(SpecError, match="name the main metric"):
        to_eval_result({"a": 1.0, "b": 2.0})
    with pytest.raises(SpecError, match="expected a float"):
        to_eval_result("high")
    assert to_eval_result({"acc": 0.9}).name == "acc"


def test_a_dict_evaluation_with_one_numpy_or_torch_number_is_taken():
    import numpy as np

    from mixprec.evaluation import to_eval_result
    assert to_eval_result({"acc": np.float32(0.75)}).value == 0.75
    assert to_eval_result({"acc": torch.tensor(0.5), "note": "x"}).name == "acc"


def test_calibration_samples_cut_every_kind_of_data_to_exactly_that_many(tmp_path, monkeypatch):
    x, y = torch.randn(128, 3), torch.arange(128) % 4
    torch.save([(x[:64], y[:64]), (x[64:], y[64:])], tmp_path / "batches.pt")
    for limit, sizes in ((10, [10]), (100, [64, 36]), (500, [64, 64])):
        data = load_data(str(tmp_path / "batches.pt"), limit=limit)
        assert [len(b[0]) for b in data] == sizes and all(len(b[1]) == len(b[0]) for b in data)
    (tmp_path / "numpy_data.py").write_text(
        "import numpy as np\n"
        "def batches():\n"
        "    x = np.ones((64, 3), dtype=np.float32)\n"
        "    return [(x, np.zeros(64, dtype=np.int64)), (x, np.zeros(64, dtype=np.int64))]\n")
    monkeypatch.chdir(tmp_path)
    data = load_data("numpy_data.py:batches", limit=70)  # numpy batches, cut: it said 'returned a list'
    assert [len(b[0]) for b in data] == [64, 6] and isinstance(data[1][0], torch.Tensor)


def test_data_whose_items_are_no_batches_or_whose_generator_fails_is_a_clear_error(tmp_path, monkeypatch):
    for name, obj in (("ints", [1, 2, 3]), ("strings", ["a", "b"]), ("none", [None, torch.ones(2, 3)])):
        torch.save(obj, tmp_path / f"{name}.pt")
        with pytest.raises(SpecError, match="batch 0 is a .* holding no tensor with a batch axis"):
            load_data(str(tmp_path / f"{name}.pt"))
    (tmp_path / "shards.py").write_text(
        "import torch\n"
        "def shards():\n"
        "    yield torch.ones(4, 3)\n"
        "    raise ValueError('bad shard 2')\n"
        "def number():\n"
        "    return 3\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SpecError, match=r"shards.*reading batch 1 failed: ValueError: bad shard 2"):
        load_data("shards.py:shards", limit=64)
    with pytest.raises(SpecError, match="returned a int, expected an iterable of batches"):
        load_data("shards.py:number")
    torch.save([["one", "two", "three"], ["four"]], tmp_path / "texts.pt")  # batches of plain values: as they are
    assert load_data(str(tmp_path / "texts.pt"), limit=3) == [["one", "two", "three"]]
    np.savez(tmp_path / "scalar.npz", inputs=np.ones((8, 3), dtype=np.float32), labels=np.int64(3))
    with pytest.raises(SpecError, match="labels are a single number"):
        load_data(str(tmp_path / "scalar.npz"))


def test_gradient_metrics_name_a_label_that_is_not_a_class():
    from mixprec.errors import MixprecError
    from mixprec.sensitivity.gradients import loss
    out = torch.randn(4, 10, requires_grad=True)
    with pytest.raises(MixprecError, match="label 103 is not a class of the 10 output columns"):
        loss(out, torch.tensor([1, 2, 103, 4]), "fisher")
    assert loss(out, torch.tensor([1, -100, 9, 0]), "fisher")[1] == 3  # -100: ignored, as cross_entropy does


def test_a_data_file_whose_path_holds_a_colon_is_read_as_a_file(tmp_path):
    folder = tmp_path / "c:d"
    folder.mkdir()
    np.savez(folder / "x.npz", inputs=np.ones((4, 3), dtype=np.float32))
    torch.save(torch.ones(4, 3), folder / "x.pt")
    assert [len(b) for b in load_data(str(folder / "x.npz"))] == [4]
    assert [len(b) for b in load_data(str(folder / "x.pt"))] == [4]


def test_a_pt_file_of_inputs_and_labels_saved_as_a_pair_is_batched(tmp_path):
    x, y = torch.randn(100, 1, 8, 8), torch.arange(100) % 10
    torch.save((x, y), tmp_path / "pair.pt")
    data = load_data(str(tmp_path / "pair.pt"), batch_size=32, limit=70)
    assert [tuple(b[0].shape) for b in data] == [(32, 1, 8, 8), (32, 1, 8, 8), (6, 1, 8, 8)]
    assert torch.equal(torch.cat([b[1] for b in data]), y[:70])
    torch.save([x[:50], x[50:]], tmp_path / "two_batches.pt")  # a list of batches stays one
    assert [len(b) for b in load_data(str(tmp_path / "two_batches.pt"))] == [50, 50]


def test_a_pt_pair_of_inputs_and_targets_of_any_shape_is_inputs_and_labels_never_a_second_batch(tmp_path):
    """A new user's segmentation masks (N, H, W), regression targets (N, 1) and a denoiser's clean images (the
    inputs' shape) saved as torch.save((x, y)) were read as two batches: the targets calibrated the model (or failed
    as a batch of another layout)."""
    from mixprec.errors import SpecError
    x = torch.randn(40, 3, 8, 8)
    for y in (torch.randint(0, 4, (40, 8, 8)), torch.randn(40, 1), torch.randn(40, 3, 8, 8)):
        torch.save((x, y), tmp_path / "pair.pt")
        data = load_data(str(tmp_path / "pair.pt"), batch_size=16)
        assert [tuple(b[0].shape) for b in data] == [(16, 3, 8, 8), (16, 3, 8, 8), (8, 3, 8, 8)]
        assert torch.equal(torch.cat([b[1] for b in data]), y)
    torch.save({"x": x, "targets": y}, tmp_path / "keys.pt")  # the names a .npz file takes
    assert torch.equal(torch.cat([b[1] for b in load_data(str(tmp_path / "keys.pt"))]), y)
    torch.save([x, torch.randint(0, 4, (40, 8, 8))], tmp_path / "list.pt")  # a list is batches: these cannot be
    with pytest.raises(SpecError, match=r"save a tuple, torch.save\(\(x, y\), path\)"):
        load_data(str(tmp_path / "list.pt"))


def test_fewer_calibration_samples_than_asked_for_or_very_few_are_said(tmp_path):
    from mixprec.specs import prepare
    torch.save(torch.randn(10, 4), tmp_path / "few.pt")
    model_file = tmp_path / "m.py"
    model_file.write_text("import torch\n\ndef build():\n    return torch.nn.Sequential(torch.nn.Linear(4, 3))\n")
    _, data, _, groups = prepare(f"{model_file}:build", str(tmp_path / "few.pt"), calibration_samples=100)
    assert sum(len(b) for b in data) == 10
    assert any("--calibration-samples 100 asked for more samples" in n and "all 10 are used" in n
               for n in groups.notes)
    assert any("only 10 calibration sample(s)" in n for n in groups.notes)
    torch.save(torch.randn(64, 4), tmp_path / "enough.pt")
    _, _, _, groups = prepare(f"{model_file}:build", str(tmp_path / "enough.pt"), calibration_samples=64)
    assert not any("calibration sample" in n for n in groups.notes)


def test_an_evaluation_that_raises_is_located_in_the_users_file_even_when_decorated(tmp_path):
    """An --eval function under @torch.no_grad() raised from the user's line, but the error named torch's
    _contextlib.py (the decorator's frame), not the user's file."""
    from mixprec.errors import EvaluationError
    from mixprec.specs import load_eval
    f = tmp_path / "ev.py"
    f.write_text("import torch\n\n@torch.no_grad()\ndef score(model):\n    x = 1\n    raise KeyError('num')\n")
    fn = load_eval(f"{f}:score", None)
    with pytest.raises(EvaluationError, match=rf"{f} line 6, in score"):
        fn(torch.nn.Linear(2, 2))


def test_an_eval_function_that_cannot_take_the_model_is_refused_when_loaded(tmp_path):
    from mixprec.errors import SpecError
    from mixprec.specs import load_eval
    f = tmp_path / "ev.py"
    f.write_text("def none():\n    return 1.0\n\ndef two(model, loader):\n    return 1.0\n\n"
                 "def fine(model, limit=10, *rest, **options):\n    return 2.0\n")
    for name, sig in (("none", r"none\(\)"), ("two", r"two\(model, loader\)")):
        with pytest.raises(SpecError, match=rf"called with the model as its one argument.*{sig}"):
            load_eval(f"{f}:{name}")
    assert load_eval(f"{f}:fine")(torch.nn.Linear(2, 2)).value == 2.0


def test_a_mistyped_function_name_gets_the_closest_of_the_files_own_functions(tmp_path):
    from mixprec.errors import SpecError
    from mixprec.specs import load_model
    spec = tmp_path / "mine.py"
    spec.write_text("from dataclasses import dataclass\nfrom pathlib import Path\nimport torch\n"
                    + "".join(f"def helper_{c}():\n    pass\n" for c in "abcdefghijkl")
                    + "def seg_build():\n    return torch.nn.Linear(2, 2)\n")
    with pytest.raises(SpecError) as info:
        load_model(f"{spec}:seg_buidl")
    message = str(info.value)
    assert "did you mean 'seg_build'?" in message
    assert "dataclass" not in message and "Path" not in message  # imported names are not the file's own


def test_the_state_dict_quantize_wrote_says_how_to_evaluate_the_quantized_model(tmp_path):
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    out = tmp_path / "q"
    out.mkdir()
    torch.save(model.state_dict(), out / "model.pt")
    (out / "plan.json").write_text("{}")
    (out / "result.json").write_text("{}")
    with pytest.raises(SpecError, match=r"the state dict `mixprec quantize` wrote.*--plan .*plan.json --eval SPEC"):
        load_model(str(out / "model.pt"))


def test_spec_functions_that_want_arguments_or_return_a_state_dict_say_what_to_do(tmp_path):
    from mixprec.specs import load_data
    spec = tmp_path / "mine.py"
    spec.write_text("import torch\n"
                    "def data_needs(n):\n    return [torch.randn(n, 4)]\n"
                    "def weights():\n    return torch.nn.Linear(4, 2).state_dict()\n"
                    "def broken():\n    raise TypeError('missing 1 required positional argument: x')\n"
                    "def build():\n    return broken()\n")
    with pytest.raises(SpecError, match=r"calls a --data function with no arguments, and data_needs\(\) requires n: "
                                        r"give it a default"):
        load_data(f"{spec}:data_needs")
    with pytest.raises(SpecError, match=r"gave a OrderedDict, .*that is a state dict: build the model in the function"):
        load_model(f"{spec}:weights")
    with pytest.raises(SpecError) as info:  # a TypeError from inside a function that takes none: no such hint
        load_model(f"{spec}:build")
    assert "no arguments" not in str(info.value)


@pytest.mark.parametrize("key", ["ppl", "val_loss", "top1-error", "WER"])
def test_a_dict_metric_named_as_a_loss_must_say_its_direction(key):
    with pytest.raises(SpecError, match=f"{key!r} reads as a loss, so add 'higher_is_better': False"):
        to_eval_result({key: 11.8})
    said = to_eval_result({key: 11.8, "higher_is_better": False})
    assert said.name == key and said.higher_is_better is False
    assert to_eval_result({"accuracy": 0.9}).higher_is_better  # not a loss's name: higher is better, as before


def test_a_model_given_in_training_mode_is_told_once_that_it_runs_in_eval_mode(tmp_path, capsys):
    from mixprec.specs import load_model
    (tmp_path / "train_mode.py").write_text(
        "import torch\n\ndef build():\n    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Dropout(0.5))\n"
        "\ndef build_eval():\n    return build().eval()\n")
    spec = f"{tmp_path / 'train_mode.py'}:build"
    model = load_model(spec)
    assert not any(m.training for m in model.modules())
    load_model(spec)  # loaded again (a measurement's loader): no second note
    out = capsys.readouterr().out
    assert out.count("training mode") == 1 and "model.eval()" in out
    load_model(f"{tmp_path / 'train_mode.py'}:build_eval")
    assert "training mode" not in capsys.readouterr().out


def test_specs_recorded_in_a_run_are_absolute_and_load_from_another_directory(tmp_path, monkeypatch, capsys):
    """A run recorded --model models.py:net as typed: solve --trust-run and the printed quantize command failed from
    any other working directory."""
    from mixprec.cli import main
    from mixprec.specs import absolute_spec
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.py").write_text("import torch\nfrom torch import nn\n\n\ndef net():\n    torch.manual_seed(0)\n"
                                   "    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))\n\n\n"
                                   "def data():\n    torch.manual_seed(1)\n    return [torch.randn(8, 4) for _ in range(2)]\n")
    (tmp_path / "d").mkdir()
    assert absolute_spec("m.py:net") == f"{tmp_path}/m.py:net"
    assert absolute_spec("hf:d?dtype=bf16") == f"hf:{tmp_path}/d?dtype=bf16"
    assert absolute_spec("text:w.txt?windows=2") == f"text:{tmp_path}/w.txt?windows=2"
    for unchanged in ("demo-cnn", "package.module:function", None):
        assert absolute_spec(unchanged) == unchanged
    assert main(["analyze", "--model", "m.py:net", "--data", "m.py:data", "--candidates", "w4a8,w8a8",
                 "--out", "run"]) == 0
    monkeypatch.chdir(tmp_path / "d")
    capsys.readouterr()
    assert main(["solve", "../run", "--budget", "bytes=0.9x", "--trust-run", "--out", "plan.json"]) == 0
    assert f"mixprec quantize --model {tmp_path}/m.py:net --data {tmp_path}/m.py:data" in capsys.readouterr().out


def test_endless_calibration_data_without_a_cap_is_an_error_not_a_hang(monkeypatch):
    import itertools

    import torch

    from mixprec import specs
    monkeypatch.setattr(specs, "ENDLESS", 50)
    with pytest.raises(specs.SpecError, match="still going: is it endless.*--calibration-samples"):
        specs._cap(itertools.cycle([torch.randn(4, 3)]), None, "--data x.py:f")
    assert len(specs._cap(itertools.cycle([torch.randn(4, 3)]), 400, "--data x.py:f")) == 100  # capped: fine


def test_a_data_function_returning_a_dataset_is_told_to_return_a_dataloader(tmp_path):
    from mixprec import specs
    (tmp_path / "d.py").write_text("import torch\nfrom torch.utils.data import TensorDataset\n\n\ndef d():\n"
                                   "    return TensorDataset(torch.randn(10, 3), torch.zeros(10))\n")
    with pytest.raises(specs.SpecError, match=r"a Dataset: .*DataLoader\(dataset, batch_size=32\)"):
        specs.load_data(f"{tmp_path / 'd.py'}:d")


def test_float64_batches_from_a_data_function_are_read_as_float32_unless_the_model_computes_in_float64(tmp_path):
    from mixprec.specs import prepare
    (tmp_path / "user.py").write_text(
        "import numpy as np, torch\n"
        "def model():\n    torch.manual_seed(0)\n    return torch.nn.Sequential(torch.nn.Linear(4, 3)).eval()\n"
        "def double():\n    return model().double()\n"
        "def data():\n    return [np.random.default_rng(i).normal(size=(8, 4)) for i in range(2)]\n")
    _, data, _, _ = prepare(f"{tmp_path}/user.py:model", f"{tmp_path}/user.py:data")
    assert {batch.dtype for batch in data} == {torch.float32}
    _, data, _, _ = prepare(f"{tmp_path}/user.py:double", f"{tmp_path}/user.py:data")
    assert {batch.dtype for batch in data} == {torch.float64}


def test_an_evaluations_other_figures_are_kept_as_json_holds_them():
    import json
    result = to_eval_result({"main": "acc", "acc": 0.5, "classes": {3, 1}, "loss": torch.tensor(0.25),
                             "per_class": np.array([0.5, 0.75]), "model": nn.Linear(1, 1)})
    assert result.value == 0.5 and result.details["classes"] == [1, 3] and result.details["loss"] == 0.25
    assert result.details["per_class"] == [0.5, 0.75] and result.details["model"].startswith("Linear(")
    json.dumps(result.details)  # the results and the run's logs are JSON


def test_a_model_file_or_function_that_fails_is_named_with_its_line(tmp_path):
    (tmp_path / "raises.py").write_text("import torch\nx = 1\nraise RuntimeError('boom at import')\n")
    (tmp_path / "calls.py").write_text("def model():\n    table = {}\n    return table['missing']\n")
    with pytest.raises(SpecError, match=r"importing .*raises.py failed: RuntimeError: boom at import \(.*raises.py "
                                        r"line 3, in <module>\)"):
        load_model(f"{tmp_path}/raises.py:model")
    with pytest.raises(SpecError, match=r"calling model\(\) failed: KeyError: 'missing' \(.*calls.py line 3, in model\)"):
        load_model(f"{tmp_path}/calls.py:model")


def test_a_metric_returned_as_text_is_refused_not_read_as_a_number():
    from mixprec.errors import EvaluationError
    with pytest.raises(EvaluationError, match="returned '0.5' for 'acc'; expected a number"):
        to_eval_result({"main": "acc", "acc": "0.5"})
