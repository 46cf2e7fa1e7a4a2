"""GPTQ's steps shared between plans (mixprec.rounding.prefix): a plan rounded after another that it
agrees with on the layers called first gives the same weights, bit for bit, as rounded alone."""
import pytest
import torch
from torch import nn

from mixprec.plan import Plan
from mixprec.rounding import prefix, round_weights


@pytest.fixture(autouse=True)
def fresh_store(monkeypatch):
    store = prefix.PrefixStore()
    monkeypatch.setattr(prefix, "STORE", store)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield store
    torch.set_num_threads(threads)


class Chain(nn.Module):
    def __init__(self, width=32, depth=5):
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.head = nn.Linear(width, 4)

    def forward(self, x):
        for layer in self.layers:
            x = torch.relu(layer(x)) + x
        return self.head(x)


NAMES = [f"layers.{i}" for i in range(5)] + ["head"]


def plan_of(cands):
    return Plan({n: c for n, c in zip(NAMES, cands)}, {n: [n] for n in NAMES})


def data(seed=1):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(32, 32, generator=g)
    return [torch.randn(64, 32, generator=g) @ mix for _ in range(3)]


def rounded(model, cands, batches):
    return round_weights(model, plan_of(cands), batches, "gptq", progress=False)


def alone(cands, batches):
    """The plan rounded by a store that has seen nothing."""
    saved = prefix.STORE
    prefix.STORE = prefix.PrefixStore()
    try:
        return rounded(Chain(), cands, batches)
    finally:
        prefix.STORE = saved


BASE = ["w4", "w4", "w3", "w4", "w3", "w8"]


@pytest.mark.parametrize("changed", [0, 2, 4, 5])
@pytest.mark.parametrize("new", ["w2", "fp16"])
def test_a_move_reuses_the_steps_before_it_and_equals_rounding_alone(fresh_store, changed, new):
    model, batches = Chain(), data()
    rounded(model, BASE, batches)
    before = fresh_store.reused_steps
    moved = list(BASE)
    moved[changed] = new
    got = rounded(model, moved, batches)
    # every integer layer called before the changed one is reused (fp16 layers are not rounded by GPTQ)
    assert fresh_store.reused_steps - before == changed
    expected = alone(moved, batches)
    assert got.keys() == expected.keys()
    for name in expected:
        assert torch.equal(got[name], expected[name]), name


def test_the_plan_moved_from_stays_while_its_moves_come_and_go(fresh_store):
    model, batches = Chain(), data()
    rounded(model, BASE, batches)
    for changed in (4, 3, 4):  # three moves from BASE: each reuses BASE's steps before it
        moved = list(BASE)
        moved[changed] = "w8"
        before = fresh_store.reused_steps
        rounded(model, moved, batches)
        assert fresh_store.reused_steps - before == changed


def test_the_same_plan_again_is_all_reused(fresh_store):
    model, batches = Chain(), data()
    first = rounded(model, BASE, batches)
    rounded_before = fresh_store.rounded_steps
    again = rounded(model, BASE, batches)
    assert fresh_store.rounded_steps == rounded_before
    assert all(torch.equal(first[n], again[n]) for n in first)


def test_other_data_or_a_changed_model_shares_nothing(fresh_store):
    model, batches = Chain(), data()
    rounded(model, BASE, batches)
    moved = list(BASE)
    moved[5] = "w4"
    before = fresh_store.reused_steps
    rounded(model, moved, data(seed=2))  # other calibration data
    assert fresh_store.reused_steps == before
    with torch.no_grad():
        model.layers[0].weight.mul_(1.5)  # the model changed in place
    got = rounded(model, moved, batches)
    assert fresh_store.reused_steps == before
    fresh = Chain()
    with torch.no_grad():
        fresh.layers[0].weight.mul_(1.5)
    expected = round_weights(fresh, plan_of(moved), batches, "gptq", progress=False)
    assert all(torch.equal(got[n], expected[n]) for n in expected)


def test_a_handed_out_weight_changed_in_place_is_never_served_again(fresh_store):
    model, batches = Chain(), data()
    first = rounded(model, BASE, batches)
    with torch.no_grad():
        first["layers.0"].add_(1.0)  # e.g. the applied model fine-tuned afterwards
    moved = list(BASE)
    moved[4] = "w8"
    got = rounded(model, moved, batches)
    expected = alone(moved, batches)
    assert all(torch.equal(got[n], expected[n]) for n in expected)


def test_calibrated_activations_are_never_shared(fresh_store):
    model, batches = Chain(), data()
    cands = ["w4a8"] * 5 + ["w8a8"]
    rounded(model, cands, batches)
    cands[4] = "w8a8"
    rounded(model, cands, batches)
    assert fresh_store.reused_steps == 0


def test_nothing_is_kept_beyond_the_weight_cache_budget(fresh_store, monkeypatch):
    monkeypatch.setenv("MIXPREC_WEIGHT_CACHE_MB", "0")
    model, batches = Chain(), data()
    rounded(model, BASE, batches)
    assert not fresh_store.entries


def test_a_llama_decoder_reuses_its_blocks_before_a_move_and_equals_rounding_alone(fresh_store):
    # Q/K/V and gate/up are one step each, the decoder layers a chain of blocks (rounded block by block),
    # the output layer tied to the embedding
    pytest.importorskip("transformers")
    from transformers import LlamaConfig, LlamaForCausalLM

    from mixprec.groups import discover_groups

    def model():
        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                             num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
        return LlamaForCausalLM(config).eval()

    lm = model()
    g = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(0, 64, (2, 24), generator=g)} for _ in range(2)]
    groups = discover_groups(lm, batches[0])
    names = [grp.name for grp in groups]
    base = Plan.uniform(groups, "w4g16")
    moved = Plan(dict(base.assignments), base.groups)
    late = next(n for n in names if "layers.2.mlp.down_proj" in n)
    moved.assignments[late] = "fp16"
    round_weights(lm, base, batches, "gptq", progress=False)
    got = round_weights(lm, moved, batches, "gptq", progress=False)
    assert fresh_store.reused_steps >= 2 * 4  # the two blocks before it (4 steps each: qkv, o, gate/up, down)
    prefix.STORE = prefix.PrefixStore()
    expected = round_weights(model(), moved, batches, "gptq", progress=False)
    assert got.keys() == expected.keys()
    for name in expected:
        assert torch.equal(got[name], expected[name]), name
