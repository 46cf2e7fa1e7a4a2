"""Hardware profiles: the candidate sets a target supports, and the target each one deploys to.

A profile with a target (``PROFILE_TARGETS``) lists only candidates that ``mixprec.export`` can write
for that target with its low-precision kernels where the runtime has them (docs/export.md).
"""
from __future__ import annotations

from .candidates import Candidate, parse_candidates
from .errors import CandidateError

PROFILES: dict[str, tuple[str, ...]] = {
    # Mobile/edge NPU with integer kernels for 4/8-bit weights and 8/16-bit activations.
    "mobile-npu": ("w4a8", "w8a8", "w8a16", "w16a16"),
    # Integer CNN accelerator with 2..8-bit weights on 8-bit activations (the CNN benchmarks).
    "int-cnn": ("w2a8", "w3a8", "w4a8", "w5a8", "w6a8", "w8a8"),
    # The same accelerator with 6-bit activations too: at a BOPs budget (weight bits x activation bits),
    # a layer's activations at 6 bits often cost less accuracy than its weights at 4 or 3
    # (benchmarks/never_worse.py --add-candidates w3a6,w4a6,w5a6,w6a6,w8a6).
    "int-cnn-a6": ("w2a8", "w3a8", "w4a8", "w5a8", "w6a8", "w8a8", "w3a6", "w4a6", "w5a6", "w6a6", "w8a6"),
    # GPU serving LLMs with weight-only kernels (float16 activations).
    "llm-gpu-weight-only": ("w2g64", "w3g64", "w3g128", "w4g64", "w4g128", "w4", "w8", "fp16"),
    # GPU with FP8 tensor cores (Hopper and later).
    "gpu-fp8": ("fp8", "w8a8", "w4a8", "fp16"),
    # ONNX Runtime on a CPU with VNNI (AVX512-VNNI / AVX-VNNI): int8 QDQ convs and linears, 4/8-bit
    # MatMulNBits for weight-only linears.
    "ort-cpu": ("w8a8", "w4", "w8", "w4g32", "w4g128", "fp32"),
    # ONNX Runtime on an AVX2 CPU without VNNI: its u8 x s8 kernels add pairs of products in 16 bits,
    # which saturate with 8-bit weights; 7-bit weights (onnxruntime's reduce_range) never do.
    "ort-cpu-avx2": ("w7a8", "w4", "w8", "w4g32", "w4g128", "fp32"),
    # ONNX Runtime's fast path for language models: MatMulNBits at accuracy_level 4, whose int8 inputs per
    # block the a8d<N> candidates simulate, so the exported file computes what the plan measured.
    "ort-cpu-lm": ("w4g32a8d32", "w4g64a8d64", "w4g128a8d128", "w8a8d32", "fp32"),
    # llama.cpp: the GGUF types the gguf package writes, simulated bit for bit (mixprec.export.gguf).
    "gguf": ("q8_0", "q4_0", "fp16"),
}
# Profiles that deploy to an export target (mixprec.export's ``target``).
PROFILE_TARGETS: dict[str, str] = {"ort-cpu": "ort-cpu", "ort-cpu-avx2": "ort-cpu", "ort-cpu-lm": "ort-cpu",
                                   "gguf": "gguf"}


def profile_candidates(name: str) -> list[Candidate]:
    if name not in PROFILES:
        raise CandidateError(f"unknown hardware profile {name!r}; profiles: "
                             + "; ".join(f"{k} ({','.join(v)})" for k, v in PROFILES.items()))
    return parse_candidates(list(PROFILES[name]))
