"""A model behind a remote server, named `remote:URL#MODEL` (URL up to /v1, MODEL as the server names it).

Prompts are built here, with the model's chat template, so that the two-phase budget forcing can continue
the assistant's turn with plain completions. The template and reasoning profile come from, in order: the
server's model card (this project's server publishes its profile), the local registry (MODEL is a registry
name or path), the HF hub (online users), else a generic ChatML template and the `</think>` profile.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import Generator

from reasonbudget.engine.budget import BudgetConfig
from reasonbudget.engine.controllers import Observer
from reasonbudget.engine.sampling import SamplingConfig
from reasonbudget.models.profiles import PROFILES, THINKING, ReasoningProfile
from reasonbudget.remote import generation
from reasonbudget.remote.client import RemoteError, RemoteServer
from reasonbudget.types import MethodResult, PromptText

PREFIX = "remote:"


@dataclass
class RemoteModel:
    name: str
    server: RemoteServer
    profile: ReasoningProfile
    tokenizer: Any | None
    """A tokenizer with the model's chat template, or None for ChatML."""
    native_budget: bool
    """The server enforces a per-request thinking budget itself (`thinking_token_budget`)."""
    context_length: int | None = None
    """The server's context (its model card's `max_model_len`), None when it does not say."""
    levels = frozenset({"text", "steps"})
    """Backend levels (see `engine.backend`): no logits, hidden states or KV cache over HTTP."""

    @property
    def served_model(self) -> str:
        """The model's name on its server (what a companion PRM is registered under)."""
        return parse_remote_name(self.name)[1]

    def generate(self, prompts: Sequence[str], budgets: Sequence[BudgetConfig], sampling: SamplingConfig,
                 generator: Generator | Sequence[Generator] | None, *, prefill_text: str = "",
                 observers: Sequence[Observer] | None = None) -> list[MethodResult]:
        """Think under budgets[i], then answer (see `remote.generation`)."""
        return generation.generate(self, prompts, budgets, sampling, generator, prefill_text=prefill_text,
                                   observers=observers)

    def step_runner(self, sampling: SamplingConfig, cfg, *, lookahead: int = 0):
        """Partial solutions extended with completions that stop at the step delimiter."""
        from reasonbudget.remote.steps import RemoteStepRunner

        return RemoteStepRunner(self, sampling, cfg)

    def judge(self):
        """The served model as an LLM judge of partial solutions (prm=judge on this backend)."""
        from reasonbudget.remote.judge import RemoteJudge

        return RemoteJudge(self)

    def count_tokens(self, text: str) -> int | None:
        """Tokens of `text` by the local tokenizer (None without one: the server then counts)."""
        if self.tokenizer is None:
            return None
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def prompt(self, question: str) -> PromptText:
        """The chat-templated prompt for one question, ending where the model starts thinking."""
        return PromptText(self._template(question), question)

    def _template(self, question: str) -> str:
        prof = self.profile
        messages = ([{"role": "system", "content": prof.system_prompt}] if prof.system_prompt else [])
        messages.append({"role": "user", "content": question})
        if self.tokenizer is not None and getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                      enable_thinking=True)
        else:
            text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
            text += "<|im_start|>assistant\n"
        if prof.think_open and not text.rstrip().endswith(prof.think_open.strip()):
            text += prof.think_open
        return text


def is_remote(name: str) -> bool:
    return name.startswith(PREFIX)


def parse_remote_name(name: str) -> tuple[str, str]:
    """'remote:http://host:8000/v1#qwen3-8b' -> (base URL, model)."""
    url, sep, model = name[len(PREFIX):].partition("#")
    if not url.startswith(("http://", "https://")) or not sep or not model:
        raise RemoteError(f"{name!r}: remote models are named remote:URL#MODEL, e.g. "
                          "remote:http://127.0.0.1:8000/v1#smollm2-135m")
    return url, model


def _local_tokenizer(model: str):
    from reasonbudget.models.registry import ModelNotFoundError, resolve
    from reasonbudget.models.tokenizer import load_tokenizer

    try:
        return load_tokenizer(resolve(model))
    except (ModelNotFoundError, OSError, ValueError):
        return None


def _profile_from_card(card: dict) -> ReasoningProfile | None:
    p = card.get("reasonbudget", {}).get("profile")
    if not p:
        return None
    fields = {f.name for f in dataclasses.fields(ReasoningProfile)}
    if fields <= set(p):  # this project's server publishes the whole profile
        return ReasoningProfile(**{k: p[k] for k in fields})
    known = next((prof for prof in PROFILES.values() if prof.think_close == p.get("think_close")
                  and prof.forcing == p.get("forcing")), None)
    return known


def load_remote(name: str, *, api_key: str | None = None, native_budget: bool | None = None) -> RemoteModel:
    """Connect to the server and check it serves MODEL (a clear error if not)."""
    url, model = parse_remote_name(name)
    server = RemoteServer(url, model, api_key=api_key)
    reply = server._request("GET", "/models")  # RemoteError: cannot reach it, or it refused
    try:
        listed = reply.json().get("data", [])
    except ValueError as e:
        raise RemoteError(f"{url}/models did not answer JSON: {e}") from None
    ids = [c.get("id") for c in listed]
    if ids and model not in ids:
        raise RemoteError(f"{url} does not serve {model!r}; it serves: {', '.join(map(str, ids))}")
    card = next((c for c in listed if c.get("id") == model), {})
    tokenizer = _local_tokenizer(model)
    if tokenizer is None:
        try:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(model)  # online users with a hub id
        except Exception:  # noqa: BLE001 - offline or not a hub id: ChatML
            tokenizer = None
    profile = _profile_from_card(card)
    if profile is None:
        from reasonbudget.models.registry import REGISTRY, _profile_for

        entry = REGISTRY.get(model)
        if entry is not None and entry.profile:
            profile = PROFILES[entry.profile]
        elif tokenizer is not None:
            profile = _profile_for(tokenizer, None)
        else:
            profile = THINKING
    native = bool(card.get("reasonbudget", {}).get("thinking_budget")) if native_budget is None else native_budget
    context = card.get("max_model_len")
    return RemoteModel(name, server, profile, tokenizer, native, int(context) if context else None)
