"""Small pieces the fine-tuning loops share: length-bucketed batches and the warm-up / linear-decay schedule."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import TypeVar

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
