"""Thinking-budget control (s1 budget forcing) as a typed state and a pure transition.

Terms: *thinking tokens* are tokens the model samples before the end of thinking (the close marker, or the
forced close); *forced tokens* are injected (forcing string, "Wait"); *answer tokens* are sampled after the
end of thinking. Invariant: thinking tokens <= max_thinking_tokens. When the budget is spent, or the model
emits EOS while still thinking, the profile's forcing string is injected, so an answer phase always follows;
EOS is banned until the answer has visible text.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import Tensor

from reasonbudget.engine.controllers import KEEP, Action, Controller, MarkerDetector
from reasonbudget.types import TokenIds

Event = Literal["token", "close", "eos"]
Decision = Literal["keep", "keep_then_close", "close_instead", "wait_instead", "stop"]


@dataclass(frozen=True, kw_only=True)
class BudgetConfig:
    max_thinking_tokens: int | None = None
    """Hard cap on thinking tokens; None = unlimited (plain chain of thought)."""
    min_thinking_tokens: int = 0
    """Below this, an attempt to end thinking is replaced by "Wait" (s1's budget extension)."""
    max_waits: int = 4
    """At most this many "Wait" extensions per row (s1's num_ignore)."""
    max_answer_tokens: int = 256
    """The answer phase stops after this many tokens."""

    def __post_init__(self) -> None:
        if self.max_thinking_tokens is not None and self.max_thinking_tokens < 1:
            raise ValueError(f"max_thinking_tokens={self.max_thinking_tokens}: must be >= 1 (or None)")
        if self.min_thinking_tokens < 0:
            raise ValueError(f"min_thinking_tokens={self.min_thinking_tokens}: must be >= 0")
        if self.max_thinking_tokens is not None and self.min_thinking_tokens > self.max_thinking_tokens:
            raise ValueError("min_thinking_tokens must not exceed max_thinking_tokens")
        if self.max_waits < 0 or self.max_answer_tokens < 1:
            raise ValueError("max_waits must be >= 0 and max_answer_tokens >= 1")


@dataclass(frozen=True, slots=True)
class BudgetState:
    phase: Literal["thinking", "answer"] = "thinking"
    thinking_tokens: int = 0
    answer_tokens: int = 0
    waits: int = 0


def step(state: BudgetState, event: Event, cfg: BudgetConfig) -> tuple[BudgetState, Decision]:
    """Transition on one *sampled* token. `close`: the token completes the think-close marker."""
    if state.phase == "answer":
        n = state.answer_tokens + 1
        return replace(state, answer_tokens=n), "stop" if event == "eos" or n >= cfg.max_answer_tokens else "keep"
    if event != "token":
        if state.thinking_tokens < cfg.min_thinking_tokens and state.waits < cfg.max_waits:
            return replace(state, waits=state.waits + 1), "wait_instead"
        # a natural close ends thinking; EOS inside thinking is replaced by the forced close
        return replace(state, phase="answer"), "keep" if event == "close" else "close_instead"
    n = state.thinking_tokens + 1
    if cfg.max_thinking_tokens is not None and n >= cfg.max_thinking_tokens:
        return replace(state, thinking_tokens=n, phase="answer"), "keep_then_close"
    return replace(state, thinking_tokens=n), "keep"


@dataclass(frozen=True)
class ProfileTokens:
    """The reasoning profile's strings, tokenized once per model."""

    close: str
    close_ids: TokenIds
    forcing_ids: TokenIds
    wait_ids: TokenIds
    eos_ids: frozenset[int]
    answer_stop: str | None = None


class BudgetController(Controller):
    def __init__(self, cfg: BudgetConfig, tokens: ProfileTokens, decode: Callable[[list[int]], str],
                 *, start_in_answer: bool = False) -> None:
        self.cfg, self.tokens, self.decode = cfg, tokens, decode
        self.state = BudgetState(phase="answer") if start_in_answer else BudgetState()
        self.detector = MarkerDetector(tokens.close, decode, tokens.close_ids)
        self.forced = 0
        self.forced_close = False
        self.answer_has_text = False
        self.answer_has_value = False
        self._eos = torch.tensor(sorted(tokens.eos_ids), dtype=torch.long)

    def process_logits(self, logits: Tensor, hidden: Mapping[int, Tensor] | None) -> Tensor:
        if self.state.phase == "answer" and not self.answer_has_text:
            if self._eos.device != logits.device:  # once: the logits live on the model's device
                self._eos = self._eos.to(logits.device)
            logits = logits.index_fill(0, self._eos, float("-inf"))  # never an empty answer
        return logits

    def on_token(self, token: int, forced: bool) -> Action:
        if forced:
            self.forced += 1
            self.detector.push(token)
            return KEEP
        is_eos = token in self.tokens.eos_ids
        span = 0 if is_eos or self.state.phase == "answer" else self.detector.push(token)
        event: Event = "eos" if is_eos else "close" if span else "token"
        self.state, decision = step(self.state, event, self.cfg)
        if self.state.phase == "answer" and decision == "keep" and event == "token":
            text = self.decode([token])
            if self.answer_has_value and self.tokens.answer_stop and self.tokens.answer_stop in text:
                return Action(stop=True)
            self.answer_has_text = self.answer_has_text or bool(text.strip())
            # the answer line ends once it holds a letter or digit: markdown around the marker
            # ("**Final answer:**" then a newline) is not an answer yet
            self.answer_has_value = self.answer_has_value or any(c.isalnum() for c in text)
        if decision in ("keep_then_close", "close_instead"):
            self.forced_close = True
        if decision == "keep_then_close":
            return Action(force=self.tokens.forcing_ids)
        if decision == "close_instead":
            return Action(force=self.tokens.forcing_ids, replace=True)
        if decision == "wait_instead":
            # drop the marker tokens already emitted; they were counted as thinking
            back = max(span - 1, 0)
            self.detector.pop(span)
            self.state = replace(self.state, thinking_tokens=self.state.thinking_tokens - back)
            return Action(force=self.tokens.wait_ids, replace=True, rollback=back)
        return Action(stop=True) if decision == "stop" else KEEP
