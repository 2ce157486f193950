"""Pure sampling functions: temperature, top-k, top-p, and seeded draws.

Draws are by inverse CDF: one uniform number per row against the row's float64 cumulative probabilities
(zero-probability tokens are never drawn), from one generator per row, so a row's tokens do not depend on which
other rows are still running.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Generator, Tensor


@dataclass(frozen=True, kw_only=True)
class SamplingConfig:
    temperature: float = 0.0
    """0 means greedy (argmax)."""
    top_p: float = 1.0
    """Keep the smallest set of tokens whose probability mass is at least top_p."""
    top_k: int = 0
    """Keep the k most likely tokens; 0 keeps all."""

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise ValueError(f"temperature={self.temperature}: must be >= 0 (0 = greedy)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p}: must be in (0, 1]")
        if self.top_k < 0:
            raise ValueError(f"top_k={self.top_k}: must be >= 0 (0 = off)")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def apply_top_k(logits: Tensor, k: int) -> Tensor:
    """logits [R, V] -> logits with all but the k largest per row set to -inf."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def apply_top_p(logits: Tensor, p: float) -> Tensor:
    """Nucleus filter on logits [R, V]: keeps the smallest prefix (by probability) whose mass is >= p.

    Only the finite entries are ranked. After top-k those are a handful of a 150k vocabulary, and sorting the
    whole row was most of a sampled draft step (MTAD draws top-k then top-p at every beam depth)."""
    if p >= 1.0:
        return logits
    survivors = int((logits > float("-inf")).sum(-1).max())
    if survivors <= logits.shape[-1] // 4:
        values, ids = torch.topk(logits, survivors, dim=-1)  # every row's finite entries (and some -inf)
        by_id = ids.argsort(-1)  # then a stable sort by value: ties in id order, as the full sort has them
        values, ids = values.gather(-1, by_id), ids.gather(-1, by_id)
    else:
        values, ids = logits, None
    sorted_logits, order = torch.sort(values, dim=-1, descending=True, stable=True)  # ties: lowest id first, like argmax
    probs = sorted_logits.softmax(-1)
    mass_before = probs.cumsum(-1) - probs  # mass of strictly more likely tokens
    keep_sorted = mass_before < p  # the argmax always has mass_before = 0 and survives
    token_ids = order if ids is None else ids.gather(-1, order)
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, token_ids, keep_sorted)
    return logits.masked_fill(~keep, float("-inf"))


def probabilities(logits: Tensor, cfg: SamplingConfig) -> Tensor:
    """The distribution actually sampled from: [R, V] logits -> [R, V] probs (temperature > 0)."""
    x = logits.float() / cfg.temperature
    return apply_top_p(apply_top_k(x, cfg.top_k), cfg.top_p).softmax(-1)


def draw(probs: Tensor, generators: Sequence[Generator]) -> Tensor:
    """One token per row of probs [R, V] with that row's generator -> [R], on probs' device: inverse-CDF sampling,
    one uniform number per row (drawn on the generators' device, CPU for the usual per-row generators, and
    moved once) against the row's cumulative probabilities in float64 (`inverse_cdf`). Exact, and cheap for large
    vocabularies: the exponential race it replaces drew V random numbers per row and token, a third of a batched
    Qwen decode step. The same probs and seeds give the same tokens on every device (up to float64 rounding of the
    cumulative sums: a u within ~1e-16 of a boundary)."""
    device = generators[0].device if generators else probs.device
    u = torch.empty(len(generators), dtype=torch.float64, device=device)
    for r, g in enumerate(generators):
        u[r : r + 1].uniform_(generator=g)
    return inverse_cdf(probs, u.to(probs.device))


CDF_BLOCK = 1024
"""Tokens per block of `inverse_cdf`'s two-level search."""


def inverse_cdf(probs: Tensor, u: Tensor, block: int = CDF_BLOCK) -> Tensor:
    """The token of each row of probs [R, V] (unnormalised weights >= 0, each row with some mass) at the fraction
    u [R] in [0, 1) of its mass: the first token whose cumulative weight, in float64, exceeds u x the row's total.
    Zero-weight tokens (a flat CDF) are never chosen. Pure.

    Two levels, so that only one block per row is widened to float64 and summed in order: the float64 block sums
    choose the block, the block's own cumulative sums the token. A whole row in float64 (convert, then cumsum)
    was a seventh of a batched sampled decode step on a 150k vocabulary."""
    rows, vocab = probs.shape
    sums = _block_sums(probs, block)  # [R, B] float64
    ends = sums.cumsum(-1)
    u = u.to(torch.float64) * ends[:, -1]
    blocks = torch.arange(sums.shape[1], device=probs.device)
    last_with_mass = torch.where(sums > 0, blocks, 0).amax(-1)  # rounding must not carry u past it
    b = torch.searchsorted(ends, u[:, None], right=True)[:, 0].clamp(max=last_with_mass)
    before = torch.where(b > 0, ends.gather(1, (b - 1).clamp(min=0)[:, None])[:, 0], 0.0)
    ids = b[:, None] * block + torch.arange(block, device=probs.device)
    local = probs.gather(1, ids.clamp(max=vocab - 1)).double().masked_fill(ids >= vocab, 0.0)
    j = torch.searchsorted(local.cumsum(-1), (u - before).clamp(min=0)[:, None], right=True)[:, 0]
    last = torch.where(local > 0, torch.arange(block, device=probs.device), 0).amax(-1)
    return b * block + torch.minimum(j, last)


def _block_sums(probs: Tensor, block: int) -> Tensor:
    """[R, V] -> [R, ceil(V / block)]: float64 sums of consecutive blocks of each row (the last one short). On the
    CPU numpy's sum widens as it adds, about six times faster here than torch's sum(dtype=float64), which converts
    the whole row first."""
    rows, vocab = probs.shape
    whole = vocab // block * block
    if probs.device.type == "cpu" and probs.dtype in (torch.float32, torch.float64):
        a = probs.detach().numpy()
        parts = [a[:, :whole].reshape(rows, whole // block, block).sum(-1, dtype=np.float64)]
        if whole < vocab:
            parts.append(a[:, whole:].sum(-1, dtype=np.float64, keepdims=True))
        return torch.from_numpy(np.concatenate(parts, axis=1))
    parts = [probs[:, :whole].reshape(rows, whole // block, block).sum(-1, dtype=torch.float64)]
    if whole < vocab:
        parts.append(probs[:, whole:].sum(-1, dtype=torch.float64, keepdim=True))
    return torch.cat(parts, dim=1)


def sample(logits: Tensor, cfg: SamplingConfig, generators: Sequence[Generator] | None) -> Tensor:
    """logits [R, V] -> token ids [R]."""
    if cfg.greedy:
        return logits.argmax(-1)
    if generators is None or len(generators) != logits.shape[0]:
        raise ValueError("sampling with temperature > 0 needs one torch.Generator per row")
    return draw(probabilities(logits, cfg), generators)


def child_generators(parent: Generator, n: int) -> list[Generator]:
    """n independent generators derived deterministically from `parent`."""
    seeds = torch.randint(0, 2**62, (n,), generator=parent, device=parent.device).tolist()  # a CUDA parent too
    return [torch.Generator().manual_seed(s) for s in seeds]
