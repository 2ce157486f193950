"""LLM-as-judge over a remote server (prm=judge for a `remote:` policy): the served model is asked whether a
partial solution is correct so far (the same question as `rewards.judge.LLMJudge`), with one completion of one
token per item and the top log-probabilities of that token; P("yes") = the mass of its yes spellings over that
of yes and no spellings. An item whose top list holds neither scores NaN (the search drops it)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from reasonbudget.remote.client import RemoteError
from reasonbudget.rewards.base import PRMUnavailable
from reasonbudget.rewards.judge import JUDGE_PROMPT, _answer_now
from reasonbudget.types import StepSequence

if TYPE_CHECKING:
    from reasonbudget.remote.model import RemoteModel

TOP_LOGPROBS = 20  # OpenAI's and vLLM's usual maximum


def p_yes_from_top(top: Mapping[str, float]) -> float:
    """P(yes) among the yes and no spellings of a token's top log-probabilities; NaN when neither is there."""
    def mass(word: str) -> float:
        values = [v for t, v in top.items() if t.strip().lower() == word]
        return math.log(sum(math.exp(v) for v in values)) if values else -math.inf

    yes, no = mass("yes"), mass("no")
    if yes == no == -math.inf:
        return math.nan
    return 1.0 / (1.0 + math.exp(no - yes)) if yes > -math.inf else 0.0


class RemoteJudge:
    step_separator = "\n\n"
    trained = False

    def __init__(self, model: RemoteModel) -> None:
        self.model = model
        self.tokens_read = 0

    def prompt(self, item: StepSequence) -> str:
        m = self.model
        content = JUDGE_PROMPT.format(problem=item.problem, steps="\n\n".join(item.steps) or "(nothing yet)")
        messages = [{"role": "user", "content": content}]
        if m.tokenizer is not None and getattr(m.tokenizer, "chat_template", None):
            text = m.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                   enable_thinking=False)
        else:
            text = f"<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n"
        return _answer_now(m, text)

    def score_steps(self, items: Sequence[StepSequence]) -> list[Tensor]:
        try:
            calls = self.model.server.complete([self.prompt(it) for it in items], max_tokens=1, temperature=0.0,
                                               extras=[{"logprobs": TOP_LOGPROBS}] * len(items))
        except RemoteError as e:  # the judge is the server: it is down, not one item
            raise PRMUnavailable(f"the judge {self.model.name} failed: {e}") from None
        tops = []
        for c in calls:
            self.tokens_read += c.prompt_tokens
            logprobs = c.body["choices"][0].get("logprobs") or {}
            tops.append((logprobs.get("top_logprobs") or [None])[0])
        if items and all(t is None for t in tops):
            raise PRMUnavailable(f"{self.model.name} returns no logprobs for completions, so it cannot judge; use "
                                 "prm=judge-text,judge_model=LOCAL_MODEL or a PRM")
        return [torch.tensor([p_yes_from_top(t or {})]) for t in tops]
