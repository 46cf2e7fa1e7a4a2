"""Whether to move tensors off an accelerator while they wait: the float weights a measured plan
replaces (mixprec.apply.applied_beside) and the float model's outputs an output metric compares
against (mixprec.sensitivity.outputs).

``MIXPREC_OFFLOAD`` decides: ``auto`` (the default) moves them to CPU memory only where the device
lacks room for them (:func:`lacks_room`), ``always`` moves them (the least device memory: on the 8B
shape, 1.43x the model at every phase), ``never`` keeps them. Moving costs time (about 10 s a plan
for an 8B model's weights, out and back), so a device with room keeps them.
"""
from __future__ import annotations

import os

import torch

from .errors import MixprecError

OFFLOAD_POLICIES = ("auto", "always", "never")


def policy() -> str:
    value = os.environ.get("MIXPREC_OFFLOAD", "auto").strip().lower()
    if value not in OFFLOAD_POLICIES:
        raise MixprecError(f"MIXPREC_OFFLOAD must be one of {', '.join(OFFLOAD_POLICIES)}, got {value!r}")
    return value


def lacks_room(free: int, total: int, needed: int) -> bool:
    """Whether ``needed`` more bytes, plus a margin for the work itself (a tenth of the device, at least
    2 GiB), exceed the ``free`` bytes of a device of ``total`` bytes."""
    return free < needed + max(2 << 30, total // 10)


def should_move(device: torch.device, needed: int) -> bool:
    """Whether ``needed`` bytes on ``device`` should wait in CPU memory (never for CPU tensors)."""
    if device.type == "cpu" or needed <= 0:
        return False
    chosen = policy()
    if chosen != "auto":
        return chosen == "always"
    if device.type != "cuda":
        return True
    free, total = torch.cuda.mem_get_info(device)
    free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)  # the allocator's unused blocks
    return lacks_room(free, total, needed)
