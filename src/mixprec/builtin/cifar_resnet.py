"""CIFAR-10 ResNet-20 / ResNet-56 (the classic 3-stage CIFAR ResNet with option-A shortcuts).

The architecture is defined here rather than imported so that every layer is a plain
``torch.nn`` module with a stable name (good for torch.fx, forward hooks and per-layer plans).
Weights: akamaster/pytorch_resnet_cifar10 checkpoints in ../shared/data/cifar10.

Data: the only CIFAR-10 data is the 10,000-image test set, stored sorted by class. A plain
"last 1,000 images" split would calibrate on trucks only and evaluate without trucks, so the
split is per class: images 900-999 of every class form the calibration pool (1,000 images),
images 0-899 of every class the evaluation split (9,000 images). Both are interleaved
round-robin over the classes, so any prefix (``limit``, small ``n``) is class-balanced.
"""
from __future__ import annotations

import numbers
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from ..batches import output_tensor
from ..errors import ModelError, SpecError
from ..evaluation import EvalResult
from . import Builtin, data_file

DATA = "cifar10/test_jpeg_q75.npz"
WEIGHTS = {"resnet20": ("cifar10/resnet20-12fca82f.th", 3), "resnet56": ("cifar10/resnet56-4bfd9763.th", 9)}
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
CALIB_PER_CLASS = 100  # the last 100 images of each class
CALIB_BATCH = 64
EVAL_BATCH = 256


class PadShortcut(nn.Module):
    """Option-A shortcut: strided identity, new channels zero-padded equally on both sides."""

    def __init__(self, pad_channels: int):
        super().__init__()
        self.pad_channels = pad_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad_channels, self.pad_channels))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()  # one module per use, so hooks on activations see one tensor each
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        changes = stride != 1 or in_planes != planes
        self.shortcut = PadShortcut(planes // 4) if changes else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """Module names match the checkpoint (conv1, bn1, layerK.i.*, linear) minus ``module.``."""

    def __init__(self, blocks_per_stage: int, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        stages, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(blocks_per_stage):
                blocks.append(BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(torch.flatten(self.avgpool(x), 1))


def load_model(name: str) -> CifarResNet:
    """Build the network and load the checkpoint strictly (only BatchNorm's
    ``num_batches_tracked`` counters, absent from these old checkpoints, are filled in)."""
    path, blocks = WEIGHTS[name]
    checkpoint = torch.load(data_file(path, f"{name} CIFAR-10 weights"), map_location="cpu", weights_only=True)
    state = {k.removeprefix("module."): v for k, v in checkpoint["state_dict"].items()}
    model = CifarResNet(blocks)
    own = model.state_dict()
    missing = set(own) - set(state)
    if any(not k.endswith("num_batches_tracked") for k in missing) or set(state) - set(own):
        raise ModelError(f"{path} does not match the {name} architecture: missing {sorted(missing)[:5]}, "
                         f"unexpected {sorted(set(state) - set(own))[:5]}")
    state.update({k: own[k] for k in missing})
    model.load_state_dict(state, strict=True)
    return model.eval()


@lru_cache(maxsize=1)
def _npz() -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 NHWC, labels), read once per process: every evaluate/calibration call needs them."""
    import numpy as np

    with np.load(data_file(DATA, "CIFAR-10 test images")) as npz:
        return torch.from_numpy(npz["images"]), torch.from_numpy(npz["labels"]).long()


@lru_cache(maxsize=1)
def split_indices() -> tuple[torch.Tensor, torch.Tensor]:
    """Positions in test_jpeg_q75.npz of the (evaluation, calibration) images, in the order used:
    per class, the last 100 images go to calibration; both lists interleave the classes."""
    labels = _npz()[1]
    per_class = [torch.nonzero(labels == c).flatten() for c in range(10)]
    if any(len(idx) != len(per_class[0]) for idx in per_class) or len(per_class[0]) <= CALIB_PER_CLASS:
        raise ModelError(f"{DATA}: expected the same number of images in each of the 10 classes, "
                         f"got {[len(i) for i in per_class]}")
    k = len(per_class[0]) - CALIB_PER_CLASS
    # stack to (images_per_class, 10), then flatten row by row: round-robin over the classes
    return (torch.stack([idx[:k] for idx in per_class], 1).flatten(),
            torch.stack([idx[k:] for idx in per_class], 1).flatten())


@lru_cache(maxsize=1)
def _dataset() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(eval images, eval labels, calibration images, calibration labels); images uint8 NHWC."""
    images, labels = _npz()
    eval_idx, calib_idx = split_indices()
    return images[eval_idx], labels[eval_idx], images[calib_idx], labels[calib_idx]


def preprocess(images: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC RGB -> float NCHW, /255 then the ImageNet mean/std the checkpoints were trained with."""
    x = images.permute(0, 3, 1, 2).float().div_(255)
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def _check_count(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise SpecError(f"{what} must be a positive integer, got {value!r}")
    return value


def calibration(n: int) -> list[torch.Tensor]:
    """The first ``n`` images of the calibration pool (never evaluation images), batches of 64."""
    pool = _dataset()[2]
    _check_count(n, "number of calibration samples")
    if n > len(pool):
        raise SpecError(f"CIFAR-10 has only {len(pool)} calibration images (the last {CALIB_PER_CLASS} test "
                        f"images of each class, kept apart from the 9,000 evaluation images); asked for {n}")
    return [preprocess(pool[i:min(i + CALIB_BATCH, n)]) for i in range(0, n, CALIB_BATCH)]


def calibration_labels(n: int) -> list[torch.Tensor]:
    """The class labels of ``calibration(n)``, batched as it batches the images (for the guard only)."""
    calibration(n)  # the same checks and errors
    labels = _dataset()[3]
    return [labels[i:min(i + CALIB_BATCH, n)] for i in range(0, n, CALIB_BATCH)]


def top1(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> EvalResult:
    """Top-1 accuracy in percent on the given uint8 images, on the model's device, in eval mode."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct = 0
    try:
        with torch.no_grad():
            for i in range(0, len(images), EVAL_BATCH):
                logits = output_tensor(model(preprocess(images[i:i + EVAL_BATCH]).to(device)))
                correct += int((logits.argmax(1).cpu() == labels[i:i + EVAL_BATCH]).sum())
    finally:
        model.train(was_training)
    return EvalResult("top1", 100.0 * correct / len(images), True, details={"samples": len(images)})


def evaluate(model: nn.Module, limit: int | None = None) -> EvalResult:
    """Top-1 on the 9,000-image evaluation split (or its first ``limit`` images; a larger
    ``limit`` uses all of them, and ``details["samples"]`` says how many were used)."""
    images, labels = _dataset()[:2]
    if limit is not None:
        limit = _check_count(limit, "evaluation limit")
        images, labels = images[:limit], labels[:limit]
    return top1(model, images, labels)


def evaluate_all_test(model: nn.Module) -> EvalResult:
    """Top-1 on all 10,000 test images (evaluation split + calibration pool): only for comparing
    with published/README figures, never for a quantized model calibrated on this data."""
    e_img, e_lab, c_img, c_lab = _dataset()
    return top1(model, torch.cat([e_img, c_img]), torch.cat([e_lab, c_lab]))


def builtin(name: str) -> Builtin:
    if name not in WEIGHTS:
        raise SpecError(f"unknown CIFAR ResNet {name!r}; expected one of {', '.join(WEIGHTS)}")
    blocks = WEIGHTS[name][1]
    return Builtin(
        name=name,
        description=f"ResNet-{6 * blocks + 2} for CIFAR-10 (akamaster weights, option-A shortcuts)",
        model=lambda: load_model(name),
        calibration=calibration,
        calibration_labels=calibration_labels,
        evaluate=evaluate,
        example_input=lambda: calibration(2)[0],
        calibration_source="CIFAR-10 test images 900-999 of each class (1,000; test_jpeg_q75.npz), disjoint from evaluation",
        evaluation_source="CIFAR-10 test images 0-899 of each class (9,000; test_jpeg_q75.npz), classes interleaved",
        default_calibration_samples=512,
    )
