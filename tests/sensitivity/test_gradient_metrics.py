import numpy as np
import pytest
import torch
from torch import nn

from mixprec.candidates import parse_candidates
from mixprec.errors import MixprecError
from mixprec.groups import discover_groups
from mixprec.sensitivity import METRICS, Fisher, Hessian
from mixprec.sensitivity.analyze import analyze
from mixprec.sensitivity.context import MeasureContext

from test_analyze import data, setup
from hostile import interrupted_at

GRADIENT_METRICS = ["hessian", "fisher"]


@pytest.fixture(autouse=True)
def one_thread():
    # Double backprop through tiny tensors: extra threads only add overhead (10x on a busy machine).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def few_samples():
    """metric name -> the config to measure with: Hessian with 4 samples (properties, not accuracy)."""
    return lambda metric: Hessian(samples=4) if metric == "hessian" else metric


def labelled(n=3):
    g = torch.Generator().manual_seed(2)
    return [(x, torch.randint(0, 10, (x.shape[0],), generator=g)) for x in data(n)]


class MLP(nn.Module):
    def __init__(self, d_in=6, hidden=8, classes=5):
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(d_in, hidden)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.fc2(self.relu(self.fc1(x)))


def rows(n_batches, size=8, d_in=6, seed=3):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(size, d_in, generator=g) for _ in range(n_batches)]


def context(model, items, candidates="w4"):
    groups = discover_groups(model, items[0][0] if isinstance(items[0], tuple) else items[0])
    return MeasureContext(model.eval(), groups, parse_candidates(candidates), items, progress=False)


@pytest.mark.parametrize("with_labels", [False, True])
@pytest.mark.parametrize("metric", GRADIENT_METRICS)
def test_metric_properties(metric, with_labels, few_samples):
    model, groups, cands = setup()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    table = analyze(model, groups, cands, labelled() if with_labels else data(), metric=few_samples(metric),
                    progress=False)
    assert METRICS[metric].needs_grad and not METRICS[metric].needs_labels
    assert table.complete and np.isfinite(table.values).all() and (table.values >= 0).all()
    assert (table.values[:, -1] == 0).all()  # fp32 does no damage
    # fewer bits, more damage: w2 > w4 > w8 for every group
    assert (table.values[:, 0] > table.values[:, 1]).all() and (table.values[:, 1] > table.values[:, 2]).all()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert [p.requires_grad for p in model.parameters()] == flags and not model.training
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("metric", GRADIENT_METRICS)
def test_chunks_share_one_gradient_pass(metric, monkeypatch, few_samples):
    model, groups, cands = setup()
    calls = []
    original = torch.autograd.grad
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: calls.append(1) or original(*a, **k))
    config = few_samples(metric)
    whole = analyze(model, groups, cands, data(), metric=config, chunk_size=None, progress=False)
    once = len(calls)
    chunked = analyze(model, groups, cands, data(), metric=config, chunk_size=1, progress=False)
    per_batch = 1 + config.samples if metric == "hessian" else 1  # grad, then one per HVP
    assert once == len(data()) * per_batch and len(calls) == 2 * once  # 4 chunks, still one pass
    assert chunked.values.tolist() == whole.values.tolist()


@pytest.mark.parametrize("with_labels", [False, True])
def test_hutchinson_trace_matches_closed_form(with_labels):
    # Linear softmax classifier: H_W of the mean cross-entropy (and of the KL to its own prediction
    # at the float point) is mean_n (diag(p_n) - p_n p_n^T) (x) x_n x_n^T, so
    # Tr(H_W) = mean_n (1 - ||p_n||^2) ||x_n||^2.
    model = nn.Linear(6, 5).eval()
    xs = rows(4)
    g = torch.Generator().manual_seed(4)
    items = [(x, torch.randint(0, 5, (8,), generator=g)) for x in xs] if with_labels else xs
    x = torch.cat(xs)
    with torch.no_grad():
        p = torch.softmax(model(x), dim=-1)
    exact = float(((1 - p.pow(2).sum(1)) * x.pow(2).sum(1)).mean())
    weight_avg, _ = Hessian(samples=64).prepare(context(model, items))
    estimate = weight_avg[""] * model.weight.numel()
    assert estimate == pytest.approx(exact, rel=0.1)


def test_fisher_diagonal_sums_to_the_hessian_trace():
    # Labels drawn from the model: E[sum_i g_i^2] per row = sum_c p_c (1 - p_c) ||x||^2, the same trace.
    model = nn.Linear(6, 5).eval()
    xs = rows(128)
    x = torch.cat(xs)
    with torch.no_grad():
        p = torch.softmax(model(x), dim=-1)
    exact = float(((1 - p.pow(2).sum(1)) * x.pow(2).sum(1)).mean())
    squared, _ = Fisher().prepare(context(model, xs))
    assert float(squared[""].sum()) == pytest.approx(exact, rel=0.1)


def rescaled_pair():
    """The MLP, and the same function with fc1 x 10 and fc2 x 0.1 (ReLU is positively homogeneous)."""
    model, scaled = MLP().eval(), MLP().eval()
    with torch.no_grad():
        scaled.fc1.weight.mul_(10)
        scaled.fc1.bias.mul_(10)
        scaled.fc2.weight.mul_(0.1)
    return model, scaled


def test_fisher_is_invariant_to_an_equivalent_rescaling():
    # fc1's gradients shrink 10x and its (per-channel) quantization error grows 10x; fc2's input
    # grows 10x and its input gradient shrinks 10x: every S[g, c] stays, the raw F moves 100x.
    items = rows(3)
    model, scaled = rescaled_pair()
    assert torch.allclose(model(items[0]), scaled(items[0]), atol=1e-5)
    cands = "w2a8,w4a8,w4,w8a4,fp32"
    contexts = [context(m, items, cands) for m in (model, scaled)]
    states = [Fisher().prepare(ctx) for ctx in contexts]
    tables = [Fisher().measure(ctx, [0, 1], None, state) for ctx, state in zip(contexts, states)]
    for key, value in tables[0].items():
        assert tables[1][key] == pytest.approx(value, rel=1e-3, abs=1e-12), key
    squared = [state[0] for state in states]
    assert float(squared[1]["fc1"].sum()) == pytest.approx(float(squared[0]["fc1"].sum()) / 100, rel=1e-3)
    assert float(squared[1]["fc2"].sum()) == pytest.approx(float(squared[0]["fc2"].sum()) * 100, rel=1e-3)


def test_hessian_is_invariant_to_an_equivalent_rescaling():
    # Tr(H_fc1)/n shrinks 100x, ||Q(W) - W||^2 grows 100x. fc2 is left float so that fc1 is the only
    # block: with several, one Rademacher v adds zero-mean cross-block terms v_1^T H_12 v_2 that do
    # not shrink with fc1's curvature, and the estimate is invariant only in expectation.
    items = rows(3)
    model, scaled = rescaled_pair()
    contexts = []
    for m in (model, scaled):
        groups = discover_groups(m, items[0], exclude=["fc2"])
        contexts.append(MeasureContext(m, groups, parse_candidates("w2,w4,w8,fp32"), items, progress=False))
    states = [Hessian().prepare(ctx) for ctx in contexts]
    tables = [Hessian().measure(ctx, [0], None, state) for ctx, state in zip(contexts, states)]
    for key, value in tables[0].items():
        assert tables[1][key] == pytest.approx(value, rel=1e-3, abs=1e-12), key
    traces = [state[0]["fc1"] for state in states]
    assert traces[1] == pytest.approx(traces[0] / 100, rel=1e-3) and traces[0] > 0


class NoGrad(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        with torch.no_grad():
            return self.fc(x)


class Detached(NoGrad):
    def forward(self, x):
        return self.fc(x).detach()


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
@pytest.mark.parametrize("metric", GRADIENT_METRICS)
def test_a_model_without_gradients_is_a_clear_error(metric):
    items = rows(2)
    for model in (NoGrad(), Detached()):
        flags = [p.requires_grad for p in model.parameters()]
        with pytest.raises(MixprecError, match=f"the {metric} metric needs gradients.*does not depend on them"):
            analyze(model, discover_groups(model, items[0]), parse_candidates("w4a8"), items, metric=metric,
                    progress=False)
        assert [p.requires_grad for p in model.parameters()] == flags
    scripted = torch.jit.script(MLP().eval())
    with pytest.raises(MixprecError, match="TorchScript"):
        analyze(scripted, discover_groups(scripted, items[0]), parse_candidates("w4"), items, metric=metric,
                progress=False)
    bad_labels = [(x, torch.zeros(3, dtype=torch.long)) for x in items]
    with pytest.raises(MixprecError, match="one per output row"):
        analyze(MLP(), discover_groups(MLP(), items[0]), parse_candidates("w4"), bad_labels, metric=metric,
                progress=False)



@pytest.mark.parametrize("metric", GRADIENT_METRICS)
@pytest.mark.parametrize("labelled", [False, True])
def test_a_regression_output_is_refused_with_what_to_use_instead(metric, labelled):
    """An (N,) or (N, 1) output has no classes: the softmax of the cross-entropy ran across the batch's rows (a
    meaningless table, without a word) when no labels were given; the error now says to use sqnr."""
    torch.manual_seed(0)
    for net in (nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1)),
                nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1), nn.Flatten(0))):
        items = [(torch.randn(16, 4), torch.randn(16)) if labelled else torch.randn(16, 4) for _ in range(2)]
        first = items[0][0] if labelled else items[0]
        with pytest.raises(MixprecError, match="a regression.*use sqnr"):
            analyze(net, discover_groups(net, first), parse_candidates("w4a8"), items, metric=metric, progress=False)


def test_hessian_traces_interrupted_resume_where_they_stopped_and_give_the_same_table(tmp_path, monkeypatch):
    # Ctrl-C during the traces kept nothing: every resume started them again (hours on a large model)
    from mixprec.sensitivity import gradients
    from mixprec.sensitivity.hessian import TRACES
    model, groups, cands = setup()
    items = data(4)
    config = Hessian(samples=3)
    whole = analyze(model, groups, cands, items, metric=config, progress=False)
    forward, calls = gradients.forward, []
    monkeypatch.setattr(gradients, "forward", interrupted_at(forward, 3, calls))
    with pytest.raises(KeyboardInterrupt):
        analyze(model, groups, cands, items, metric=config, run_dir=tmp_path, progress=False)
    saved = torch.load(tmp_path / TRACES, weights_only=True)
    assert saved["next_batch"] == 2  # two batches kept, the third lost
    calls.clear()
    monkeypatch.setattr(gradients, "forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
    resumed = analyze(model, groups, cands, items, metric=config, run_dir=tmp_path, progress=False)
    assert len(calls) == 2  # only the batches not done
    np.testing.assert_allclose(resumed.values, whole.values, rtol=1e-6, atol=0)
    from mixprec.sensitivity.hessian import _load_traces
    key = {"samples": 3, "seed": config.seed, "batches": 4}
    assert _load_traces(tmp_path / TRACES, key)["next_batch"] == 4  # kept: a Ctrl-C among the entries loses none
    assert _load_traces(tmp_path / TRACES, {**key, "samples": 5}) is None  # other settings: measured again
    (tmp_path / TRACES).write_bytes(b"torn")
    assert _load_traces(tmp_path / TRACES, key) is None  # damaged: measured again, from the start


def test_the_hessian_metric_measures_a_model_with_attention():
    """nn.MultiheadAttention runs through scaled_dot_product_attention, whose fused CPU kernel has no second
    derivative; the Hessian-vector products take torch's math kernel."""
    import mixprec
    from torch import nn

    class Attending(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp, self.head = nn.Linear(8, 16), nn.Linear(16, 3)
            self.attn = nn.MultiheadAttention(16, 2, batch_first=True)

        def forward(self, x):
            h = self.inp(x)
            return self.head((h + self.attn(h, h, h, need_weights=False)[0]).mean(1))
    torch.manual_seed(0)
    data = [torch.randn(4, 5, 8) for _ in range(2)]
    table = mixprec.analyze(Attending().eval(), data, candidates="w4a8,w8a8", metric="hessian", progress=False).table
    values = dict(zip(table.groups, table.values.tolist()))
    assert all(v[0] > v[1] > 0 for v in values.values()) and "attn.out_proj" in values


def test_the_gradient_metrics_loss_leaves_a_padded_batchs_padding_out():
    """hessian's KL and fisher's cross-entropy over the real tokens alone, as the output divergences."""
    import torch
    from mixprec.sensitivity import gradients
    g = torch.Generator().manual_seed(0)
    out = torch.randn(2, 5, 7, generator=g)
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    inputs = {"input_ids": torch.zeros(2, 5, dtype=torch.long), "attention_mask": mask}
    real = out[mask.bool()]
    assert gradients.loss(out, None, "hessian", inputs=inputs)[1] == 8  # KL to its own prediction: real rows
    assert gradients.loss(out, None, "hessian")[1] == 10
    labels = torch.randint(0, 7, (2, 5), generator=g)
    ce, n = gradients.loss(out, labels, "fisher", inputs=inputs)
    assert n == 8 and ce == pytest.approx(float(torch.nn.functional.cross_entropy(real, labels[mask.bool()],
                                                                                   reduction="sum")))


class _Segmenter(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.head = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 3, 1)

    def forward(self, x):
        return self.head(torch.relu(self.c1(x)))  # (N, 3, H, W): classes on axis 1


class _ClassesLast(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x).flatten(2).transpose(1, 2)  # (N, H*W, 3): the same classifier, classes last


@pytest.mark.parametrize("metric", ["hessian", "fisher"])
def test_a_segmentation_output_is_a_classifier_per_pixel_along_its_class_axis(metric):
    """(N, C, H, W) logits: the softmax runs over axis 1, as kl and the guard read it (it ran over the width),
    and per-pixel labels (N, H, W) are taken."""
    import mixprec
    torch.manual_seed(0)
    seg = _Segmenter().eval()
    data = [torch.rand(4, 1, 6, 10) for _ in range(2)]
    a = mixprec.analyze(seg, data, "w2a8,w4a8", metric=metric, progress=False).table.values
    b = mixprec.analyze(_ClassesLast(seg), data, "w2a8,w4a8", metric=metric, progress=False).table.values
    assert np.allclose(a, b, rtol=1e-4, atol=0)
    labelled = [(x, torch.randint(0, 3, (4, 6, 10))) for x in data]
    table = mixprec.analyze(seg, labelled, "w2a8,w4a8", metric=metric, progress=False).table.values
    assert np.all(np.isfinite(table)) and not np.allclose(table, a)


@pytest.mark.parametrize("metric", ["kl", "hessian", "fisher"])
def test_a_regression_of_several_outputs_given_its_float_targets_is_refused_by_class_score_metrics(metric):
    """Float targets of the output's shape: a regression, whose values have no softmax; refused as a one-output
    regression is (two outputs were softmaxed without a word, and hessian/fisher advised giving no labels)."""
    import mixprec
    from mixprec.errors import SpecError
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 2)).eval()
    data = [(torch.randn(8, 10), torch.randn(8, 2)) for _ in range(2)]
    with pytest.raises(SpecError, match=r"float targets of its shape: a regression.*use sqnr \(--metric sqnr"):
        mixprec.analyze(model, data, "w4a8,w8a8", metric=metric, progress=False)
    table = mixprec.analyze(model, data, "w4a8,w8a8", metric="sqnr", progress=False).table.values
    assert np.all(np.isfinite(table))
