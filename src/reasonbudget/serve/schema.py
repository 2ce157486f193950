"""Request bodies of the OpenAI-compatible endpoints (they are also the published OpenAPI schema).

Unknown fields are accepted and ignored, as OpenAI-compatible servers do, so that clients written for other
servers keep working; every field we act on is declared here.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_SEED = 2**63 - 1


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text or "" for p in self.content if p.type == "text")
        return self.content or ""


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class Thinking(BaseModel):
    """Anthropic's shape: {"type": "enabled", "budget_tokens": N} or {"type": "disabled"}."""

    model_config = ConfigDict(extra="allow")
    type: str
    budget_tokens: int | None = None


class Reasoning(BaseModel):
    """OpenRouter's shape: {"effort": "low"} or {"max_tokens": N}."""

    model_config = ConfigDict(extra="allow")
    effort: str | None = None
    max_tokens: int | None = None
    exclude: bool = False


class GenerationFields(BaseModel):
    """Fields shared by chat and text completions."""

    model_config = ConfigDict(extra="allow")
    model: str = Field(description="The served model's name (see GET /v1/models).")
    max_tokens: int | None = Field(None, ge=1, description="Caps thinking plus answer tokens.")
    max_completion_tokens: int | None = Field(None, ge=1, description="OpenAI's newer name for max_tokens.")
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="0 = greedy (the server default).")
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int | None = Field(None, ge=1, le=1, description="One choice per request; use method for N samples.")
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    # thinking budget under every common name (serve/thinking.py)
    thinking_token_budget: int | None = None
    max_thinking_tokens: int | None = None
    thinking_budget: int | None = None
    thinking_budget_tokens: int | None = None
    reasoning_budget_tokens: int | None = None
    thinking: Thinking | None = None
    reasoning: Reasoning | None = None
    reasoning_effort: str | None = Field(None, description="none | minimal | low | medium | high")
    custom_params: dict[str, Any] | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    # method choice
    method: str | None = Field(None, description="A reasonbudget method name (default: budget-forcing).")
    method_config: dict[str, str | int | float | bool | None] | None = Field(
        None, description='Settings of the method\'s config, e.g. {"hard_cap": true}.')
    budget: int | None = Field(None, ge=1, le=1024, description="N samples or particles for search methods "
                               "(its_hub's name); default 8.")


class ChatRequest(GenerationFields):
    messages: list[ChatMessage] = Field(min_length=1)


class CompletionRequest(GenerationFields):
    prompt: str | list[str] = Field(description="Text to continue (one prompt per request).")
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=20, description="Plain continuations: the log-probability of "
                                 "each generated token and of the N most likely ones (OpenAI's legacy format).")
