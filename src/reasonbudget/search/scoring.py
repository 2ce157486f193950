"""Scoring partial solutions with a PRM for the search methods: aggregation, failure isolation, cost.

A PRM that raises or returns NaN for some items must not sink a search: the batch is retried item by item
and a failing item scores NaN (the search drops that particle). Every call is counted: `calls` (prefixes
scored) and `tokens` (what the PRM read, when it reports it). A PRM that reads the policy's KV rows
(`reads_rows`, the self-judge) gets them with the engine instead of texts.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from reasonbudget.rewards.base import (AGGREGATIONS, Aggregation, PRMUnavailable, ProcessRewardModel, StepSequence,
                                       aggregate)

logger = logging.getLogger(__name__)


@dataclass
class RewardScorer:
    prm: ProcessRewardModel
    aggregation: Aggregation = "last"
    engine: object | None = None
    """Needed by a PRM that reads rows."""
    calls: int = 0
    tokens: int = 0

    def __post_init__(self) -> None:
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation {self.aggregation!r}: accepted are {', '.join(AGGREGATIONS)}")

    @property
    def reads_rows(self) -> bool:
        return bool(getattr(self.prm, "reads_rows", False))

    def __call__(self, items: Sequence[StepSequence], rows: Sequence[int | None] | None = None) -> list[float]:
        """One score in [0, 1] per item, NaN where the PRM failed. `rows`: each item's KV row, read by a PRM
        that reads rows (an item without one scores NaN) and ignored by the others."""
        if not items:
            return []
        if self.reads_rows:
            return self._score_rows(items, rows)
        if self.aggregation == "model":  # the whole prefix as one step ("PRM as ORM on partial answers")
            sep = getattr(self.prm, "step_separator", "\n\n")
            items = [StepSequence(it.problem, (sep.join(it.steps),) if it.steps else ()) for it in items]
        self.calls += len(items)
        before = getattr(self.prm, "tokens_read", 0)
        try:
            per_step = self.prm.score_steps(items)
            if len(per_step) != len(items):
                raise ValueError(f"PRM returned {len(per_step)} results for {len(items)} items")
        except PRMUnavailable:  # the scorer is down, not one item: fail the run with its message
            raise
        except Exception as e:  # isolate the failing item(s)
            logger.warning("PRM batch failed (%s: %s); scoring items one by one", type(e).__name__, e)
            per_step = [self._one(it) for it in items]
        self.tokens += getattr(self.prm, "tokens_read", 0) - before
        how = "last" if self.aggregation == "model" else self.aggregation
        return [_checked(s, how) for s in per_step]

    def _score_rows(self, items: Sequence[StepSequence], rows: Sequence[int | None] | None) -> list[float]:
        if rows is None or len(rows) != len(items) or self.engine is None:
            raise ValueError(f"{type(self.prm).__name__} reads KV rows: pass the engine and one row per item")
        self.calls += len(items)
        before = self.prm.tokens_read
        have = [i for i, r in enumerate(rows) if r is not None]
        scores: list = [None] * len(items)
        try:
            for i, s in zip(have, self.prm.score_rows(self.engine, [rows[i] for i in have])):
                scores[i] = s
        except Exception as e:  # one row at a time, so that one failure drops one candidate
            logger.warning("PRM batch failed (%s: %s); scoring rows one by one", type(e).__name__, e)
            for i in have:
                scores[i] = self._one(rows[i], lambda r: self.prm.score_rows(self.engine, [r]))
        self.tokens += self.prm.tokens_read - before
        return [_checked(s, "last") for s in scores]

    def _one(self, item, score=None):
        score = score or (lambda it: self.prm.score_steps([it]))
        try:
            return score(item)[0]
        except Exception as e:
            logger.warning("PRM failed on one item (%s: %s); that candidate is dropped", type(e).__name__, e)
            return None


def _checked(scores, how: Aggregation) -> float:
    if scores is None:
        return math.nan
    scores = torch.as_tensor(scores, dtype=torch.float64).flatten()
    if scores.numel() and bool(torch.isnan(scores).any()):
        return math.nan
    value = aggregate(scores.clamp(0.0, 1.0), how)
    return value if math.isfinite(value) else math.nan
