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

Event = Literal["token", "close", "eos", "wrapup_end"]
Decision = Literal["keep", "keep_then_close", "close_instead", "wait_instead", "stop", "keep_then_wrapup",
                   "keep_then_close_marker", "marker_instead"]

WRAPUP = "**Final Answer**"
"""What the Budget Guidance paper's budget forcing writes at the budget (after a newline), inside thinking."""
WRAPUP_STOPS = ("\n\n", "Wait")
"""Where that wrap-up ends (besides the close marker): its stop strings, left out of the text as vLLM does."""


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
    wrapup: bool = False
    """At the budget, write "\\n**Final Answer**" instead of the forcing string and let the model go on (at most
    `max_thinking_tokens` more tokens, counted as answer tokens) until it closes thinking, writes a blank line
    or "Wait"; then close thinking with the bare marker and answer. The budget-forcing baseline of the Budget
    Guidance paper (its code's `force_final_answer`); thinking tokens still never exceed the budget."""

    def __post_init__(self) -> None:
        if self.max_thinking_tokens is not None and self.max_thinking_tokens < 1:
            raise ValueError(f"max_thinking_tokens={self.max_thinking_tokens}: must be >= 1 (or None)")
        if self.min_thinking_tokens < 0:
            raise ValueError(f"min_thinking_tokens={self.min_thinking_tokens}: must be >= 0")
        if self.max_thinking_tokens is not None and self.min_thinking_tokens > self.max_thinking_tokens:
            raise ValueError("min_thinking_tokens must not exceed max_thinking_tokens")
        if self.max_waits < 0 or self.max_answer_tokens < 1:
            raise ValueError("max_waits must be >= 0 and max_answer_tokens >= 1")
        if self.wrapup and self.max_thinking_tokens is None:
            raise ValueError("wrapup needs a thinking budget (max_thinking_tokens)")


@dataclass(frozen=True, slots=True)
class BudgetState:
    phase: Literal["thinking", "wrapup", "answer"] = "thinking"
    thinking_tokens: int = 0
    answer_tokens: int = 0
    waits: int = 0
    wrapup_tokens: int = 0
    """Sampled after the forced "**Final Answer**", before the close (`BudgetConfig.wrapup`)."""


def step(state: BudgetState, event: Event, cfg: BudgetConfig) -> tuple[BudgetState, Decision]:
    """Transition on one *sampled* token. `close`: the token completes the think-close marker."""
    if state.phase == "answer":
        n = state.answer_tokens + 1
        return replace(state, answer_tokens=n), "stop" if event == "eos" or n >= cfg.max_answer_tokens else "keep"
    if state.phase == "wrapup":
        if event == "close":
            return replace(state, phase="answer"), "keep"
        if event == "eos":
            return replace(state, phase="answer"), "marker_instead"
        n = state.wrapup_tokens + 1
        if event == "wrapup_end":
            return replace(state, wrapup_tokens=n, phase="answer"), "marker_instead"
        if n >= (cfg.max_thinking_tokens or 1):
            return replace(state, wrapup_tokens=n, phase="answer"), "keep_then_close_marker"
        return replace(state, wrapup_tokens=n), "keep"
    if event != "token":
        if state.thinking_tokens < cfg.min_thinking_tokens and state.waits < cfg.max_waits:
            return replace(state, waits=state.waits + 1), "wait_instead"
        # a natural close ends thinking; EOS inside thinking is replaced by the forced close
        return replace(state, phase="answer"), "keep" if event == "close" else "close_instead"
    n = state.thinking_tokens + 1
    if cfg.max_thinking_tokens is not None and n >= cfg.max_thinking_tokens:
        if cfg.wrapup:
            return replace(state, thinking_tokens=n, phase="wrapup"), "keep_then_wrapup"
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
    wrapup_ids: TokenIds = ()
    """WRAPUP after a newline; `wrapup_ids[1:]`-style variants are chosen by the controller."""
    wrapup_bare_ids: TokenIds = ()
    """WRAPUP alone (the text already ends with a newline)."""
    wrapup_stop_ids: tuple[TokenIds, ...] = ()
    """WRAPUP_STOPS tokenized."""


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
        self.wrapup_stops = ([MarkerDetector(m, decode, ids, inside_tokens=True)
                              for m, ids in zip(WRAPUP_STOPS, tokens.wrapup_stop_ids)] if cfg.wrapup else [])
        self.last_text = ""
        self.tokens_before_close = 0
        """Tokens emitted before thinking ended, forced ones included, the close marker not (the paper's count)."""

    def process_logits(self, logits: Tensor, hidden: Mapping[int, Tensor] | None) -> Tensor:
        if self.state.phase == "answer" and not self.answer_has_text:
            if self._eos.device != logits.device:  # once: the logits live on the model's device
                self._eos = self._eos.to(logits.device)
            logits = logits.index_fill(0, self._eos, float("-inf"))  # never an empty answer
        return logits

    def on_token(self, token: int, forced: bool) -> Action:
        if self.state.phase != "answer":
            self.tokens_before_close += 1
        if forced:
            self.forced += 1
            self.detector.push(token)
            return KEEP
        is_eos = token in self.tokens.eos_ids
        span = 0 if is_eos or self.state.phase == "answer" else self.detector.push(token)
        stop = (max(d.push(token) for d in self.wrapup_stops)
                if self.state.phase == "wrapup" and not is_eos and not span else 0)
        event: Event = "eos" if is_eos else "close" if span else "wrapup_end" if stop else "token"
        if self.cfg.wrapup and self.state.phase == "thinking" and not is_eos:
            self.last_text = self.decode([token])
        self.state, decision = step(self.state, event, self.cfg)
        if event == "close":
            self.tokens_before_close -= span
        if self.state.phase == "answer" and decision == "keep" and event == "token":
            text = self.decode([token])
            if self.answer_has_value and self.tokens.answer_stop and self.tokens.answer_stop in text:
                return Action(stop=True)
            self.answer_has_text = self.answer_has_text or bool(text.strip())
            # the answer line ends once it holds a letter or digit: markdown around the marker
            # ("**Final answer:**" then a newline) is not an answer yet
            self.answer_has_value = self.answer_has_value or any(c.isalnum() for c in text)
        if decision in ("keep_then_close", "close_instead", "keep_then_close_marker", "marker_instead"):
            self.forced_close = True
        if decision == "keep_then_close":
            return Action(force=self.tokens.forcing_ids)
        if decision == "keep_then_wrapup":  # a newline, unless the text already ends with one, then WRAPUP
            bare = self.last_text.endswith("\n")
            return Action(force=self.tokens.wrapup_bare_ids if bare else self.tokens.wrapup_ids)
        if decision == "keep_then_close_marker":
            return Action(force=self.tokens.close_ids)
        if decision == "marker_instead":  # drop the stop string (vLLM leaves it out) or the EOS, then close
            back = max(stop - 1, 0)
            self.state = replace(self.state, wrapup_tokens=max(self.state.wrapup_tokens - stop, 0))
            self.tokens_before_close -= max(stop, 1)
            return self._replace_with(self.tokens.close_ids, rollback=back)
        if decision == "close_instead":
            self.tokens_before_close -= 1
            return self._replace_with(self.tokens.forcing_ids)
        if decision == "wait_instead":
            # drop the marker tokens already emitted; they were counted as thinking
            back = max(span - 1, 0)
            self.tokens_before_close -= back + 1 - span  # the marker was already taken off
            self.detector.pop(span)
            self.state = replace(self.state, thinking_tokens=self.state.thinking_tokens - back)
            self.tokens_before_close += 1  # the first forced token takes the dropped one's place
            return self._replace_with(self.tokens.wait_ids, rollback=back)
        return Action(stop=True) if decision == "stop" else KEEP

    def _replace_with(self, force: TokenIds, *, rollback: int = 0) -> Action:
        """The token just produced is replaced by force[0], which the engine does not hand back through
        `on_token` (only the rest of `force` comes back, as forced tokens): count it here."""
        self.forced += 1
        self.detector.push(force[0])
        return Action(force=force, replace=True, rollback=rollback)
