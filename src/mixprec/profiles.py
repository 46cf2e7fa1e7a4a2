"""Hardware profiles: the candidate sets a target supports."""
from __future__ import annotations

from .candidates import Candidate, parse_candidates
from .errors import CandidateError

PROFILES: dict[str, tuple[str, ...]] = {
    # Mobile/edge NPU with integer kernels for 4/8-bit weights and 8/16-bit activations.
    "mobile-npu": ("w4a8", "w8a8", "w8a16", "w16a16"),
    # Integer CNN accelerator with 2..8-bit weights on 8-bit activations (the CNN benchmarks).
    "int-cnn": ("w2a8", "w3a8", "w4a8", "w5a8", "w6a8", "w8a8"),
    # GPU serving LLMs with weight-only kernels (float16 activations).
    "llm-gpu-weight-only": ("w2g64", "w3g64", "w3g128", "w4g64", "w4g128", "w4", "w8", "fp16"),
    # GPU with FP8 tensor cores (Hopper and later).
    "gpu-fp8": ("fp8", "w8a8", "w4a8", "fp16"),
}


def profile_candidates(name: str) -> list[Candidate]:
    if name not in PROFILES:
        raise CandidateError(f"unknown hardware profile {name!r}; profiles: "
                             + "; ".join(f"{k} ({','.join(v)})" for k, v in PROFILES.items()))
    return parse_candidates(list(PROFILES[name]))
