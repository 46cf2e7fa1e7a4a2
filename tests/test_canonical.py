"""The canonical model: reparametrized weights folded, attention explicit, the model passed in untouched."""
import warnings

import torch
from torch import nn
from torch.nn.utils import parametrizations

from mixprec.apply import apply
from mixprec.canonical import canonical, reparametrized
from mixprec.groups import discover_groups
from mixprec.plan import Plan


def reparametrized_model():
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the hook-based forms are deprecated, and still in use
        return nn.Sequential(parametrizations.weight_norm(nn.Linear(4, 8)), nn.ReLU(),
                             parametrizations.spectral_norm(nn.Linear(8, 8)), nn.ReLU(),
                             torch.nn.utils.weight_norm(nn.Linear(8, 8)), nn.ReLU(),
                             torch.nn.utils.spectral_norm(nn.Linear(8, 8)), nn.ReLU(),
                             parametrizations.orthogonal(nn.Linear(8, 8)), nn.Linear(8, 3)).eval()


def test_reparametrized_weights_are_folded_into_plain_parameters_and_the_model_is_kept():
    model = reparametrized_model()
    x = torch.randn(16, 4)
    with torch.no_grad():
        want = model(x)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert reparametrized(model) == ["0.weight", "2.weight", "4.weight", "6.weight", "8.weight"]
    folded = canonical(model)
    assert reparametrized(folded) == []
    assert all(type(folded[i]) is nn.Linear and isinstance(folded[i].weight, nn.Parameter) for i in (0, 2, 4, 6, 8))
    with torch.no_grad():
        assert torch.equal(folded(x), want)
        assert torch.equal(model(x), want)  # the model passed in still computes, from its own parameters
    assert reparametrized(model) == ["0.weight", "2.weight", "4.weight", "6.weight", "8.weight"]
    assert before.keys() == model.state_dict().keys()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert folded[9].weight is model[9].weight  # what is not folded is shared, not copied
    notes = discover_groups(model, x).notes  # what canonical did is said
    assert any(n.startswith("5 reparametrized weight(s)") and "e.g. 0.weight" in n for n in notes)


def test_a_weight_normed_model_is_quantized_with_its_weights_on_the_grid():
    model = reparametrized_model()
    data = [torch.randn(16, 4) for _ in range(2)]
    groups = discover_groups(model, data[0])
    assert len(groups) == 6 and all(g.macs for g in groups)
    quantized = apply(model, Plan.uniform(groups, "w2a8"), data, progress=False)
    codes = quantized.get_submodule("0").layer.weight.detach()
    assert len(torch.unique(codes[0])) <= 4  # 2-bit codes of the folded weight, per output channel
    with torch.no_grad():
        assert not torch.allclose(quantized(data[0]), model(data[0]), atol=1e-3)


def test_a_model_with_nothing_to_change_is_returned_itself():
    plain = nn.Sequential(nn.Linear(3, 3))
    assert canonical(plain) is plain
    scripted = torch.jit.script(nn.Sequential(nn.Linear(4, 4)))
    assert canonical(scripted) is scripted


def test_a_compiled_model_is_taken_as_the_module_it_compiles():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    compiled = torch.compile(model)  # a wrapper; nothing is compiled until it is called
    assert canonical(compiled) is model
    assert [l.name for l in discover_groups(compiled, torch.randn(2, 4)).layers] == ["0", "2"]


def test_a_data_parallel_model_is_taken_as_the_module_it_wraps():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    wrapped = nn.DataParallel(torch.compile(nn.DataParallel(model)))  # nested wrappers, unwrapped to the last
    assert canonical(wrapped) is model
    assert [l.name for l in discover_groups(wrapped, torch.randn(2, 4)).layers] == ["0", "2"]


def test_a_model_in_training_mode_is_measured_in_eval_mode_and_keeps_its_mode():
    import pytest

    from mixprec import analyze, quantize
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.5), nn.ReLU(), nn.Linear(16, 4)).train()
    data = [torch.randn(32, 8) for _ in range(2)]
    with pytest.warns(UserWarning, match="training mode"):
        analysis = analyze(model, data, "w4a8,w8a8", "sqnr", progress=False)
    assert all(m.training for m in model.modules())  # the caller's model keeps its mode
    assert not any(m.training for m in analysis.model.modules())  # dropout off: measurements repeat
    with pytest.warns(UserWarning, match="training mode"):
        again = analyze(model, data, "w4a8,w8a8", "sqnr", progress=False)
    assert (again.table.values == analysis.table.values).all()
    with pytest.warns(UserWarning, match="training mode"):
        result = quantize(model, data, "bops=0.6x", candidates="w4a8,w8a8", progress=False)
    assert all(m.training for m in model.modules())
    assert not any(m.training for m in result.model.modules())


def test_modules_made_explicit_keep_the_mode_of_the_ones_they_replace():
    """An eval-mode model whose canonical form replaces modules (attention, EmbeddingBag) is not taken for a
    model in training mode: no note, and the canonical copy is in eval mode throughout."""
    class Bagged(nn.Module):
        def __init__(self):
            super().__init__()
            self.bag = nn.EmbeddingBag(20, 8, mode="mean")
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
            self.head = nn.Linear(8, 3)

        def forward(self, ids):
            x = self.bag(ids).unsqueeze(1)
            return self.head(self.attn(x, x, x)[0][:, 0])
    model = Bagged().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the training-mode note would be an error here
        converted = canonical(model)
        discover_groups(model, torch.randint(0, 20, (4, 5)))
    assert converted is not model and not any(m.training for m in converted.modules())
    model.train()
    assert all(m.training for m in canonical(model).modules())
