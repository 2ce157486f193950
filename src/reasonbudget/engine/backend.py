"""The backend protocol, by level. Every method is written once against the lowest level it needs and runs on
every backend that offers it:

    text    budgeted generation: think under a `BudgetConfig`, then answer (completions with stop strings)
    steps   extend many partial solutions by one reasoning step each (`reasonbudget.steps`)
    tokens  token logits, hidden states, KV fork / rollback / peek: the in-process `Engine` only

The in-process `Engine` offers all three; a remote OpenAI-compatible server (`remote:URL#MODEL`) offers text
and steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Protocol

from reasonbudget.engine.budget import BudgetConfig
from reasonbudget.engine.controllers import Observer
from reasonbudget.engine.sampling import SamplingConfig
from reasonbudget.models.profiles import ReasoningProfile
from reasonbudget.types import MethodResult

Level = Literal["text", "steps", "tokens"]
LEVELS: tuple[Level, ...] = ("text", "steps", "tokens")
LEVEL_NEEDS = {"text": "text completion", "steps": "step extension of partial solutions",
               "tokens": "token logits, hidden states and KV-cache fork/rollback"}


class Backend(Protocol):
    name: str
    profile: ReasoningProfile
    levels: frozenset[str]

    def prompt(self, question: str) -> Sequence[Any]:
        """The chat-templated prompt of a question (it remembers the question: `.question`)."""

    def generate(self, prompts: Sequence[Any], budgets: Sequence[BudgetConfig], sampling: SamplingConfig,
                 generator: Any, *, prefill_text: str = "",
                 observers: Sequence[Observer] | None = None) -> list[MethodResult]:
        """Think under budgets[i] (forced close when spent), then answer; one result per prompt."""


def check_level(backend: Backend, level: str, what: str) -> None:
    """One-line ValueError when `backend` lacks `level`, naming what is missing and who has it."""
    if level in backend.levels:
        return
    have = ", ".join(lv for lv in LEVELS if lv in backend.levels) or "none"
    raise ValueError(f"{what} needs {LEVEL_NEEDS[level]} (the {level!r} level), which {backend.name} does not "
                     f"offer (it offers: {have}); run it on the in-process engine (a local model), which has "
                     "every level")
