"""LLM-as-judge scorer for models without a PRM: the probability that a judge LM answers "yes" when asked
whether a partial solution is correct so far (its next-token logits over yes/no words, renormalised).

One score per item, for the whole prefix (so every aggregation reads the same number). The judge is any
`LoadedModel`, usually the policy itself; one forward per batch, no decoding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from reasonbudget.rewards.base import StepSequence

JUDGE_PROMPT = ("Here is a math problem and the beginning of a solution.\n\nProblem: {problem}\n\n"
                "Solution so far:\n{steps}\n\nIs every step of the solution so far correct? Answer yes or no.")


class LLMJudge:
    step_separator = "\n\n"

    def __init__(self, model, *, batch_size: int = 8) -> None:
        self.model, self.batch_size = model, batch_size
        self.yes = self._first_ids(("yes", "Yes", " yes", " Yes", "YES"))
        self.no = self._first_ids(("no", "No", " no", " No", "NO"))
        if not self.yes or not self.no or set(self.yes) & set(self.no):
            raise ValueError(f"{model.name}: cannot tell yes from no tokens for an LLM judge")
        self.tokens_read = 0

    def _first_ids(self, words: Sequence[str]) -> list[int]:
        return sorted({self.model.encode(w)[0] for w in words if self.model.encode(w)})

    def prompt(self, item: StepSequence) -> list[int]:
        m = self.model
        content = JUDGE_PROMPT.format(problem=item.problem, steps="\n\n".join(item.steps) or "(nothing yet)")
        messages = [{"role": "user", "content": content}]
        if m.tokenizer.chat_template:
            text = m.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                   enable_thinking=False)
        else:
            text = f"user: {content}\nassistant: "
        if m.profile.think_open and m.profile.think_close not in text[-64:]:
            text += m.profile.nothinking  # a thinking model answers at once
        return list(m.encode(text))[-(m.context_length - 1) :]

    @torch.inference_mode()
    def score_steps(self, items: Sequence[StepSequence]) -> list[Tensor]:
        out: list[Tensor] = []
        backend = self.model.backend
        for i in range(0, len(items), self.batch_size):
            encoded = [self.prompt(it) for it in items[i : i + self.batch_size]]
            width = max(len(e) for e in encoded)
            x = torch.zeros((len(encoded), width), dtype=torch.long)
            for b, e in enumerate(encoded):
                x[b, : len(e)] = torch.tensor(e)
            cache = backend.new_cache(len(encoded), width)
            at = torch.tensor([len(e) - 1 for e in encoded])
            logits = backend(x, cache, torch.arange(len(encoded)), logits_at=at).logits.float()  # [B, V]
            yes = torch.logsumexp(logits[:, self.yes], dim=-1)
            no = torch.logsumexp(logits[:, self.no], dim=-1)
            p = torch.sigmoid(yes - no)
            out.extend(p[b : b + 1] for b in range(len(encoded)))
            self.tokens_read += sum(len(e) for e in encoded)
        return out
