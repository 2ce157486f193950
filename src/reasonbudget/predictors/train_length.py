"""Training the remaining-length predictor: the LM stays frozen and only reads the traces (teacher forcing);
per batch its hidden states at the supervised positions feed the predictor, whose Gamma NLL at the actual
next token is minimised (AdamW, constant learning rate after warm-up, as in the reference recipe).
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from reasonbudget.predictors.gamma import gamma_nll, remaining_length_targets
from reasonbudget.predictors.length import LengthPredictor, LengthPredictorConfig, hidden_layer_ids, lm_fingerprint
from reasonbudget.types import TokenIds

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class PredictorTrainConfig:
    epochs: int = 1
    batch_size: int = 16
    """Sequences per step (every supervised position of each is used)."""
    lr: float = 1e-4
    warmup_fraction: float = 0.05
    seed: int = 0
    cache_gib: float = 8.0
    """Keep the LM's states at the supervised positions in memory across epochs when they fit in this many
    GiB (float32, else bfloat16), so the frozen LM reads each trace once instead of once per epoch."""


@torch.inference_mode()
def lm_states(model, sequences: Sequence[TokenIds]) -> Tensor:
    """All hidden states of the frozen LM: [R, T, num_states, d] (right-padded with the first EOS id)."""
    backend = model.backend
    width = max(len(s) for s in sequences)
    pad = min(model.eos_ids) if model.eos_ids else 0
    x = torch.full((len(sequences), width), pad, dtype=torch.long)
    for i, s in enumerate(sequences):
        x[i, : len(s)] = torch.tensor(list(s))
    cache = backend.new_cache(len(sequences), width)
    layers = hidden_layer_ids(model)
    out = backend(x, cache, torch.arange(len(sequences)), hidden_layers=layers, hidden_only=True)
    return torch.stack([out.hidden[i] for i in layers], dim=2).float()


@dataclass(frozen=True)
class TraceTokens:
    """One training trace: prompt ids, then `thinking_len` thinking tokens, then the end-of-thinking marker
    and the answer."""

    ids: TokenIds
    prompt_len: int
    thinking_len: int


def supervised(trace: TraceTokens) -> tuple[Tensor, Tensor]:
    """Positions with their remaining length L (see `remaining_length_targets`)."""
    targets = remaining_length_targets(len(trace.ids) - 1, trace.prompt_len, trace.thinking_len)
    pos = torch.nonzero(targets > 0).flatten()
    return pos, targets[pos]


def batch_targets(batch: Sequence[TraceTokens]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Every supervised position of a batch: (row, position, remaining length L, actual next token)."""
    supervision = [supervised(t) for t in batch]
    rows = torch.cat([torch.full((len(pos),), b, dtype=torch.long) for b, (pos, _) in enumerate(supervision)])
    cols = torch.cat([pos for pos, _ in supervision])
    length = torch.cat([lengths for _, lengths in supervision])
    next_tokens = torch.tensor([batch[r].ids[c + 1] for r, c in zip(rows.tolist(), cols.tolist())], dtype=torch.long)
    return rows, cols, length, next_tokens


def train_length_predictor(model, traces: Sequence[TraceTokens], cfg: LengthPredictorConfig,
                           train_cfg: PredictorTrainConfig, *, log_every: int = 50) -> tuple[LengthPredictor, dict]:
    """Returns the trained predictor (fingerprinted for `model`) and training statistics."""
    torch.manual_seed(train_cfg.seed)  # entry point of a training run: initial weights
    cfg = replace(cfg, lm_fingerprint=lm_fingerprint(model))
    predictor = LengthPredictor(cfg).train()
    opt = torch.optim.AdamW(predictor.parameters(), lr=train_cfg.lr, weight_decay=0.01)
    rng = random.Random(train_cfg.seed)
    order = list(range(len(traces)))
    total = train_cfg.epochs * math.ceil(len(order) / train_cfg.batch_size)
    warmup = max(1, int(total * train_cfg.warmup_fraction))
    t0, step, history = time.time(), 0, []
    cached = cache_supervised_states(model, traces, train_cfg) if train_cfg.epochs > 1 else None
    for _ in range(train_cfg.epochs):
        rng.shuffle(order)
        for i in range(0, len(order), train_cfg.batch_size):
            ids = order[i : i + train_cfg.batch_size]
            if cached is not None:
                parts = [cached[j] for j in ids]
                picked, length, next_tokens = (torch.cat([p[k] for p in parts]) for k in range(3))
                picked = picked.float()
                rows = torch.cat([torch.full((len(p[1]),), b, dtype=torch.long) for b, p in enumerate(parts)])
            else:
                batch = [traces[j] for j in ids]
                states = lm_states(model, [t.ids for t in batch]).clone()  # leave inference mode for autograd
                rows, cols, length, next_tokens = batch_targets(batch)
                picked = states[rows, cols]
            if not len(next_tokens):
                continue
            for g in opt.param_groups:
                g["lr"] = train_cfg.lr * min(1.0, (step + 1) / warmup)
            shape, rate = predictor.gather(picked, next_tokens)
            loss = per_sequence_mean(gamma_nll(shape, rate, length.float()), rows)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(predictor.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if step % log_every == 0 or step == total - 1:
                history.append({"step": step, "nll": round(loss.item(), 4), "seconds": round(time.time() - t0, 1)})
                logger.info("length predictor step %d/%d nll %.4f", step, total, loss.item())
            step += 1
    predictor.eval()
    every = max(1, len(traces) // 64)  # a sample spread over the set
    min_rate = calibrated_min_rate(predictor, model, traces[::every],
                                   cached=cached[::every] if cached is not None else None)
    predictor.cfg = replace(predictor.cfg, min_rate=min_rate)
    stats = {"steps": step, "traces": len(traces), "min_rate": min_rate, "train_seconds": round(time.time() - t0, 1),
             "params": sum(p.numel() for p in predictor.parameters()), "history": history}
    return predictor, stats


def per_sequence_mean(values: Tensor, rows: Tensor) -> Tensor:
    """Mean over sequences of each sequence's mean: every trace weighs the same, whatever its length (the
    reference averages within a sequence at batch size 1); a token mean would let long traces dominate."""
    count = torch.bincount(rows)
    sums = torch.zeros(len(count), dtype=values.dtype).index_add(0, rows, values)
    present = count > 0
    return (sums[present] / count[present].to(values.dtype)).mean()


def cache_supervised_states(model, traces: Sequence[TraceTokens], cfg: PredictorTrainConfig,
                            ) -> list[tuple[Tensor, Tensor, Tensor]] | None:
    """Per trace: (LM states at its supervised positions, remaining lengths, next tokens), or None when they
    would not fit in `cfg.cache_gib`."""
    positions = sum(len(supervised(t)[0]) for t in traces)
    dims = lm_states(model, [traces[0].ids[:2]]).shape[2:] if traces else (0, 0)
    per_position = dims[0] * dims[1]
    dtype = next((d for d, size in ((torch.float32, 4), (torch.bfloat16, 2))
                  if positions * per_position * size <= cfg.cache_gib * 2**30), None)
    if dtype is None:
        logger.info("LM states (%d positions) do not fit in %.1f GiB: recomputed every epoch", positions, cfg.cache_gib)
        return None
    out: list[tuple[Tensor, Tensor, Tensor]] = []
    t0 = time.time()
    for i in range(0, len(traces), cfg.batch_size):
        batch = traces[i : i + cfg.batch_size]
        states = lm_states(model, [t.ids for t in batch])
        for b, t in enumerate(batch):
            pos, lengths = supervised(t)
            nxt = torch.tensor([t.ids[c + 1] for c in pos.tolist()], dtype=torch.long)
            out.append((states[b, pos].to(dtype).clone(), lengths, nxt))
        logger.info("LM states for %d/%d traces (%.0f s)", len(out), len(traces), time.time() - t0)
    return out


@torch.inference_mode()
def calibrated_min_rate(predictor: LengthPredictor, model, traces: Sequence[TraceTokens], quantile: float = 0.05,
                        reference: float = 10.0, cached: Sequence[tuple[Tensor, Tensor, Tensor]] | None = None,
                        ) -> float:
    """The reference trusts rows with rate >= 10, a proxy for "trained" that fits traces thousands of tokens
    long. Here: the `quantile` of the rates given to the actual next tokens of training traces, capped at the
    reference value, so rows as sharp as trained ones count as trained at any trace length."""
    rates = []
    if cached is not None:  # the training run's states: no second pass of the LM over the traces
        rates = [predictor.gather(states.float(), nxt)[1] for states, _, nxt in cached if len(nxt)]
        traces = ()
    for i in range(0, len(traces), 16):
        batch = traces[i : i + 16]
        rows, cols, _, next_tokens = batch_targets(batch)
        rates.append(predictor.gather(lm_states(model, [t.ids for t in batch])[rows, cols], next_tokens)[1])
    seen = torch.cat(rates) if rates else torch.zeros(0)
    if seen.numel() == 0:
        return reference
    return round(min(reference, float(torch.quantile(seen, quantile))), 3)
