import pytest
import torch
from torch import nn

from mixprec.plan import Plan
from mixprec.rounding import chain, prefix, round_weights
from mixprec.capture import forward

from test_gptq import correlated_inputs, one_thread  # noqa: F401  (tests/rounding is on sys.path: rootdir mode)


class Block(nn.Module):
    """A transformer-like block: q and k read one input (one step), then an MLP; extra arguments."""

    def __init__(self, width):
        super().__init__()
        self.q, self.k, self.up, self.down = (nn.Linear(width, width), nn.Linear(width, width),
                                              nn.Linear(width, 2 * width), nn.Linear(2 * width, width))

    def forward(self, x, scale=None, *, mask=None):
        h = x + torch.tanh(self.q(x) * self.k(x)) * (1.0 if scale is None else scale)
        if isinstance(mask, torch.Tensor):  # else a state object, as a cache would be
            h = h * mask
        return (h + self.down(torch.relu(self.up(h))), "aux")


class Stack(nn.Module):
    passes = 0

    def __init__(self, between=False, state=None):
        super().__init__()
        torch.manual_seed(0)
        self.embed, self.head = nn.Linear(64, 32), nn.Linear(32, 10)
        self.layers = nn.ModuleList([Block(32) for _ in range(3)])
        self.between, self.state = between, state

    def forward(self, x):
        type(self).passes += 1
        h = self.embed(x)
        mask = torch.ones_like(h)
        for layer in self.layers:
            h = layer(h, 0.5, mask=mask if self.state is None else self.state)[0]
            if self.between:
                h = h * 2  # an operation between the blocks: no chain
        return self.head(h)


def plan_for(model):
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return Plan({f"g_{n}": "w3" for n in names}, {f"g_{n}": [n] for n in names})


def test_chained_rounding_equals_step_by_step_with_fewer_passes(monkeypatch):
    model = Stack().eval()
    data = list(correlated_inputs(n=512).split(128))
    run = lambda m, x, i: forward(m, x, i, torch.device("cpu"))  # noqa: E731
    layers = [n for step in [[n] for n, m in model.named_modules() if isinstance(m, nn.Linear)] for n in step]
    assert list(chain.find_chain(model, data[0], layers, run)) == ["layers.0", "layers.1", "layers.2"]
    Stack.passes = 0
    chained = round_weights(model, plan_for(model), data, "gptq", progress=False)
    chained_passes = Stack.passes
    monkeypatch.setattr(chain, "find_chain", lambda *a: {})
    monkeypatch.setattr(prefix, "STORE", prefix.PrefixStore())  # round it again, not from the plan just rounded
    Stack.passes = 0
    stepwise = round_weights(model, plan_for(model), data, "gptq", progress=False)
    for name in stepwise:
        assert torch.allclose(chained[name], stepwise[name], atol=1e-6), name
    assert chained_passes < Stack.passes / 2
    adaround_chained = round_weights(Stack().eval(), plan_for(model), data, "adaround", progress=False, iterations=5)
    assert set(adaround_chained) == set(stepwise)


@pytest.mark.parametrize("model", [Stack(between=True), Stack(state=[object()])])
def test_no_chain_where_blocks_do_not_feed_each_other_or_take_other_objects(model):
    data = list(correlated_inputs(n=128).split(128))
    run = lambda m, x, i: forward(m, x, i, torch.device("cpu"))  # noqa: E731
    layers = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    # Stack(state=[object()]): a mask argument holding an object (a cache, say) that a second run could change
    assert chain.find_chain(model, data[0], layers, run) == {}
