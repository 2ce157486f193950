"""A request as the engine thread sees it (`Job`), and the controller that streams, caps and cancels its row.

The engine runs on one thread; requests wait on the event loop. A job's events cross over with
`loop.call_soon_threadsafe`, so the engine never blocks on a slow client.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from reasonbudget.engine.controllers import KEEP, Action, Observer
from reasonbudget.engine.sampling import SamplingConfig
from reasonbudget.methods import METHODS, Capabilities
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
    logprobs: int | None = None
    """Plain continuations: record each token's log-probability and the top-N alternatives."""
    stream: bool = False
    loop: asyncio.AbstractEventLoop | None = None
    events: asyncio.Queue | None = None
    """Streaming: ("reasoning" | "content", text) items, then ("done", None)."""
    cancelled: threading.Event = field(default_factory=threading.Event)
    future: asyncio.Future | None = None
    answered: bool = False
    """Set on the engine thread once `finish` ran (a group that fails later does not run it again)."""

    @property
    def method_name(self) -> str | None:
        return self.method.split(":")[0] if self.method is not None else None

    @property
    def capabilities(self) -> Capabilities | None:
        return METHODS[self.method_name].capabilities if self.method_name is not None else None

    @property
    def rows(self) -> int:
        """KV-cache rows the job needs at once (N for search methods)."""
        caps = self.capabilities
        return (self.budget or 1) if caps is not None and caps.takes_samples else 1

    def group_key(self) -> tuple[Any, ...]:
        """Jobs with equal keys run in one engine batch (methods that take a budget per row mix budgets)."""
        caps = self.capabilities
        budget = None if caps is not None and caps.per_row_budgets else self.budget
        # Search methods take max_tokens into their config (one per batch); other rows are capped one by one.
        limit = self.max_tokens if caps is not None and caps.takes_samples else None
        return (self.method, budget, limit, self.sampling, self.stop if self.method is None else ())

    def emit(self, kind: str, text: str) -> None:
        if self.events is not None and self.loop is not None and text:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, text))

    def finish(self, outcome: MethodResult | BaseException) -> None:
        """Resolve the waiting request (called on the engine thread)."""
        self.answered = True
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


class RowWatcher(Observer):
    """A job's observer. Chained onto its row (methods that stream tokens): stops it at the job's max_tokens
    or when the client leaves, and streams its text, holding back `holdback` tokens, which a budget controller
    may still roll back. For methods that decode many rows per request (search), it streams progress events and
    the chosen text at the end, and tells the method that the client left (`cancelled`)."""

    def __init__(self, job: Job, decode: Callable[[list[int]], str], eos_ids: frozenset[int], close: str,
                 holdback: int) -> None:
        self.job, self.decode, self.eos_ids, self.close = job, decode, eos_ids, close
        self.holdback = holdback
        self.tokens: list[int] = []
        self.capped = False
        self.settled = False
        self.sent = [0, 0]  # characters of thinking and answer already streamed

    @property
    def cancelled(self) -> bool:
        return self.job.cancelled.is_set()

    def on_progress(self, event) -> None:
        if self.job.stream:
            self.job.emit("progress", json.dumps(dict(event)))

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
        """The request's result is final (possibly while other rows still decode): answer it now."""
        self.settle(result)

    def settle(self, result: MethodResult) -> None:
        if self.settled:
            return
        self.settled = True
        if self.job.stream:
            caps = self.job.capabilities
            if caps is None or caps.streams == "tokens":  # its row's tokens went out as they came
                self.flush(final=True)
            else:  # a method that streams at the end (search): the chosen text now
                self.job.emit("reasoning", result.thinking)
                self.job.emit("content", result.answer)
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
