"""Particle weights and resampling: pure functions of tensors and a `torch.Generator`.

Particle filtering weighs a particle by the logit of its PRM score, `log(s / (1 - s))`, and resamples with
`softmax(logit / tau)`: at tau = 1 that is proportional to the *odds* s / (1 - s), not to s (as the reference
code does; see specs/particle-filtering.md, pitfall 1). `weighting="probability"` uses log(s) instead, so that
copies are proportional to the score itself. A NaN score (the PRM failed on that particle) gets weight 0.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Generator, Tensor

Weighting = Literal["odds", "probability"]
Resampler = Literal["multinomial", "systematic"]


def log_weights(scores: Tensor, *, weighting: Weighting = "odds", eps: float = 1e-7) -> Tensor:
    """PRM scores in [0, 1] -> log-weights; NaN scores -> -inf (never drawn)."""
    s = scores.double().clamp(eps, 1.0 - eps)
    if weighting == "odds":
        w = torch.log(s) - torch.log1p(-s)
    elif weighting == "probability":
        w = torch.log(s)
    else:
        raise ValueError(f"weighting {weighting!r}: accepted are odds, probability")
    return torch.where(torch.isnan(scores), torch.tensor(float("-inf"), dtype=w.dtype), w)


def normalized(logw: Tensor, tau: float = 1.0) -> Tensor:
    """softmax(logw / tau); all -inf (every particle failed) -> uniform, so the run goes on."""
    if tau <= 0:
        raise ValueError(f"tau={tau}: must be > 0")
    if bool(torch.isinf(logw).all()) and bool((logw < 0).all()):
        return torch.full_like(logw, 1.0 / logw.numel(), dtype=torch.float64)
    return torch.softmax(logw.double() / tau, dim=0)


def effective_sample_size(probs: Tensor) -> float:
    """1 / sum p^2: N for uniform weights, 1 when one particle holds all the mass."""
    return float(1.0 / (probs.double() ** 2).sum())


def multinomial(probs: Tensor, n: int, generator: Generator) -> Tensor:
    """n i.i.d. ancestor indices drawn from probs."""
    return torch.multinomial(probs.double(), n, replacement=True, generator=generator)


def systematic(probs: Tensor, n: int, generator: Generator) -> Tensor:
    """n ancestors from one uniform offset: particle i gets floor or ceil of n * p_i copies (lower variance)."""
    u = (torch.rand((), generator=generator, dtype=torch.float64) + torch.arange(n, dtype=torch.float64)) / n
    cdf = torch.cumsum(probs.double(), 0)
    cdf[-1] = 1.0  # rounding must not leave the last offsets without an ancestor
    return torch.searchsorted(cdf, u, right=True).clamp(max=probs.numel() - 1)


def resample(probs: Tensor, n: int, generator: Generator, scheme: Resampler = "multinomial") -> Tensor:
    if n < 1:
        raise ValueError(f"cannot resample {n} particles")
    if scheme == "multinomial":
        return multinomial(probs, n, generator)
    if scheme == "systematic":
        return systematic(probs, n, generator)
    raise ValueError(f"resampler {scheme!r}: accepted are multinomial, systematic")
