"""nn.MultiheadAttention made explicit: the same function, and its projections quantized like any layer."""
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

from mixprec.apply import apply
from mixprec.attention import ExplicitAttention, attention_modules
from mixprec.canonical import canonical
from mixprec.groups import discover_groups
from mixprec.joins import _Tracer, graph_module
from mixprec.plan import Plan


class TinyViT(nn.Module):
    """Patches, a cls token, an nn.TransformerEncoder (batch first), a head: the usual user-written transformer."""

    def __init__(self, d=16):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Linear(4, d)
        self.cls = nn.Parameter(torch.randn(1, 1, d))
        layer = nn.TransformerEncoderLayer(d, 4, 32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=True)
        self.head = nn.Linear(d, 5)

    def forward(self, x, padding=None):
        h = torch.cat([self.cls.expand(x.shape[0], -1, -1), self.embed(x)], 1)
        if padding is not None:
            padding = torch.cat([padding.new_zeros(x.shape[0], 1), padding], 1)
        return self.head(self.encoder(h, src_key_padding_mask=padding)[:, 0])


def tokens(n=3, size=8, length=6):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(size, length, 4, generator=g) for _ in range(n)]


@settings(max_examples=40, deadline=None)
@given(batch_first=st.booleans(), bias=st.booleans(), bias_kv=st.booleans(), zero_attn=st.booleans(),
       other_dims=st.booleans(), need_weights=st.booleans(), average=st.booleans(),
       masks=st.sampled_from(["none", "bool", "float", "padding", "both", "per_head", "causal"]),
       unbatched=st.booleans(), seed=st.integers(0, 1000))
def test_explicit_attention_computes_what_multihead_attention_computes(batch_first, bias, bias_kv, zero_attn,
                                                                      other_dims, need_weights, average, masks,
                                                                      unbatched, seed):
    torch.manual_seed(seed)
    kdim = 12 if other_dims else None
    mha = nn.MultiheadAttention(16, 4, bias=bias, add_bias_kv=bias_kv, add_zero_attn=zero_attn, kdim=kdim,
                                vdim=kdim, batch_first=batch_first).eval()
    if bias_kv:
        nn.init.normal_(mha.bias_k)
        nn.init.normal_(mha.bias_v)
    explicit = ExplicitAttention.from_float(mha).eval()
    b, length, source = 3, 5, 7
    q, k, v = torch.randn(b, length, 16), torch.randn(b, source, kdim or 16), torch.randn(b, source, kdim or 16)
    padding = torch.zeros(b, source, dtype=torch.bool)
    padding[:, -2:] = True
    kwargs = {"none": {}, "bool": {"attn_mask": torch.rand(length, source) > 0.7},
              "float": {"attn_mask": torch.randn(length, source)}, "padding": {"key_padding_mask": padding},
              "both": {"attn_mask": torch.rand(length, source) > 0.8, "key_padding_mask": padding},
              "per_head": {"attn_mask": torch.randn(b * 4, length, source)},
              "causal": {"attn_mask": torch.ones(length, source, dtype=torch.bool).triu(1), "is_causal": True}}[masks]
    if unbatched:
        if masks in ("per_head", "padding", "both"):
            return  # a per-batch mask needs a batch
        q, k, v = q[0], k[0], v[0]
    elif not batch_first:
        q, k, v = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)
    with torch.no_grad():
        want = mha(q, k, v, need_weights=need_weights, average_attn_weights=average, **kwargs)
        got = explicit(q, k, v, need_weights=need_weights, average_attn_weights=average, **kwargs)
    assert got[0].shape == want[0].shape
    assert torch.allclose(got[0], want[0], atol=1e-5, rtol=1e-4, equal_nan=True)
    if need_weights:
        assert torch.allclose(got[1], want[1], atol=1e-6, equal_nan=True)
    else:
        assert got[1] is None and want[1] is None


def test_a_transformer_encoder_keeps_its_outputs_and_calls_every_layer():
    model = TinyViT().eval()
    converted = canonical(model)
    assert attention_modules(model) == ["encoder.layers.0.self_attn", "encoder.layers.1.self_attn"]
    assert attention_modules(converted) == [] and attention_modules(model)  # the model passed in is kept
    assert converted.embed.weight is model.embed.weight  # other parameters shared, not copied
    x = tokens()[0]
    padding = torch.zeros(x.shape[0], x.shape[1], dtype=torch.bool)
    padding[:, -2:] = True
    called = []
    for name, m in converted.named_modules():
        if isinstance(m, nn.Linear):
            m.register_forward_pre_hook(lambda mod, args, name=name: called.append(name))
    with torch.no_grad():  # eval and no grad: the fused path nn.TransformerEncoderLayer takes where it can
        assert torch.allclose(converted(x), model(x), atol=1e-5)
        # a padded batch: the original runs nested tensors, the copy computes the padded positions too,
        # which the cls token does not attend to
        assert torch.allclose(converted(x, padding), model(x, padding), atol=1e-5)
    assert {"encoder.layers.0.self_attn.q_proj", "encoder.layers.1.self_attn.out_proj",
            "encoder.layers.1.linear2"} <= set(called)
    assert canonical(converted) is converted  # nothing left to convert
    plain = nn.Sequential(nn.Linear(3, 3))
    assert canonical(plain) is plain


def test_attention_projections_are_groups_and_the_plan_quantizes_them():
    model = TinyViT().eval()
    data = tokens()
    groups = discover_groups(model, data[0])
    names = {g.name: g for g in groups}
    qkv = names["encoder.layers.0.self_attn.{q_proj,k_proj,v_proj}"]
    assert qkv.tied_by == "shared input" and qkv.macs > 0
    assert names["encoder.layers.0.self_attn.out_proj"].macs > 0
    low = apply(model, Plan.uniform(groups, "w2a8"), data, progress=False)
    only = {g.name: ("w2a8" if "self_attn" in g.name else "w8a8") for g in groups}
    attention_low = apply(model, Plan(only, {g.name: list(g.layer_names) for g in groups}), data, progress=False)
    high = apply(model, Plan.uniform(groups, "w8a8"), data, progress=False)
    with torch.no_grad():
        x = data[0]
        reference = model(x)
        error = {k: float((m(x) - reference).pow(2).mean()) for k, m in
                 (("w2", low), ("attention w2", attention_low), ("w8", high))}
    # the attention's projections really run quantized: at 2 bits they alone move the outputs
    assert error["attention w2"] > 20 * error["w8"]
    assert error["w2"] > error["w8"]


def test_fx_traces_through_torch_nn_containers_of_quantizable_layers():
    tracer = _Tracer()
    encoder_layer = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True)
    assert not tracer.is_leaf_module(encoder_layer, "layer")  # its linear1 and linear2 must be graph nodes
    assert not tracer.is_leaf_module(nn.TransformerEncoder(encoder_layer, 1, enable_nested_tensor=False), "enc")
    assert tracer.is_leaf_module(nn.Linear(2, 2), "fc") and tracer.is_leaf_module(nn.ReLU(), "act")
    assert tracer.is_leaf_module(nn.MultiheadAttention(8, 2), "attn")  # never calls its out_proj: kept whole

    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
            self.norm = nn.LayerNorm(4)

        def forward(self, x):
            return self.norm(self.block(x) + x)

    traced = graph_module(Custom())
    assert {n.target for n in traced.graph.nodes if n.op == "call_module"} == {"block.0", "block.1", "norm"}


def test_the_examples_are_models_mixprec_quantizes_as_written():
    import importlib.util
    from pathlib import Path
    groups_of = {}
    for name in ("vit_digits", "byte_gpt"):
        path = Path(__file__).resolve().parents[1] / "examples" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(f"example_{name}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        torch.manual_seed(0)  # untrained: only the structure is checked here
        model = (module.ViT() if name == "vit_digits" else module.ByteGPT()).eval()
        x = torch.rand(4, 1, 8, 8) if name == "vit_digits" else torch.randint(0, 256, (2, 16))
        groups_of[name] = {g.name for g in discover_groups(model, x)}
    assert "encoder.layers.1.self_attn.{q_proj,k_proj,v_proj}" in groups_of["vit_digits"]
    assert "{tokens,out}" in groups_of["byte_gpt"]  # the tied output layer shares the embedding's group
    assert "blocks.layers.0.self_attn.out_proj" in groups_of["byte_gpt"]


class Block(nn.Module):
    """A pre-norm transformer block written by hand around nn.MultiheadAttention (as timm-style code does)."""

    def __init__(self, d=16):
        super().__init__()
        self.n1, self.n2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, 4, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, x):
        h = self.n1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.n2(x))


def test_hand_written_blocks_around_multihead_attention_trace_with_their_projections_as_nodes():
    from mixprec.joins import insert_join_quantizers, join_quantizers
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), Block(), Block(), nn.Linear(16, 3)).eval()
    x = tokens()[0]
    traced = graph_module(canonical(model))
    called = [n.target for n in traced.graph.nodes if n.op == "call_module"]
    assert called[1:6] == ["1.n1", "1.attn.q_proj", "1.attn.k_proj", "1.attn.v_proj", "1.attn.out_proj"]
    with torch.no_grad():
        assert torch.allclose(traced(x), model(x), atol=1e-5)
    joined = insert_join_quantizers(canonical(model))  # the residual adds get their int8 graph's quantizers
    outputs = [name for name in join_quantizers(joined) if name.endswith("_out")]
    assert len(outputs) == 4  # both residual adds of both blocks: their int8 graph's quantizers


def test_torch_transformer_modules_trace_as_the_same_function():
    class Unpadded(TinyViT):  # fx traces every argument as a tensor: no optional padding argument here
        def forward(self, x):
            return super().forward(x)

    model = Unpadded().eval()
    x = tokens()[0]
    traced = graph_module(canonical(model))
    assert "encoder.layers.1.self_attn.v_proj" in {n.target for n in traced.graph.nodes if n.op == "call_module"}
    with torch.no_grad():
        assert torch.allclose(traced(x), model(x), atol=1e-5)

    class Seq2Seq(nn.Module):
        def __init__(self):
            super().__init__()
            layer = nn.TransformerDecoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
            self.decoder = nn.TransformerDecoder(layer, 2)

        def forward(self, tgt, memory):
            mask = nn.Transformer.generate_square_subsequent_mask(tgt.shape[1])
            return self.decoder(tgt, memory, tgt_mask=mask)  # a causal mask torch checks by comparing tensors

    seq = Seq2Seq().eval()
    tgt, memory = torch.randn(3, 5, 16), torch.randn(3, 7, 16)
    traced = graph_module(canonical(seq))
    with torch.no_grad():
        assert torch.allclose(traced(tgt, memory), seq(tgt, memory), atol=1e-5)
    groups = {g.name for g in discover_groups(seq, (tgt, memory))}
    # cross-attention: every layer's keys and values read the encoder's memory, so they share one input quantizer
    assert ("decoder.layers.{0.multihead_attn.k_proj,0.multihead_attn.v_proj,1.multihead_attn.k_proj,"
            "1.multihead_attn.v_proj}") in groups


def test_a_whole_nn_transformer_traces_as_the_same_function():
    torch.manual_seed(0)

    class Translator(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = nn.Transformer(16, 4, 1, 1, 32, dropout=0.0, batch_first=True)

        def forward(self, src, tgt):
            return self.model(src, tgt, tgt_mask=nn.Transformer.generate_square_subsequent_mask(tgt.shape[1]))

    model = Translator().eval()
    src, tgt = torch.randn(2, 6, 16), torch.randn(2, 4, 16)
    traced = graph_module(canonical(model))
    with torch.no_grad():
        assert torch.allclose(traced(src, tgt), model(src, tgt), atol=1e-5)
    assert "model.encoder.layers.0.self_attn.q_proj" in {n.target for n in traced.graph.nodes if n.op == "call_module"}


def test_making_attention_explicit_leaves_the_callers_random_state_as_it_was():
    from mixprec.attention import ExplicitAttention
    mha = nn.MultiheadAttention(16, 2, batch_first=True)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    ExplicitAttention.from_float(mha)
    assert torch.equal(torch.rand(3), expected)


def test_explicit_attention_gives_its_stacked_weights_to_a_forward_that_reads_them():
    mha = nn.MultiheadAttention(16, 2, batch_first=True)
    assert torch.equal(ExplicitAttention.from_float(mha).in_proj_weight, mha.in_proj_weight)
    other = nn.MultiheadAttention(16, 2, kdim=8, vdim=8, batch_first=True)  # three weights there: none stacked
    assert other.in_proj_weight is None and ExplicitAttention.from_float(other).in_proj_weight is None
