import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from mixprec.candidates import parse_candidates
from mixprec.errors import MixprecError
from mixprec.groups import discover_groups
from mixprec.sensitivity import METRICS
from mixprec.sensitivity.analyze import analyze
from mixprec.sensitivity.table import SensitivityTable


class Residual(nn.Module):
    """Residual adds, in-place ReLUs and `+=`: what a fork must not write into."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        x = self.relu(self.stem(x))
        y = self.relu(self.a(x))
        y = self.b(y)
        y += x
        y = torch.relu_(y)
        return self.head(y.mean(dim=(2, 3)))


def data(n=3):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(4, 3, 8, 8, generator=g) for _ in range(n)]


def setup(candidates="w2a8,w4a8,w8a8,fp32"):
    model = Residual().eval()
    return model, discover_groups(model, data(1)[0]), parse_candidates(candidates)


@pytest.mark.parametrize("metric", ["sqnr", "kl"])
def test_forked_equals_naive_and_costs_less(metric):
    model, groups, cands = setup()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    forked = analyze(model, groups, cands, data(), metric=metric, progress=False)
    naive = analyze(model, groups, cands, data(), metric=metric, use_fx=False, progress=False)
    assert forked.metadata["forked"] and not naive.metadata["forked"]
    np.testing.assert_allclose(forked.values, naive.values, rtol=1e-5, atol=1e-12)
    assert forked.metadata["forward_equivalents"] < naive.metadata["forward_equivalents"]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_metric_properties():
    model, groups, cands = setup()
    for metric in ("sqnr", "kl", "roundoff"):
        table = analyze(model, groups, cands, data(), metric=metric, progress=False)
        assert table.complete and (table.values >= 0).all()
        assert (table.values[:, -1] == 0).all()  # fp32 does no damage
        # fewer bits, more damage: w2 > w4 > w8 for every group
        assert (table.values[:, 0] > table.values[:, 1]).all() and (table.values[:, 1] > table.values[:, 2]).all()


def test_roundoff_needs_no_data():
    model, groups, cands = setup("w4,w8")
    table = analyze(model, groups, cands, [], metric="roundoff", progress=False)
    w = model.stem.weight.detach()
    assert table["stem", "w8"] < table["stem", "w4"] < 0.05


def test_run_directory_resumes_without_recomputing(tmp_path, monkeypatch):
    model, groups, cands = setup()
    calls = []
    original = METRICS["sqnr"].measure

    def counting(self, ctx, chunk, runner, state):
        calls.append(tuple(chunk))
        if len(calls) == 2:
            raise KeyboardInterrupt  # interrupted after one chunk was written
        return original(self, ctx, chunk, runner, state)

    monkeypatch.setattr(METRICS["sqnr"], "measure", counting)
    with pytest.raises(KeyboardInterrupt):
        analyze(model, groups, cands, data(), metric="sqnr", run_dir=tmp_path, chunk_size=1, progress=False)
    assert len((tmp_path / "entries.rank0.jsonl").read_text().splitlines()) == len(cands)
    monkeypatch.setattr(METRICS["sqnr"], "measure", original)
    seen = []
    monkeypatch.setattr(METRICS["sqnr"], "measure", lambda self, ctx, chunk, runner, state: seen.append(tuple(chunk))
                        or original(self, ctx, chunk, runner, state))
    resumed = analyze(model, groups, cands, data(), metric="sqnr", run_dir=tmp_path, chunk_size=1, progress=False)
    assert calls[0] not in seen and len(seen) == len(groups) - 1
    fresh = analyze(model, groups, cands, data(), metric="sqnr", progress=False)
    np.testing.assert_allclose(resumed.values, fresh.values, rtol=1e-6)
    assert SensitivityTable.load(tmp_path).values.tolist() == resumed.values.tolist()
    assert (tmp_path / "sensitivity.csv").read_text().startswith("group,w2a8")


def test_torn_log_line_is_ignored(tmp_path):
    model, groups, cands = setup()
    analyze(model, groups, cands, data(), metric="roundoff", run_dir=tmp_path, chunk_size=1, progress=False)
    log = tmp_path / "entries.rank0.jsonl"
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines[:-1]) + '\n{"group": "hea')  # killed mid-write
    table = analyze(model, groups, cands, data(), metric="roundoff", run_dir=tmp_path, chunk_size=1, progress=False)
    assert table.complete


def test_cache_of_another_model_or_data_is_refused(tmp_path):
    model, groups, cands = setup()
    analyze(model, groups, cands, data(), metric="roundoff", run_dir=tmp_path, progress=False)
    other = Residual()
    with torch.no_grad():
        other.head.weight.add_(1)
    with pytest.raises(MixprecError, match="made with other model"):
        analyze(other, groups, cands, data(), metric="roundoff", run_dir=tmp_path, progress=False)
    with pytest.raises(MixprecError, match="made with other data"):
        analyze(model, groups, cands, data(2), metric="roundoff", run_dir=tmp_path, progress=False)
    with pytest.raises(MixprecError, match="settings differ"):
        analyze(model, groups, cands[:2], data(), metric="roundoff", run_dir=tmp_path, progress=False)


def test_bad_input():
    model, groups, cands = setup()
    with pytest.raises(MixprecError, match="empty"):
        analyze(model, groups, cands, [], metric="sqnr", progress=False)
    with pytest.raises(MixprecError, match="unknown sensitivity metric 'nope'"):
        analyze(model, groups, cands, data(), metric="nope", progress=False)


def test_non_finite_output_is_recorded_as_inf_with_a_warning(monkeypatch):
    from mixprec.sensitivity.context import MeasureContext

    class Broken(nn.Module):
        def forward(self, x):
            return torch.full((x.shape[0], 8, x.shape[2], x.shape[3]), float("nan"))

    original = MeasureContext.quantized_modules
    monkeypatch.setattr(MeasureContext, "quantized_modules", lambda self, group, cand: (
        {"a": Broken()} if group.name == "a" else original(self, group, cand)))
    model, groups, cands = setup("w4a8")
    with pytest.warns(RuntimeWarning, match="group a at w4a8 .* recorded as \\+inf"):
        table = analyze(model, groups, cands, data(), metric="sqnr", progress=False)
    assert math.isinf(table["a", "w4a8"]) and all(math.isfinite(table[g, "w4a8"]) for g in ("stem", "b", "head"))


def test_table_json_round_trip(tmp_path):
    table = SensitivityTable(["a", "b"], ["w4", "w8"], np.array([[1.0, math.inf], [np.nan, 0.0]]), "sqnr", {"x": 1})
    table.save(tmp_path)
    loaded = SensitivityTable.load(tmp_path / "sensitivity.json")
    assert loaded.groups == ["a", "b"] and loaded.metric == "sqnr"
    assert np.array_equal(np.isnan(loaded.values), np.isnan(table.values))
    assert loaded.values[0, 1] == math.inf and not loaded.complete
    json.loads((tmp_path / "sensitivity.json").read_text())  # strict JSON: no NaN/Infinity literals


def test_model_hash_covers_batchnorm_counters_and_changes_with_weights():
    from mixprec.sensitivity.store import model_hash
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))  # num_batches_tracked is a 0-dim tensor
    before = model_hash(model)
    assert before == model_hash(model)
    with torch.no_grad():
        model[1].running_mean.add_(1)
    assert model_hash(model) != before


def test_tensor_hash_reads_the_bytes_in_place_with_the_same_digest():
    """hash_tensors hashes each tensor's bytes through a memoryview: the digest is the one of the byte
    copies it replaced (so run directories keep their fingerprints), for every dtype and shape."""
    import hashlib
    from mixprec.sensitivity.store import hash_tensors
    tensors = [torch.randn(3, 5), torch.randn(4).to(torch.bfloat16), torch.tensor(2.5), torch.zeros(0),
               torch.arange(6).reshape(2, 3).t(), torch.randint(0, 9, (7,), dtype=torch.int64)]
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(str((tuple(t.shape), str(t.dtype))).encode())
        flat = t.detach().cpu().contiguous().reshape(-1)
        digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    assert hash_tensors(tensors) == digest.hexdigest()[:16]


def test_model_hash_is_the_sha256_of_each_tensors_digest_read_in_chunks(monkeypatch):
    """Each tensor's digest (shape, dtype, bytes) is taken on its own thread, a chunk at a time; the
    model's hash is the sha256 of the digests in name order, whatever the chunk size."""
    import hashlib
    from mixprec.sensitivity import store
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(2, 3).to(torch.bfloat16))
    model.register_buffer("mask", torch.tensor([True, False, True]))
    reference = hashlib.sha256()
    for _, t in sorted(model.state_dict().items()):
        digest = hashlib.sha256(str((tuple(t.shape), str(t.dtype))).encode())
        flat = t.detach().contiguous().reshape(-1)
        digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
        reference.update(digest.digest())
    expected = reference.hexdigest()[:16]
    assert store.model_hash(model) == expected
    monkeypatch.setattr(store, "HASH_CHUNK_BYTES", 7)
    assert store.model_hash(model) == expected


def test_a_run_fingerprinted_by_the_former_single_hash_still_resumes(tmp_path):
    """Runs written before the per-tensor hash recorded one sha256 over all the bytes: the same model
    is recognised by it, and another model is still refused."""
    from mixprec.sensitivity.store import hash_tensors, model_hash
    model, groups, cands = setup()
    analyze(model, groups, cands, data(), metric="roundoff", run_dir=tmp_path, chunk_size=1, progress=False)
    run_json = tmp_path / "run.json"
    run = json.loads(run_json.read_text())
    legacy = hash_tensors(t for _, t in sorted(model.state_dict().items()))
    assert run["fingerprint"]["model"] == model_hash(model) != legacy
    run["fingerprint"]["model"] = legacy
    run_json.write_text(json.dumps(run))
    assert model_hash(model, legacy) == legacy
    table = analyze(model, groups, cands, data(), metric="roundoff", run_dir=tmp_path, progress=False)
    assert table.complete
    other = Residual()
    with torch.no_grad():
        other.head.weight.add_(1)
    assert model_hash(other, legacy) != legacy
    with pytest.raises(MixprecError, match="made with other model"):
        analyze(other, groups, cands, data(), metric="roundoff", run_dir=tmp_path, progress=False)


def test_input_ranges_are_searched_once_per_layer_and_format_not_per_batch(monkeypatch):
    # the mse range search of an input quantizer was redone for every batch x group x candidate: an
    # analysis grew with the square of the batches (225 batches of 8 samples took 39 s for a small CNN)
    from torch import nn

    import mixprec
    from mixprec.quantizers import ActivationQuantizer
    calls = []
    original = ActivationQuantizer.finish_calibration
    monkeypatch.setattr(ActivationQuantizer, "finish_calibration",
                        lambda self: (calls.append(1), original(self))[1])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)).eval()
    for batches in (4, 16):
        calls.clear()
        data = [torch.randn(8, 16) for _ in range(batches)]
        mixprec.analyze(model, data, "w4a8,w8a8", "sqnr", progress=False, use_fx=False)
        assert len(calls) <= 2 * 2  # two layers x two formats, whatever the number of batches


@pytest.mark.parametrize("use_fx", [True, False])
def test_progress_moves_inside_one_calibration_batch_entry_by_entry(monkeypatch, use_fx):
    """One batch and one chunk (an LLM's analysis on few long windows): the bar still moves per entry, in whole
    entries, up to the total."""
    import mixprec.sensitivity.analyze as module
    updates = []

    class Bar:
        def __init__(self, total, initial=0, **kw):
            self.n = initial

        def update(self, k):
            updates.append(k)
            self.n += k

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False
    monkeypatch.setattr(module, "tqdm", Bar)
    model, groups, cands = setup()
    analyze(model, groups, cands, data(1), chunk_size=len(groups.groups), use_fx=use_fx)
    entries = len(groups.groups) * len(cands)
    assert sum(updates) == entries and all(isinstance(k, int) and k > 0 for k in updates)
    assert len(updates) >= len(groups.groups)  # not one jump at the chunk's end
