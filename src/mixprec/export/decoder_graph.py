"""A Llama-family causal LM's cached step written with ONNX Runtime's fused decoder ops.

The traced step (torch.onnx.export of the model with its KV cache, :mod:`mixprec.hf`) is correct but
slow to decode: per layer, TorchScript writes the attention mask, the rotary positions and the repeated
key/value heads as dozens of small shape and copy ops, which on ONNX Runtime CPU cost about as much as
the matrix products themselves at batch 1 (``benchmarks/decode_ops.py``). This module writes the same
step as ONNX Runtime GenAI's models are written:

- ``GroupQueryAttention`` (com.microsoft): rotary embedding, grouped key/value heads, the cache's
  concatenation and causal attention in one kernel;
- ``SimplifiedLayerNormalization`` / ``SkipSimplifiedLayerNormalization``: RMSNorm with the residual add;
- every Linear as its weight initializer under its state-dict name, transposed into a ``MatMul`` (the
  form :func:`mixprec.export.onnx_graph.rewrite` matches layers by), so the plan's formats are written
  exactly as on the traced graph.

The inputs and outputs are the traced step's (``input_ids``, ``position_ids``, ``attention_mask``,
``past_key_values.N.key|value`` -> ``logits``, ``present.N.key|value``), so everything that reads an
exported LM reads this one too. It applies to a model whose layers are Llama's (``llama``, ``mistral``
without a sliding window, ``qwen2``: RMSNorm, rotary positions, SiLU-gated MLP, optional q/k/v biases);
the float graph is checked against the model's own logits, prompt and cached step, before it is used.
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch
from torch import nn

MS_DOMAIN = "com.microsoft"
FAMILIES = ("llama", "mistral", "qwen2")
MAX_POSITIONS = 1 << 17  # rows of the rotary tables written (128k positions)
TOLERANCE = 1e-3  # the check of the float graph against the model's logits (as the traced step's)
_CHECKED: set[str] = set()  # models (class and config) whose fused step matched their logits once


def decoder_of(model: nn.Module) -> nn.Module | None:
    """The Hugging Face causal LM inside ``model`` (mixprec's CausalLM wrapper: ``model.lm``), or None."""
    lm = getattr(model, "lm", None)
    return lm if lm is not None and getattr(lm, "config", None) is not None else None


def unsupported(model: nn.Module) -> str | None:
    """Why the fused step cannot be written for ``model`` (None: it can)."""
    lm = decoder_of(model)
    if lm is None:
        return "not a Hugging Face causal language model"
    config = lm.config
    family = getattr(config, "model_type", None)
    if family not in FAMILIES:
        return f"its architecture {family!r} is not one of {', '.join(FAMILIES)}"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"its MLP activation is {config.hidden_act!r}, not silu"
    window = getattr(config, "sliding_window", None) if getattr(config, "use_sliding_window", True) else None
    if isinstance(window, int) and window < getattr(config, "max_position_embeddings", window + 1):
        return f"it attends within a sliding window of {window} tokens"
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    rope_type = rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else "default"
    if rope_type in ("dynamic", "longrope"):  # tables that depend on the sequence's length: not one cos/sin cache
        return f"its rotary positions are scaled by the sequence's length ({rope_type!r})"
    head_dim = _heads(config)[2]
    if not head_dim or head_dim % 16:
        return f"its head size {head_dim} is not a multiple of 16 (GroupQueryAttention's CPU kernel)"
    inner = getattr(lm, "model", None)
    if inner is None or not isinstance(getattr(inner, "embed_tokens", None), nn.Embedding) \
            or getattr(inner, "rotary_emb", None) is None or not hasattr(lm, "lm_head"):
        return "its modules are not laid out as Llama's (model.embed_tokens, model.layers, model.rotary_emb, lm_head)"
    for i, layer in enumerate(inner.layers):
        attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        names = [f"self_attn.{p}_proj" for p in "qkvo"] + [f"mlp.{p}_proj" for p in ("gate", "up", "down")]
        if attn is None or mlp is None or not all(isinstance(layer.get_submodule(n), nn.Linear) for n in names):
            return f"layer {i} is not Llama's (self_attn.q/k/v/o_proj and mlp.gate/up/down_proj as Linear layers)"
        if any(getattr(attn, n, None) is not None for n in ("q_norm", "k_norm")):
            return f"layer {i} normalizes its queries and keys"
        if attn.o_proj.bias is not None or any(getattr(mlp, f"{p}_proj").bias is not None for p in ("gate", "up", "down")):
            return f"layer {i} has biases outside q/k/v"
    return None


def _heads(config) -> tuple[int, int, int]:
    """(query heads, key/value heads, head size) of a decoder's config (0 where it names no heads)."""
    heads = int(getattr(config, "num_attention_heads", 0) or 0)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or (config.hidden_size // heads if heads else 0))
    return heads, kv_heads, head_dim


def _names(model: nn.Module) -> dict[int, str]:
    """id(parameter) -> its name in ``model`` (the name rewrite matches the layer by)."""
    names: dict[int, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), name)
    return names


def _eps(norm: nn.Module) -> float:
    return float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))


def _rotary_tables(lm: nn.Module, head_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(positions, rotary_dim / 2) cos and sin tables, from the model's own rotary module (its scaling
    included); refused where its halves differ (an interleaved rotary layout)."""
    config = lm.config
    positions = min(int(getattr(config, "max_position_embeddings", 4096) or 4096), MAX_POSITIONS)
    probe = torch.zeros(1, 1, head_dim, dtype=torch.float32)
    with torch.no_grad():
        cos, sin = lm.model.rotary_emb(probe, torch.arange(positions).unsqueeze(0))
    cos, sin = cos[0].float(), sin[0].float()
    half = cos.shape[-1] // 2
    if not (torch.equal(cos[:, :half], cos[:, half:]) and torch.equal(sin[:, :half], sin[:, half:])):
        raise ValueError("the rotary tables are not two equal halves")
    return cos[:, :half].numpy(), sin[:, :half].numpy()


class _Builder:
    def __init__(self, names: dict[int, str]):
        from onnx import helper, numpy_helper
        self.helper, self.numpy_helper, self.names = helper, numpy_helper, names
        self.nodes, self.inits, self.count = [], {}, 0
        self.tensors: dict[tuple, list] = {}  # shape -> (initializer name, tensor) written

    def init(self, name: str, array: np.ndarray) -> str:
        if name not in self.inits:
            self.inits[name] = self.numpy_helper.from_array(np.ascontiguousarray(array), name)
        return name

    def param(self, p: torch.Tensor) -> str:
        """The initializer of ``p`` under its name; a tensor equal to one written already (a tied embedding and
        output layer whose simulated weights are copies) is read from that one, as torch's exporter dedups it."""
        for name, other in self.tensors.get(tuple(p.shape), []):
            if other is p or torch.equal(other, p.detach()):
                return name
        name = self.init(self.names[id(p)], p.detach().float().cpu().numpy())
        self.tensors.setdefault(tuple(p.shape), []).append((name, p.detach()))
        return name

    def node(self, op: str, inputs: list[str], outputs: int | list[str] = 1, name: str = "", domain: str = "",
             **attrs) -> list[str]:
        self.count += 1
        name = name or f"/{op}_{self.count}"
        outs = outputs if isinstance(outputs, list) else [f"{name}/output_{k}" for k in range(outputs)]
        self.nodes.append(self.helper.make_node(op, inputs, outs, name=name, domain=domain, **attrs))
        return outs

    def linear(self, x: str, layer: nn.Linear, scope: str) -> str:
        """x @ W^T (+ b): the weight initializer under its state-dict name, transposed into a MatMul."""
        w = self.node("Transpose", [self.param(layer.weight)], name=f"{scope}/Transpose", perm=[1, 0])[0]
        y = self.node("MatMul", [x, w], name=f"{scope}/MatMul")[0]
        if layer.bias is not None:
            y = self.node("Add", [y, self.param(layer.bias)], name=f"{scope}/Add")[0]
        return y


def build(model: nn.Module, opset: int):
    """The fused step's float graph (onnx ModelProto) of ``model`` (a CausalLM wrapper; unsupported(model) is
    None)."""
    from onnx import TensorProto, helper

    lm = decoder_of(model)
    config, inner = lm.config, lm.model
    layers = list(inner.layers)
    heads, kv_heads, head_dim = _heads(config)
    cos, sin = _rotary_tables(lm, head_dim)
    b = _Builder(_names(model))
    b.init("rotary.cos_cache", cos)
    b.init("rotary.sin_cache", sin)
    one = b.init("const.one_i64", np.array(1, dtype=np.int64))
    axis1 = b.init("const.axis1", np.array([1], dtype=np.int64))
    total = b.node("ReduceSum", ["attention_mask", axis1], name="/mask/ReduceSum", keepdims=0)[0]
    seqlens = b.node("Cast", [b.node("Sub", [total, one], name="/mask/Sub")[0]], name="/mask/seqlens_k",
                     to=TensorProto.INT32)[0]
    length = b.node("Gather", [b.node("Shape", ["attention_mask"], name="/mask/Shape")[0], one],
                    name="/mask/Gather", axis=0)[0]
    length = b.node("Cast", [length], name="/mask/total_sequence_length", to=TensorProto.INT32)[0]
    hidden = b.node("Gather", [b.param(inner.embed_tokens.weight), "input_ids"], name="/model/embed_tokens/Gather")[0]
    residual, pending = hidden, None  # the residual stream, and the last block output not yet added to it
    presents = []
    for i, layer in enumerate(layers):
        scope = f"/model/layers.{i}"
        gamma = b.param(layer.input_layernorm.weight)
        if pending is None:
            normed = b.node("SimplifiedLayerNormalization", [residual, gamma], name=f"{scope}/input_layernorm",
                            axis=-1, epsilon=_eps(layer.input_layernorm), stash_type=1)[0]
        else:
            normed, _, _, residual = b.node("SkipSimplifiedLayerNormalization", [pending, residual, gamma], 4,
                                            name=f"{scope}/input_layernorm", domain=MS_DOMAIN,
                                            epsilon=_eps(layer.input_layernorm))
        attn = layer.self_attn
        q = b.linear(normed, attn.q_proj, f"{scope}/attn/q_proj")
        k = b.linear(normed, attn.k_proj, f"{scope}/attn/k_proj")
        v = b.linear(normed, attn.v_proj, f"{scope}/attn/v_proj")
        present = [f"present.{i}.key", f"present.{i}.value"]
        scale = float(getattr(attn, "scaling", head_dim ** -0.5))
        out = b.node("GroupQueryAttention", [q, k, v, f"past_key_values.{i}.key", f"past_key_values.{i}.value",
                                             seqlens, length, "rotary.cos_cache", "rotary.sin_cache"],
                     [f"{scope}/attn/output", *present], name=f"{scope}/attn/GroupQueryAttention", domain=MS_DOMAIN,
                     num_heads=heads, kv_num_heads=kv_heads, scale=scale, do_rotary=1, rotary_interleaved=0)[0]
        presents += present
        attn_out = b.linear(out, attn.o_proj, f"{scope}/attn/o_proj")
        normed, _, _, residual = b.node("SkipSimplifiedLayerNormalization",
                                        [attn_out, residual, b.param(layer.post_attention_layernorm.weight)], 4,
                                        name=f"{scope}/post_attention_layernorm", domain=MS_DOMAIN,
                                        epsilon=_eps(layer.post_attention_layernorm))
        mlp = layer.mlp
        gate = b.linear(normed, mlp.gate_proj, f"{scope}/mlp/gate_proj")
        act = b.node("Mul", [gate, b.node("Sigmoid", [gate], name=f"{scope}/mlp/act/Sigmoid")[0]],
                     name=f"{scope}/mlp/act/Mul")[0]
        up = b.linear(normed, mlp.up_proj, f"{scope}/mlp/up_proj")
        pending = b.linear(b.node("Mul", [act, up], name=f"{scope}/mlp/Mul")[0], mlp.down_proj,
                           f"{scope}/mlp/down_proj")
    gamma = b.param(inner.norm.weight)
    if pending is None:
        normed = b.node("SimplifiedLayerNormalization", [residual, gamma], name="/model/norm", axis=-1,
                        epsilon=_eps(inner.norm), stash_type=1)[0]
    else:
        normed = b.node("SkipSimplifiedLayerNormalization", [pending, residual, gamma], 4, name="/model/norm",
                        domain=MS_DOMAIN, epsilon=_eps(inner.norm))[0]
    logits = b.linear(normed, lm.lm_head, "/lm_head")
    b.nodes.append(helper.make_node("Identity", [logits], ["logits"], name="/lm_head/output"))

    dtype = TensorProto.FLOAT
    past_names = [f"past_key_values.{i}.{kv}" for i in range(len(layers)) for kv in ("key", "value")]
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
              helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "sequence"]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total_sequence"]),
              *(helper.make_tensor_value_info(n, dtype, ["batch", kv_heads, "past_sequence", head_dim])
                for n in past_names)]
    outputs = [helper.make_tensor_value_info("logits", dtype, ["batch", "sequence", int(lm.lm_head.out_features)]),
               *(helper.make_tensor_value_info(n, dtype, ["batch", kv_heads, "total_sequence", head_dim])
                 for n in presents)]
    graph = helper.make_graph(b.nodes, "decoder", inputs, outputs, initializer=list(b.inits.values()))
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                    helper.make_opsetid(MS_DOMAIN, 1)])
    proto.ir_version = min(proto.ir_version, 10)
    cache_info = {"layers": len(layers), "past": past_names,
                  "present": [n.replace("past_key_values", "present") for n in past_names],
                  "shapes": [[kv_heads, head_dim]] * len(past_names), "dtype": "torch.float32", "fused": True}
    proto.metadata_props.add(key="mixprec.kv_cache", value=json.dumps(cache_info))
    return proto


def fused_step(model: nn.Module, example: torch.Tensor, opset: int) -> tuple[Any, str | None]:
    """(graph, None) where ``model``'s fused step is written and checked against its own logits, else
    (None, why not). ``example``: token ids (B, L >= 2)."""
    why = unsupported(model)
    if why is not None:
        return None, why
    if not isinstance(example, torch.Tensor) or example.dim() != 2 or example.is_floating_point() \
            or example.shape[1] < 2:
        return None, "the example input is not token ids (batch, 2 or more tokens)"
    lm = decoder_of(model)
    if next(lm.parameters()).dtype != torch.float32:
        return None, "the model is not float32"
    import onnxruntime as ort

    from .ort import prompt_inputs

    key = f"{type(lm).__qualname__}:{lm.config.to_json_string()}"
    example = example[:1, :64].cpu()
    cut = example.shape[1] // 2
    try:
        proto = build(model, opset)
        payload = proto.SerializeToString()
    except (ValueError, AttributeError, KeyError) as failure:
        return None, f"it could not be written with fused ops ({type(failure).__name__}: {failure})"
    if len(payload) > (1 << 31) - (1 << 26):
        return None, "its float graph is larger than one ONNX file holds without external data"
    if key in _CHECKED:  # the same layers computed the same way: checked once per model and process
        return proto, None
    with torch.no_grad():
        full = lm(input_ids=example, use_cache=False).logits.float().numpy()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC  # a check: made fast
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(payload, options, providers=["CPUExecutionProvider"])
        cache = json.loads(next(p.value for p in proto.metadata_props if p.key == "mixprec.kv_cache"))
        ids = example.numpy()
        first = session.run(None, {"input_ids": ids[:, :cut], **prompt_inputs(cache, ids[:, :cut])})
        step = prompt_inputs(cache, ids[:, cut:], past=cut) | dict(zip(cache["past"], first[1:]))
        second = session.run(None, {"input_ids": ids[:, cut:], **step})
    except Exception as failure:  # an ONNX Runtime without these contrib ops, or a shape it refuses
        return None, f"ONNX Runtime did not run its fused step ({type(failure).__name__}: {str(failure)[:200]})"
    got = np.concatenate([first[0], second[0]], axis=1)
    if not np.allclose(got, full, rtol=TOLERANCE, atol=TOLERANCE):
        worst = float(np.abs(got - full).max())
        return None, f"its fused step's logits differ from the model's by up to {worst:.3g}"
    _CHECKED.add(key)
    return proto, None
