"""The policy's own confidence as a step scorer, for models with no trained PRM (`prm=logprob`): the
geometric-mean probability the model gave the tokens of the trace so far, exp(mean log p). Self-certainty
scorers of this kind are what its_hub's newer particle filtering falls back to without a PRM; here it is the
`prm=auto` default for such models because it measured better than the LLM judge (README, issue 21).

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


class PolicyLogProb:
    def __init__(self, model) -> None:
        self.model = model
        self.step_separator = model.profile.step_delimiter
        self.tokens_read = 0

    def score_steps(self, items: Sequence[StepSequence]) -> list[Tensor]:
        feats = step_features(self.model, [(it.problem, it.steps) for it in items], (), separator=self.step_separator,
                              logprobs=True)
        out = []
        for it, f in zip(items, feats):
            lengths = [len(self.model.encode(s + self.step_separator)) for s in it.steps[: f.shape[0]]]
            self.tokens_read += sum(lengths)
            out.append(prefix_confidence(f, lengths) if f.numel() else torch.zeros(0))
        return out
