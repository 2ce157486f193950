"""LLM-as-judge scorers for models without a PRM: the probability that a judge LM answers "yes" when asked
whether a partial solution is correct so far (its next-token logits over yes/no words, renormalised). One
score per item, for the whole prefix (so every aggregation reads the same number); no decoding.

- `SelfJudge` (prm=judge): the policy judges its own partial solutions on their KV rows. The solution's turn
  is closed and a user turn asks the question; only those few tokens are computed (`Engine.peek`), the row
  is left as it was. Cost per call: ~30 tokens, whatever the length of the solution.
- `LLMJudge` (prm=judge-text): a fresh prompt that restates the problem and the steps, prefilled whole for
  every call (cost grows with the prefix; any `LoadedModel` can judge).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from reasonbudget.rewards.base import StepSequence

SELF_JUDGE_QUESTION = "Is every step of your solution so far correct? Answer yes or no."
JUDGE_PROMPT = ("Here is a math problem and the beginning of a solution.\n\nProblem: {problem}\n\n"
                "Solution so far:\n{steps}\n\nIs every step of the solution so far correct? Answer yes or no.")


def yes_no_ids(model) -> tuple[list[int], list[int]]:
    """First tokens of the spellings of "yes" and of "no" (disjoint, else the judge is meaningless)."""
    def first(words: Sequence[str]) -> list[int]:
        return sorted({ids[0] for w in words if (ids := model.encode(w))})

    yes, no = first(("yes", "Yes", " yes", " Yes", "YES")), first(("no", "No", " no", " No", "NO"))
    if not yes or not no or set(yes) & set(no):
        raise ValueError(f"{model.name}: cannot tell yes from no tokens for an LLM judge")
    return yes, no


def p_yes(logits: Tensor, yes: Sequence[int], no: Sequence[int]) -> Tensor:
    """[B, V] next-token logits -> [B] probability of yes among yes and no."""
    logits = logits.float()
    return torch.sigmoid(torch.logsumexp(logits[:, list(yes)], -1) - torch.logsumexp(logits[:, list(no)], -1))


def _answer_now(model, text: str) -> str:
    if model.profile.think_open and model.profile.think_close not in text[-64:]:
        text += model.profile.nothinking  # a thinking model answers at once
    return text


class SelfJudge:
    """The policy judges partial solutions on their own KV rows (see the module docstring). Needs the rows:
    `RewardScorer` passes them with the engine."""

    step_separator = "\n\n"
    reads_rows = True
    trained = False  # a prompted judge, not a scorer trained on step labels

    def __init__(self, model) -> None:
        self.model = model
        self.yes, self.no = yes_no_ids(model)
        self.open_suffix, self.closed_suffix = self._suffixes()
        self.lookahead_tokens = len(self.open_suffix) + 1
        self.tokens_read = 0

    def _suffixes(self) -> tuple[list[int], list[int]]:
        """The tokens that end the solution's turn and ask the question: after an unfinished row, and after a
        row that already ended its turn (its last token is an end of sequence)."""
        m = self.model
        if not m.tokenizer.chat_template:
            text = _answer_now(m, f"\n\nuser: {SELF_JUDGE_QUESTION}\nassistant: ")
            return list(m.encode(text)), list(m.encode(text.lstrip("\n")))
        mark = "\x1eSOLUTION\x1e"
        messages = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": mark},
                    {"role": "user", "content": SELF_JUDGE_QUESTION}]
        text = m.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                               enable_thinking=False)
        suffix = _answer_now(m, text[text.index(mark) + len(mark) :])
        ids = list(m.encode(suffix))
        return ids, ids[1:] if ids and ids[0] in m.eos_ids else ids

    @torch.inference_mode()
    def score_rows(self, engine, rows: Sequence[int]) -> list[Tensor]:
        """One [1] tensor per row; NaN for a row with no room left for the question."""
        out: list[Tensor] = [torch.tensor([float("nan")]) for _ in rows]
        cap = engine.cache.capacity
        fits, suffixes = [], []
        for i, r in enumerate(rows):
            h = engine.tokens(r)
            s = self.closed_suffix if h[-1] in self.model.eos_ids else self.open_suffix
            if len(h) + len(s) <= cap:
                fits.append(i)
                suffixes.append(s)
        if fits:
            p = p_yes(engine.peek(torch.tensor([rows[i] for i in fits]), suffixes), self.yes, self.no)
            for k, i in enumerate(fits):
                out[i] = p[k : k + 1]
            self.tokens_read += sum(len(s) + 1 for s in suffixes)
        return out


class LLMJudge:
    step_separator = "\n\n"
    trained = False

    def __init__(self, model, *, batch_size: int = 8) -> None:
        self.model, self.batch_size = model, batch_size
        self.yes, self.no = yes_no_ids(model)
        self.tokens_read = 0

    def prompt(self, item: StepSequence) -> list[int]:
        m = self.model
        content = JUDGE_PROMPT.format(problem=item.problem, steps="\n\n".join(item.steps) or "(nothing yet)")
        messages = [{"role": "user", "content": content}]
        if m.tokenizer.chat_template:
            text = m.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                   enable_thinking=False)
        else:
            text = f"user: {content}\nassistant: "
        return list(m.encode(_answer_now(m, text)))[-(m.context_length - 1) :]

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
            p = p_yes(backend(x, cache, torch.arange(len(encoded)), logits_at=at).logits, self.yes, self.no)
            out.extend(p[b : b + 1] for b in range(len(encoded)))
            self.tokens_read += sum(len(e) for e in encoded)
        return out
