"""OpenAI's Responses API (`POST /v1/responses`), as reasoning models and newer clients use it.

A request's `input` (a string, or message items whose content is a string or input_text parts) and
`instructions` (a system message) become a chat prompt; `max_output_tokens` caps thinking plus answer;
`reasoning: {effort}` and every thinking-budget alias of the chat endpoint set the budget. The response has
a `reasoning` output item (the thinking, as reasoning_text content) and a `message` item (the answer),
usage with `output_tokens_details.reasoning_tokens`, and status `incomplete` (reason max_output_tokens) when
the cap cut the answer. Streaming sends the Responses event sequence (`response.created`, output items and
content parts, `response.reasoning_text.delta`, `response.output_text.delta`, ..., `response.completed`).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from reasonbudget.serve.schema import ChatMessage, GenerationFields
from reasonbudget.serve.thinking import RequestError
from reasonbudget.types import MethodResult

_TEXT_PARTS = ("input_text", "output_text", "text")


class InputItem(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str = "message"
    role: Literal["system", "developer", "user", "assistant"] | None = None
    content: str | list[dict[str, Any]] | None = None


class ResponsesRequest(GenerationFields):
    input: str | list[InputItem] = Field(description="The user's text, or message items.")
    instructions: str | None = Field(None, description="A system message placed before the input.")
    max_output_tokens: int | None = Field(None, ge=1, description="Caps reasoning plus answer tokens.")


def to_messages(req: ResponsesRequest) -> list[dict[str, str]]:
    """Chat messages of a Responses request; items of other kinds (reasoning from an earlier turn is
    skipped, as its text is not re-read; tool calls are not supported) are named in the error."""
    messages = [{"role": "system", "content": req.instructions}] if req.instructions else []
    if isinstance(req.input, str):
        return [*messages, {"role": "user", "content": req.input}]
    for i, item in enumerate(req.input):
        if item.type == "reasoning":
            continue
        if item.type != "message" or item.role is None:
            raise RequestError(f"input[{i}]: items of type {item.type!r} are not supported (message items with a "
                               "role, and reasoning items, are)", f"input.{i}")
        if isinstance(item.content, list):
            bad = [p.get("type") for p in item.content if p.get("type") not in _TEXT_PARTS]
            if bad:
                raise RequestError(f"input[{i}].content: parts of type {bad[0]!r} are not supported "
                                   f"(accepted: {', '.join(_TEXT_PARTS)})", f"input.{i}.content")
            text = "".join(str(p.get("text") or "") for p in item.content)
        else:
            text = item.content or ""
        messages.append({"role": item.role, "content": text})
    return messages


def as_chat_fields(req: ResponsesRequest) -> dict[str, Any]:
    """The chat endpoint's fields for the planner (`max_output_tokens` is its max_tokens)."""
    if req.max_output_tokens is not None and (req.max_tokens or req.max_completion_tokens):
        raise RequestError("send max_output_tokens (the Responses API's name) or max_tokens, not both",
                           "max_output_tokens")
    fields = req.model_dump(exclude={"input", "instructions", "max_output_tokens"}, exclude_none=True)
    if req.max_output_tokens is not None:
        fields["max_completion_tokens"] = req.max_output_tokens
    fields["messages"] = [ChatMessage(role="user", content="-")]  # placeholder: the prompt is built already
    return fields


def new_ids() -> dict[str, str]:
    return {k: f"{k}_{uuid.uuid4().hex[:24]}" for k in ("resp", "rs", "msg")}


def usage(result: MethodResult) -> dict[str, Any]:
    u = result.usage
    return {"input_tokens": u.prompt_tokens, "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": u.completion_tokens, "output_tokens_details": {"reasoning_tokens": u.thinking_tokens},
            "total_tokens": u.prompt_tokens + u.completion_tokens}


def reasoning_item(ids: dict[str, str], text: str, status: str = "completed") -> dict[str, Any]:
    content = [{"type": "reasoning_text", "text": text}] if text or status == "completed" else []
    return {"type": "reasoning", "id": ids["rs"], "summary": [], "content": content, "status": status}


def message_item(ids: dict[str, str], text: str | None, status: str = "completed") -> dict[str, Any]:
    content = [] if text is None else [{"type": "output_text", "text": text, "annotations": []}]
    return {"type": "message", "id": ids["msg"], "role": "assistant", "status": status, "content": content}


def response_object(ids: dict[str, str], model: str, req: ResponsesRequest, *, created: float,
                    result: MethodResult | None = None, status: str = "in_progress",
                    extra: dict[str, Any] | None = None, streamed: StreamState | None = None) -> dict[str, Any]:
    """The response object; after a stream, its items hold exactly the text the deltas carried (`streamed`)."""
    body: dict[str, Any] = {
        "id": ids["resp"], "object": "response", "created_at": created, "model": model, "status": status,
        "output": [], "parallel_tool_calls": False, "tool_choice": "auto", "tools": [], "error": None,
        "incomplete_details": None, "instructions": req.instructions, "metadata": {},
        "max_output_tokens": req.max_output_tokens, "temperature": req.temperature, "top_p": req.top_p,
        "reasoning": {"effort": req.reasoning.effort if req.reasoning else req.reasoning_effort, "summary": None},
        "text": {"format": {"type": "text"}}, "usage": None}
    if result is not None:
        cut = result.finish_reason == "length"
        body["status"] = "incomplete" if cut else "completed"
        body["incomplete_details"] = {"reason": "max_output_tokens"} if cut else None
        thinking = result.thinking if streamed is None else streamed.reasoning or ""
        answer = result.answer if streamed is None else streamed.answer or ""
        body["output"] = ([reasoning_item(ids, thinking)] if thinking else []) + [
            message_item(ids, answer, "incomplete" if cut else "completed")]
        body["usage"] = usage(result)
        body["completed_at"] = time.time()
    if extra:
        body["reasonbudget"] = extra
    return body


class EventWriter:
    """Server-sent events of one streamed response, numbered in order."""

    def __init__(self) -> None:
        self.sequence = 0

    def __call__(self, kind: str, **payload: Any) -> str:
        data = {"type": kind, "sequence_number": self.sequence, **payload}
        self.sequence += 1
        return f"event: {kind}\ndata: {json.dumps(data)}\n\n"


class StreamState:
    """Which output item is open while text arrives: reasoning first (index 0), then the message."""

    def __init__(self, ids: dict[str, str], emit: EventWriter) -> None:
        self.ids, self.emit = ids, emit
        self.reasoning: str | None = None  # None: no reasoning item opened
        self.answer: str | None = None
        self.closed_reasoning = False

    @property
    def message_index(self) -> int:
        return 0 if self.reasoning is None else 1

    def reasoning_delta(self, text: str) -> Iterator[str]:
        if self.reasoning is None:
            self.reasoning = ""
            yield self.emit("response.output_item.added", output_index=0,
                            item=reasoning_item(self.ids, "", "in_progress"))
        self.reasoning += text
        yield self.emit("response.reasoning_text.delta", item_id=self.ids["rs"], output_index=0, content_index=0,
                        delta=text)

    def close_reasoning(self) -> Iterator[str]:
        if self.reasoning is not None and not self.closed_reasoning:
            self.closed_reasoning = True
            yield self.emit("response.reasoning_text.done", item_id=self.ids["rs"], output_index=0, content_index=0,
                            text=self.reasoning)
            yield self.emit("response.output_item.done", output_index=0, item=reasoning_item(self.ids, self.reasoning))

    def answer_delta(self, text: str) -> Iterator[str]:
        yield from self.close_reasoning()
        if self.answer is None:
            self.answer = ""
            yield self.emit("response.output_item.added", output_index=self.message_index,
                            item=message_item(self.ids, None, "in_progress"))
            yield self.emit("response.content_part.added", item_id=self.ids["msg"], output_index=self.message_index,
                            content_index=0, part={"type": "output_text", "text": "", "annotations": []})
        self.answer += text
        yield self.emit("response.output_text.delta", item_id=self.ids["msg"], output_index=self.message_index,
                        content_index=0, delta=text, logprobs=[])

    def finish(self, result: MethodResult) -> Iterator[str]:
        """Close what is open; text the stream did not carry (an answer given in one piece) is sent first."""
        if result.thinking and self.reasoning is None:
            yield from self.reasoning_delta(result.thinking)
        if self.answer is None:
            yield from self.answer_delta(result.answer)
        yield from self.close_reasoning()
        status = "incomplete" if result.finish_reason == "length" else "completed"
        part = {"type": "output_text", "text": self.answer, "annotations": []}
        yield self.emit("response.output_text.done", item_id=self.ids["msg"], output_index=self.message_index,
                        content_index=0, text=self.answer, logprobs=[])
        yield self.emit("response.content_part.done", item_id=self.ids["msg"], output_index=self.message_index,
                        content_index=0, part=part)
        yield self.emit("response.output_item.done", output_index=self.message_index,
                        item=message_item(self.ids, self.answer, status))
