"""The process-reward interface: per-step scores for a batch of partial traces, and their aggregation.

A PRM reads text (it may have its own tokenizer): each item is the problem statement and the steps written
so far; it returns one score in [0, 1] per step, the estimated probability that the trace is still correct
after that step. Aggregation turns those into one number per trace: `last`, `min`, `prod`, `mean`, or
`model`: the whole prefix given to the PRM as one step (what the particle-filtering paper's code does with
Qwen2.5-Math-PRM; see `search.scoring`). PRMs may count what they read in a `tokens_read` attribute and say
how to join steps into one text in `step_separator`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol, get_args

import torch
from torch import Tensor

from reasonbudget.types import StepSequence

__all__ = ["AGGREGATIONS", "Aggregation", "PRMUnavailable", "ProcessRewardModel", "StepSequence", "aggregate"]

Aggregation = Literal["last", "min", "prod", "mean", "model"]
AGGREGATIONS: tuple[str, ...] = get_args(Aggregation)


class PRMUnavailable(ValueError):
    """The scorer itself is down (a PRM server that cannot be reached): the run fails with this one line
    instead of dropping every candidate."""


class ProcessRewardModel(Protocol):
    def score_steps(self, items: Sequence[StepSequence]) -> list[Tensor]:
        """One float tensor [num_steps] per item, values in [0, 1]."""
        ...


def aggregate(scores: Tensor, how: Aggregation) -> float:
    """scores [num_steps] -> one score; an empty trace scores 0. (`model` is decided before scoring, so here
    it reads the single score like `last`.)"""
    if scores.numel() == 0:
        return 0.0
    if how in ("last", "model"):
        return float(scores[-1])
    if how == "min":
        return float(scores.min())
    if how == "prod":
        return float(torch.prod(scores.double()))
    if how == "mean":
        return float(scores.mean())
    raise ValueError(f"aggregation {how!r}: accepted are {', '.join(AGGREGATIONS)}")
