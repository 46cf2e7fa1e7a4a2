import dataclasses

import pytest
import torch

import mixprec
from mixprec.apply import apply
from mixprec.errors import MixprecError, RoundingError
from mixprec.rounding import BRECQ, GPTQ, ROUNDINGS, AdaRound, Nearest, round_weights, rounding_config

from test_round_weights import TwoLayers, plan_of  # noqa: E402  (tests/rounding is on sys.path: rootdir mode)


def test_configs_hold_the_back_ends_options_and_defaults():
    assert [c.name for c in ROUNDINGS.values()] == list(ROUNDINGS)
    assert Nearest().options() == {} and not Nearest.needs_data
    assert GPTQ().options() == {"act_order": True, "block_size": 128, "percdamp": 0.01, "static_groups": False}
    assert GPTQ.sequential and not AdaRound.sequential and BRECQ.blockwise
    assert list(BRECQ().options()) == [*AdaRound().options(), "fisher", "blocks"]
    assert GPTQ(act_order=False, block_size=128).changed() == {"act_order": False}
    with pytest.raises(dataclasses.FrozenInstanceError):
        GPTQ().act_order = False
    assert mixprec.GPTQ is GPTQ and mixprec.rounding_config is rounding_config


def test_rounding_config_takes_a_name_or_a_config_and_checks_the_options():
    assert rounding_config() == Nearest()
    assert rounding_config("gptq", act_order=True) == GPTQ(act_order=True)
    assert rounding_config(GPTQ(act_order=True), block_size=64) == GPTQ(act_order=True, block_size=64)
    with pytest.raises(RoundingError, match="unknown rounding 'obq'; choose one of: nearest, gptq, adaround, brecq"):
        rounding_config("obq")
    with pytest.raises(RoundingError, match=r"gptq rounding has no option 'iterations'; its options \(defaults\): "
                                            r"act_order=True, block_size=128"):
        rounding_config(GPTQ(), iterations=3)
    with pytest.raises(RoundingError, match="brecq option fisher must be True"):
        BRECQ(fisher=1)
    with pytest.raises(RoundingError, match="adaround option seed must be a non-negative integer"):
        rounding_config("adaround", seed=-1)


def test_a_config_rounds_as_its_name_with_options():
    model = TwoLayers().eval()
    plan = plan_of({"fc1": "w4a8", "fc2": "w4"})
    data = [torch.randn(32, 64) for _ in range(2)]
    by_name = round_weights(model, plan, data, "gptq", progress=False, act_order=True)
    by_config = round_weights(model, plan, data, GPTQ(act_order=True), progress=False)
    assert all(torch.equal(by_name[n], by_config[n]) for n in by_name)
    q1 = apply(model, plan, data, rounding="adaround", rounding_options={"iterations": 5}, progress=False)
    q2 = apply(model, plan, data, rounding=AdaRound(), rounding_options={"iterations": 5}, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(q1.state_dict().values(), q2.state_dict().values()))
    with pytest.raises(MixprecError, match="nearest rounding takes no options"):
        apply(model, plan, data, rounding=Nearest(), rounding_options={"act_order": True}, progress=False)


def test_solve_with_the_name_of_the_analysis_rounding_keeps_the_switches_it_was_measured_with():
    import types
    from mixprec.analysis import Analysis
    from mixprec.rounding import rounding_config
    run = types.SimpleNamespace(rounding=rounding_config("gptq", static_groups=True, act_order=False))
    assert Analysis._rounding(run, None, None) == run.rounding
    assert Analysis._rounding(run, "gptq", None) == run.rounding  # solve --rounding gptq on that run
    assert Analysis._rounding(run, "gptq", {"percdamp": 0.05}).static_groups is True
    assert Analysis._rounding(run, rounding_config("gptq"), None).static_groups is False  # a config is taken as given
    assert Analysis._rounding(run, "adaround", None).name == "adaround"
