"""From a validated request body to a `Job`: the method, its budget and settings, and the checks that turn
user mistakes into 400s naming the field."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from reasonbudget.engine.generation import profile_tokens
from reasonbudget.engine.sampling import SamplingConfig
from reasonbudget.methods import DEFAULT_METHOD, METHODS, make_method, no_thinking_method
from reasonbudget.methods.spec import parse_method_spec
from reasonbudget.models.registry import LoadedModel
from reasonbudget.serve.schema import GenerationFields
from reasonbudget.serve.thinking import EFFORT_FIELDS, EffortTable, RequestError, ThinkingPolicy, thinking_policy
from reasonbudget.types import TokenIds


@dataclass(frozen=True)
class ServeConfig:
    default_max_tokens: int = 1024
    default_method: str = DEFAULT_METHOD
    """Used when a request names no method (the method that does not think, when it turns thinking off)."""
    effort: EffortTable = field(default_factory=EffortTable)
    max_tokens_limit: int | None = None
    """Largest max_tokens accepted (None: whatever fits in the context)."""
    max_samples: int = 64
    """Largest N (samples, particles) a search method may be asked for."""
    max_body_bytes: int = 1 << 20
    retry_after_seconds: int = 1
    default_draft: str = ""
    """A draft model that requests whose method can speculate use unless they name their own
    (`reasonbudget serve --draft-model NAME`)."""
    default_draft_quant: str = "none"
    """Weight-only quantization of that draft (`serve --draft-quant int4`: a cheaper draft step)."""
    allowed_prm_urls: tuple[str, ...] = ()
    """Servers a request may name as its scorer (`prm=pool:URL#MODEL`); none by default, so that no client
    can make this server call an address of its choosing."""


@dataclass(frozen=True)
class Plan:
    method: str | None
    budget: int | None
    max_tokens: int
    sampling: SamplingConfig
    seed: int
    stop: tuple[str, ...] = ()
    starts_in_answer: bool = False
    logprobs: int | None = None


def _max_tokens(req: GenerationFields, prompt_len: int, model: LoadedModel, cfg: ServeConfig) -> int:
    if req.max_tokens is not None and req.max_completion_tokens is not None \
            and req.max_tokens != req.max_completion_tokens:
        raise RequestError(f"max_tokens={req.max_tokens} conflicts with max_completion_tokens="
                           f"{req.max_completion_tokens}; send one", "max_tokens")
    given = req.max_completion_tokens or req.max_tokens
    room = model.context_length - prompt_len
    if room < 1:
        raise RequestError(f"the prompt has {prompt_len} tokens and {model.name}'s context is "
                           f"{model.context_length}", "messages")
    limit = room if cfg.max_tokens_limit is None else min(room, cfg.max_tokens_limit)
    if given is None:
        return min(cfg.default_max_tokens, limit)
    if cfg.max_tokens_limit is not None and given > cfg.max_tokens_limit:
        raise RequestError(f"max_tokens={given} is above this server's limit of {cfg.max_tokens_limit}",
                           "max_tokens")
    if given > room:
        raise RequestError(f"max_tokens={given} does not fit: the prompt has {prompt_len} tokens and the "
                           f"context is {model.context_length}, so at most {room} can be generated", "max_tokens")
    return given


def _spec(name: str, settings: Mapping[str, Any] | None, cfg: ServeConfig) -> str:
    if not settings:
        return name
    parts = []
    for key, value in settings.items():
        text = "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
        if "://" in text and not any(text.split(":", 1)[-1].startswith(u) for u in cfg.allowed_prm_urls):
            raise RequestError(f"method_config.{key}: this server calls no URL a request names (allowed: "
                               f"{', '.join(cfg.allowed_prm_urls) or 'none'}; see `serve --allow-prm-url`)",
                               "method_config")
        if "," in text or any(c in key for c in ",:="):  # a value may hold ':' and '=' (prm=pool:URL#MODEL)
            raise RequestError(f"method_config.{key}: values may not contain ','; keys not ',', ':' or '='",
                               "method_config")
        parts.append(f"{key}={text}")
    return f"{name}:{','.join(parts)}"


def plan_request(req: GenerationFields, body: Mapping[str, Any], prompt: TokenIds, model: LoadedModel,
                 cfg: ServeConfig, *, raw_text: bool = False) -> Plan:
    """The job for a request. `raw_text`: /v1/completions, which continues the prompt as plain text unless
    the request asks for thinking (a budget, an effort or a method)."""
    max_tokens = _max_tokens(req, len(prompt), model, cfg)
    temperature = 0.0 if req.temperature is None else req.temperature
    sampling = SamplingConfig(temperature=temperature, top_p=1.0 if req.top_p is None else req.top_p)
    seed = req.seed if req.seed is not None else secrets.randbelow(2**31)
    stops = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
    stops = tuple(s for s in stops if s)
    policy = thinking_policy(body, max_tokens=max_tokens, effort=cfg.effort)
    asks_thinking = policy.source is not None or req.method is not None or req.budget is not None
    if raw_text and not asks_thinking:
        return Plan(None, None, max_tokens, sampling, seed, stop=stops, starts_in_answer=True,
                    logprobs=getattr(req, "logprobs", None))
    if getattr(req, "logprobs", None) is not None:
        raise RequestError("logprobs applies to plain text continuations (/v1/completions without thinking "
                           "settings)", "logprobs")
    if stops:
        raise RequestError("stop applies to plain text continuations (/v1/completions without thinking "
                           "settings); methods end thinking and answer by themselves", "stop")
    name = req.method or (cfg.default_method if policy.enabled else no_thinking_method())
    try:
        name, _ = parse_method_spec(name)
    except ValueError as e:
        raise RequestError(str(e), "method") from None
    thinks = METHODS[name].capabilities.thinks
    if not policy.enabled and thinks:
        raise RequestError(f"{policy.source} turns thinking off, which conflicts with method={name!r} "
                           f"(use method {no_thinking_method()}, or drop the setting)", "method")
    budget = _budget(name, req, policy, max_tokens, model, cfg)
    settings = dict(req.method_config or {})
    if cfg.default_draft and "draft" in getattr(METHODS[name].config_type, "__dataclass_fields__", {}):
        if "draft" not in settings:  # the server's draft (and its quantization), unless the request names one
            settings["draft"] = cfg.default_draft
            if cfg.default_draft_quant != "none":
                settings.setdefault("draft_quant", cfg.default_draft_quant)
    spec = _spec(name, settings, cfg)
    try:
        make_method(spec, sampling)  # validates the settings (types, ranges) before queueing
    except (ValueError, TypeError) as e:
        raise RequestError(f"method_config: {e}", "method_config") from None
    return Plan(spec, budget, max_tokens, sampling, seed, starts_in_answer=not thinks)


def _budget(name: str, req: GenerationFields, policy: ThinkingPolicy, max_tokens: int, model: LoadedModel,
            cfg: ServeConfig) -> int | None:
    caps = METHODS[name].capabilities
    if caps.takes_samples:
        if policy.budget is not None:
            raise RequestError(f"{policy.source} is a thinking budget; {name} takes N samples or particles as "
                               "budget", policy.source)
        n = req.budget or caps.default_budget or 1
        if n > cfg.max_samples:
            raise RequestError(f"budget={n} samples or particles is above this server's limit of "
                               f"{cfg.max_samples}", "budget")
        return n
    if req.budget is not None:
        raise RequestError(f"budget is N samples or particles for search methods; {name} takes a thinking "
                           "budget (thinking_token_budget or an alias)", "budget")
    if caps.budget == "none":
        if policy.budget is not None:
            takers = ", ".join(n for n, c in METHODS.items() if c.capabilities.sweeps_budgets
                               and c.capabilities.budget == "thinking tokens")
            raise RequestError(f"{name} takes no thinking budget ({policy.source}); use {takers}", policy.source)
        return None
    if not caps.budget_required:
        return policy.budget  # an optional cap (TALE's on its own estimate)
    room = max_tokens - len(profile_tokens(model).forcing_ids) - 1  # the forced end and one answer token
    if policy.budget is None or policy.source in EFFORT_FIELDS:  # an effort level is fitted into max_tokens
        budget = policy.budget if policy.budget is not None else cfg.effort.budget(cfg.effort.default, max_tokens)
        if room < 1:
            raise RequestError(f"max_tokens={max_tokens} is too small to think and answer; send at least "
                               f"{max_tokens - room + 1}", "max_tokens")
        return min(budget, room)
    if policy.budget >= model.context_length:
        raise RequestError(f"{policy.source}={policy.budget} exceeds {model.name}'s context of "
                           f"{model.context_length} tokens", policy.source)
    if policy.budget > room:
        raise RequestError(f"{policy.source}={policy.budget} leaves no room for the answer: max_tokens="
                           f"{max_tokens} must be at least {max_tokens - room + policy.budget} (budget + the forced "
                           "end of thinking + one answer token)", policy.source)
    return policy.budget
