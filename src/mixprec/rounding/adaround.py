"""AdaRound: Nagel, Amjad, van Baalen, Louizos, Blankevoort, "Up or down? Adaptive rounding for
post-training quantization" (ICML 2020).

Per layer, learns whether each weight goes down or up from floor(W / s):

    W~ = s * (clamp(floor(W / s) + h(V) + z, qmin, qmax) - z),
    h(V) = clamp(sigmoid(V) (zeta - gamma) + gamma, 0, 1), zeta = 1.1, gamma = -0.1     (eq. 22-23)

minimising the error of the layer's output on its calibration inputs plus a regulariser that
drives every h(V) to 0 or 1 (annealed beta, from 20 to 2 after a 20 % warm-up without it):

    ||W x - W~ x||^2 + lambda sum(1 - |2 h(V) - 1|^beta)                                (eq. 21, 24)

At the end each weight rounds up where h(V) >= 1/2. Scales are fixed by quantize_weight's range
method, so the grid (and the cost) is nearest rounding's. The inputs x come from the float model
(the paper's default; its asymmetric variant, eq. 25, is not used). The defaults are quick
rather than the paper's: 500 Adam steps of 32 input rows (images for a conv, tokens or samples
for a linear) per layer at lr 5e-2, instead of 10,000-20,000 steps at lr 1e-3 (BRECQ's code):
about the same total movement of V, and seconds per small layer on a CPU.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.func import functional_call

from ..errors import RoundingError
from ..formats import IntFormat
from ..quantizers import stored_scale, weight_qparams
from .config import RoundingConfig

ZETA, GAMMA = 1.1, -0.1


@dataclass(frozen=True)
class AdaRound(RoundingConfig):
    """AdaRound's options (the quick defaults of the module docstring); BRECQ adds its own to them."""
    name: ClassVar[str] = "adaround"
    iterations: int = 500
    lr: float = 5e-2
    batch_size: int = 32
    reg_weight: float = 0.01
    beta: tuple[float, float] = (20.0, 2.0)
    warmup: float = 0.2
    seed: int = 0

    def __post_init__(self):
        method = self.name
        for name in ("iterations", "batch_size", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "seed" else 1):
                raise RoundingError(f"{method} option {name} must be a "
                                    f"{'non-negative' if name == 'seed' else 'positive'} integer, got {value!r}")
        for name in ("lr", "reg_weight"):
            if not isinstance(getattr(self, name), (int, float)) or not getattr(self, name) > 0:
                raise RoundingError(f"{method} option {name} must be a positive number, got {getattr(self, name)!r}")
        if not isinstance(self.warmup, (int, float)) or not 0 <= self.warmup < 1:
            raise RoundingError(f"{method} option warmup must be a fraction in [0, 1) (0.2 in the paper), "
                                f"got {self.warmup!r}")
        beta = self.beta
        if not (isinstance(beta, (tuple, list)) and len(beta) == 2
                and all(isinstance(b, (int, float)) and b > 0 for b in beta)):
            raise RoundingError(f"{method} option beta must be (start, end), e.g. (20, 2), got {beta!r}")

    def observe(self, state: list | None, layer: nn.Module, x: torch.Tensor) -> list:
        return observe(state, layer, x)

    def round_layer(self, layer: nn.Module, state: list, fmt: IntFormat, weight_method: str) -> torch.Tensor:
        return round_layer(layer, state, fmt, weight_method, **self.options())


def observe(state: list | None, layer: nn.Module, x: torch.Tensor) -> list:
    """Keep the input of every call, as rows (linear) or batched maps (conv)."""
    x = x.detach()
    if isinstance(layer, nn.Linear):
        x = x.reshape(-1, x.shape[-1])
    elif x.dim() == len(layer.kernel_size) + 1:  # unbatched conv input
        x = x.unsqueeze(0)
    state = [] if state is None else state
    state.append(x)
    return state


def rectified_sigmoid(V: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.sigmoid(V) * (ZETA - GAMMA) + GAMMA, 0, 1)  # h(V), eq. 23


class SoftRounding:
    """The learned rounding of one weight: W~ = s (clamp(floor(W/s) + h(V) + z) - z), V trainable.

    Shared by AdaRound (one layer at a time) and BRECQ (every layer of a block at once).
    """

    def __init__(self, weight: torch.Tensor, fmt: IntFormat, weight_method: str):
        self.dtype, self.fmt = weight.dtype, fmt
        W = weight.detach().float()
        self.scale, self.zero_point = (t.reshape(W.shape) for t in
                                       weight_qparams(W.reshape(W.shape[0], -1), fmt, weight_method))
        self.floor = torch.floor(W / self.scale)
        rest = W / self.scale - self.floor
        # h(V) = W/s - floor(W/s) at the start (sec. 5)
        self.V = (-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1)).requires_grad_(True)

    def _weight(self, up: torch.Tensor) -> torch.Tensor:
        fmt = self.fmt
        return ((torch.clamp(self.floor + up + self.zero_point, fmt.qmin, fmt.qmax) - self.zero_point)
                * stored_scale(self.scale, fmt))

    def soft(self) -> torch.Tensor:
        return self._weight(rectified_sigmoid(self.V))

    def regulariser(self, beta: float) -> torch.Tensor:
        return (1 - (2 * rectified_sigmoid(self.V) - 1).abs().pow(beta)).sum()  # eq. 24

    @torch.no_grad()
    def hard(self) -> torch.Tensor:
        """Each weight up where h(V) >= 1/2, in the layer's dtype."""
        return self._weight((rectified_sigmoid(self.V) >= 0.5).float()).to(self.dtype)


def annealed_beta(t: int, iterations: int, warmup: float, beta: tuple[float, float]) -> float | None:
    """The regulariser's beta at step t: None during the warm-up, then linear from start to end (sec. 5)."""
    warm = int(warmup * iterations)
    if t < warm:
        return None
    start, end = beta
    return end + (start - end) * (1 - (t - warm) / max(iterations - warm, 1))


def round_layer(layer: nn.Module, state: list, fmt: IntFormat, weight_method: str, *, iterations: int, lr: float,
                batch_size: int, reg_weight: float, beta: tuple[float, float], warmup: float,
                seed: int) -> torch.Tensor:
    W = layer.weight.detach().float()
    rounding = SoftRounding(layer.weight, fmt, weight_method)
    params = {name: p.detach().float() for name, p in layer.named_parameters(recurse=False)}
    X = torch.cat([x.float() for x in state])
    generator = torch.Generator(device=X.device).manual_seed(seed)
    optimiser = torch.optim.Adam([rounding.V], lr=lr)
    for t in range(iterations):
        x = X[torch.randint(len(X), (min(batch_size, len(X)),), generator=generator, device=X.device)]
        with torch.no_grad():
            target = functional_call(layer, {**params, "weight": W}, (x,))
        with torch.enable_grad():  # also when the caller runs under torch.no_grad()
            out = functional_call(layer, {**params, "weight": rounding.soft()}, (x,))
            loss = (out - target).pow(2).sum(1).mean()  # ||W x - W~ x||^2 per output position (eq. 21)
            b = annealed_beta(t, iterations, warmup, beta)
            if b is not None:
                loss = loss + reg_weight * rounding.regulariser(b)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
        optimiser.step()
    return rounding.hard()
