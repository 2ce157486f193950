"""The testbed's checker as a PRM: exact step labels, optionally flipped with probability `noise` to study how
search methods degrade with an imperfect verifier. Seeded: one generator per PRM instance."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from reasonbudget.rewards.base import StepSequence
from reasonbudget.testbed.problems import parse_question
from reasonbudget.testbed.traces import label_steps


class OraclePRM:
    def __init__(self, *, noise: float = 0.0, seed: int = 0) -> None:
        if not 0.0 <= noise <= 0.5:
            raise ValueError(f"noise={noise}: accepted is 0 <= noise <= 0.5")
        self.noise = noise
        self.generator = torch.Generator().manual_seed(seed)

    def score_steps(self, items: Sequence[StepSequence]) -> list[Tensor]:
        out = []
        for item in items:
            problem = parse_question(item.problem)
            labels = label_steps(problem, "\n".join(item.steps))
            scores = torch.tensor([float(l.correct) for l in labels])
            if self.noise:
                flip = torch.rand(scores.shape, generator=self.generator) < self.noise
                scores = torch.where(flip, 1.0 - scores, scores)
            out.append(scores)
        return out
