"""One thinking policy from the many names clients use for "how much to think" (specs/interfaces.md §1.1).

Accepted, all at the top level of the request body (OpenAI clients send them through `extra_body`):
    thinking_token_budget (vLLM), max_thinking_tokens (optillm, NIM), thinking_budget (Qwen/DashScope),
    thinking_budget_tokens (llama.cpp), reasoning_budget_tokens, custom_params.thinking_budget (SGLang),
    thinking: {"type": "enabled", "budget_tokens": N} | {"type": "disabled"} (Anthropic),
    reasoning: {"effort": ..., "max_tokens": N} (OpenRouter), reasoning_effort (OpenAI),
    chat_template_kwargs.enable_thinking (vLLM, SGLang, llama.cpp).
Aliases that disagree are rejected (HTTP 400), as Gemini and Anthropic do, rather than one silently winning.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

BUDGET_ALIASES = ("thinking_token_budget", "max_thinking_tokens", "thinking_budget", "thinking_budget_tokens",
                  "reasoning_budget_tokens")
EFFORT_FIELDS = ("reasoning_effort", "reasoning.effort")
DEFAULT_EFFORT_FRACTIONS = {"minimal": 0.1, "low": 0.33, "medium": 0.66, "high": 0.9}
"""reasoning_effort -> thinking budget as a fraction of max_tokens (optillm's thinkdeeper profile)."""


class RequestError(ValueError):
    """A request field is wrong: HTTP 400 with this message, naming `param`."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class ThinkingPolicy:
    enabled: bool = True
    budget: int | None = None
    """Thinking tokens allowed; None = not given (the server's default effort applies)."""
    source: str | None = None
    """The field the budget or effort came from (for error messages)."""


@dataclass(frozen=True)
class EffortTable:
    fractions: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_EFFORT_FRACTIONS))
    default: str = "medium"

    def budget(self, effort: str, max_tokens: int, param: str = "reasoning_effort") -> int:
        if effort not in self.fractions:
            raise RequestError(f"{param}={effort!r}: accepted are none, {', '.join(self.fractions)}", param)
        return max(1, int(self.fractions[effort] * max_tokens))


def _positive_int(value: Any, param: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"{param} must be a whole number of tokens >= 1, got {value!r}", param)
    if value < 1:
        raise RequestError(f"{param} must be >= 1 thinking tokens, got {value} (to turn thinking off send "
                           f'thinking: {{"type": "disabled"}} or reasoning_effort: "none")', param)
    return value


def _mapping(body: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = body.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise RequestError(f"{key} must be an object, got {type(value).__name__}", key)
    return value


def thinking_policy(body: Mapping[str, Any], *, max_tokens: int, effort: EffortTable) -> ThinkingPolicy:
    """The request's thinking policy. Budgets come from explicit token counts or, failing those, from an
    effort level; a budget and an effort together, or two different budgets, are a 400."""
    budgets: dict[str, int] = {}
    for key in BUDGET_ALIASES:
        if body.get(key) is not None:
            budgets[key] = _positive_int(body[key], key)
    custom = _mapping(body, "custom_params")
    if custom.get("thinking_budget") is not None:
        budgets["custom_params.thinking_budget"] = _positive_int(custom["thinking_budget"],
                                                                 "custom_params.thinking_budget")
    disabled: list[str] = []
    thinking = _mapping(body, "thinking")
    if thinking:
        kind = thinking.get("type")
        if kind == "enabled":
            if thinking.get("budget_tokens") is None:
                raise RequestError('thinking.budget_tokens is required when thinking.type is "enabled"',
                                   "thinking.budget_tokens")
            budgets["thinking.budget_tokens"] = _positive_int(thinking["budget_tokens"], "thinking.budget_tokens")
        elif kind == "disabled":
            disabled.append('thinking.type="disabled"')
        else:
            raise RequestError(f"thinking.type={kind!r}: accepted are enabled, disabled", "thinking.type")
    kwargs = _mapping(body, "chat_template_kwargs")
    if kwargs.get("enable_thinking") is False:
        disabled.append("chat_template_kwargs.enable_thinking=false")
    efforts: dict[str, str] = {}
    if body.get("reasoning_effort") is not None:
        efforts["reasoning_effort"] = body["reasoning_effort"]
    reasoning = _mapping(body, "reasoning")
    if reasoning.get("effort") is not None:
        efforts["reasoning.effort"] = reasoning["effort"]
    if reasoning.get("max_tokens") is not None:
        budgets["reasoning.max_tokens"] = _positive_int(reasoning["max_tokens"], "reasoning.max_tokens")
    for key, value in efforts.items():
        if not isinstance(value, str):
            raise RequestError(f"{key} must be a string, got {value!r}", key)
        if value == "none":
            disabled.append(f"{key}=none")

    if len(set(budgets.values())) > 1:
        listed = ", ".join(f"{k}={v}" for k, v in budgets.items())
        raise RequestError(f"conflicting thinking budgets: {listed}; send one", next(iter(budgets)))
    if disabled and budgets:
        raise RequestError(f"{disabled[0]} conflicts with {next(iter(budgets))}: thinking cannot be both off "
                           "and budgeted", next(iter(budgets)))
    live_efforts = {k: v for k, v in efforts.items() if v != "none"}
    if live_efforts and (budgets or disabled):
        key = next(iter(live_efforts))
        other = next(iter(budgets)) if budgets else disabled[0]
        raise RequestError(f"{key} conflicts with {other}: send an effort level or a budget, not both", key)
    if len(set(live_efforts.values())) > 1:
        raise RequestError("conflicting efforts: " + ", ".join(f"{k}={v}" for k, v in live_efforts.items()),
                           next(iter(live_efforts)))
    if disabled:
        return ThinkingPolicy(enabled=False, source=disabled[0].split("=")[0])
    if budgets:
        key, value = next(iter(budgets.items()))
        return ThinkingPolicy(budget=value, source=key)
    if live_efforts:
        key, value = next(iter(live_efforts.items()))
        return ThinkingPolicy(budget=effort.budget(value, max_tokens, key), source=key)
    return ThinkingPolicy()
