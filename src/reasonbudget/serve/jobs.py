"""A request as the engine thread sees it (`Job`), and the controller that streams, caps and cancels its row.

The engine runs on one thread; requests wait on the event loop. A job's events cross over with
`loop.call_soon_threadsafe`, so the engine never blocks on a slow client.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from reasonbudget.engine.controllers import KEEP, Action, Controller
from reasonbudget.engine.sampling import SamplingConfig
from reasonbudget.methods.base import takes_samples
from reasonbudget.types import MethodResult, TokenIds


@dataclass(eq=False)
class Job:
    prompt: TokenIds
    max_tokens: int
    """Cap on generated tokens (thinking, forced and answer together): the request's max_tokens."""
    sampling: SamplingConfig
    seed: int
    method: str | None = None
    """Canonical method spec ("name:key=value,..."); None = a raw text continuation."""
    budget: int | None = None
    stop: tuple[str, ...] = ()
    starts_in_answer: bool = False
    stream: bool = False
    loop: asyncio.AbstractEventLoop | None = None
    events: asyncio.Queue | None = None
    """Streaming: ("reasoning" | "content", text) items, then ("done", None)."""
    cancelled: threading.Event = field(default_factory=threading.Event)
    future: asyncio.Future | None = None

    @property
    def method_name(self) -> str | None:
        return self.method.split(":")[0] if self.method is not None else None

    def group_key(self, per_row_budget_methods: frozenset[str]) -> tuple[Any, ...]:
        """Jobs with equal keys run in one engine batch (methods that take a budget per row mix budgets)."""
        budget = None if self.method_name in per_row_budget_methods else self.budget
        # Search methods take max_tokens into their config (one per batch); other rows are capped one by one.
        limit = self.max_tokens if self.method_name is not None and takes_samples(self.method_name) else None
        return (self.method, budget, limit, self.sampling, self.stop if self.method is None else ())

    def emit(self, kind: str, text: str) -> None:
        if self.events is not None and self.loop is not None and text:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, text))

    def finish(self, outcome: MethodResult | BaseException) -> None:
        """Resolve the waiting request (called on the engine thread)."""
        if self.loop is None or self.future is None:
            return

        def resolve() -> None:
            if self.future.done():
                return
            if isinstance(outcome, BaseException):
                self.future.set_exception(outcome)
            else:
                self.future.set_result(outcome)
            if self.events is not None:
                self.events.put_nowait(("done", None))

        self.loop.call_soon_threadsafe(resolve)


class Cancelled(Exception):
    """The client went away before its job ran."""


def split_stream_text(text: str, close: str, in_answer: bool, final: bool) -> tuple[str, str]:
    """(thinking, answer) of raw generated text that may be cut anywhere: until `close` shows up, a tail that
    could be the start of `close` is held back (unless `final`)."""
    if in_answer:
        return "", text
    if close in text:
        thinking, answer = text.split(close, 1)
        return thinking, answer
    if final:
        return text, ""
    keep = len(text)
    for k in range(min(len(close) - 1, len(text)), 0, -1):
        if close.startswith(text[-k:]):
            keep = len(text) - k
            break
    return text[:keep], ""


class RowWatcher(Controller):
    """Chained onto a job's row: stops it at the job's max_tokens or when the client leaves, and streams its
    text. Streaming holds back `holdback` tokens, which a budget controller may still roll back."""

    def __init__(self, job: Job, decode: Callable[[list[int]], str], eos_ids: frozenset[int], close: str,
                 holdback: int, early: bool = False) -> None:
        """early: answer the request as soon as its row is done (the method's result is the row's result)."""
        self.job, self.decode, self.eos_ids, self.close = job, decode, eos_ids, close
        self.holdback, self.early = holdback, early
        self.tokens: list[int] = []
        self.capped = False
        self.sent = [0, 0]  # characters of thinking and answer already streamed

    def on_token(self, token: int, forced: bool) -> Action:
        self.tokens.append(token)
        if self.job.stream:
            self.flush(final=False)
        if self.job.cancelled.is_set():
            return Action(stop=True)
        if len(self.tokens) >= self.job.max_tokens:
            self.capped = True
            return Action(stop=True)
        return KEEP

    def on_result(self, result: MethodResult) -> None:
        """The row is done while others still decode: rows leave the batch as they finish."""
        if self.early:
            self.settle(result)

    def settle(self, result: MethodResult) -> None:
        if self.job.stream:
            self.flush(final=True)
        self.job.finish(self.finish_reason(result))

    def finish_reason(self, result: MethodResult) -> MethodResult:
        reason = "cancelled" if self.job.cancelled.is_set() else "length" if self.capped else None
        if reason is None:
            return result
        return MethodResult(tokens=result.tokens, thinking=result.thinking, answer=result.answer,
                            usage=result.usage, finish_reason=reason, trace=result.trace)

    def on_edit(self, dropped: int, inserted: TokenIds) -> None:
        del self.tokens[len(self.tokens) - dropped :]
        self.tokens.extend(inserted)

    def flush(self, final: bool) -> None:
        upto = len(self.tokens) if final else len(self.tokens) - self.holdback
        text = self.decode([t for t in self.tokens[: max(upto, 0)] if t not in self.eos_ids])
        if not final and text.endswith("\ufffd"):  # a character cut in the middle of its bytes
            return
        parts = split_stream_text(text, self.close, self.job.starts_in_answer, final)
        for i, (kind, part) in enumerate(zip(("reasoning", "content"), parts)):
            if len(part) > self.sent[i]:
                self.job.emit(kind, part[self.sent[i] :])
                self.sent[i] = len(part)
