"""TALE's text layer (Han et al. 2025, arXiv 2412.18547), as pure functions: the budget prompt, the
zero-shot budget-estimation prompt and the parsing of its answer (TALE-EP), and the optimal-budget search.

The search is the reference's one-sided halving: from the token count of a correct vanilla answer, halve the
budget while the answer stays correct and (by default) its length keeps falling; the cost condition stops
before "token elasticity", where a model given too small a budget writes more, not less. A true binary
search over the interval after the first failure is an option.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

COT_TRIGGER = "Let's think step by step"
LAYOUTS = ("reference", "ours")
"""reference: the reference code's wording (GSM8K family: "Q: {question}", the [[answer]] format instruction,
the trigger on its own line; its estimation instruction word for word); ours: the question as asked, the
trigger after it, a shorter estimation instruction (what this library used before)."""
ANSWER_FORMAT = "Please Give the response by strictly following this format: [[answer]],for example: Answer: [[50]]."
ESTIMATE_INSTRUCTIONS = {
    "reference": ("Task: Analyze the given question and estimate the minimum number of tokens required to generate "
                  "a complete and accurate response. Please Give the response by strictly following this format: "
                  "[[budget]],for example: Budget: [[12]]."),
    "ours": ("Task: Analyze the given question and estimate the minimum number of tokens needed to produce a "
             "complete and accurate answer. Reply only with the number in the form [[budget]], for example: "
             "Budget: [[12]]."),
}
_ESTIMATE = re.compile(r"\[\[\s*(\d+)\s*\]\]")


def _check(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"TALE prompt layout {layout!r}: accepted are {', '.join(LAYOUTS)}")


def budget_prompt(question: str, budget: int | None, layout: str = "reference") -> str:
    """The question with TALE's trigger; with a budget, "...and use less than {budget} tokens:"."""
    _check(layout)
    trigger = f"{COT_TRIGGER} and use less than {budget} tokens:" if budget is not None else f"{COT_TRIGGER}:"
    if layout == "ours":
        return f"{question.rstrip()}\n{trigger}"
    return f"Q: {question.strip()}\n{ANSWER_FORMAT}\n{trigger}\n"


def estimate_prompt(question: str, layout: str = "reference") -> str:
    _check(layout)
    return f"{ESTIMATE_INSTRUCTIONS[layout]}\n\nBelow is the question:\n\nQuestion: \"{question.strip()}\""


def parse_estimate(text: str, *, minimum: int = 1, maximum: int | None = None) -> int | None:
    """The first [[n]] in the estimator's reply, clamped to [minimum, maximum]; None when there is none
    (the reference then prompts "use less than -1 tokens"; callers fall back to the vanilla prompt)."""
    m = _ESTIMATE.search(text)
    if m is None:
        return None
    value = max(int(m.group(1)), minimum)
    return min(value, maximum) if maximum is not None else value


@dataclass(frozen=True)
class Attempt:
    budget: int
    correct: bool
    tokens: int


@dataclass(frozen=True)
class SearchResult:
    budget: int
    """The smallest feasible budget found (the vanilla length when nothing smaller worked)."""
    tokens: int
    """Output tokens of the answer written under that budget."""
    attempts: tuple[Attempt, ...]
    vanilla_tokens: int = 0


class BudgetSearch:
    """One problem's search as a state machine, so that many searches can run in lockstep, one engine batch
    per round: `proposal` is the next budget to try (None when done), `record` takes its outcome."""

    def __init__(self, vanilla_tokens: int, *, require_shorter: bool = True, binary: bool = False) -> None:
        if vanilla_tokens < 1:
            raise ValueError(f"vanilla_tokens={vanilla_tokens}: a correct vanilla answer has at least one token")
        self.vanilla_tokens = vanilla_tokens
        self.best, self.best_tokens, self.low = vanilla_tokens, vanilla_tokens, 0  # low: largest known infeasible
        self.require_shorter, self.binary, self.halving = require_shorter, binary, True
        self.attempts: list[Attempt] = []

    @property
    def proposal(self) -> int | None:
        if self.halving:
            return self.best // 2 if self.best // 2 >= 1 else None
        return (self.low + self.best) // 2 if self.binary and self.best - self.low > 1 else None

    def record(self, correct: bool, tokens: int) -> None:
        budget = self.proposal
        if budget is None:
            raise RuntimeError("the search is finished")
        self.attempts.append(Attempt(budget, correct, tokens))
        if correct and (tokens < self.best_tokens or not self.require_shorter):
            self.best, self.best_tokens = budget, tokens
        else:
            self.low, self.halving = budget, False

    def result(self) -> SearchResult:
        return SearchResult(self.best, self.best_tokens, tuple(self.attempts), self.vanilla_tokens)


def search_budget(solve: Callable[[int], tuple[bool, int]], vanilla_tokens: int, *, require_shorter: bool = True,
                  binary: bool = False) -> SearchResult:
    """Smallest budget that keeps an answer correct. `solve(budget) -> (correct, output tokens)`; the vanilla
    answer (`vanilla_tokens` long) must already be correct. Halving (reference) or, with `binary`, bisection
    between the last feasible and the first infeasible budget."""
    search = BudgetSearch(vanilla_tokens, require_shorter=require_shorter, binary=binary)
    while (budget := search.proposal) is not None:
        search.record(*solve(budget))
    return search.result()
