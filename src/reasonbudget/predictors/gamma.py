"""The math of Budget Guidance's length model (Li et al. 2025, arXiv 2506.13752), as pure functions.

The predictor gives, for every vocabulary token v at a position, a Gamma(shape alpha_v, rate lambda_v) over
x = log(L + 1), where L counts the thinking tokens from v up to and including `</think>` (so L >= 1). Guided
decoding multiplies the model's next-token probabilities by P(L <= remaining) = P(x <= log(remaining + 1)).
Conventions follow the reference code (see specs/budget-guidance.md), including the row filter that keeps
only tokens whose heads are trained: rate >= 10, shape > 1 and a decoded mode exp((shape-1)/rate)-1 >= 0.9.
"""

from __future__ import annotations

import torch
from torch import Tensor

MIN_RATE, MIN_SHAPE, MIN_MODE = 10.0, 1.0, 0.9


def remaining_length_targets(num_positions: int, first: int, thinking_len: int) -> Tensor:
    """L_j for positions j = 0..num_positions-1 of a sequence whose thinking tokens are first..first+len-1
    and whose end-of-thinking marker starts at first+len; -1 where j is not supervised.

    Position j predicts token j+1: supervised are the position predicting the first thinking token (L = len+1)
    through the one predicting the marker (L = 1). Counting from the full trace keeps targets right when the
    sequence is truncated for the forward pass later.
    """
    out = torch.full((num_positions,), -1, dtype=torch.long)
    start, end = first - 1, min(first - 1 + thinking_len, num_positions - 1)
    if start <= end and start >= 0:
        out[start : end + 1] = thinking_len + 1 - torch.arange(0, end - start + 1)
    return out


def log_length(length: Tensor) -> Tensor:
    return torch.log1p(length.double() if length.dtype == torch.float64 else length.float())


def gamma_nll(shape: Tensor, rate: Tensor, length: Tensor) -> Tensor:
    """-log Gamma(shape, rate) density at x = log(L + 1), elementwise."""
    x = log_length(length)
    return -(shape * torch.log(rate) - torch.lgamma(shape) + (shape - 1) * torch.log(x) - rate * x)


def gamma_cdf(shape: Tensor, rate: Tensor, remaining: Tensor | float) -> Tensor:
    """P(L <= remaining) = regularised lower incomplete gamma P(shape, rate * log(remaining + 1))."""
    x = log_length(torch.as_tensor(remaining, dtype=rate.dtype))
    return torch.special.gammainc(shape, rate * x)


def trained_rows(shape: Tensor, rate: Tensor, min_rate: float = MIN_RATE) -> Tensor:
    """Tokens whose Gamma is trusted (the reference's filter; it tests the mode, whatever its comment says).

    rate >= 10 is a proxy for "trained" that fits R1-length traces (log lengths 6-9); for short traces a
    sharp Gamma has a smaller rate (shape / mean log length), so `min_rate` is a setting."""
    mode = torch.exp((shape - 1) / rate) - 1
    return (rate >= min_rate) & (shape > MIN_SHAPE) & (mode >= MIN_MODE)


def guided_probs(logits: Tensor, shape: Tensor, rate: Tensor, remaining: Tensor | float,
                 strength: float = 1.0, min_rate: float = MIN_RATE) -> tuple[Tensor, Tensor]:
    """p(v) * P(L_v <= remaining)^strength over trusted rows, renormalised; [..., V] -> ([..., V], [...]).

    Where no trusted token has any chance (all weights zero), the model's own argmax is kept, as in the
    reference; the second result says where that fallback happened (an undertrained predictor trusts no
    row and silently turns guidance into greedy line starts, so it is worth counting).
    `strength` != 1 is our extension (the reference has no such knob).
    """
    p = torch.softmax(logits.float(), dim=-1)
    rem = torch.as_tensor(remaining, dtype=torch.float32)
    if rem.dim() > 0:
        rem = rem.unsqueeze(-1)  # one remaining budget per row
    g = gamma_cdf(shape.float(), rate.float(), rem).clamp(0, 1) * trained_rows(shape, rate, min_rate)
    if strength != 1.0:
        g = g.pow(strength)
    q = p * g
    total = q.sum(dim=-1, keepdim=True)
    fallback = torch.nn.functional.one_hot(logits.argmax(dim=-1), logits.shape[-1]).to(q.dtype)
    fell_back = total[..., 0] <= 0
    return torch.where(total > 0, q / total.clamp_min(torch.finfo(q.dtype).tiny), fallback), fell_back
