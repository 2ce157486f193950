"""Shared value types: token ids, usage accounting and method results.

Every method and backend reports the same `Usage`, so budgets can always be stated in one of its units.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

TokenIds = tuple[int, ...]


class PromptIds(tuple):
    """A prompt's token ids (a plain tuple of ints everywhere) that also remember the question they were built
    from, for methods that rewrite the question itself (TALE's budget prompt)."""

    question: str

    def __new__(cls, ids, question: str) -> "PromptIds":
        self = super().__new__(cls, ids)
        self.question = question
        return self

    def __getnewargs__(self) -> tuple:  # pickling (Ray workers) keeps the question
        return tuple(self), self.question


class PromptText(str):
    """A remote backend's prompt (chat-templated text) that also remembers its question, like `PromptIds`."""

    question: str

    def __new__(cls, text: str, question: str) -> "PromptText":
        self = super().__new__(cls, text)
        self.question = question
        return self

    def __getnewargs__(self) -> tuple:
        return str(self), self.question


def _merge_counts(a: Mapping[str, int], b: Mapping[str, int]) -> dict[str, int]:
    out = dict(a)
    for k, v in b.items():
        out[k] = out.get(k, 0) + v
    return out


@dataclass(frozen=True)
class StepSequence:
    """A partial solution as a PRM reads it: the problem statement and the steps written so far."""

    problem: str
    steps: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class Usage:
    """What one request cost. Token counts are per request (all its rows together)."""

    prompt_tokens: int = 0
    thinking_tokens: int = 0
    """Tokens the model generated while thinking (never more than the thinking budget)."""
    forced_tokens: int = 0
    """Tokens injected by a controller (forcing string, "Wait"), not sampled."""
    answer_tokens: int = 0
    """Tokens generated after the end of thinking."""
    tokens_by_model: Mapping[str, int] = field(default_factory=dict)
    """Tokens processed (prefill + decode) per model name."""
    forward_passes_by_model: Mapping[str, int] = field(default_factory=dict)
    drafted_tokens: int = 0
    accepted_tokens: int = 0
    prm_calls: int = 0
    prm_tokens: int = 0
    wall_seconds: float = 0.0
    energy_flops: float = 0.0
    """Energy proxy: 2 x parameters x tokens processed, summed over models."""

    @property
    def completion_tokens(self) -> int:
        return self.thinking_tokens + self.forced_tokens + self.answer_tokens

    def __add__(self, other: Usage) -> Usage:
        kw: dict[str, Any] = {}
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            kw[f.name] = _merge_counts(a, b) if isinstance(a, Mapping) else a + b
        return Usage(**kw)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: (dict(v) if isinstance(v := getattr(self, f.name), Mapping) else v) for f in fields(self)}
        d["completion_tokens"] = self.completion_tokens
        return d


@dataclass(frozen=True, kw_only=True)
class MethodResult:
    """One problem's outcome. `tokens` are the generated ids after the prompt (thinking, forced, answer)."""

    tokens: TokenIds
    thinking: str
    answer: str
    usage: Usage
    finish_reason: str = "stop"
    trace: Mapping[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return self.thinking + self.answer
