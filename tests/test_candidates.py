"""Candidate strings: every documented form, the errors, and a parse round trip (hypothesis)."""
from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mixprec.candidates import VALID_FORMS, Candidate, parse_candidate, parse_candidates
from mixprec.errors import CandidateError, MixprecError
from mixprec.formats import FloatFormat, IntFormat
from mixprec.profiles import PROFILES, profile_candidates

INT8_INPUT = IntFormat(8, symmetric=False, granularity="tensor")
FP16 = FloatFormat("fp16")

# name -> (weight format, activation format, weight_bits, activation_bits)
DOCUMENTED = {
    "w4a8": (IntFormat(4, True, "channel"), INT8_INPUT, 4, 8),
    "w8a8": (IntFormat(8, True, "channel"), INT8_INPUT, 8, 8),
    "w8a16": (IntFormat(8, True, "channel"), FP16, 8, 16),
    "w16a16": (FP16, FP16, 16, 16),
    "w4": (IntFormat(4, True, "channel"), None, 4, 16),
    "w4g128": (IntFormat(4, True, "group", 128), None, 4, 16),
    "w2g64": (IntFormat(2, True, "group", 64), None, 2, 16),
    "w4g128-asym": (IntFormat(4, False, "group", 128), None, 4, 16),
    "w4g128a8": (IntFormat(4, True, "group", 128), INT8_INPUT, 4, 8),
    "fp8": (FloatFormat("fp8_e4m3", "channel"), FloatFormat("fp8_e4m3", "tensor"), 8, 8),
    "fp8e5m2": (FloatFormat("fp8_e5m2", "channel"), FloatFormat("fp8_e5m2", "tensor"), 8, 8),
    "fp16": (FP16, FP16, 16, 16),
    "bf16": (FloatFormat("bf16"), FloatFormat("bf16"), 16, 16),
    "fp32": (None, None, 32, 32),
    # inputs quantized at run time per block of each row (MatMulNBits' accuracy_level 4)
    "w8a8d32": (IntFormat(8, True, "channel"), IntFormat(8, True, "group", 32, narrow_range=True,
                                                         range_method="minmax"), 8, 8),
    "w4g64a8d64": (IntFormat(4, True, "group", 64), IntFormat(8, True, "group", 64, narrow_range=True,
                                                              range_method="minmax"), 4, 8),
}


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_documented_forms_parse(name):
    weight, activation, wbits, abits = DOCUMENTED[name]
    for spelling in (name, name.upper(), f"  {name.capitalize()} "):
        c = parse_candidate(spelling)
        assert c == Candidate(name, weight, activation)
        assert (c.weight_bits, c.activation_bits) == (wbits, abits)
        assert c.weight_only == (activation is None)
        assert str(c) == name
        assert parse_candidate(c) is c  # an already-parsed candidate passes through


def test_fp8e4m3_alias_is_fp8():
    assert parse_candidate("FP8E4M3") == parse_candidate("fp8")


@pytest.mark.parametrize("spec", ["", "w", "int8", "w4a", "wa8", "w4g", "w4-sym", "w4asym", "a8w4", "w4a8g128",
                                  "fp4", "w4 a8", "w4,a8", "fp16a8", "w4a8-asym-asym", "w-4"])
def test_invalid_strings_list_the_valid_forms(spec):
    with pytest.raises(CandidateError) as info:
        parse_candidate(spec)
    message = str(info.value)
    assert repr(spec) in message
    for form in VALID_FORMS:
        assert form in message
    assert isinstance(info.value, MixprecError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize("spec,what", [("w1a8", "weight bit-width 1"), ("w17", "weight bit-width 17"),
                                       ("w0g64", "weight bit-width 0"), ("w4a1", "activation bit-width 1"),
                                       ("w4a32", "activation bit-width 32"), ("w99999a8", "weight bit-width 99999")])
def test_out_of_range_bits(spec, what):
    with pytest.raises(CandidateError, match=f"{what} .* out of range 2..16"):
        parse_candidate(spec)


@pytest.mark.parametrize("spec", ["w16g128", "w16-asym", "w16g64a8", "W16G128-ASYM"])
def test_w16_takes_no_group_or_asym(spec):
    with pytest.raises(CandidateError, match="w16 means float16"):
        parse_candidate(spec)


def test_group_size_zero():
    with pytest.raises(CandidateError, match="group size must be >= 1"):
        parse_candidate("w4g0")


@pytest.mark.parametrize("value", [8, None, 4.0, ["w4a8"]])
def test_non_string_candidate(value):
    with pytest.raises(CandidateError, match="must be a string"):
        parse_candidate(value)


def test_parse_candidates_list_and_comma_string():
    by_string = parse_candidates(" w4a8, W8A8 ,fp16,")
    by_list = parse_candidates(["w4a8", "w8a8", " fp16 ", ""])
    assert [c.name for c in by_string] == [c.name for c in by_list] == ["w4a8", "w8a8", "fp16"]
    assert by_string == by_list


@pytest.mark.parametrize("specs", ["w4a8,w8a8,W4A8", ["fp8", "fp8e4m3"], ["w4g128", "w4g128 "]])
def test_parse_candidates_refuses_duplicates(specs):
    with pytest.raises(CandidateError, match="duplicate candidates"):
        parse_candidates(specs)


@pytest.mark.parametrize("specs", ["", " , ,", [], [" "]])
def test_parse_candidates_empty(specs):
    with pytest.raises(CandidateError, match="no candidates given"):
        parse_candidates(specs)


def test_parse_candidates_reports_the_bad_one():
    with pytest.raises(CandidateError, match="'w4q8'"):
        parse_candidates("w4a8,w4q8")


def test_leading_zeros_are_canonicalised():
    assert parse_candidate("w04a8").name == "w4a8"
    with pytest.raises(CandidateError, match="duplicate"):
        parse_candidates(["w4a8", "w04a8"])


def test_candidate_is_frozen():
    c = parse_candidate("w4a8")
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.name = "w8a8"
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.weight.bits = 8
    assert hash(c) == hash(parse_candidate("W4A8"))


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_every_profile_parses(profile):
    cands = profile_candidates(profile)
    assert [c.name for c in cands] == list(PROFILES[profile])
    assert len({c.name for c in cands}) == len(cands)


def test_unknown_profile_lists_profiles():
    with pytest.raises(CandidateError) as info:
        profile_candidates("tpu-v9")
    message = str(info.value)
    assert "'tpu-v9'" in message
    for name, cands in PROFILES.items():
        assert f"{name} ({','.join(cands)})" in message


# ---------------------------------------------------------------- round trip

@settings(max_examples=300, deadline=None)
@given(wbits=st.integers(2, 16), group=st.one_of(st.none(), st.integers(1, 4096)),
       abits=st.one_of(st.none(), st.integers(2, 16)), asym=st.booleans(), upper=st.booleans())
def test_round_trip(wbits, group, abits, asym, upper):
    spec = f"w{wbits}" + (f"g{group}" if group else "") + (f"a{abits}" if abits else "") + ("-asym" if asym else "")
    text = spec.upper() if upper else spec
    if wbits == 16 and (group or asym):
        with pytest.raises(CandidateError):
            parse_candidate(text)
        return
    c = parse_candidate(text)
    assert c.name == spec
    if wbits == 16:
        assert c.weight == FloatFormat("fp16")
    else:
        assert isinstance(c.weight, IntFormat)
        assert c.weight.bits == wbits and c.weight.symmetric is not asym
        assert (c.weight.granularity, c.weight.group_size) == (("group", group) if group else ("channel", None))
    if abits is None:
        assert c.activation is None and c.activation_bits == 16
    elif abits == 16:
        assert c.activation == FloatFormat("fp16")
    else:
        assert c.activation == IntFormat(abits, symmetric=False, granularity="tensor")
    assert c.weight_bits == wbits and c.activation_bits == (abits or 16)
    assert parse_candidate(c.name) == c
    assert parse_candidates([c.name]) == [c]


@pytest.mark.parametrize("spec", ["w8a16d32", "w8a8d0", "w8d32", "w8a12d32"])
def test_dynamic_inputs_need_at_most_8_bits_in_blocks(spec):
    with pytest.raises(CandidateError):
        parse_candidate(spec)


def test_candidates_that_are_one_format_under_the_runs_weight_range_are_refused():
    from mixprec.candidates import check_distinct
    cands = parse_candidates("w4a8,w4a8-mse")  # distinct names, and distinct under --weight-range minmax
    check_distinct(cands, "minmax")
    with pytest.raises(CandidateError, match=r"w4a8 and w4a8-mse are the same format \(a name without a range "
                                             r"suffix takes --weight-range's \(mse\)\)"):
        check_distinct(cands, "mse")
    # after weight_range "auto" renamed w4a8 to the variant it chose
    resolved = parse_candidates("w4a8-mse,w4a8-mse".split(",")[:1]) + [cands[1]]
    with pytest.raises(CandidateError, match=r"--weight-range auto chose w4a8-mse for w4a8"):
        check_distinct(resolved, "mse", ["w4a8", "w4a8-mse"])


def test_analyze_refuses_candidates_that_are_one_format():
    import torch
    import mixprec
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    with pytest.raises(CandidateError, match="duplicate candidates: w4a8 and w4a8-mse"):
        mixprec.analyze(model, [torch.randn(4, 4)], candidates="w4a8,w4a8-mse", progress=False)


@pytest.mark.parametrize("spec, hint", [
    ("w4-minmax-asym", "-asym comes before the range suffix (e.g. w4-asym-minmax)"),
    ("w4a8-percentile", "percentile is a --weight-range or --activation-range value"),
    ("w4a8d", "d takes a block size after it"), ("w4g", "g takes a group size after it"),
    ("w4x", "x takes a number of points"), ("w4-pertensor", "there is no per-tensor weight candidate"),
    ("w4g64-foo", "unknown suffix -foo"), ("q4_k", "the GGUF block types here are q8_0, q4_0"),
    ("int8", "an integer candidate starts with w"), ("banana", "an integer candidate starts with w")])
def test_an_unknown_candidate_says_which_part_is_wrong(spec, hint):
    with pytest.raises(CandidateError) as exc:
        parse_candidate(spec)
    assert hint in str(exc.value) and "valid forms" in str(exc.value)
