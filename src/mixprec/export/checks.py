"""check_target(target, layers): a plan checked for any export target, before any work, by the check of
the module that writes that target (ONNX Runtime's realisations, GGUF's types, compressed-tensors'
schemes, the cuda kernels). It sits above the writers, which read their candidates' text from mixprec.export.targets.
"""
from __future__ import annotations

import math

from ..candidates import Candidate, parse_candidate
from . import compressed_tensors, cuda, gguf
from .targets import Target, check_layers, get_target


def check_target(target: str | Target, layers: dict[str, tuple[str, tuple[int, ...], Candidate | str]],
                 reduce_range: bool = False) -> dict:
    """What ``target`` makes of every planned layer (name -> (kind, weight shape, candidate)): an ONNX
    Realisation, a GGUF type or a compressed-tensors scheme (None: left dense). One CandidateError lists
    every layer the target cannot run, with the target's candidates."""
    spec = get_target(target.name if isinstance(target, Target) else target)
    layers = {name: (kind, shape, parse_candidate(c) if isinstance(c, str) else c)  # a name too: "w4a8"
              for name, (kind, shape, c) in layers.items()}
    if spec.name == "gguf":
        return gguf.check_plan({name: (shape, candidate) for name, (_, shape, candidate) in layers.items()})
    if spec.name == "cuda":
        return cuda.check_plan(layers)
    inputs = {name: (kind, _inputs(shape), candidate) for name, (kind, shape, candidate) in layers.items()}
    if spec.name == "compressed-tensors":
        return compressed_tensors.check_plan(inputs)
    return check_layers(spec, inputs, reduce_range)


def _inputs(shape: tuple[int, ...]) -> int:
    """Inputs per output channel of a weight of this shape."""
    return math.prod(int(d) for d in shape[1:])
