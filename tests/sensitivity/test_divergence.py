"""Output divergences: several from one pass equal each measured alone; the guard's consensus."""
import pytest
import torch
from torch import nn

from mixprec.sensitivity.divergence import OutputDivergence


def _classifier_and_data():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 5)).eval()
    data = [(torch.randn(32, 8), torch.randint(0, 5, (32,))) for _ in range(3)]
    other = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 5)).eval()
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        other[2].weight.add_(0.3 * torch.randn_like(other[2].weight))
    return model, data, other


def test_one_pass_gives_each_divergence_as_measured_alone():
    model, data, other = _classifier_and_data()
    together = OutputDivergence(model, data, "kl").measure_all(other, ("kl", "agreement", "sqnr"))
    for kind in ("kl", "agreement", "sqnr"):
        assert together[kind] == OutputDivergence(model, data, kind).measure(other)
    assert together["kl"] > 0 and together["sqnr"] > 0


def test_the_guard_auto_of_a_labelled_classifier_is_the_consensus():
    model, data, other = _classifier_and_data()
    result = OutputDivergence(model, data, "auto-guard")(other)
    assert result.name == "agreement" and not result.higher_is_better
    assert result.value == OutputDivergence(model, data, "agreement").measure(other)
    assert result.details["sqnr"] == OutputDivergence(model, data, "sqnr").measure(other)
    assert result.details["ce"] == OutputDivergence(model, data, "ce").measure(other)
    assert result.details["consensus"] == ["agreement", "sqnr", "ce"]
    unlabelled = [x for x, _ in data]  # no labels: not recognised as a classifier, 1/SQNR alone
    assert OutputDivergence(model, unlabelled, "auto-guard")(other).name == "sqnr"
    assert OutputDivergence(model, data, "auto")(other).name == "agreement"


def test_per_sample_shares_add_up_to_each_divergence():
    model, data, other = _classifier_and_data()
    values, samples = OutputDivergence(model, data, "kl").measure_samples(other, ("kl", "agreement", "sqnr"))
    for kind in ("kl", "agreement", "sqnr"):
        assert samples[kind].shape == (96,)  # one share per calibration sample: 3 batches of 32
        assert samples[kind].sum() == pytest.approx(values[kind], rel=1e-6)  # float32 outputs
        assert (samples[kind] >= 0).all()
    result = OutputDivergence(model, data, "auto-guard")(other)
    assert set(result.details["samples"]) == {"agreement", "sqnr", "ce"}
    assert sum(result.details["samples"]["sqnr"]) == pytest.approx(result.details["sqnr"], rel=1e-5)


def test_a_language_models_shares_are_per_sequence():
    torch.manual_seed(0)
    lm = nn.Sequential(nn.Embedding(120, 16), nn.Linear(16, 120)).eval()
    noisy = nn.Sequential(nn.Embedding(120, 16), nn.Linear(16, 120)).eval()
    noisy.load_state_dict(lm.state_dict())
    with torch.no_grad():
        noisy[1].weight.add_(0.2 * torch.randn_like(noisy[1].weight))
    data = [torch.randint(0, 120, (4, 10)) for _ in range(2)]
    values, samples = OutputDivergence(lm, data, "auto").measure_samples(noisy)
    assert list(values) == ["kl"] and samples["kl"].shape == (8,)  # 2 batches of 4 sequences
    assert samples["kl"].sum() == pytest.approx(values["kl"], rel=1e-6)


@torch.no_grad()
def test_nll_scores_each_sequence_on_its_own_next_tokens():
    torch.manual_seed(0)
    lm = nn.Sequential(nn.Embedding(120, 16), nn.Linear(16, 120)).eval()
    data = [torch.randint(0, 120, (4, 10)) for _ in range(2)]
    values, samples = OutputDivergence(lm, data, "nll").measure_samples(lm, ("nll",))
    expected = []
    for x in data:  # by hand: position t predicts token t + 1
        logp = torch.log_softmax(lm(x), dim=-1)
        expected += [-sum(float(logp[b, t, x[b, t + 1]]) for t in range(9)) for b in range(4)]
    assert samples["nll"] * 72 == pytest.approx(expected, rel=1e-5)  # 8 sequences x 9 predicted tokens
    assert values["nll"] == pytest.approx(sum(expected) / 72, rel=1e-5)
    masked = [{"input_ids": x, "attention_mask": torch.cat([torch.ones(4, 6), torch.zeros(4, 4)], 1).long()}
              for x in data]

    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.lm = lm

        def forward(self, input_ids, attention_mask):
            return self.lm(input_ids)
    only_real = OutputDivergence(Wrapped(), masked, "nll").measure_all(Wrapped(), ("nll",))["nll"]
    by_hand = []
    for x in data:
        logp = torch.log_softmax(lm(x), dim=-1)
        by_hand += [-float(logp[b, t, x[b, t + 1]]) for b in range(4) for t in range(5)]  # tokens 1..5 are real
    assert only_real == pytest.approx(sum(by_hand) / len(by_hand), rel=1e-5)


def test_the_guard_auto_of_a_language_model_given_token_ids_is_nll():
    torch.manual_seed(0)
    lm = nn.Sequential(nn.Embedding(120, 16), nn.Linear(16, 120)).eval()
    data = [torch.randint(0, 120, (4, 10))]
    assert OutputDivergence(lm, data, "auto-guard")(lm).name == "nll"
    assert OutputDivergence(lm, data, "auto")(lm).name == "kl"  # searches keep KL
    embedding_model = nn.Sequential(nn.Linear(8, 4)).eval()
    with pytest.raises(Exception, match="nll divergence needs a language model"):
        OutputDivergence(embedding_model, [torch.randn(3, 8)], "nll")(embedding_model)


def test_a_signal_of_many_samples_given_its_float_targets_is_a_regression_not_logits():
    """A denoiser's (batch, channels, 128 samples) output with float targets of that shape: 1/SQNR (and the targets'
    error for the guard), not KL over the time axis, which a constant offset leaves near 0."""
    from mixprec.sensitivity.divergence import auto_kind
    signal = torch.randn(4, 2, 128)
    assert auto_kind(signal, signal + 0.1, guard=True, inputs=signal) == "consensus"
    assert auto_kind(signal, signal + 0.1, inputs=signal) == "sqnr"
    assert auto_kind(signal, None, inputs=torch.randint(0, 128, (4, 2))) == "kl"  # no targets: as before


@pytest.mark.parametrize("kind", ["kl", "agreement", "sqnr"])
def test_low_precision_outputs_are_scored_in_float32_a_chunk_of_rows_at_a_time(kind, monkeypatch):
    """A bfloat16 LM's logits are kept and scored in their own dtype, chunk by chunk: the result is the
    float32 computation on the same (exactly upcast) values, whatever the chunk size."""
    from mixprec.sensitivity import divergence as d
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(3, 7, 130, generator=g).bfloat16()
    out = (ref.float() + 0.3 * torch.randn(3, 7, 130, generator=g)).bfloat16()
    whole = [t.double() for t in d.DIVERGENCES[kind](ref.float(), out.float())[:1]]
    monkeypatch.setattr(d, "CHUNK_ELEMENTS", 400)  # 3 rows per chunk
    per_sample, rows = d.DIVERGENCES[kind](ref, out)
    assert per_sample.dtype != torch.bfloat16 and rows == d.DIVERGENCES[kind](ref.float(), out.float())[1]
    assert torch.allclose(per_sample.double(), whole[0], rtol=1e-5, atol=1e-6)


def test_nll_is_the_same_chunk_by_chunk(monkeypatch):
    from mixprec.sensitivity import divergence as d
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 130, (2, 9), generator=g)
    logits = torch.randn(2, 9, 130, generator=g).bfloat16()
    whole, n = d.nll_samples(ids, logits.float())
    monkeypatch.setattr(d, "CHUNK_ELEMENTS", 300)  # 2 rows per chunk
    chunked, m = d.nll_samples({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, logits)
    assert n == m == 16 and torch.allclose(chunked, whole, rtol=1e-6)


def test_ce_is_the_cross_entropy_against_the_labels_and_needs_them():
    model, data, other = _classifier_and_data()
    values, samples = OutputDivergence(model, data, "ce").measure_samples(other)
    with torch.no_grad():
        expected = torch.cat([nn.functional.cross_entropy(other(x), y, reduction="none") for x, y in data])
    assert values["ce"] == pytest.approx(float(expected.mean()), rel=1e-6)
    assert samples["ce"] * 96 == pytest.approx(expected.double().numpy(), rel=1e-5)  # shares of the mean
    ignored = [(x, torch.where(torch.arange(32) < 8, -100, y)) for x, y in data]  # -100: not scored
    with torch.no_grad():
        kept = torch.cat([nn.functional.cross_entropy(other(x), y, reduction="none")[8:] for x, y in data])
    assert OutputDivergence(model, ignored, "ce").measure(other) == pytest.approx(float(kept.mean()), rel=1e-6)
    from mixprec.errors import SpecError
    with pytest.raises(SpecError, match="needs \\(inputs, labels\\) calibration items"):
        OutputDivergence(model, [x for x, _ in data], "ce").measure(other)
    with pytest.raises(SpecError, match="label 7 is not one of them"):
        OutputDivergence(model, [(x, torch.full((32,), 7)) for x, _ in data], "ce").measure(other)
    consensus = OutputDivergence(model, [x for x, _ in data], "consensus")(other)  # no labels: the pair
    assert consensus.details["consensus"] == ["agreement", "sqnr"] and "ce" not in consensus.details


def test_ce_scores_a_segmentation_model_per_pixel_against_labels_per_pixel():
    torch.manual_seed(3)
    model = nn.Conv2d(3, 5, 3, padding=1).eval()  # (samples, 5 classes, 6, 6)
    other = nn.Conv2d(3, 5, 3, padding=1).eval()
    data = [(torch.randn(4, 3, 6, 6), torch.randint(0, 5, (4, 6, 6))) for _ in range(2)]
    data[1][1][0, :2] = -100  # ignored pixels: not scored, not counted
    values, samples = OutputDivergence(model, data, "ce").measure_samples(other)
    with torch.no_grad():
        pixels = torch.cat([nn.functional.cross_entropy(other(x), y, reduction="none", ignore_index=-100)
                            .reshape(4, -1).sum(1) for x, y in data])
        kept = sum(int((y != -100).sum()) for _, y in data)
    assert values["ce"] == pytest.approx(float(pixels.sum()) / kept, rel=1e-5)
    assert samples["ce"] * kept == pytest.approx(pixels.double().numpy(), rel=1e-5)  # per image
    from mixprec.errors import SpecError
    with pytest.raises(SpecError, match="one per pixel of a \\(samples, classes, height, width\\) output"):
        OutputDivergence(model, [(x, y[:, :3]) for x, y in data], "ce").measure(other)  # labels of another size
    consensus = OutputDivergence(model, data, "consensus")(other)  # per-pixel labels join the consensus
    assert consensus.details["consensus"] == ["agreement", "sqnr", "ce"]


def test_a_regression_output_of_one_value_per_input_gives_one_sample_per_input():
    """A (N,) output is N samples for the guard's paired test (it was one per batch: 4 samples for 256 inputs, and
    no test at all for one batch); a single input's 1-D output stays one sample."""
    from mixprec.sensitivity.divergence import OutputDivergence
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1), torch.nn.Flatten(0))
    data = [torch.randn(64, 5) for _ in range(4)]
    other = torch.nn.Sequential(*[m for m in net])
    values, samples = OutputDivergence(net, data, "sqnr").measure_samples(other)
    assert samples["sqnr"].shape == (256,)
    column = torch.nn.Sequential(*list(net)[:-1])  # the same model with a (N, 1) output: the same shares
    values_col, samples_col = OutputDivergence(column, data, "sqnr").measure_samples(column)
    assert samples_col["sqnr"].shape == (256,)
    single = torch.nn.Linear(5, 3)  # one input of shape (5,): its (3,) output is one sample
    _, one = OutputDivergence(single, [torch.randn(5)], "sqnr").measure_samples(single)
    assert one["sqnr"].shape == (1,)


def test_a_segmentation_output_is_scored_along_its_class_axis():
    """(batch, classes, height, width): KL and top-1 disagreement per pixel, over the classes on axis 1. A shift of
    every class score of a pixel by one amount leaves its probabilities, so both measure 0; flipping the winning
    class of one pixel is one disagreement of batch x height x width."""
    from mixprec.sensitivity.divergence import disagreement_samples, kl_divergence, kl_samples
    torch.manual_seed(0)
    ref = torch.randn(2, 3, 4, 5)
    shifted = ref + torch.randn(2, 1, 4, 5)  # the same for every class of a pixel
    kl, rows = kl_divergence(ref, shifted)
    assert rows == 2 * 4 * 5 and abs(kl) < 1e-5
    per_sample, rows = disagreement_samples(ref, shifted)
    assert rows == 40 and per_sample.tolist() == [0.0, 0.0]
    flipped = ref.clone()
    winner = int(ref[1, :, 2, 3].argmax())
    flipped[1, winner, 2, 3] -= 100.0
    per_sample, _ = disagreement_samples(ref, flipped)
    assert per_sample.tolist() == [0.0, 1.0]
    assert kl_samples(ref, flipped)[0][1] > 0 and kl_samples(ref, flipped)[0][0] == 0


def test_kl_has_no_rounding_floor_below_which_small_differences_vanish():
    """Logits moved by float16 and bfloat16 rounding: the KL of each is far below float32's rounding of the
    log-softmax (about 5e-8 a row, which a clamp at 0 only ever added), and must come out as computed in
    float64, in the right order."""
    from mixprec.sensitivity.divergence import kl_divergence
    g = torch.Generator().manual_seed(0)
    ref = 4 * torch.randn(64, 100, generator=g)
    for rounded in (ref.half().float(), ref.bfloat16().float()):
        exact = torch.nn.functional.kl_div(torch.log_softmax(rounded.double(), -1), torch.log_softmax(ref.double(), -1),
                                           log_target=True, reduction="sum")
        total, rows = kl_divergence(ref, rounded)
        assert rows == 64 and total == pytest.approx(float(exact), rel=1e-3)
    half, bf16 = (kl_divergence(ref, r)[0] for r in (ref.half().float(), ref.bfloat16().float()))
    assert half < bf16 / 10
