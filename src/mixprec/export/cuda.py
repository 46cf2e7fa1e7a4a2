"""Target cuda: the plan as a model whose Linear layers run torch's own low-bit GPU kernels.

    deploy_cuda(model, plan, data, device="cuda") -> CudaDeployment   the deployed model and a per-layer
                                                   report: the kernel each layer runs, or its fallback
    save_cuda(deployment, out) / load_cuda(model, out, device)       a portable artifact (safetensors of
                                                   codes and scales + a JSON manifest), packed for the
                                                   device's kernels when it is loaded
    check_plan(layers)                             what each layer becomes, or one error for all refusals

What each candidate becomes (Linear layers; every code and scale is the simulation's, nothing is
re-rounded):

    w<B>g<G>, w<B> with B <= 4 (-asym too)   int4 weight-only, tinygemm (torch._weight_int4pack_mm): codes
        q = c + 8 (symmetric) or c, per group of G in {32, 64, 128, 256} a bfloat16 scale and zero
        with w = (q - 8) * scale + zero; bfloat16 activations; above 16 rows (prefill) the weight is
        dequantized to bfloat16 for cuBLAS, where tinygemm is slow
    w<B> with 5 <= B <= 8, symmetric        int8 weight-only, per channel: on CUDA the codes cast in the matmul
        and the scales applied to its output (optionally through torch.compile, which fuses the cast)
    fp8                                     e4m3 weights with per-channel scales, inputs quantized to e4m3
        with the calibrated per-tensor scale, torch._scaled_mm row-wise (bfloat16 output)
    fp16, bf16, w16a16                      half-precision weights and inputs, cuBLAS
    fp32                                    left float32 (its input is cast up)
    an Embedding on a weight-only candidate  a lookup of its simulated rows in ``dtype`` (one row per token:
        no kernel to gain; a tied output layer still runs its own kernel)

The kernels round differently from the simulation in two ways, both reported: tinygemm keeps scales
and zeros in bfloat16, and the model around the planned layers runs in ``dtype`` (model_dtype: float16 where
most planned layers are fp16, else bfloat16).
Integer inputs (w8a8, w4a8) are refused: torch's int8 GEMM was slower than fp16 on the H100.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn
from torch.nn import functional as F

from ..canonical import canonical
from ..candidates import Candidate, parse_candidate
from ..errors import MixprecError, ModelError, OutputError, PlanError
from ..formats import FloatFormat, IntFormat
from ..plan import Plan
from ..quantizers import choose_range, fp8_scale, range_methods
from .targets import refuse_layers

TINYGEMM_GROUPS = (256, 128, 64, 32)
ACCEPTS = ("cuda runs: w<B>g<G> / w<B> weight-only with B <= 4 (int4 tinygemm; G in 32, 64, 128, 256 dividing the "
           "layer's inputs, which must be a multiple of 32, outputs a multiple of 16), w<B> with B <= 8 symmetric "
           "per channel (int8 weight-only), fp8 (e4m3, inputs and outputs multiples of 16), fp16, bf16, w16a16, "
           "fp32; Linear layers, and Embedding layers on weight-only candidates (a lookup of the simulated rows)")
MANIFEST = "mixprec-cuda.json"
TENSORS = "mixprec-cuda.safetensors"


@dataclass(frozen=True)
class CudaLayer:
    """How one layer runs: kind int4 | int8 | fp8 | half | float, with the int4 group."""

    kind: str
    group: int | None = None
    dtype: str | None = None  # half: float16 or bfloat16


def realise(candidate: Candidate, kind: str, shape: tuple[int, int]) -> CudaLayer | str:
    """What ``candidate`` becomes on a ``kind`` layer of weight ``shape`` (out, in), or why it cannot."""
    w, a = candidate.weight, candidate.activation
    if candidate.multipoint:
        return "multipoint weights are not deployed"
    if w is None:
        return CudaLayer("float")
    if kind == "Embedding":  # its input is token ids, whatever the candidate says of inputs
        return CudaLayer("table")  # a lookup reads one row per token: the simulated rows, in the model's dtype
    if kind != "Linear":
        return f"{kind} layers are not deployed to cuda (Linear layers only)"
    n, k = shape
    if isinstance(w, FloatFormat):
        if w.kind in ("fp16", "bf16"):
            return CudaLayer("half", dtype="float16" if w.kind == "fp16" else "bfloat16")
        if w.kind == "fp8_e4m3" and isinstance(a, FloatFormat) and a.kind == "fp8_e4m3":
            if n % 16 or k % 16:
                return f"fp8 needs inputs and outputs in multiples of 16 (_scaled_mm), the layer is {n}x{k}"
            return CudaLayer("fp8")
        return f"{w.kind} weights have no deployed kernel here"
    assert isinstance(w, IntFormat)
    if a is not None:
        return ("integer inputs: torch's int8 GEMM was slower than fp16 on the H100; plan fp8 or weight-only "
                "candidates")
    if w.scale_dtype != "fp32" or w.narrow_range:
        return f"{candidate.name} is a GGUF block format (target gguf)"
    if w.bits <= 4:
        if k % 32 or n % 16:
            return f"int4 tinygemm needs inputs a multiple of 32 and outputs of 16, the layer is {n}x{k}"
        if w.granularity == "group":
            if w.group_size not in TINYGEMM_GROUPS or k % w.group_size:
                return (f"int4 tinygemm groups are 32, 64, 128 or 256 inputs dividing the layer's {k}; "
                        f"group {w.group_size} is not")
            return CudaLayer("int4", group=w.group_size)
        if w.granularity == "channel":
            return CudaLayer("int4", group=next(g for g in TINYGEMM_GROUPS if k % g == 0))
        return "per-tensor int4 weights are not deployed"
    if w.granularity == "channel" and w.symmetric:
        return CudaLayer("int8")
    return "int8 weight-only needs symmetric per-channel weights (no grouped or zero-point int8 kernel)"


def check_plan(layers: dict[str, tuple[str, tuple[int, ...], Candidate]]) -> dict[str, CudaLayer]:
    """name -> (kind, weight shape, candidate) to name -> CudaLayer; one error lists every refused layer."""
    out, refused = {}, []
    for name, (kind, shape, candidate) in layers.items():
        result = realise(candidate, kind, (int(shape[0]), int(torch.Size(shape[1:]).numel())))
        if isinstance(result, str):
            refused.append(f"{name} ({kind}, {candidate.name}): {result}")
        else:
            out[name] = result
    refuse_layers(refused, "target cuda cannot run", ACCEPTS)
    return out


# ---- the kernels ---------------------------------------------------------------------------------------

def _rows(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1])


class Int4Linear(nn.Module):
    """int4 weight-only: tinygemm on CUDA, its CPU twin elsewhere; bfloat16 activations on CUDA."""

    def __init__(self, codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group: int,
                 bias: torch.Tensor | None):
        """codes: uint8 (out, in) in 0..15; scales, zeros: (out, in // group)."""
        super().__init__()
        self.out_features, self.in_features = codes.shape
        self.group = group
        self.register_buffer("codes", codes.to(torch.uint8))
        self.register_buffer("scales", scales.to(torch.bfloat16))
        self.register_buffer("zeros", zeros.to(torch.bfloat16))
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self._packed: tuple | None = None

    # tinygemm is a decode kernel: measured on an H100 it is 25x slower than float16 at 2,048 rows, so
    # above this many rows the weight is dequantized to bfloat16 for cuBLAS (benchmarks/cuda_deploy.py)
    MAX_TINYGEMM_ROWS = 16

    @property
    def kernel(self) -> str:
        if not self.codes.is_cuda:
            return "_weight_int4pack_mm_for_cpu"
        return (f"torch._weight_int4pack_mm (tinygemm) up to {self.MAX_TINYGEMM_ROWS} rows; dequantized to bfloat16 "
                "for cuBLAS above")

    def dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        g = self.group
        return ((self.codes.to(dtype) - 8) * self.scales.to(dtype).repeat_interleave(g, dim=1)
                + self.zeros.to(dtype).repeat_interleave(g, dim=1))

    def _pack(self):
        device = self.codes.device
        if self._packed is None or self._packed[0] != device:
            k = self.in_features
            tiles = 8 if k % 128 == 0 else 4 if k % 64 == 0 else 2
            if device.type == "cuda":
                nibbles = (self.codes[:, ::2] << 4 | self.codes[:, 1::2]).contiguous()
                packed = torch._convert_weight_to_int4pack(nibbles, tiles)
                dtype = torch.bfloat16
            else:
                packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(self.codes.to(torch.int32), tiles)
                dtype = torch.float32
            sz = torch.stack([self.scales.t(), self.zeros.t()], dim=-1).to(dtype).contiguous()
            self._packed = (device, packed, sz, dtype)
        return self._packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        device, packed, sz, dtype = self._pack()
        rows = _rows(x).to(dtype)
        if device.type == "cuda" and rows.shape[0] > self.MAX_TINYGEMM_ROWS:
            y = F.linear(rows, self.dequantized(dtype))
        elif device.type == "cuda":
            y = torch._weight_int4pack_mm(rows, packed, self.group, sz)
        else:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(rows, packed, self.group, sz)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)


class Int8Linear(nn.Module):
    """int8 weight-only per channel. On CUDA: y = (x @ codes^T) * scales with the codes cast to the input's
    dtype in the matmul (torch._weight_int8pack_mm measured 7x slower than float16 on an H100 at decode);
    elsewhere torch._weight_int8pack_mm. ``compiled``: the CUDA form through torch.compile, which fuses the
    cast into the matrix-vector product."""

    def __init__(self, codes: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.out_features, self.in_features = codes.shape
        self.register_buffer("codes", codes.to(torch.int8))
        self.register_buffer("scales", scales.to(torch.float32))
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.compiled = None

    @property
    def kernel(self) -> str:
        if not self.codes.is_cuda:
            return "torch._weight_int8pack_mm"
        return "int8 codes cast in the matmul" + (", torch.compile" if self.compiled is not None else ", eager")

    def compile(self) -> "Int8Linear":
        self.compiled = torch.compile(_int8_matmul, dynamic=True)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = _rows(x)
        if rows.is_cuda:
            y = (self.compiled or _int8_matmul)(rows, self.codes, self.scales)
        else:
            y = torch._weight_int8pack_mm(rows, self.codes, self.scales.to(rows.dtype))
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*x.shape[:-1], self.out_features)


def _int8_matmul(rows: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    return F.linear(rows, codes.to(rows.dtype)) * scales.to(rows.dtype)


class Fp8Linear(nn.Module):
    """e4m3 weights with per-channel scales; inputs quantized to e4m3 with the calibrated per-tensor scale;
    torch._scaled_mm with row-wise scales (bfloat16 output)."""

    def __init__(self, weight: torch.Tensor, weight_scale: torch.Tensor, input_scale: float,
                 bias: torch.Tensor | None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer("weight", weight.to(torch.float8_e4m3fn))
        self.register_buffer("weight_scale", weight_scale.to(torch.float32).reshape(1, -1))
        self.register_buffer("input_scale", torch.tensor(float(input_scale), dtype=torch.float32))
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    kernel = "torch._scaled_mm (fp8 e4m3, row-wise scales)"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = _rows(x)
        q = torch.clamp(rows.float() / self.input_scale, -448.0, 448.0).to(torch.float8_e4m3fn)
        scale_a = self.input_scale.reshape(1, 1).repeat(rows.shape[0], 1)  # row-wise: one per row, stride 1
        try:
            y = torch._scaled_mm(q, self.weight.t(), scale_a, self.weight_scale, out_dtype=torch.bfloat16)
        except RuntimeError:
            if q.is_cuda:
                raise
            # torch before 2.13 takes per-tensor scales only on a CPU: the same products, summed in float32
            y = ((q.float() * scale_a) @ (self.weight.float() * self.weight_scale.t()).t()).to(torch.bfloat16)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)


class HalfLinear(nn.Module):
    """float16/bfloat16 weights and inputs (float32 for fp32 layers), cuBLAS; the output in the input's dtype."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype):
        super().__init__()
        self.compute = dtype
        self.register_buffer("weight", weight.detach().to(dtype).clone())
        self.register_buffer("bias", None if bias is None else bias.detach().to(dtype).clone())

    @property
    def kernel(self) -> str:
        return f"F.linear in {str(self.compute).replace('torch.', '')}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(self.compute), self.weight, self.bias).to(x.dtype)


class Table(nn.Module):
    """An embedding as a lookup of its simulated rows in the model's dtype."""

    def __init__(self, weight: torch.Tensor, dtype: torch.dtype):
        super().__init__()
        self.register_buffer("weight", weight.detach().to(dtype).clone())

    @property
    def kernel(self) -> str:
        return f"embedding lookup of the simulated rows in {str(self.weight.dtype).replace('torch.', '')}"

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight)


# ---- from the simulation to the kernels ------------------------------------------------------------------

def _portable(name: str, layer: CudaLayer, original: nn.Module, quantized: nn.Module, candidate: Candidate,
              weight_method: str) -> dict[str, torch.Tensor]:
    """The layer's tensors, device-free: what the artifact stores and the kernel modules are built from."""
    from ..swap import QuantizedLayer
    from .onnx_graph import layer_codes

    simulated = quantized.layer.weight if isinstance(quantized, QuantizedLayer) else quantized.weight
    bias = getattr(original, "bias", None)
    out: dict[str, torch.Tensor] = {} if bias is None else {"bias": bias.detach().float().cpu()}
    if layer.kind in ("float", "half", "table"):
        out["weight"] = simulated.detach().float().cpu()
        return out
    if layer.kind in ("int4", "int8"):
        # on the weights' own device: the range search of a large layer is much faster on a GPU
        codes = layer_codes(name, original.weight, simulated, candidate, None, None, weight_method)
        c, s, z = (torch.from_numpy(a) for a in (codes.codes, codes.scales, codes.zero_points))
        if layer.kind == "int8":
            out.update(codes=c.to(torch.int8), scales=s[:, 0].contiguous())
            return out
        fmt: IntFormat = candidate.weight
        g = layer.group
        q = c + 8 if fmt.symmetric else c
        if int(q.min()) < 0 or int(q.max()) > 15:
            raise ModelError(f"layer {name!r}: its codes do not fit tinygemm's 0..15")
        scale = s[:, ::g].contiguous()
        if not torch.equal(s, scale.repeat_interleave(g, dim=1)):
            raise ModelError(f"layer {name!r}: its scales change inside a group of {g}")
        zero_point = z[:, ::g].to(torch.float32)
        zero = (8 - zero_point) * scale if not fmt.symmetric else torch.zeros_like(scale)
        out.update(codes=q.to(torch.uint8), scales=scale, zeros=zero)
        return out
    # fp8: the per-channel scale nearest rounding chose, and the input quantizer's per-tensor scale
    rows = original.weight.detach().float().reshape(original.weight.shape[0], -1)
    lo, hi = choose_range(rows, candidate.weight, weight_method)
    w_scale = fp8_scale(torch.maximum(-lo, hi), "fp8_e4m3").reshape(-1).cpu()
    rows = rows.cpu()
    sim = simulated.detach().float().cpu().reshape(rows.shape)
    codes8 = (sim / w_scale[:, None]).to(torch.float8_e4m3fn)
    if float((codes8.float() * w_scale[:, None] - sim).abs().max()) > 1e-5 * float(sim.abs().max() + 1e-12):
        raise ModelError(f"layer {name!r}: its fp8 weight is not on the grid of nearest rounding's scales")
    q = quantized.input_quantizer
    a_scale = fp8_scale(torch.maximum(-q.lo, q.hi).float().cpu(), "fp8_e4m3")
    out.update(weight=codes8, weight_scale=w_scale, input_scale=a_scale.reshape(1))
    return out


def _module(layer: CudaLayer, tensors: dict[str, torch.Tensor], dtype: torch.dtype) -> nn.Module:
    bias = tensors.get("bias")
    if layer.kind == "int4":
        return Int4Linear(tensors["codes"], tensors["scales"], tensors["zeros"], layer.group, bias)
    if layer.kind == "int8":
        return Int8Linear(tensors["codes"], tensors["scales"], bias)
    if layer.kind == "fp8":
        return Fp8Linear(tensors["weight"], tensors["weight_scale"], float(tensors["input_scale"].reshape(())), bias)
    if layer.kind == "half":
        return HalfLinear(tensors["weight"], bias, getattr(torch, layer.dtype))
    if layer.kind == "table":
        return Table(tensors["weight"], dtype)
    return HalfLinear(tensors["weight"], bias, torch.float32)


def check_cuda_folder(out: str | os.PathLike, what: str = "--out") -> Path:
    """Before any work: ``out`` is a new or empty folder, or one an earlier cuda export wrote (it holds MANIFEST),
    whose files are replaced."""
    from ..atomic import check_output_dir
    out = check_output_dir(out, what)
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise OutputError(f"{what} {out} holds files mixprec did not write (it has no {MANIFEST}); give an empty or "
                          "new folder, or one an earlier --target cuda export wrote")
    return out


def _put(deployed: nn.Module, name: str, module: nn.Module) -> None:
    """``module`` in the deployed model at ``name``. An embedding of its own kind (a subclass with a forward of its
    own: OPT's learned positions take an attention mask and add an offset) keeps that forward: only its rows
    become the simulated ones."""
    from ..swap import set_module
    old = deployed.get_submodule(name)
    if isinstance(module, Table) and type(old) is not nn.Embedding and isinstance(old, nn.Embedding):
        old.weight = nn.Parameter(module.weight, requires_grad=False)
        old.kernel = module.kernel + f" (through {type(old).__name__}'s own forward)"
        return
    set_module(deployed, name, module)


@dataclass
class CudaDeployment:
    """What ``deploy_cuda`` made: the model whose planned layers run torch's low-bit kernels, per layer the kernel
    it runs, the dtype around them and the device; ``save_cuda(deployment, dir)`` writes it, ``load_cuda`` reads."""
    model: nn.Module  # the deployed model (on ``device``, in ``dtype`` outside the planned layers)
    layers: list[dict]  # per layer: candidate, kind, kernel
    dtype: str
    device: str
    tensors: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict, repr=False)  # the portable form
    plan: dict[str, Any] = field(default_factory=dict, repr=False)
    realised: dict[str, CudaLayer] = field(default_factory=dict, repr=False)

    @property
    def fallbacks(self) -> list[dict]:
        """Layers that run no kernel of their format (none today: each kind has one; kept for the report)."""
        return [l for l in self.layers if l["kernel"].startswith("dequantized matmul")]

    def refresh(self) -> None:
        """Re-read each layer's kernel (an int8 layer learns on its first call whether its kernel runs)."""
        modules = dict(self.model.named_modules())
        for row in self.layers:
            row["kernel"] = getattr(modules[row["layer"]], "kernel", row["kernel"])


DTYPES = ("auto", "bfloat16", "float16", "float32")  # deploy_cuda(dtype=...) by name


def model_dtype(layers: dict[str, CudaLayer], device: str | torch.device) -> torch.dtype:
    """The dtype the model around the planned layers runs in: float32 off a GPU; on CUDA, float16 where more
    planned layers compute in float16 (fp16 weights) than in bfloat16 (int4 tinygemm, fp8, bf16 weights), else
    bfloat16. Each planned layer whose own dtype differs casts its input and output: measured on an H100, an
    all-fp16 plan decoded SmolLM2 at 0.75x float16 with the model in bfloat16 (benchmarks/cuda_deploy.py)."""
    if torch.device(device).type != "cuda":
        return torch.float32
    kinds = [layer.dtype if layer.kind == "half" else layer.kind for layer in layers.values()]
    halves = kinds.count("float16")
    bf16s = sum(kinds.count(k) for k in ("bfloat16", "int4", "fp8"))
    return torch.float16 if halves > bf16s else torch.bfloat16


def deploy_cuda(model: nn.Module, plan: Plan, data: Iterable | None = None, *, quantized: nn.Module | None = None,
                device: str | torch.device = "cuda", dtype: torch.dtype | str | None = "auto",
                weight_range: str | None = None, activation_range: str | None = None, progress: bool = True,
                compile: bool = False, weight_method: str | None = None,
                activation_method: str | None = None) -> CudaDeployment:
    """``plan`` on ``model`` as a model whose planned Linear layers run low-bit kernels on ``device``.

    data: calibration batches (fp8 layers need their input scales). quantized: the model
    ``apply(model, plan, data)`` made (default: made here, nearest rounding). The rest of the model is cast
    to ``dtype`` ("auto" or None: :func:`model_dtype`, from the plan). ``model`` itself is not changed.
    compile: int8 layers through torch.compile (CUDA). weight_range, activation_range: mse (default), minmax or
    percentile, as in ``analyze`` (the former names weight_method, activation_method are still taken)."""
    import copy

    from ..apply import apply, note_plan_rounding
    from ..groups import layer_kind
    from ..swap import QuantizedLayer, set_module

    weight_method, activation_method = range_methods(weight_range, activation_range, weight_method, activation_method)
    if not isinstance(plan, Plan):
        raise PlanError(f"deploy_cuda takes a mixprec Plan, got {type(plan).__name__}; load one with Plan.load(path)")
    from ..specs import parse_device
    device = parse_device(device, "device=")  # a device this torch has, else a SpecError naming what it has
    model = canonical(model)  # the layers plans name (mixprec.canonical)
    modules = plan.model_layers(model)
    plan.check_covers(model)  # and every layer of the model is the plan's (or excluded; else a PlanNote)
    candidates = {n: parse_candidate(c) for n, c in plan.layer_candidates().items()}
    layers = check_plan({n: (layer_kind(m), tuple(m.weight.shape), candidates[n]) for n, m in modules.items()})
    if quantized is None:
        needs_data = any(l.kind == "fp8" for l in layers.values())
        note_plan_rounding(plan, "deploy_cuda", stacklevel=3)
        quantized = apply(model, plan, list(data) if data is not None and needs_data else None,
                          weight_range=weight_method, activation_range=activation_method, progress=progress,
                          joins=False, rounding="nearest")
    if dtype is None or dtype == "auto":
        dtype = model_dtype(layers, device)
    elif isinstance(dtype, str):
        if dtype not in DTYPES:
            raise MixprecError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
        dtype = getattr(torch, dtype)
    q_modules = dict(quantized.named_modules())
    tensors = {n: _portable(n, layers[n], modules[n], q_modules[n], candidates[n], weight_method) for n in layers}
    deployed = copy.deepcopy(model).eval()
    for name, module in list(deployed.named_modules()):
        if isinstance(module, QuantizedLayer):
            set_module(deployed, name, module.layer)
    deployed = deployed.to(device=device, dtype=dtype)
    for name, layer in layers.items():
        module = _module(layer, tensors[name], dtype).to(device)
        if compile and isinstance(module, Int8Linear) and module.codes.is_cuda:
            module.compile()
        _put(deployed, name, module)
    rows = [{"layer": n, "candidate": candidates[n].name, "kind": layers[n].kind,
             "kernel": getattr(deployed.get_submodule(n), "kernel", "")} for n in layers]
    return CudaDeployment(deployed, rows, str(dtype).replace("torch.", ""), str(device), tensors, plan.to_dict(),
                          layers)


def save_cuda(deployment: CudaDeployment, out: str | os.PathLike) -> Path:
    """The deployment's portable form: ``out/mixprec-cuda.safetensors`` (codes, scales, weights per layer)
    and ``out/mixprec-cuda.json`` (the plan, each layer's kind and group), each written atomically."""
    from safetensors.torch import save_file

    from ..atomic import write_atomic
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    flat = {f"{layer}::{key}": t.contiguous() for layer, ts in deployment.tensors.items() for key, t in ts.items()}
    write_atomic(out / TENSORS, lambda f: save_file(flat, f.name))  # shared as any new file (not safetensors' 0600)
    manifest = {"format": "mixprec-cuda", "version": 1, "dtype": deployment.dtype, "plan": deployment.plan,
                "layers": [{"layer": r["layer"], "candidate": r["candidate"], "kind": r["kind"],
                            "group": deployment.realised[r["layer"]].group,
                            "dtype": deployment.realised[r["layer"]].dtype} for r in deployment.layers]}
    write_atomic(out / MANIFEST, json.dumps(manifest, indent=1).encode())
    return out


def load_cuda(model: nn.Module, folder: str | os.PathLike, device: str | torch.device = "cuda",
              dtype: torch.dtype | None = None) -> CudaDeployment:
    """The deployment ``save_cuda`` wrote, rebuilt on ``model`` (the float model it was made from) and packed
    for ``device``'s kernels."""
    from safetensors.torch import load_file

    from ..specs import parse_device
    device = parse_device(device, "device=")
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        flat = load_file(str(folder / TENSORS))
    except (OSError, ValueError) as exc:
        raise MixprecError(f"{folder} is not a mixprec cuda artifact ({MANIFEST} and {TENSORS}): {exc}") from exc
    dtype = dtype or getattr(torch, manifest["dtype"])
    tensors: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in flat.items():
        layer, name = key.split("::", 1)
        tensors.setdefault(layer, {})[name] = t
    plan = Plan.from_dict(manifest["plan"])
    model = canonical(model)  # the layers plans name (mixprec.canonical)
    plan.model_layers(model)  # an artifact of another model is a PlanError here
    import copy
    deployed = copy.deepcopy(model).eval().to(device=device, dtype=dtype)
    rows, realised = [], {}
    for row in manifest["layers"]:
        layer = realised[row["layer"]] = CudaLayer(row["kind"], row.get("group"), row.get("dtype"))
        _put(deployed, row["layer"], _module(layer, tensors[row["layer"]], dtype).to(device))
        rows.append({**{k: row[k] for k in ("layer", "candidate", "kind")},
                     "kernel": getattr(deployed.get_submodule(row["layer"]), "kernel", "")})
    return CudaDeployment(deployed, rows, str(dtype).replace("torch.", ""), str(device), tensors, manifest["plan"],
                          realised)
