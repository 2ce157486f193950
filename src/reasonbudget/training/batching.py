"""Small pieces the fine-tuning loops share: length-bucketed batches, the warm-up / linear-decay schedule, and an
epoch of binary cross-entropy for the small heads (PRM step heads, router heads)."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

T = TypeVar("T")


def bucketed_batches(items: Sequence[T], length: Callable[[T], int], batch_size: int, rng: random.Random,
                     *, bucket: int = 32) -> list[list[T]]:
    """One epoch: items shuffled, sorted by length // bucket (stable, so shuffled within a bucket), cut into
    batches, the batches shuffled. Batches pad to their own longest item. Pure given rng."""
    order = rng.sample(list(items), len(items))
    order.sort(key=lambda x: length(x) // bucket)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches


def warmup_linear(step: int, total: int, warmup: int, lr: float) -> float:
    """Linear warm-up over `warmup` steps, then linear decay to 0 at `total`; pure."""
    warmup = max(1, warmup)
    return lr * min((step + 1) / warmup, max(0.0, (total - step) / max(1, total - warmup)))


def bce_epoch(head: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, batch_size: int,
              step: int, lr: Callable[[int], float] | None = None) -> tuple[float, int]:
    """One epoch of binary cross-entropy of head(x) against (soft) labels y, in minibatches of a fresh
    permutation (torch's global generator); `lr(step)` sets the learning rate before each step. Returns the
    last minibatch's loss and the step count after the epoch."""
    loss = torch.zeros(())
    perm = torch.randperm(len(y))
    for i in range(0, len(y), batch_size):
        sel = perm[i : i + batch_size]
        if lr is not None:
            for g in opt.param_groups:
                g["lr"] = lr(step)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(head(x[sel]), y[sel])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
    return loss.item(), step
