"""Block-level prefix reuse (mixprec.sensitivity.blocks): the same table as one full forward per
entry, for fewer forward-equivalents, on models torch.fx cannot trace."""
import numpy as np
import pytest
import torch
from torch import nn

from mixprec.candidates import parse_candidates
from mixprec.groups import discover_groups
from mixprec.sensitivity.analyze import analyze


class Block(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, 2 * width), nn.Linear(2 * width, width)

    def forward(self, x):
        if x.sum() > 1e9:  # data-dependent control flow: torch.fx cannot trace this model
            return x
        out = self.fc2(torch.relu(self.fc1(x)))
        out += x  # in place on the block's own value: a recorded output must not be changed by it
        return out


class Stack(nn.Module):
    def __init__(self, width=8, blocks=4, repeat_first=False):
        super().__init__()
        self.stem = nn.Linear(4, width)
        self.blocks = nn.ModuleList(Block(width) for _ in range(blocks))
        self.head = nn.Linear(width, 3)
        self.repeat_first = repeat_first

    def forward(self, x):
        h = self.stem(x)
        skip = h
        for block in self.blocks:
            h = block(h)
        if self.repeat_first:  # a block called twice: its output is no longer one value per forward
            h = self.blocks[0](h)
        return self.head(h + skip)  # a value from before the blocks, used after them


def tables(model, data, metric="sqnr"):
    groups = discover_groups(model, data[0])
    cands = parse_candidates("w4a8,w8a8")
    return {prefix: analyze(model, groups, cands, data, metric=metric, prefix=prefix, progress=False)
            for prefix in ("blocks", "none")}


@pytest.mark.parametrize("metric", ["sqnr", "kl"])
def test_blocks_give_the_naive_table_for_fewer_forward_equivalents(metric):
    torch.manual_seed(0)
    model = Stack().eval()
    data = [torch.randn(5, 4) for _ in range(3)]
    t = tables(model, data, metric)
    assert t["blocks"].metadata["prefix_sharing"] == "blocks"
    np.testing.assert_allclose(t["blocks"].values, t["none"].values, rtol=1e-6, atol=0)
    # stem and first block forks run everything, the head's fork only the stem and the head
    assert t["blocks"].metadata["forward_equivalents"] < 0.8 * t["none"].metadata["forward_equivalents"]


def test_a_block_called_twice_falls_back_to_full_forwards():
    torch.manual_seed(0)
    model = Stack(repeat_first=True).eval()
    data = [torch.randn(5, 4) for _ in range(2)]
    t = tables(model, data)
    meta = t["blocks"].metadata
    assert meta["prefix_sharing"] == "none" and "called once" in meta["fallback_reason"]
    np.testing.assert_allclose(t["blocks"].values, t["none"].values, rtol=1e-6, atol=0)


def test_auto_prefers_fx_and_uses_blocks_where_fx_fails():
    torch.manual_seed(0)
    traceable = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    data = [torch.randn(5, 4)]
    cands = parse_candidates("w8a8")
    meta = analyze(traceable, discover_groups(traceable, data[0]), cands, data, progress=False).metadata
    assert meta["prefix_sharing"] == "fx"
    model = Stack().eval()
    meta = analyze(model, discover_groups(model, data[0]), cands, data, progress=False).metadata
    assert meta["prefix_sharing"] == "blocks" and meta["fallback_reason"]


def test_hugging_face_llama_blocks_equal_the_naive_table(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("tokenizers")
    from mixprec.specs import load_data, load_model
    from tiny_llama import write_checkpoint, write_text
    folder, text = write_checkpoint(tmp_path / "llama"), write_text(tmp_path / "corpus.txt")
    spec = f"hf:{folder}"
    model = load_model(spec)
    data = load_data(f"text:{text}?windows=4&length=32&batch=2", model_spec=spec)
    t = tables(model, data, "kl")
    assert t["blocks"].metadata["prefix_sharing"] == "blocks"
    np.testing.assert_allclose(t["blocks"].values, t["none"].values, rtol=1e-5, atol=1e-12)
    assert t["blocks"].metadata["forward_equivalents"] < t["none"].metadata["forward_equivalents"]


def test_a_record_kept_away_comes_back_as_a_fresh_copy_on_its_device():
    from collections import namedtuple

    from mixprec.sensitivity.blocks import Away, _copy
    Out = namedtuple("Out", "hidden extra")
    t, u = torch.randn(2, 3), torch.randn(4)
    before = t.clone()  # what the record must still hold after in-place code changed what it gave out
    record = Out(Away(t), [u, {"n": 3}])
    fetched = _copy(record)
    assert isinstance(fetched, Out) and fetched.extra[1] == {"n": 3}
    assert torch.equal(fetched.hidden, t) and fetched.hidden.device == t.device
    assert torch.equal(fetched.extra[0], u) and fetched.extra[0].data_ptr() != u.data_ptr()
    fetched.hidden.add_(1)  # in-place code after a block never reaches the record
    assert torch.equal(_copy(record).hidden, before)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
def test_on_a_gpu_the_record_waits_in_cpu_memory():
    from mixprec.sensitivity.blocks import Away, _park
    parked = _park((torch.randn(3, device="cuda"), torch.randn(2)))
    assert isinstance(parked[0], Away) and parked[0].tensor.device.type == "cpu"
    assert isinstance(parked[1], torch.Tensor)


@pytest.mark.parametrize("metric", ["sqnr", "kl"])
def test_float_outputs_kept_in_cpu_memory_give_the_same_table(metric, monkeypatch):
    """Where the device lacks room for every float output (mixprec.offload), they wait in page-locked
    CPU memory and come back batch by batch: the table is the one kept on the device gives."""
    from mixprec.sensitivity import outputs
    torch.manual_seed(0)
    model = Stack().eval()
    data = [torch.randn(5, 4) for _ in range(3)]
    kept = tables(model, data, metric)["blocks"]
    parked = []

    class Counted(outputs.Away):
        def __init__(self, tensor):
            parked.append(tensor.shape)
            super().__init__(tensor)
    monkeypatch.setattr(outputs, "should_move", lambda device, needed: True)
    monkeypatch.setattr(outputs, "Away", Counted)
    moved = tables(model, data, metric)
    assert len(parked) == 2 * len(data)  # each batch's float output, in each of the two tables
    np.testing.assert_array_equal(moved["blocks"].values, kept.values)
    np.testing.assert_allclose(moved["none"].values, kept.values, rtol=1e-6, atol=0)


class Branching(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 3)

    def forward(self, x):
        h = self.a(x)
        if h.mean() > -100:  # a branch on a tensor's value: torch.fx cannot trace it
            h = torch.relu(h)
        return self.b(h)


def test_the_fallback_reason_says_in_the_users_terms_why_torch_fx_failed():
    torch.manual_seed(0)
    model = Branching().eval()
    data = [torch.randn(5, 4)]
    meta = analyze(model, discover_groups(model, data[0]), parse_candidates("w8a8"), data, progress=False).metadata
    assert meta["prefix_sharing"] == "none"
    reason = meta["fallback_reason"]
    assert reason.startswith("the forward branches or loops on a tensor's value") and "TraceError" in reason
    assert "stack of two or more blocks" in reason and "found)" not in reason


class TokenStack(Stack):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)

    def forward(self, ids):
        return super().forward(self.embed(ids).mean(1))


def test_a_model_that_fails_on_a_later_batch_is_named_as_the_users_failure_not_mixprecs():
    """The blocks' float pass runs each batch: the model's own error on batch 1 (a token id out of its
    embedding's range) is the model's, named with the batch, as on a plain forward."""
    from mixprec.errors import ModelError
    torch.manual_seed(0)
    model = TokenStack().eval()
    data = [torch.randint(0, 10, (5, 3)), torch.full((5, 3), 12)]
    with pytest.raises(ModelError, match=r"the model failed on calibration batch 1 of shape \(5, 3\): index out"):
        analyze(model, discover_groups(model, data[0]), parse_candidates("w8a8"), data, metric="sqnr",
                progress=False)
