"""CIFAR-10 ResNet-20/56 built-ins on the real data in ../shared/data (skipped when it is missing).

Kept fast for CI: accuracy is checked on a class-balanced prefix of the evaluation split.
"""
import pytest
import torch

from mixprec.builtin import cifar_resnet
from mixprec.errors import MissingDataError, MixprecError


def _get(name):
    try:
        b = cifar_resnet.builtin(name)
        return b, b.model()
    except MissingDataError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def resnet20():
    return _get("resnet20")


@pytest.fixture
def data_available():
    try:
        cifar_resnet._dataset()
    except MissingDataError as exc:
        pytest.skip(str(exc))


def test_resnet20_weights_and_accuracy(resnet20):
    b, model = resnet20
    assert sum(p.numel() for p in model.parameters()) == 269_722
    assert not model.training
    result = b.evaluate(model, limit=1000)
    assert result.name == "top1" and result.higher_is_better
    assert result.details == {"samples": 1000}
    # measured 80.4 % (FP32, 2 CPU cores); 81.0 % on all 10,000 (README)
    assert 78.4 <= result.value <= 82.4


def test_resnet56_weights_and_accuracy():
    b, model = _get("resnet56")
    assert sum(p.numel() for p in model.parameters()) == 853_018
    result = b.evaluate(model, limit=500)
    assert result.details["samples"] == 500
    assert 81.0 <= result.value <= 85.0  # measured 83.0 %


def test_splits_are_disjoint_class_balanced_and_cover_the_test_set(data_available):
    eval_idx, calib_idx = cifar_resnet.split_indices()
    assert len(eval_idx) == 9000 and len(calib_idx) == 1000
    assert set(eval_idx.tolist()).isdisjoint(calib_idx.tolist())
    assert set(eval_idx.tolist()) | set(calib_idx.tolist()) == set(range(10_000))
    _, eval_labels, calib_images, calib_labels = cifar_resnet._dataset()
    # the file is sorted by class: both splits must still hold every class, in every prefix
    assert torch.bincount(eval_labels[:1000]).tolist() == [100] * 10
    assert torch.bincount(calib_labels).tolist() == [100] * 10
    assert torch.bincount(calib_labels[:64], minlength=10).min() >= 6


def test_calibration_batches_come_from_the_calibration_pool(data_available):
    batches = cifar_resnet.calibration(100)
    assert [tuple(x.shape) for x in batches] == [(64, 3, 32, 32), (36, 3, 32, 32)]
    assert all(x.dtype == torch.float32 for x in batches)
    eval_images, _, calib_images, _ = cifar_resnet._dataset()
    assert torch.equal(torch.cat(batches), cifar_resnet.preprocess(calib_images[:100]))
    # no calibration image equals any of the first 1,000 evaluation images
    calib = calib_images[:100].flatten(1)
    evals = eval_images[:1000].flatten(1)
    assert not (calib[:, None, :] == evals[None, :, :]).all(-1).any()
    assert cifar_resnet.calibration(1000)[-1].shape[0] == 1000 - 15 * 64
    assert tuple(cifar_resnet.builtin("resnet20").example_input().shape) == (2, 3, 32, 32)


@pytest.mark.parametrize("n", [1001, 0, -3, 2.5])
def test_bad_calibration_count_is_a_clear_error(data_available, n):
    with pytest.raises(MixprecError, match="1000|positive integer"):
        cifar_resnet.calibration(n)


def test_evaluate_rejects_a_bad_limit(resnet20):
    b, model = resnet20
    with pytest.raises(MixprecError, match="positive integer"):
        b.evaluate(model, limit=0)


def test_fx_trace_matches_the_model(resnet20):
    b, model = resnet20
    x = b.example_input()
    traced = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        assert torch.equal(traced(x), model(x))


def test_missing_data_names_the_file(monkeypatch, tmp_path):
    monkeypatch.setenv("MIXPREC_DATA", str(tmp_path))
    for f in (cifar_resnet._npz, cifar_resnet.split_indices, cifar_resnet._dataset):
        f.cache_clear()
    try:
        with pytest.raises(MissingDataError, match="resnet20-12fca82f.th"):
            cifar_resnet.builtin("resnet20").model()
        with pytest.raises(MissingDataError, match="test_jpeg_q75.npz"):
            cifar_resnet.calibration(8)
    finally:
        for f in (cifar_resnet._npz, cifar_resnet.split_indices, cifar_resnet._dataset):
            f.cache_clear()


def test_unknown_name_is_a_clear_error():
    with pytest.raises(MixprecError, match="resnet20"):
        cifar_resnet.builtin("resnet18")


def test_calibration_labels_are_the_calibration_images_labels(data_available):
    b = cifar_resnet.builtin("resnet20")
    labels = b.calibration_labels(100)
    assert [len(y) for y in labels] == [len(x) for x in b.calibration(100)] == [64, 36]
    assert torch.equal(torch.cat(labels), cifar_resnet._dataset()[3][:100])
    assert torch.cat(labels)[:10].tolist() == list(range(10))  # the pool interleaves the classes
