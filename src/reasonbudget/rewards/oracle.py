"""The testbed's checker as a PRM: exact step labels, optionally flipped with probability `noise` to study how
search methods degrade with an imperfect verifier. The noise is a fixed function of (seed, problem, prefix):
the same prefix always gets the same score, as with a real imperfect PRM, whatever the batch or call order.
The seed may be one per problem (the search methods pass each problem's run seed, so that the runs of a
benchmark see independent noise draws, not one draw repeated).
A noisy oracle scores a step with its observed label (0 or 1: certain, and wrong with probability `noise`),
or, `calibrated`, with the probability that the step is correct given that label (1 - noise or noise), which
is what a calibrated verifier of that accuracy reports.

A step that starts with "</think>" is the closing step (end of thinking and the answer line, as
`testbed.traces.closing_step` writes it and the trained PRM reads it): correct when every line before it is
and its answer is right."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from reasonbudget.rewards.base import StepSequence
from reasonbudget.testbed.problems import parse_question
from reasonbudget.testbed.traces import final_answer, label_steps


class OraclePRM:
    def __init__(self, *, noise: float = 0.0, seed: int | Mapping[str, int] = 0, calibrated: bool = False) -> None:
        if not 0.0 <= noise <= 0.5:
            raise ValueError(f"noise={noise}: accepted is 0 <= noise <= 0.5")
        self.noise, self.seed, self.calibrated = noise, seed, calibrated

    def score_steps(self, items: Sequence[StepSequence]) -> list[Tensor]:
        out = []
        for item in items:
            problem = parse_question(item.problem)
            closing = bool(item.steps) and item.steps[-1].lstrip().startswith("</think>")
            thinking = item.steps[:-1] if closing else item.steps
            correct = [lab.correct for lab in label_steps(problem, "\n".join(thinking))]
            if closing:
                correct.append(all(correct) and final_answer(item.steps[-1]) == problem.answer)
            scores = torch.tensor([float(c) for c in correct])
            if self.noise:
                flip = torch.tensor([self._uniform(item.problem, item.steps[: j + 1]) < self.noise
                                     for j in range(len(scores))], dtype=torch.bool)
                scores = torch.where(flip, 1.0 - scores, scores)
                if self.calibrated:
                    scores = torch.where(scores > 0.5, 1.0 - self.noise, self.noise)
            out.append(scores)
        return out

    def _uniform(self, problem: str, prefix: Sequence[str]) -> float:
        seed = self.seed.get(problem, 0) if isinstance(self.seed, Mapping) else self.seed
        text = f"{seed}\x00{problem}\x00" + "\x00".join(prefix)
        digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") / 2**64
