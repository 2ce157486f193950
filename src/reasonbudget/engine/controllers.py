"""Per-row controllers: they see a row's logits (and hidden states, on request) before sampling and each
emitted token after it, and answer with an `Action`. Budget forcing, budget guidance and stop-at-step are
controllers, so the decode loop stays one loop.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from torch import Tensor

from reasonbudget.types import MethodResult, TokenIds


@dataclass(frozen=True, slots=True)
class Action:
    force: TokenIds = ()
    """Tokens the row must emit next, before sampling resumes."""
    replace: bool = False
    """Drop the token just produced; force[0] takes its place."""
    rollback: int = 0
    """With replace: also drop this many earlier tokens of the row (the KV cache is truncated)."""
    stop: bool = False
    """Finish the row after this token."""


KEEP = Action()


class Controller:
    """Base class: a controller that changes nothing."""

    hidden_layers: tuple[int, ...] = ()

    def process_logits(self, logits: Tensor, hidden: Mapping[int, Tensor] | None) -> Tensor:
        """logits [V] of this row (float32) -> modified logits [V]. hidden: layer -> [d]."""
        return logits

    def on_token(self, token: int, forced: bool) -> Action:
        return KEEP

    def on_edit(self, dropped: int, inserted: TokenIds) -> None:
        """The row's last `dropped` tokens (the newest included) were replaced by `inserted` (an `Action`
        with replace): controllers that keep their own copy of the row's tokens update it here."""

    def batched_work(self) -> Sequence[tuple["BatchedWork", "Controller"]]:
        """Work this row wants done for the coming step together with other rows, with the controller that
        receives its share (see `BatchedWork`)."""
        return ()


class Observer(Controller):
    """Watches one prompt of a method's run for its caller (the server streams, caps and cancels through it).

    Methods that decode one row per prompt chain it onto that row (it sees every token, in order, and may stop
    the row); every method calls `on_result` once the prompt's result is final (possibly before the other
    prompts'), reports `on_progress` between search rounds, and stops work on a prompt whose observer is
    `cancelled`. The base class observes nothing."""

    @property
    def cancelled(self) -> bool:
        return False

    def on_result(self, result: MethodResult) -> None:
        """The prompt's final result (the method may still be working on other prompts)."""

    def on_progress(self, event: Mapping[str, object]) -> None:
        """Search progress of this prompt (round, live candidates, best text so far)."""


class BatchedWork:
    """Per-step work shared by many rows (a predictor forward, say): before the rows' `process_logits`, the
    engine calls `run` once per distinct object with every row that asked, as (receiving controller, that
    row's hidden states) pairs."""

    def run(self, rows: Sequence[tuple[Controller, Mapping[int, Tensor]]]) -> None:
        raise NotImplementedError


class MarkerDetector:
    """Tells when a text marker is completed by the newest token, decoding only a short tail of tokens."""

    def __init__(self, marker: str, decode: Callable[[list[int]], str], marker_ids: TokenIds, *,
                 inside_tokens: bool = False) -> None:
        """inside_tokens: the marker may also be part of a longer token ("\n\n" in ".\n\n"), so match on
        text even when it is a single token itself."""
        self.marker, self.decode = marker, decode
        self.single_id = marker_ids[0] if len(marker_ids) == 1 and not inside_tokens else None
        self.window = 2 * len(marker_ids) + 4
        self.tail: list[int] = []

    def push(self, token: int) -> int:
        """Feed a token; returns 0 if the marker is not completed, else how many tail tokens it spans."""
        self.tail = (self.tail + [token])[-self.window :]
        if self.single_id is not None:
            return int(token == self.single_id)
        if self.marker not in self.decode(self.tail) or self.marker in self.decode(self.tail[:-1]):
            return 0
        for n in range(1, len(self.tail) + 1):  # the shortest suffix that contains the marker
            if self.marker in self.decode(self.tail[-n:]):
                return n
        return len(self.tail)

    def pop(self, n: int) -> None:
        del self.tail[len(self.tail) - n :]


class StopOnText(Controller):
    """Finishes the row once any of `stops` has been generated (stop strings, the step delimiter)."""

    def __init__(self, stops: Sequence[str], decode: Callable[[list[int]], str],
                 encode: Callable[[str], TokenIds]) -> None:
        self.detectors = [MarkerDetector(s, decode, encode(s), inside_tokens=True) for s in stops]

    def on_token(self, token: int, forced: bool) -> Action:
        hit = [d.push(token) for d in self.detectors]
        return Action(stop=True) if any(hit) else KEEP


class Chain(Controller):
    """Several controllers on one row: logits pass through each; the first non-trivial action wins."""

    def __init__(self, *controllers: Controller) -> None:
        self.controllers = controllers
        self.hidden_layers = tuple(sorted({i for c in controllers for i in c.hidden_layers}))

    def process_logits(self, logits: Tensor, hidden: Mapping[int, Tensor] | None) -> Tensor:
        for c in self.controllers:
            logits = c.process_logits(logits, hidden)
        return logits

    def on_token(self, token: int, forced: bool) -> Action:
        actions = [c.on_token(token, forced) for c in self.controllers]
        return next((a for a in actions if a != KEEP), KEEP)

    def on_edit(self, dropped: int, inserted: TokenIds) -> None:
        for c in self.controllers:
            c.on_edit(dropped, inserted)

    def batched_work(self) -> Sequence[tuple[BatchedWork, Controller]]:
        return [w for c in self.controllers for w in c.batched_work()]


class LogprobRecorder(Controller):
    """Records each emitted token's log-probability under the model (before sampling settings) and the `top`
    most likely alternatives: OpenAI's `logprobs` of a completion."""

    def __init__(self, top: int) -> None:
        self.top = top
        self.pending: Tensor | None = None
        self.tokens: list[int] = []
        self.token_logprobs: list[float] = []
        self.top_logprobs: list[list[tuple[int, float]]] = []

    def process_logits(self, logits: Tensor, hidden: Mapping[int, Tensor] | None) -> Tensor:
        self.pending = logits.float().log_softmax(-1)  # [V]
        return logits

    def on_token(self, token: int, forced: bool) -> Action:
        lp, self.pending = self.pending, None
        self.tokens.append(token)
        self.token_logprobs.append(float(lp[token]) if lp is not None else 0.0)
        if lp is not None and self.top:
            best = lp.topk(self.top)
            self.top_logprobs.append(list(zip(best.indices.tolist(), best.values.tolist())))
        else:
            self.top_logprobs.append([])
        return KEEP

    def openai_format(self, decode: Callable[[list[int]], str]) -> dict:
        texts = [decode([t]) for t in self.tokens]
        offsets = [sum(len(x) for x in texts[:i]) for i in range(len(texts))]
        top = [{decode([t]): v for t, v in alts} for alts in self.top_logprobs]
        return {"tokens": texts, "token_logprobs": self.token_logprobs, "top_logprobs": top, "text_offset": offsets}
