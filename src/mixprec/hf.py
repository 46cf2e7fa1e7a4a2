"""Hugging Face checkpoint folders as models: ``hf:DIR`` (config.json + safetensors, and a tokenizer
for text data and perplexity), loaded from the folder alone (``local_files_only``; no network).

    hf:DIR[?dtype=fp32|bf16|fp16&attn=eager|sdpa]

A causal language model (its config's architecture ends in ``ForCausalLM`` or ``LMHeadModel``, as GPT-2's
``GPT2LMHeadModel``) becomes a module that
maps token ids (B, L) to logits (B, L, vocab); any other model (an encoder) maps them to its last
hidden state. Both take one LongTensor, which is what ``text:FILE`` data gives. The weights are
checked before transformers sees them: every shard the index names must exist and open, and every
weight the model needs must be in them (tied output weights excepted).
"""
from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import SpecError
from .canonical import conv1d_to_linear  # noqa: F401  (mixprec.hf.conv1d_to_linear, as documented)
from .text_data import split_spec

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}
ATTENTION = ("eager", "sdpa")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.txt", "vocab.json")


class CausalLM(nn.Module):
    """A causal language model returning only its logits (no KV cache, no output dataclass)."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of ``input_ids``; ``attention_mask`` (batch, tokens), 0 at padding: padded batches of texts of
        several lengths, left or right padded. The real tokens take positions 0, 1, ... from their first one, as
        Hugging Face's generation gives them, so a left-padded text gets the logits it gets alone."""
        if attention_mask is not None:
            extra = {}
            if not bool(attention_mask.all()) and "position_ids" in inspect.signature(self.lm.forward).parameters:
                extra["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
            return self.lm(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **extra).logits
        if torch.onnx.is_in_onnx_export():  # an explicit mask keeps transformers off its packed-sequence check
            # (torch.diff, which the ONNX exporter cannot write); every token attended, as without one
            return self.lm(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), use_cache=False).logits
        return self.lm(input_ids=input_ids, use_cache=False).logits

    def onnx_step(self, input_ids: torch.Tensor) -> dict | None:
        """What the ONNX export traces for this model: one step of a served model with its KV cache
        (:class:`CachedStep`), so one file runs a prompt (an empty cache) and each decoded token (the cache
        so far); None where the model's cache is not a stack of key/value tensors per layer, or ``input_ids``
        has fewer than 3 tokens to trace with (then the graph maps token ids to logits, without a cache)."""
        return CachedStep.signature(self.lm, input_ids)


def _cache_argument(lm: nn.Module) -> str:
    """The keyword a Hugging Face model takes its KV cache by (``cache`` from transformers 5.2x on)."""
    return "cache" if "cache" in inspect.signature(lm.forward).parameters else "past_key_values"


def _cache_of(output):
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def _cache_tensors(cache) -> list:
    """Key, value, key, value, ... of each layer of a DynamicCache (either layout transformers has used)."""
    if hasattr(cache, "layers"):
        return [t for layer in cache.layers for t in (layer.keys, layer.values)]
    return [t for pair in zip(cache.key_cache, cache.value_cache) for t in pair]


class CachedStep(nn.Module):
    """(input_ids, position_ids, attention_mask, past key and value of each layer) -> (logits, present key
    and value of each layer): a causal LM's step with its KV cache as plain tensors (B, heads, tokens, dim)."""

    def __init__(self, lm: nn.Module, layers: int):
        super().__init__()
        self.lm, self.layers = lm, layers

    def forward(self, input_ids, position_ids, attention_mask, *past):
        from transformers import DynamicCache

        try:
            cache = DynamicCache(config=self.lm.config)
        except TypeError:  # transformers before the config argument
            cache = DynamicCache()
        for i in range(self.layers):
            cache.update(past[2 * i], past[2 * i + 1], i)
        out = self.lm(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask,
                      use_cache=True, **{_cache_argument(self.lm): cache})
        return (out.logits, *_cache_tensors(_cache_of(out)))

    @staticmethod
    def signature(lm: nn.Module, input_ids: torch.Tensor) -> dict | None:
        """torch.onnx.export's arguments for the step, traced on a real cache of ``input_ids``' first tokens
        and 2 or more new ones (a trace on one new token would keep only the decoding path), checked against
        the model's own logits; None where that does not hold."""
        if input_ids.dim() != 2 or input_ids.shape[1] < 3:
            return None
        config = getattr(lm, "config", None)
        window = getattr(config, "sliding_window", None) if getattr(config, "use_sliding_window", True) else None
        if isinstance(window, int) and window < getattr(config, "max_position_embeddings", window + 1):
            return None  # a sliding window: the traced step keeps the example's mask, wrong at other lengths
        batch, length = input_ids.shape
        past_length = length // 2 if length >= 4 else 1
        with torch.no_grad():
            try:
                full = lm(input_ids=input_ids, use_cache=False).logits
                past = _cache_tensors(_cache_of(lm(input_ids=input_ids[:, :past_length], use_cache=True)))
                if not past or not all(isinstance(t, torch.Tensor) and t.dim() == 4 for t in past):
                    return None
                layers = len(past) // 2
                step = CachedStep(lm, layers).eval()
                positions = torch.arange(past_length, length, device=input_ids.device).expand(batch, -1)
                mask = torch.ones(batch, length, dtype=torch.long, device=input_ids.device)
                args = (input_ids[:, past_length:], positions, mask, *past)
                logits = step(*args)[0]
            except Exception:  # a cache of another kind (sliding, hybrid, static): the graph without one
                return None
        if not torch.allclose(logits.float(), full[:, past_length:].float(), rtol=1e-3, atol=1e-3):
            return None
        names = [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
        presents = [n.replace("past_key_values", "present") for n in names]
        dynamic = {"input_ids": {0: "batch", 1: "sequence"}, "position_ids": {0: "batch", 1: "sequence"},
                   "attention_mask": {0: "batch", 1: "total_sequence"}, "logits": {0: "batch", 1: "sequence"},
                   **{n: {0: "batch", 2: "past_sequence"} for n in names},
                   **{n: {0: "batch", 2: "total_sequence"} for n in presents}}
        cache_info = {"layers": layers, "past": names, "present": presents,
                      "shapes": [[int(t.shape[1]), int(t.shape[3])] for t in past], "dtype": str(past[0].dtype)}
        return {"module": step, "args": args, "input_names": ["input_ids", "position_ids", "attention_mask", *names],
                "output_names": ["logits", *presents], "dynamic_axes": dynamic,
                "metadata": {"mixprec.kv_cache": json.dumps(cache_info)}}


class Encoder(nn.Module):
    """An encoder for token ids: its task head's logits where the checkpoint has one (a sequence or token
    classifier), else its last hidden state. Every token is attended unless an attention mask is given
    (dict batches with input_ids and attention_mask)."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        # a bare encoder's output is features, not classes: export's top-1 agreement would mean nothing
        self.returns_hidden_state = not type(encoder).__name__.endswith(HEADS)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        out = self.encoder(input_ids=input_ids, attention_mask=mask)
        logits = getattr(out, "logits", None)
        return logits if logits is not None else out.last_hidden_state


@dataclass(frozen=True)
class Checkpoint:
    folder: Path
    dtype: torch.dtype
    attention: str

    @property
    def dtype_name(self) -> str:
        return next(k for k, v in DTYPES.items() if v == self.dtype)


def is_hf(spec: str) -> bool:
    return isinstance(spec, str) and spec.startswith("hf:")


def parse(spec: str) -> Checkpoint:
    path, options = split_spec(spec, "hf:")
    unknown = sorted(set(options) - {"dtype", "attn"})
    if unknown:
        raise SpecError(f"--model {spec!r}: unknown option(s) {unknown}; options: dtype (fp32, bf16, fp16), "
                        "attn (eager, sdpa)")
    dtype = options.get("dtype", "fp32").lower()
    if dtype not in DTYPES:
        raise SpecError(f"--model {spec!r}: dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    attention = options.get("attn", "eager")
    if attention not in ATTENTION:
        raise SpecError(f"--model {spec!r}: attn {attention!r} is not one of {', '.join(ATTENTION)}")
    folder = Path(path)
    if not folder.is_dir():
        raise SpecError(f"--model {spec!r}: {folder} is not a folder (a Hugging Face checkpoint folder with "
                        "config.json and *.safetensors)")
    return Checkpoint(folder, DTYPES[dtype], attention)


def read_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise SpecError(f"{path} is missing: a Hugging Face checkpoint folder needs its config.json "
                        "(save it with model.save_pretrained(folder))")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path} is not valid JSON ({exc})") from None


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of the checkpoint, each checked to exist and to open."""
    from safetensors import safe_open
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (ValueError, KeyError, UnicodeDecodeError) as exc:
            raise SpecError(f"{index} is not a safetensors index (JSON with a weight_map): {exc}") from None
        files = [folder / name for name in dict.fromkeys(weight_map.values())]
    elif (folder / "model.safetensors").is_file():
        files = [folder / "model.safetensors"]
    else:
        found = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".gguf"))
        raise SpecError(f"{folder} has no model.safetensors (nor model.safetensors.index.json)"
                        + (f"; it has {found}: convert the weights to safetensors (model.save_pretrained(folder) "
                           "writes them), mixprec does not unpickle weight files" if found else ""))
    for path in files:
        if not path.is_file():
            raise SpecError(f"checkpoint shard {path} is missing (named by {index.name})")
        try:
            with safe_open(str(path), framework="pt") as f:
                f.keys()
        except Exception as exc:  # safetensors raises its own error types for every kind of damage
            raise SpecError(f"checkpoint shard {path} is corrupt or truncated ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''}); copy it again") from None
        size = path.stat().st_size
        with open(path, "rb") as f:
            header = int.from_bytes(f.read(8), "little")
            meta = json.loads(f.read(header))
        end = max((v["data_offsets"][1] for k, v in meta.items() if k != "__metadata__"), default=0)
        if 8 + header + end != size:
            raise SpecError(f"checkpoint shard {path} is {size} bytes, its header describes {8 + header + end}: "
                            "it is truncated or corrupt; copy it again")
    return files


def _architecture(config: dict, folder: Path) -> str:
    names = config.get("architectures") or []
    if not names:
        raise SpecError(f"{folder / 'config.json'} names no architectures; save the checkpoint with "
                        "save_pretrained, which records it")
    return names[0]


def load(spec: str) -> nn.Module:
    """The model of ``hf:DIR``, in eval mode on the CPU, in the asked dtype."""
    checkpoint = parse(spec)
    folder = checkpoint.folder
    config = read_config(folder)
    architecture = _architecture(config, folder)
    files = weight_files(folder)
    try:
        import transformers
        from transformers import AutoConfig, AutoModel, AutoModelForCausalLM
    except ImportError as exc:
        raise SpecError(f"--model {spec!r} needs transformers and safetensors: pip install -e '.[models]' ({exc})") \
            from exc
    causal = causal_architecture(architecture)
    if isinstance(config, dict) and config.get("is_encoder_decoder") and not causal:
        raise SpecError(f"{folder} holds an encoder-decoder ({architecture}); hf: loads causal language models and "
                        "encoders, whose data is token ids. Load it in Python and give mixprec dict batches with "
                        "input_ids and decoder_input_ids (mixprec.analyze, mixprec.quantize, mixprec.export)")
    try:
        hf_config = AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    except Exception as exc:  # an unknown model_type, a bad field: transformers' message says which
        raise SpecError(f"{folder / 'config.json'} is not a config transformers {transformers.__version__} can read: "
                        f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    auto = AutoModelForCausalLM if causal else _encoder_class(transformers, architecture, AutoModel)
    try:
        model, info = auto.from_pretrained(folder, config=hf_config, dtype=checkpoint.dtype, local_files_only=True,
                                           trust_remote_code=False,
                                           attn_implementation=checkpoint.attention, output_loading_info=True,
                                           use_safetensors=True)
    except Exception as exc:
        raise SpecError(f"loading {folder} ({architecture}) from {', '.join(p.name for p in files)} failed: "
                        f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    wanted = getattr(model, "main_input_name", "input_ids")
    if wanted != "input_ids":
        raise SpecError(f"{folder} holds {architecture}, whose input is {wanted}, not token ids; hf: loads language "
                        "models and text encoders. Load it in Python (transformers' from_pretrained) and give it as "
                        "file.py:function, with batches of its inputs")
    missing = [k for k in info.get("missing_keys", ()) if not _tied(model, k)]
    if missing:
        raise SpecError(f"{folder}: {len(missing)} weight(s) the {architecture} needs are in none of "
                        f"{', '.join(p.name for p in files)}, e.g. {sorted(missing)[:3]}; the checkpoint is "
                        "incomplete or of another model")
    conv1d_to_linear(model)
    model.eval()
    return (CausalLM(model) if causal else Encoder(model)).eval()


HEADS = ("ForSequenceClassification", "ForTokenClassification", "ForMultipleChoice", "ForMaskedLM")


def _encoder_class(transformers: Any, architecture: str, default: Any) -> Any:
    """The class that loads an encoder with the task head its checkpoint was saved with (its logits are the
    output: what the user's evaluation reads), else the bare model (AutoModel)."""
    cls = getattr(transformers, architecture, None)
    return cls if cls is not None and architecture.endswith(HEADS) else default


def _tied(model: nn.Module, key: str) -> bool:
    """A key reported missing that names a parameter shared with another name (a tied output embedding)."""
    names: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
    return any(key in group and len(group) > 1 for group in names.values())


def example_input(model: nn.Module, tokens: int = 64) -> torch.Tensor:
    """Token ids (1, tokens) for tracing groups and counting MACs when no data is given."""
    inner = getattr(model, "lm", None) or getattr(model, "encoder", None) or model
    vocab = int(getattr(getattr(inner, "config", None), "vocab_size", 0) or 2)
    return (torch.arange(tokens) % vocab).unsqueeze(0)


@lru_cache(maxsize=4)
def tokenizer(folder: str):
    """The checkpoint's tokenizer, from the folder alone."""
    path = Path(folder)
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise SpecError(f"{path} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); text data and perplexity "
                        "tokenize with the model's own tokenizer: save it beside the weights with "
                        "tokenizer.save_pretrained(folder)")
    from transformers import AutoTokenizer
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    except Exception as exc:
        raise SpecError(f"the tokenizer in {path} does not load: {type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''}") from None


def tokenizer_for(model_spec: str | None, what: str):
    """(tokenizer, key) of the ``hf:DIR`` model that ``what`` (a text: or ppl: spec) is read with."""
    if not is_hf(model_spec or ""):
        raise SpecError(f"{what!r} tokenizes with the model's tokenizer, so it needs --model hf:DIR "
                        + (f"(the model here is {model_spec!r})" if model_spec else
                           "(for an exported .onnx file: mixprec evaluate --tokenizer hf:DIR, the folder it was "
                           "exported from)"))
    folder = parse(model_spec).folder.resolve()
    return tokenizer(str(folder)), str(folder)


def check_dtype(model: nn.Module, device: torch.device | str) -> None:
    """Raise a SpecError naming the dtype if ``device`` cannot run a matmul in the model's dtype."""
    param = next(model.parameters(), None)
    if param is None or param.dtype == torch.float32:
        return
    device = torch.device(device)
    dtype = param.dtype
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise SpecError(f"this GPU ({torch.cuda.get_device_name(device)}) cannot run bfloat16; load the model with "
                        "?dtype=fp16 or ?dtype=fp32")
    try:
        x = torch.ones(2, 2, dtype=dtype, device=device)
        (x @ x).sum().item()
    except RuntimeError as exc:
        raise SpecError(f"the device {device} cannot run the model's dtype {str(dtype).replace('torch.', '')} "
                        f"({str(exc).splitlines()[0]}); load it with ?dtype=fp32") from None


def is_causal(spec: str) -> bool:
    """Whether the checkpoint of ``spec`` is a causal language model (by its config's architecture)."""
    folder = parse(spec).folder
    return causal_architecture(_architecture(read_config(folder), folder))


def causal_architecture(name: str) -> bool:
    """Whether a config's architecture is a causal language model (LlamaForCausalLM, GPT2LMHeadModel)."""
    return name.endswith(("ForCausalLM", "LMHeadModel"))
