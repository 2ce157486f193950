"""Verification rules of draft/target decoding as pure functions over one row's distributions
(`../shared/specs/speculative.md` 1 and 4). p and q are the post-processed sampling distributions
(temperature, top-k, top-p applied: `sampling.probabilities`) of the target and the draft at each drafted
position; the target's pass over the prompt and the gamma drafted tokens gives gamma + 1 of them.

Each rule returns (n, token): the number of drafted tokens kept, and the one token the target adds after
them (the correction, or the bonus when all were kept), so a target pass always yields n + 1 tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Generator, Tensor

from reasonbudget.engine.sampling import draw


def greedy_verify(target_argmax: Sequence[int], drafted: Sequence[int]) -> tuple[int, int]:
    """Greedy matching: keep drafted tokens while they equal the target's argmax; then the target's token."""
    if len(target_argmax) != len(drafted) + 1:
        raise ValueError(f"{len(drafted)} drafted tokens need {len(drafted) + 1} target positions")
    n = 0
    while n < len(drafted) and drafted[n] == target_argmax[n]:
        n += 1
    return n, int(target_argmax[n])


def accepts(p: Tensor, q: Tensor, token: int, u: float) -> bool:
    """One position of exact speculative sampling: keep the drafted `token` iff u <= p(token) / q(token)
    (u ~ U(0, 1); written without the division: q(token) > 0 for a token drawn from q)."""
    return u * float(q[token]) <= float(p[token])


def residual(p: Tensor, q: Tensor) -> Tensor:
    """The distribution to draw from after a rejection: normalize(max(0, p - q)); p itself when that is empty
    (p == q, where exact arithmetic never rejects)."""
    r = (p.double() - q.double()).clamp_min(0)
    total = float(r.sum())
    return (r / total if total > 0 else p.double()).float()


def rejection_verify(p: Tensor, q: Tensor, drafted: Sequence[int], generator: Generator) -> tuple[int, int]:
    """Exact speculative sampling (Leviathan et al., Alg. 1): accept drafted token i with probability
    min(1, p_i(x)/q_i(x)), left to right, stopping at the first rejection; on a rejection draw from the residual
    normalize(max(0, p_i - q_i)), after gamma acceptances the bonus from p_{gamma+1}. Every token emitted is
    then distributed exactly as the target's p. p: [gamma + 1, V]; q: [gamma, V]. One uniform is drawn from
    `generator` per position tested, then one draw for the added token (the engine's loop draws the same way)."""
    gamma = len(drafted)
    if p.shape[0] != gamma + 1 or q.shape[0] != gamma:
        raise ValueError(f"{gamma} drafted tokens need p [{gamma + 1}, V] and q [{gamma}, V]")
    for n, x in enumerate(drafted):
        if not accepts(p[n], q[n], int(x), float(torch.rand(1, generator=generator, dtype=torch.float64))):
            return n, int(draw(residual(p[n], q[n])[None], [generator])[0])
    return gamma, int(draw(p[gamma : gamma + 1].float(), [generator])[0])


def mtad_verify(log_p: Sequence[float], log_q: Sequence[float], tau: float) -> int:
    """MTAD's rule (Qin et al. 4.2): the longest prefix of the drafted block whose joint log-likelihood ratio
    sum_{j<=i} (log p_j - log q_j) exceeds log tau (0 if none). Not stop-at-first-failure: a later high-ratio
    token can make up for an earlier low one. log_p[j], log_q[j]: the target's and the draft's log-probability
    of drafted token j under their post-processed distributions. The caller then adds one token drawn from the
    target's plain distribution at position n (no residual)."""
    if len(log_p) != len(log_q):
        raise ValueError(f"{len(log_p)} target and {len(log_q)} draft log-probabilities")
    if not 0 < tau <= 1:
        raise ValueError(f"tau={tau}: must be in (0, 1]")
    threshold, joint, n = math.log(tau), 0.0, 0
    for i, (lp, lq) in enumerate(zip(log_p, log_q), start=1):
        joint += lp - lq
        if joint > threshold:
            n = i
    return n


def beam_step(score: Tensor, logq: Tensor, width: int, *, greedy: bool, replacement: bool = True,
              generator: Generator | None = None) -> tuple[list[int], list[int], Tensor]:
    """One depth of MTAD's beam sampling for one row: beams with block log-probabilities `score` [B] and the
    draft's next-token log-probabilities `logq` [B, V] -> `width` (parent beam, token) pairs drawn in
    proportion to exp(score[b] + logq[b, t]) (the `width` most likely pairs when greedy), and their new
    scores. The pair weights are normalised in log space (a softmax over joint log-probabilities); the
    reference's log-softmax over *probabilities* is the bug this replaces (spec 4.6)."""
    joint = (score.double()[:, None] + logq.double()).flatten()
    vocab = logq.shape[-1]
    if greedy:
        pick = torch.topk(joint, width).indices
    else:
        probs = torch.softmax(joint, 0).float()
        pick = torch.multinomial(probs, width, replacement=replacement or int((probs > 0).sum()) < width,
                                 generator=generator)
    return (pick // vocab).tolist(), (pick % vocab).tolist(), joint[pick]


# ---- analysis (spec 1.2) ---------------------------------------------------------------------------------
def acceptance_rate(p: Tensor, q: Tensor) -> Tensor:
    """beta = sum_x min(p(x), q(x)) = 1 - TV(p, q), per row."""
    return torch.minimum(p, q).sum(-1)


def expected_tokens_per_pass(alpha: float, gamma: int) -> float:
    """(1 - alpha^(gamma+1)) / (1 - alpha): tokens one target pass yields with i.i.d. acceptance alpha."""
    return float(gamma + 1) if alpha >= 1 else (1 - alpha ** (gamma + 1)) / (1 - alpha)


def expected_speedup(alpha: float, gamma: int, c: float) -> float:
    """Walltime speedup over target-only decoding, with c = draft forward time / target forward time."""
    return expected_tokens_per_pass(alpha, gamma) / (gamma * c + 1)
