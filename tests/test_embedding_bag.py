"""ExplicitEmbeddingBag computes what nn.EmbeddingBag computes, and its table is quantized and exported."""
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

from mixprec.canonical import canonical, conversions
from mixprec.embedding_bag import ExplicitEmbeddingBag
from mixprec.groups import discover_groups

@settings(max_examples=60, deadline=None)  # 500 passed once
@given(mode=st.sampled_from(["sum", "mean", "max"]), two_d=st.booleans(), padding=st.booleans(),
       last=st.booleans(), weighted=st.booleans(), seed=st.integers(0, 10_000))
def test_it_matches_nn_embedding_bag(mode, two_d, padding, last, weighted, seed):
    g = torch.Generator().manual_seed(seed)
    num, dim = 12, 5
    bag = nn.EmbeddingBag(num, dim, mode=mode, padding_idx=3 if padding else None,
                          include_last_offset=last and not two_d)
    with torch.no_grad():
        bag.weight.normal_(generator=g)
    explicit = ExplicitEmbeddingBag(bag)
    assert explicit.weight is bag.weight
    if two_d:
        ids = torch.randint(0, num, (4, 6), generator=g)
        args = (ids,)
    else:
        n = int(torch.randint(0, 15, (1,), generator=g))
        ids = torch.randint(0, num, (n,), generator=g)
        cuts = sorted(int(c) for c in torch.randint(0, n + 1, (4,), generator=g))  # empty bags included
        offsets = torch.tensor([0] + cuts[:3] + ([n] if bag.include_last_offset else []))
        args = (ids, offsets)
    kwargs = {}
    if weighted and mode == "sum":
        kwargs["per_sample_weights"] = torch.rand(ids.shape, generator=g)
    assert torch.allclose(explicit(*args, **kwargs), bag(*args, **kwargs), atol=1e-5)


def test_per_sample_weights_need_mode_sum():
    explicit = ExplicitEmbeddingBag(nn.EmbeddingBag(5, 3, mode="mean"))
    with pytest.raises(ValueError, match="mode 'sum'"):
        explicit(torch.tensor([[1, 2]]), per_sample_weights=torch.ones(1, 2))


class Bag(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.EmbeddingBag(40, 16, mode="mean")
        self.fc = nn.Linear(16, 4)

    def forward(self, ids):
        return self.fc(self.emb(ids))


def test_its_table_is_a_quantizable_embedding_and_the_model_is_left_unchanged():
    model = Bag().eval()
    ids = torch.randint(0, 40, (8, 10))
    copy = canonical(model)
    assert isinstance(model.emb, nn.EmbeddingBag) and isinstance(copy.emb, ExplicitEmbeddingBag)
    assert copy.emb.weight is model.emb.weight
    assert torch.allclose(copy(ids), model(ids), atol=1e-6)
    assert any("EmbeddingBag" in note for note in conversions(copy))
    groups = discover_groups(model, ids)
    assert [(l.name, l.kind) for l in groups.layers] == [("emb", "Embedding"), ("fc", "Linear")]


def test_a_bag_model_exports_and_runs_as_simulated(tmp_path):
    pytest.importorskip("onnxruntime")
    from mixprec.apply import apply
    from mixprec.export import OrtModule, export
    from mixprec.plan import Plan
    model = Bag().eval()
    data = [torch.randint(0, 40, (8, 10)) for _ in range(3)]
    plan = Plan.uniform(discover_groups(model, data[0]), "w8a8")
    plan.assignments["emb"] = "w4"
    result = export(model, plan, data, out=tmp_path / "bag.onnx", progress=False)
    assert all(row["low_precision"] for row in result.layers), result.layers
    simulated = apply(model, plan, data, progress=False)
    assert torch.allclose(OrtModule(result.path)(data[0]), simulated(data[0]), atol=1e-4)
