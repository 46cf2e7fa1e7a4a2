import math

import pytest
import torch
from torch import nn

from mixprec.errors import ModelError
from mixprec.groups import discover_groups, group_name


class Branchy(nn.Module):
    """conv -> two linears reading the same tensor (must tie) -> sum -> head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.q = nn.Linear(8, 8)
        self.k = nn.Linear(8, 8)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        h = self.stem(x).mean(dim=(2, 3))
        return self.head(self.q(h) + self.k(h))


def test_layers_reading_one_tensor_are_tied():
    groups = discover_groups(Branchy(), torch.randn(2, 3, 6, 6))
    assert [g.layer_names for g in groups] == [("stem",), ("q", "k"), ("head",)]
    assert groups["{q,k}"].tied_by == "shared input"
    assert all(g.tied_by == "" for g in groups if len(g.layers) == 1)


def test_macs_counted_from_the_forward_pass():
    groups = discover_groups(Branchy(), torch.randn(2, 3, 6, 6))
    assert groups["stem"].macs == 6 * 6 * 8 * 3 * 3 * 3  # per sample: outputs x (in x kh x kw)
    assert groups["{q,k}"].macs == 2 * 8 * 8
    assert groups["head"].macs == 8 * 4


def test_linear_macs_count_every_token():
    model = nn.Sequential(nn.Linear(5, 7))
    groups = discover_groups(model, torch.randn(3, 11, 5))
    assert groups["0"].macs == 11 * 5 * 7


def test_user_ties_excludes_and_pins():
    groups = discover_groups(Branchy(), torch.randn(1, 3, 6, 6), ties=["*e*"], exclude=[],
                             pins={"head": "w8a8"}, tie_shared_inputs=False)
    names = [g.layer_names for g in groups]
    assert ("stem", "head") in names and ("q",) in names and ("k",) in names
    assert groups["{stem,head}"].pinned == "w8a8"
    assert groups["{stem,head}"].tied_by == "tie *e*"

    groups = discover_groups(Branchy(), torch.randn(1, 3, 6, 6), exclude=["stem"])
    assert "stem" not in [l.name for l in groups.layers]
    assert [l.name for l in groups.excluded] == ["stem"]


def test_conflicting_pins_in_one_group_are_refused():
    with pytest.raises(ModelError, match="conflicting pins"):
        discover_groups(Branchy(), torch.randn(1, 3, 6, 6), pins={"q": "w8a8", "k": "w4a8"})


def test_a_pin_on_an_excluded_layer_says_it_is_excluded_and_a_pattern_pinned_twice_is_refused():
    from mixprec.errors import SpecError
    from mixprec.specs import parse_pins
    with pytest.raises(ModelError, match=r"matches only excluded layer\(s\) \['stem'\].*pin or exclude them, not both"):
        discover_groups(Branchy(), torch.randn(1, 3, 6, 6), exclude=["stem"], pins={"stem": "w8a8"})
    with pytest.raises(SpecError, match="--pin c1=w2a8 and --pin c1=w8a8 pin the same layers to two candidates"):
        parse_pins(["c1=w2a8", "c1=w8a8"])
    assert parse_pins(["c1=w8a8", "c1=w8a8", "c2=w4a8"]) == {"c1": "w8a8", "c2": "w4a8"}


def test_patterns_that_match_nothing_are_reported():
    for kwargs in ({"exclude": ["nope*"]}, {"ties": ["nope*"]}, {"pins": {"nope": "w8a8"}}):
        with pytest.raises(ModelError, match="nope"):
            discover_groups(Branchy(), torch.randn(1, 3, 6, 6), **kwargs)


def test_without_example_input_each_layer_is_its_own_group():
    groups = discover_groups(Branchy())
    assert len(groups) == 4 and not groups.traced
    assert all(g.macs is None for g in groups)
    assert groups.notes


def test_model_without_quantizable_layers():
    with pytest.raises(ModelError, match="no quantizable layers"):
        discover_groups(nn.Sequential(nn.ReLU()), torch.randn(1, 3))


def test_nan_weights_name_the_layer():
    model = Branchy()
    with torch.no_grad():
        model.k.weight[0, 0] = float("nan")
    with pytest.raises(ModelError, match="'k'"):
        discover_groups(model, torch.randn(1, 3, 6, 6))


def test_wrong_example_shape_is_a_clear_error():
    with pytest.raises(ModelError, match=r"\(1, 5, 6, 6\)"):
        discover_groups(Branchy(), torch.randn(1, 5, 6, 6))


def test_group_name():
    assert group_name(["a.b.q_proj", "a.b.k_proj", "a.b.v_proj"]) == "a.b.{q_proj,k_proj,v_proj}"
    assert group_name(["x"]) == "x"


def test_a_model_of_two_inputs_given_a_pair_is_told_how_to_batch():
    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 2), nn.Linear(4, 2)

        def forward(self, x, y):
            return self.a(x) + self.b(y)

    x, y = torch.randn(2, 3), torch.randn(2, 4)
    with pytest.raises(ModelError, match=r"read as \(inputs, labels\).*\(\(input1, input2, \.\.\.\), labels\)"):
        discover_groups(TwoInputs(), x)  # what split_item makes of the item (x, y)
    assert len(discover_groups(TwoInputs(), (x, y))) == 2


class ScriptedPart(nn.Module):
    """An eager model with a torch.jit.script'ed submodule: its layers can be neither hooked nor swapped."""

    def __init__(self):
        super().__init__()
        self.part = torch.jit.script(nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU()))
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.conv(self.part(x)).mean((2, 3)))


def test_layers_inside_a_scripted_submodule_stay_float_and_are_named():
    from mixprec.apply import apply
    from mixprec.groups import unquantized_weights
    from mixprec.plan import Plan
    model, x = ScriptedPart().eval(), torch.randn(2, 1, 6, 6)
    groups = discover_groups(model, x)
    assert [l.name for l in groups.layers] == ["conv", "fc"]
    assert unquantized_weights(model)[0][:2] == ("part", "a TorchScript submodule")
    quantized = apply(model, Plan.uniform(groups, "w8a8"), [x], progress=False)
    assert quantized(x).shape == (2, 3)


def test_a_dict_batch_with_a_key_forward_does_not_take_is_one_clear_line():
    class Pixels(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, pixels, ids=None):
            return self.fc(pixels)

    batch = {"pixels": torch.randn(8, 4), "ids": [f"item{i}" for i in range(8)], "label": torch.zeros(8)}
    with pytest.raises(ModelError) as info:
        discover_groups(Pixels(), batch)
    message = str(info.value)
    assert "'ids': '8 x str'" in message and "'label': (8,)" in message  # a list of values: its length and type
    assert "unexpected keyword argument 'label'" in message and "leave out the keys forward does not take" in message
    assert discover_groups(Pixels(), {k: v for k, v in batch.items() if k != "label"}).example_shape == {
        "pixels": (8, 4), "ids": "8 x str"}


def test_embedding_tables_reading_the_same_ids_are_not_tied():
    # their input is indices, never quantized: a token and a position table each take their own format
    class TwoTables(nn.Module):
        def __init__(self):
            super().__init__()
            self.tok, self.pos, self.head = nn.Embedding(50, 8), nn.Embedding(50, 8), nn.Linear(8, 4)

        def forward(self, ids):
            return self.head(self.tok(ids) + self.pos(ids))

    groups = discover_groups(TwoTables(), torch.randint(0, 50, (2, 6)))
    assert sorted(groups.names) == ["head", "pos", "tok"]


def test_a_pattern_that_matches_nothing_says_how_patterns_match():
    import pytest

    from mixprec.errors import ModelError
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    for kwargs in ({"ties": ["0|2"]}, {"exclude": ["fc*"]}, {"pins": {"head": "w8a8"}}):
        with pytest.raises(ModelError, match="shell-style glob matched against whole layer names"):
            discover_groups(model, torch.randn(2, 4), **kwargs)


def test_the_note_on_float_weights_names_the_parameters_a_model_holds_itself():
    class WithTable(nn.Module):
        def __init__(self):
            super().__init__()
            self.pos = nn.Parameter(torch.randn(16, 8))
            self.fc = nn.Linear(8, 2)

        def forward(self, x):
            return self.fc(x + self.pos[: x.shape[1]].mean(0))

    groups = discover_groups(WithTable(), torch.randn(2, 8))
    note = next(n for n in groups.notes if "stay float" in n)
    assert "'pos'" in note and "''" not in note


def test_a_bare_string_pattern_is_one_pattern_and_pins_must_be_a_dict():
    import pytest

    from mixprec.errors import ModelError
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    x = torch.randn(2, 4)
    assert discover_groups(model, x, exclude="2").excluded[0].name == "2"  # not the characters of '2'
    assert len(discover_groups(model, x, ties="[02]").groups) == 1
    with pytest.raises(ModelError, match="pins is a dict"):
        discover_groups(model, x, pins=["0=w8a8"])


def test_an_embedding_with_max_norm_is_said():
    """torch renormalises the rows an Embedding(max_norm) reads, in place, at each lookup: neither the
    quantized table nor an ONNX file does."""
    import torch
    from torch import nn

    from mixprec.groups import discover_groups

    class Bag(nn.Module):
        def __init__(self, max_norm):
            super().__init__()
            self.emb, self.fc = nn.Embedding(20, 8, max_norm=max_norm), nn.Linear(8, 3)

        def forward(self, ids):
            return self.fc(self.emb(ids).mean(1))

    ids = torch.randint(0, 20, (4, 5))
    assert any("max_norm" in n and "'emb'" in n for n in discover_groups(Bag(1.0), ids).notes)
    assert not any("max_norm" in n for n in discover_groups(Bag(None), ids).notes)


def test_a_tie_pattern_of_one_layer_is_said_and_a_tie_over_shared_inputs_names_both_reasons():
    import torch
    from torch import nn

    from mixprec.groups import discover_groups

    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k, self.out = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(8, 2)

        def forward(self, x):
            return self.out(torch.cat([self.q(x), self.k(x)], -1))

    x = torch.randn(3, 4)
    groups = discover_groups(Two(), x, ties=["q", "out"])
    assert len(groups.groups) == 2  # q and k share their input; 'q' and 'out' tie nothing each
    assert sum("matches only" in n for n in groups.notes) == 2
    tied = discover_groups(Two(), x, ties=["*"])
    assert len(tied.groups) == 1 and tied.groups[0].tied_by == "shared input + tie *"


class FunctionalUse(torch.nn.Module):
    """conv and head are never called as modules: the forward computes with their weights itself."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.body = torch.nn.Conv2d(4, 4, 3, padding=1)
        self.head = torch.nn.Linear(4, 3)
        self.spare = torch.nn.Linear(4, 3)  # not called and not read: dead code

    def forward(self, x):
        h = torch.relu(torch.nn.functional.conv2d(x, self.conv.weight, self.conv.bias, padding=1))
        h = self.body(h).mean(dim=(2, 3))
        return torch.nn.functional.linear(h, self.head.weight, self.head.bias)


def test_layers_whose_weights_the_forward_reads_itself_stay_float_with_a_note():
    """A layer used through F.conv2d/F.linear used to be priced as quantized and then fail as 'never called' (analyze)
    or 'saw no finite input' (export): it is left float, and said why; a layer neither called nor read is dead code."""
    from mixprec.groups import discover_groups
    g = discover_groups(FunctionalUse().eval(), torch.randn(2, 1, 6, 6))
    assert g.names == ["body", "spare"]
    assert sorted(layer.name for layer in g.excluded) == ["conv", "head"]
    assert any("reads their weights itself" in n and "conv" in n for n in g.notes)
    assert any("not called on the example input (e.g. spare)" in n for n in g.notes)


def test_a_pattern_that_matches_the_end_of_layer_names_says_the_whole_name():
    """--pin lm_head=w8 on an hf: model (its layers under 'lm.') listed the first layers, not 'lm.lm_head'."""
    from mixprec.errors import ModelError
    from mixprec.groups import discover_groups

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lm = torch.nn.ModuleDict({"body": torch.nn.Linear(4, 4), "lm_head": torch.nn.Linear(4, 3)})

        def forward(self, x):
            return self.lm["lm_head"](self.lm["body"](x))
    for options in ({"pins": {"lm_head": "w8"}}, {"exclude": ["lm_head"]}, {"ties": ["lm_head"]}):
        with pytest.raises(ModelError, match=r"matches the end of 1 layer name\(s\), e.g. 'lm.lm_head'.*'\*\.lm_head'"):
            discover_groups(Wrapped(), torch.randn(2, 4), **options)


class TiedByHand(torch.nn.Module):
    """A GPT-style output computed with the embedding's table itself, beside a real tie (two layers, one weight)
    and a read of a weight's shape only."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.wte = torch.nn.Embedding(20, 8)
        self.fc = torch.nn.Linear(8, 8)
        self.emb2 = torch.nn.Embedding(20, 8)
        self.out2 = torch.nn.Linear(8, 20, bias=False)
        self.out2.weight = self.emb2.weight  # tied through modules: read inside both calls

    def forward(self, ids):
        h = torch.relu(self.fc(self.wte(ids) + self.emb2(ids)))
        assert h.shape[-1] == self.fc.weight.shape[0]  # looks at a weight, reads none of its values
        return torch.nn.functional.linear(h, self.wte.weight) + self.out2(h)


def test_a_called_layer_whose_weight_the_forward_also_computes_with_stays_float_with_a_note():
    from mixprec.groups import discover_groups
    g = discover_groups(TiedByHand().eval(), torch.randint(0, 20, (2, 5)))
    assert [layer.name for layer in g.excluded] == ["wte"]
    assert sorted(tuple(sorted(group.layer_names)) for group in g) == [("emb2", "out2"), ("fc",)]
    assert any("are called, but the forward also computes with their weights itself" in n and "wte" in n
               for n in g.notes)


def test_lazy_layers_not_yet_initialised_are_a_model_error_saying_to_run_the_model_once():
    from mixprec.errors import ModelError
    from mixprec.groups import discover_groups
    model = torch.nn.Sequential(torch.nn.LazyLinear(8), torch.nn.ReLU(), torch.nn.Linear(8, 2)).eval()
    x = torch.randn(3, 5)
    with pytest.raises(ModelError, match=r"1 layer\(s\) \(e.g. '0'\) are lazy .*call the model on one input"):
        discover_groups(model, x)
    model(x)  # initialised: an ordinary Linear now
    assert discover_groups(model, x).names == ["0", "2"]
