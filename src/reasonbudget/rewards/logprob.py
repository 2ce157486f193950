"""The policy's own confidence as a step scorer, for models with no trained PRM. Two readings of the same
token log-probabilities:
    logprob      exp(mean log p) over the trace so far: the geometric-mean probability of its tokens
    logprob-min  exp(min log p) over the trace so far: the least likely token yet (one slip marks the trace)
Self-certainty scorers of this kind are what its_hub's newer particle filtering falls back to without a PRM.
Which of them `prm=auto` hands a model with no trained head is decided by measurement (`rewards.factory`).

One forward of the policy over the problem and the steps per call (text in, so it also serves a remote
policy when the same model is loaded here)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from reasonbudget.rewards.head_prm import LOGPROB_FLOOR, step_features
from reasonbudget.types import StepSequence


def prefix_confidence(step_features: Tensor, step_lengths: Sequence[int]) -> Tensor:
    """Per step: exp of the mean token log-probability over every token up to the step's end, from per-step
    mean log-probabilities (column 1 of `head_prm.logprob_features`, scaled by 1 / -LOGPROB_FLOOR) and
    token counts; pure."""
    mean_lp = step_features[:, 1] * -LOGPROB_FLOOR
    n = torch.tensor(step_lengths, dtype=torch.float32)
    return torch.exp(torch.cumsum(mean_lp * n, 0) / torch.cumsum(n, 0))


def prefix_min_confidence(step_features: Tensor) -> Tensor:
    """Per step: exp of the lowest token log-probability up to the step's end (column 2 of
    `head_prm.logprob_features`, floored at LOGPROB_FLOOR); pure."""
    return torch.exp(step_features[:, 2] * -LOGPROB_FLOOR)


AGGREGATES = ("mean", "min")


class PolicyLogProb:
    trained = False  # the policy's own confidence, not a scorer trained on step labels
    def __init__(self, model, aggregate: str = "mean") -> None:
        if aggregate not in AGGREGATES:
            raise ValueError(f"aggregate={aggregate!r}: accepted are {', '.join(AGGREGATES)}")
        self.model = model
        self.aggregate = aggregate
        self.step_separator = model.profile.step_delimiter
        self.tokens_read = 0

    def score_steps(self, items: Sequence[StepSequence]) -> list[Tensor]:
        feats = step_features(self.model, [(it.problem, it.steps) for it in items], (), separator=self.step_separator,
                              logprobs=True)
        out = []
        for it, f in zip(items, feats):
            lengths = [len(self.model.encode(s + self.step_separator)) for s in it.steps[: f.shape[0]]]
            self.tokens_read += sum(lengths)
            if not f.numel():
                out.append(torch.zeros(0))
            else:
                out.append(prefix_confidence(f, lengths) if self.aggregate == "mean" else prefix_min_confidence(f))
        return out
