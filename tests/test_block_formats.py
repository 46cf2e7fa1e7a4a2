"""GGUF's block formats as mixprec formats (candidates q8_0, q4_0): the narrow Q8_0 grid, the float16
scale, the fixed min/max range; mixprec's own grids unchanged."""
from __future__ import annotations

import pytest
import torch

from mixprec.candidates import GGUF_FORMATS, parse_candidate
from mixprec.errors import CandidateError
from mixprec.export.targets import realise
from mixprec.formats import IntFormat
from mixprec.profiles import profile_candidates
from mixprec.quantizers import fake_quant_int, quantize_weight, stored_scale, weight_qparams


def weights(rows=16, inputs=256, seed=0):
    return torch.randn(rows, inputs, generator=torch.Generator().manual_seed(seed)) * 0.02


def test_grids():
    q8, q4 = GGUF_FORMATS["q8_0"], GGUF_FORMATS["q4_0"]
    assert (q8.qmin, q8.qmax, q4.qmin, q4.qmax) == (-127, 127, -8, 7)
    assert IntFormat(8, True, "group", 32).qmin == -128  # mixprec's own grid keeps all 256 levels
    assert parse_candidate("Q4_0").name == "q4_0" and parse_candidate("q8_0").weight_only
    assert q4.storage_bits((64, 64)) / 4096 == 4.5 and q8.storage_bits((64, 64)) / 4096 == 8.5  # 18 and 34 bytes a block
    assert [c.name for c in profile_candidates("gguf")] == ["q8_0", "q4_0", "fp16"]


@pytest.mark.parametrize("kwargs,match", [({"symmetric": False, "narrow_range": True}, "symmetric"),
                                          ({"scale_dtype": "bf16"}, "scale_dtype"),
                                          ({"range_method": "max"}, "range_method")])
def test_invalid_formats(kwargs, match):
    with pytest.raises(CandidateError, match=match):
        IntFormat(4, **{"granularity": "group", "group_size": 32, **kwargs})


def test_q4_0_is_the_signed_grid_with_a_float16_scale():
    x = weights()
    w4g32, q4 = parse_candidate("w4g32").weight, GGUF_FORMATS["q4_0"]
    scale, zero = weight_qparams(x, w4g32, "minmax")
    codes = torch.clamp(torch.round(x / scale), -8, 7)  # codes chosen with the float32 scale, as ggml does
    assert torch.equal(quantize_weight(x, w4g32, "minmax"), codes * scale)  # fp32 formats: unchanged
    fp16_scale = scale.to(torch.float16).to(torch.float32)
    assert torch.equal(quantize_weight(x, q4), codes * fp16_scale)
    assert not torch.equal(fp16_scale, scale)  # so the test sees the rounding
    assert torch.equal(stored_scale(scale, w4g32), scale)


def test_q8_0_puts_the_largest_magnitude_on_127():
    x = weights(seed=1)
    sim = quantize_weight(x, GGUF_FORMATS["q8_0"])
    blocks = x.reshape(-1, 32)
    d = (blocks.abs().amax(1, keepdim=True) / 127).to(torch.float16).to(torch.float32)
    codes = sim.reshape(-1, 32) / d
    assert torch.equal(codes, torch.round(codes)) and codes.abs().max() == 127
    assert torch.equal(codes.abs().amax(1), torch.full((blocks.shape[0],), 127.0))


def test_the_format_fixes_its_range_method():
    x = weights(seed=2)
    q4, w4g32 = GGUF_FORMATS["q4_0"], parse_candidate("w4g32").weight
    assert torch.equal(quantize_weight(x, q4, "mse"), quantize_weight(x, q4, "minmax"))
    assert not torch.equal(quantize_weight(x, w4g32, "mse"), quantize_weight(x, w4g32, "minmax"))
    scale, zero = weight_qparams(x, q4, "percentile")
    assert torch.equal(fake_quant_int(x, scale, zero, q4), quantize_weight(x, q4, "minmax"))


@pytest.mark.parametrize("name", ["q8_0", "q4_0"])
def test_onnx_runtime_refuses_gguf_blocks(name):
    reason = realise(parse_candidate(name), "Linear", 256)
    assert isinstance(reason, str) and "gguf" in reason
