import pytest
import torch
from torch import nn

from mixprec.apply import QuantizedLayer, apply, quantized_layers
from mixprec.errors import MixprecError, ModelError, PlanError
from mixprec.groups import discover_groups
from mixprec.plan import Plan


def small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval()


def batches(n=4, shape=(3, 8, 8)):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(8, *shape, generator=g) for _ in range(n)]


def plan_for(model, cand, **kw):
    return Plan.uniform(discover_groups(model, batches(1)[0], **kw), cand)


def test_input_model_untouched_and_layers_swapped():
    model = small_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    q = apply(model, plan_for(model, "w4a8"), batches(), progress=False)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert not any(isinstance(m, QuantizedLayer) for m in model.modules())
    assert set(quantized_layers(q)) == {"0", "2", "6"}
    x = batches(1)[0]
    assert not torch.allclose(q(x), model(x))


def test_fp32_plan_is_exact_and_w16a16_is_close():
    model = small_cnn()
    x = batches(1)[0]
    assert torch.equal(apply(model, plan_for(model, "fp32"), None, progress=False)(x), model(x))
    out = apply(model, plan_for(model, "w16a16"), None, progress=False)(x)
    assert torch.allclose(out, model(x), atol=1e-2) and not torch.equal(out, model(x))


def test_weights_on_grid_and_activation_ranges_calibrated():
    model = small_cnn()
    q = apply(model, plan_for(model, "w4a8"), batches(), activation_method="minmax", progress=False)
    layer = quantized_layers(q)["0"]
    w = layer.layer.weight.detach()
    assert all(len(torch.unique(row)) <= 16 for row in w.reshape(w.shape[0], -1))  # 4 bits per channel
    quantizer = layer.input_quantizer
    assert not quantizer.observing
    data = torch.cat(batches())
    assert quantizer.lo.item() == pytest.approx(data.min().item()) and quantizer.hi.item() == pytest.approx(data.max().item())


def test_outputs_get_closer_with_more_bits():
    model = small_cnn()
    x = torch.cat(batches())
    ref = model(x)
    errors = [(apply(model, plan_for(model, c), batches(), progress=False)(x) - ref).pow(2).mean().item()
              for c in ("w3a8", "w4a8", "w8a8", "w8a16")]
    assert errors == sorted(errors, reverse=True)


def test_pinned_group_keeps_its_candidate():
    model = small_cnn()
    q = apply(model, plan_for(model, "w4a8", pins={"0": "w8a8"}), batches(), progress=False)
    assert quantized_layers(q)["0"].candidate == "w8a8"
    assert quantized_layers(q)["2"].candidate == "w4a8"


def test_excluded_layers_stay_float():
    model = small_cnn()
    q = apply(model, plan_for(model, "w4a8", exclude=["6"]), batches(), progress=False)
    assert isinstance(q[6], nn.Linear) and torch.equal(q[6].weight, model[6].weight)


def test_tied_weights_are_one_group_and_stay_one_tensor():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 6)
            self.head = nn.Linear(6, 10, bias=False)
            self.head.weight = self.embed.weight

        def forward(self, ids):
            return self.head(self.embed(ids))

    model = Tied()
    ids = torch.randint(0, 10, (2, 5))
    groups = discover_groups(model, ids)
    assert groups.names == ["{embed,head}"] and groups.groups[0].tied_by == "shared weight"
    assert groups.groups[0].params == 60  # the one table, counted once
    original = model.embed.weight.detach().clone()
    q = apply(model, Plan.uniform(groups, "w2"), None, progress=False)
    assert torch.equal(q.embed.weight, q.head.weight)  # the table and the output layer: one format, one tensor
    assert not torch.equal(q.head.weight, original)
    assert torch.equal(model.embed.weight, original)  # the input model is untouched


def test_weight_only_plan_needs_no_data_but_activations_do():
    model = small_cnn()
    apply(model, plan_for(model, "w4"), None, progress=False)
    with pytest.raises(MixprecError, match="calibration data"):
        apply(model, plan_for(model, "w4a8"), None, progress=False)


def test_empty_calibration_data():
    model = small_cnn()
    with pytest.raises(MixprecError, match="empty"):
        apply(model, plan_for(model, "w8a8"), [], progress=False)


def test_calibration_batch_of_wrong_shape_shows_expected_and_got():
    model = small_cnn()
    data = batches(2) + [torch.randn(8, 3, 9)]
    with pytest.raises(ModelError, match=r"batch 2 has shape \(8, 3, 9\).*\(8, 3, 8, 8\)"):
        apply(model, plan_for(model, "w8a8"), data, progress=False)
    # another resolution of the same rank: this fully convolutional model takes it, as the analysis does
    apply(model, plan_for(model, "w8a8"), batches(2) + [torch.randn(8, 3, 9, 9)], progress=False)
    with pytest.raises(ModelError, match=r"batch 0 of shape \(8, 5, 8, 8\)"):
        apply(model, plan_for(model, "w8a8"), [torch.randn(8, 5, 8, 8)], progress=False)


def test_plan_for_another_model_is_refused():
    model = small_cnn()
    plan = Plan({"g": "w8a8"}, {"g": ["features.0"]})
    with pytest.raises(PlanError, match="features.0"):
        apply(model, plan, batches(), progress=False)


def test_nan_weights_name_the_layer():
    model = small_cnn()
    plan = plan_for(model, "w8a8")
    with torch.no_grad():
        model[2].weight[0, 0, 0, 0] = float("inf")
    with pytest.raises(ModelError, match="'2'"):
        apply(model, plan, batches(), progress=False)


def test_quantized_state_dict_reloads_into_a_fresh_apply():
    model = small_cnn()
    plan = plan_for(model, "w4a8")
    q = apply(model, plan, batches(), progress=False)
    fresh = apply(model, plan, None, calibrate=False, progress=False)
    fresh.load_state_dict(q.state_dict())
    x = batches(1)[0]
    assert torch.equal(fresh(x), q(x))


def test_dtype_and_device_preserved():
    model = small_cnn().to(torch.float64)
    q = apply(model, plan_for(model.float(), "w8a8"), batches(), progress=False)
    assert all(p.dtype == torch.float32 for p in q.parameters())
    if torch.cuda.is_available():
        qc = apply(small_cnn().cuda(), plan_for(small_cnn(), "w8a8"), batches(), progress=False)
        assert all(p.is_cuda for p in qc.parameters())


def test_torchscript_model_weight_only(tmp_path):
    import warnings
    from mixprec.specs import load_model
    model = small_cnn()
    path = tmp_path / "m.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(model), str(path))
        scripted = load_model(str(path))
    groups = discover_groups(scripted, batches(1)[0])
    assert [g.name for g in groups] == ["0", "2", "6"] and not groups.traced
    assert any("TorchScript" in n for n in groups.notes)
    x = batches(1)[0]
    q = apply(scripted, Plan.uniform(groups, "w4"), None, progress=False)
    eager = apply(model, Plan.uniform(groups, "w4"), None, progress=False)
    assert torch.allclose(q(x), eager(x), atol=1e-5)
    assert torch.equal(scripted(x), model(x))  # input model untouched
    with pytest.raises(ModelError, match="weight-only"):
        apply(scripted, Plan.uniform(groups, "w4a8"), batches(), progress=False)
    assert not any("no example input" in n for n in groups.notes)  # it had one: the TorchScript note says why
    import mixprec  # analyze refuses what quantize would refuse, before measuring anything
    with pytest.raises(ModelError, match="TorchScript model takes weight-only candidates only.*w4a8 quantize"):
        mixprec.analyze(scripted, batches(), "w4,w4a8", metric="roundoff", progress=False)
    assert mixprec.analyze(scripted, batches(), "w4,w8", metric="roundoff", progress=False).table is not None


def test_applied_beside_measures_what_apply_builds_and_leaves_the_model_whole():
    from mixprec.apply import applied_beside
    model, data, x = small_cnn(), batches(), batches(1)[0]
    plan = plan_for(model, "w4a8")
    params = dict(model.named_parameters())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    expected = apply(model, plan, data, progress=False)(x)
    with applied_beside(model, plan, data, progress=False) as q:
        assert torch.equal(q(x), expected)
        assert q[0].layer.bias is model[0].bias  # what the copy keeps as it is, it shares: no second copy
        assert q[0].layer.weight is not model[0].weight
    with pytest.raises(RuntimeError, match="inside"):
        with applied_beside(model, plan, data, progress=False):
            raise RuntimeError("inside")
    assert dict(model.named_parameters()) == params  # the same Parameter objects, with the same values
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]) and v.device == before[k].device


def test_a_weight_a_float_layer_also_reads_never_leaves_the_device():
    from mixprec.apply import _Offload

    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)
            self.b.weight = self.a.weight  # b reads a's weight; b stays float

    model = Shared()
    offload = _Offload(model, ["a", "c"])
    assert offload.users[id(model.a.weight)] == -1 and offload.users[id(model.c.weight)] == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
def test_applied_beside_keeps_the_replaced_float_weights_in_cpu_memory_meanwhile(monkeypatch):
    from mixprec.apply import applied_beside
    monkeypatch.setenv("MIXPREC_OFFLOAD", "always")  # a small model on a large GPU would stay put (auto)
    model, data = small_cnn().cuda(), [b.cuda() for b in batches()]
    plan = plan_for(small_cnn(), "w4a8")
    expected = apply(model, plan, data, progress=False)(data[0])
    with applied_beside(model, plan, data, progress=False) as q:
        assert model[0].weight.device.type == "cpu" and model[0].bias.device.type == "cuda"
        assert torch.equal(q(data[0]), expected)
    assert all(p.device.type == "cuda" for p in model.parameters())


def test_the_float_weights_move_only_where_the_device_lacks_room(monkeypatch):
    from mixprec.apply import _Offload, applied_beside
    from mixprec.offload import lacks_room
    gib = 1 << 30
    assert not lacks_room(free=60 * gib, total=80 * gib, needed=16 * gib)  # an 8B model on an H100
    assert lacks_room(free=7 * gib, total=24 * gib, needed=16 * gib)  # the same on a 24 GB card
    assert lacks_room(free=17 * gib, total=80 * gib, needed=16 * gib)  # less than the margin left
    model, data = small_cnn(), batches()
    assert not _Offload(model, ["0"]).wanted()  # CPU weights have nowhere to go
    monkeypatch.setenv("MIXPREC_OFFLOAD", "sometimes")
    with pytest.raises(MixprecError, match="MIXPREC_OFFLOAD must be one of auto, always, never"):
        with applied_beside(model, plan_for(model, "w4a8"), data, progress=False):
            pass


def test_inplace_quantizes_the_model_itself_as_a_copy_would_be():
    model, data, x = small_cnn(), batches(), batches(1)[0]
    plan = plan_for(model, "w4a8")
    expected = apply(model, plan, data, progress=False)(x)
    q = apply(model, plan, data, progress=False, inplace=True)
    assert q is model and set(quantized_layers(model)) == {"0", "2", "6"}
    assert torch.equal(q(x), expected)


def test_the_guard_reads_nothing_of_the_float_weights_a_measured_plan_replaces(monkeypatch):
    """On a GPU the float weights a measured plan replaces wait in CPU memory (applied_beside). Here they
    go to the meta device instead, on the CPU: the guard's divergences must come out the same, so nothing
    (the float reference outputs, the device the inputs go to) reads them while a plan is measured."""
    import importlib

    import mixprec
    apply_module = importlib.import_module("mixprec.apply")  # the module (mixprec.apply is the function)

    model, data = small_cnn(), batches()
    analysis = mixprec.analyze(model, data, "w2a8,w4a8,w8a8", "sqnr", progress=False)
    problem = analysis.problem()
    budget = {"bops": (problem.uniform_cost("bops", "w2a8") + problem.uniform_cost("bops", "w4a8")) / 2}
    clean = analysis.solve(budget, guard_margin=0)
    assert clean.metadata["guard"]["measured"]  # the guard measured plans (the exact one is mixed)
    saved = {}

    def poison(self, name):  # the float layer's weight is swapped for one on the meta device
        layer = self.model.get_submodule(name)
        if self.users.get(id(layer.weight), -1) > 0 and name not in saved:
            saved[name] = (layer, layer.weight)
            layer._parameters["weight"] = nn.Parameter(torch.empty_like(layer.weight, device="meta"))

    def restore(self):
        for layer, weight in saved.values():
            layer._parameters["weight"] = weight
        saved.clear()

    monkeypatch.setattr(apply_module._Offload, "quantized", poison)
    monkeypatch.setattr(apply_module._Offload, "restore", restore)
    poisoned = mixprec.analyze(model, data, "w2a8,w4a8,w8a8", "sqnr", progress=False).solve(budget, guard_margin=0)
    assert poisoned.metadata["guard"] == clean.metadata["guard"]
    assert all(p.device.type == "cpu" and torch.isfinite(p).all() for p in model.parameters())


def test_apply_takes_the_path_of_a_plan_json_and_refuses_other_things(tmp_path):
    import pytest

    from mixprec.errors import PlanError
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    data = [torch.randn(4, 8)]
    plan = Plan.uniform(discover_groups(model, data[0]), "w8a8")
    plan.save(tmp_path / "plan.json")
    from_path = apply(model, str(tmp_path / "plan.json"), data, progress=False)
    with torch.no_grad():
        assert torch.equal(from_path(data[0]), apply(model, plan, data, progress=False)(data[0]))
    with pytest.raises(PlanError, match="a mixprec Plan or the path of a plan.json, got dict"):
        apply(model, plan.to_dict(), data, progress=False)


def test_a_plan_chosen_with_gptq_and_applied_without_a_rounding_says_it_is_rounded_by_nearest(tmp_path):
    import warnings
    from mixprec import export
    from mixprec.errors import RoundingNote
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    data = [torch.randn(8, 8) for _ in range(2)]
    plan = Plan.uniform(discover_groups(model, data[0]), "w8a8")
    plan.metadata.update(rounding="gptq", rounding_options={"static_groups": True})

    def notes(call):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            call()
        return [w for w in caught if issubclass(w.category, RoundingNote)]
    said = notes(lambda: apply(model, plan, data, progress=False))
    assert len(said) == 1 and "gptq" in str(said[0].message) and said[0].filename == __file__
    said = notes(lambda: export(model, plan, data, out=tmp_path / "m.onnx", progress=False))
    assert len(said) == 1 and "export rounds it by nearest" in str(said[0].message) and said[0].filename == __file__
    assert not notes(lambda: apply(model, plan, data, progress=False, rounding="nearest"))  # meant: nothing said
    plan.metadata.pop("rounding")
    assert not notes(lambda: apply(model, plan, data, progress=False))  # a nearest plan: nothing to say


def test_quantize_plan_without_a_rounding_says_a_gptq_plan_is_rounded_by_nearest():
    import warnings
    import mixprec
    from mixprec.errors import RoundingNote
    model = small_cnn()
    data = batches(2)
    groups = discover_groups(model, data[0])
    plan = Plan.uniform(groups, "w8a8")
    plan.metadata.update(rounding="gptq", rounding_options={"static_groups": True})
    with pytest.warns(RoundingNote, match="quantize_plan rounds it by nearest") as said:
        result = mixprec.quantize_plan(model, plan, data, groups, progress=False)
    assert result.rounding == "nearest" and said[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error", RoundingNote)  # asked for: nothing to say
        mixprec.quantize_plan(model, plan, data, groups, progress=False, rounding="nearest")


def test_a_learned_rounding_under_inference_mode_is_a_clear_error():
    model = small_cnn()
    data = batches(2)
    plan = plan_for(model, "w4a8")
    for rounding in ("gptq", "adaround"):
        with torch.inference_mode(), pytest.raises(MixprecError, match="inference_mode"):
            apply(model, plan, data, progress=False, rounding=rounding)


def test_a_learned_rounding_of_a_plan_without_integer_weights_says_so_and_is_recorded_as_nearest():
    import mixprec
    from mixprec.errors import PlanNote
    model = small_cnn()
    data = batches(2)
    groups = discover_groups(model, data[0])
    with pytest.warns(PlanNote, match="nothing to round"):
        result = mixprec.quantize_plan(model, Plan.uniform(groups, "fp16"), data, groups, progress=False,
                                       rounding="adaround")
    assert result.rounding == "nearest"


def test_quantize_plan_says_which_layers_a_learned_rounding_leaves_to_nearest():
    import mixprec
    from mixprec.errors import PlanNote
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.ConvTranspose2d(4, 2, 2, stride=2),
                          nn.ReLU(), nn.Conv2d(2, 1, 3, padding=1)).eval()
    data = [torch.randn(8, 1, 8, 8) for _ in range(2)]
    groups = discover_groups(model, data[0])
    with pytest.warns(PlanNote, match=r"1 of 3 layer\(s\) with integer weights are rounded by nearest, not gptq"):
        mixprec.quantize_plan(model, Plan.uniform(groups, "w4a8"), data, groups, progress=False, rounding="gptq")


def test_a_plan_recording_a_rounding_this_mixprec_lacks_is_refused_unless_a_rounding_is_given():
    from mixprec.errors import RoundingError
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    data = [torch.randn(4, 8)]
    plan = Plan.uniform(discover_groups(model, data[0]), "w8a8", metadata={"rounding": "gptq2"})
    with pytest.raises(RoundingError, match="records rounding 'gptq2', which this mixprec does not have"):
        apply(model, plan, data, progress=False)
    assert apply(model, plan, data, rounding="nearest", progress=False) is not None
