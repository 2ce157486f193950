"""The text-level methods on a remote server: plain CoT, budget forcing, NoThinking and TALE-EP.

Budget forcing is two-phase on the client (specs/interfaces.md §1.1): think with max_tokens = B and the
think-close marker as stop string; close thinking (the profile's forcing string if the budget ran out, the
marker itself if the model stopped); then a second completion for the answer. A server that enforces the
budget itself (this project's) gets one request with `thinking_token_budget` instead. The thinking cap is the
server's own token count either way. Step-level search methods do not run remotely yet.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from reasonbudget.engine.sampling import SamplingConfig
from reasonbudget.methods.base import make_method
from reasonbudget.methods.budget.tale_text import budget_prompt, estimate_prompt, parse_estimate
from reasonbudget.methods.spec import parse_method_spec
from reasonbudget.remote.client import Completion
from reasonbudget.remote.model import RemoteModel
from reasonbudget.types import MethodResult, Usage

REMOTE_METHODS = ("plain", "budget-forcing", "nothinking", "tale")


def _usage(model: RemoteModel, calls: Sequence[Completion], wall: float, **tokens: int) -> Usage:
    processed = sum(c.prompt_tokens + c.completion_tokens for c in calls)
    return Usage(prompt_tokens=calls[0].prompt_tokens, tokens_by_model={model.name: processed},
                 forward_passes_by_model={model.name: sum(c.completion_tokens for c in calls)},
                 wall_seconds=wall, **tokens)


def think_then_answer(model: RemoteModel, prompts: Sequence[str], *, budget: int, max_answer_tokens: int,
                      sampling: SamplingConfig, seeds: Sequence[int]) -> list[MethodResult]:
    """At most `budget` thinking tokens, then an answer (never an empty turn after thinking)."""
    if model.native_budget:
        return _native(model, prompts, budget, max_answer_tokens, sampling, seeds)
    prof, t0 = model.profile, time.perf_counter()
    kw = dict(temperature=sampling.temperature, top_p=sampling.top_p)
    thoughts = model.server.complete(prompts, max_tokens=budget, stop=[prof.think_close], seeds=seeds, **kw)
    # The model closed thinking itself (stop string, or EOS: it gets the marker too), or ran out of budget.
    closes = [prof.think_close if t.finish_reason != "length" else prof.forcing for t in thoughts]
    follow = [p + t.text + c for p, t, c in zip(prompts, thoughts, closes)]
    answers = model.server.complete(follow, max_tokens=max_answer_tokens, seeds=seeds, **kw)
    wall = (time.perf_counter() - t0) / max(len(prompts), 1)
    out = []
    for t, a, c in zip(thoughts, answers, closes):
        forced = max(a.prompt_tokens - t.prompt_tokens - t.completion_tokens, 0)
        usage = _usage(model, [t, a], wall, thinking_tokens=t.completion_tokens, forced_tokens=forced,
                       answer_tokens=a.completion_tokens)
        out.append(MethodResult(tokens=(), thinking=t.text.strip(), answer=model.profile.cut_answer(a.text),
                                usage=usage, finish_reason=a.finish_reason,
                                trace={"forced_close": c == prof.forcing, "two_phase": True}))
    return out


def _native(model: RemoteModel, prompts: Sequence[str], budget: int, max_answer_tokens: int,
            sampling: SamplingConfig, seeds: Sequence[int]) -> list[MethodResult]:
    t0 = time.perf_counter()
    extra = {"thinking_token_budget": budget, "method": "budget-forcing",
             "method_config": {"max_answer_tokens": max_answer_tokens}}
    calls = model.server.complete(prompts, max_tokens=budget + max_answer_tokens + 64, seeds=seeds, extra=extra,
                                  temperature=sampling.temperature, top_p=sampling.top_p)
    wall = (time.perf_counter() - t0) / max(len(prompts), 1)
    out = []
    for c in calls:
        choice = c.body["choices"][0]
        reported = c.body.get("reasonbudget", {}).get("usage", {})
        tokens = {k: int(reported.get(k, 0)) for k in ("thinking_tokens", "forced_tokens", "answer_tokens")}
        out.append(MethodResult(tokens=(), thinking=(choice.get("reasoning_content") or "").strip(),
                                answer=model.profile.cut_answer(choice.get("content") or ""),
                                usage=_usage(model, [c], wall, **tokens), finish_reason=c.finish_reason,
                                trace={"native_budget": True}))
    return out


def run_remote(model: RemoteModel, spec: str, questions: Sequence[str], *, budget: int | None,
               sampling: SamplingConfig, seeds: Sequence[int]) -> list[MethodResult]:
    """Run a text-level method (see REMOTE_METHODS) for many questions on the remote model."""
    name, settings = parse_method_spec(spec)
    if name not in REMOTE_METHODS:
        raise ValueError(f"{name} does not run on a remote model yet; remote methods: {', '.join(REMOTE_METHODS)}")
    c = make_method(spec, sampling).config  # validated settings with their defaults
    prompts = [model.prompt(q) for q in questions]
    if name == "budget-forcing":
        if budget is None or budget < 1:
            raise ValueError(f"budget-forcing needs a thinking budget >= 1 tokens, got {budget}")
        return think_then_answer(model, prompts, budget=budget, max_answer_tokens=c.max_answer_tokens,
                                 sampling=sampling, seeds=seeds)
    if name == "plain":
        return think_then_answer(model, prompts, budget=c.max_thinking_tokens,
                                 max_answer_tokens=c.max_answer_tokens, sampling=sampling, seeds=seeds)
    if name == "nothinking":
        return _nothinking(model, prompts, c.max_answer_tokens, sampling, seeds)
    return _tale(model, questions, budget, c, sampling, seeds)


def _nothinking(model: RemoteModel, prompts: Sequence[str], max_answer_tokens: int, sampling: SamplingConfig,
                seeds: Sequence[int]) -> list[MethodResult]:
    t0 = time.perf_counter()
    calls = model.server.complete([p + model.profile.nothinking for p in prompts], max_tokens=max_answer_tokens,
                                  seeds=seeds, temperature=sampling.temperature, top_p=sampling.top_p)
    wall = (time.perf_counter() - t0) / max(len(prompts), 1)
    return [MethodResult(tokens=(), thinking="", answer=model.profile.cut_answer(c.text), finish_reason=c.finish_reason,
                         usage=_usage(model, [c], wall, answer_tokens=c.completion_tokens)) for c in calls]


def _tale(model: RemoteModel, questions: Sequence[str], cap: int | None, c, sampling: SamplingConfig,
          seeds: Sequence[int]) -> list[MethodResult]:
    if c.estimator is not None:
        raise ValueError("tale:estimator needs the model's hidden states; it does not run on a remote model")
    estimates = _nothinking(model, [model.prompt(estimate_prompt(q)) for q in questions], c.max_estimate_tokens,
                            sampling, seeds)
    betas = [parse_estimate(e.answer, maximum=cap) for e in estimates]
    answers = think_then_answer(model, [model.prompt(budget_prompt(q, b)) for q, b in zip(questions, betas)],
                                budget=c.max_thinking_tokens, max_answer_tokens=c.max_answer_tokens,
                                sampling=sampling, seeds=seeds)
    return [MethodResult(tokens=(), thinking=r.thinking, answer=r.answer, usage=r.usage + e.usage,
                         finish_reason=r.finish_reason, trace={**r.trace, "estimate": b, "estimate_text": e.answer})
            for r, e, b in zip(answers, estimates, betas)]
