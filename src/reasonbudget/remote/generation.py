"""The text level of the backend protocol on a remote server: think under a budget, then answer.

Budget forcing is two-phase on the client (specs/interfaces.md §1.1): think with max_tokens = B and the
think-close marker as stop string; close thinking (the profile's forcing string if the budget ran out, the
marker itself if the model stopped); then a second completion for the answer. A server that enforces the
budget itself (this project's) gets one request with `thinking_token_budget` instead. The thinking cap is the
server's own token count either way. With `prefill_text` (NoThinking) only the answer is requested.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Generator

from reasonbudget.engine.budget import WRAPUP, WRAPUP_STOPS, BudgetConfig
from reasonbudget.engine.controllers import Observer
from reasonbudget.engine.generation import model_usage
from reasonbudget.engine.sampling import SamplingConfig, child_generators
from reasonbudget.remote.client import Completion
from reasonbudget.types import MethodResult

if TYPE_CHECKING:
    from reasonbudget.remote.model import RemoteModel


def request_seeds(generator: Generator | Sequence[Generator] | None, n: int) -> list[int | None]:
    """One server-side seed per prompt, drawn from the prompt's generator (or children of the call's)."""
    if generator is None:
        return [None] * n
    gens = child_generators(generator, n) if isinstance(generator, Generator) else list(generator)
    if len(gens) != n:
        raise ValueError(f"got {len(gens)} generators for {n} prompts")
    return [int(torch.randint(0, 2**31 - 1, (), generator=g)) for g in gens]


def _usage(model: RemoteModel, calls: Sequence[Completion], wall: float, **counts: int):
    return model_usage(model, prompt_tokens=calls[0].prompt_tokens,
                       processed=sum(c.prompt_tokens + c.completion_tokens for c in calls),
                       forward_passes=sum(c.completion_tokens for c in calls), wall_seconds=wall, **counts)


def generate(model: RemoteModel, prompts: Sequence[str], budgets: Sequence[BudgetConfig], sampling: SamplingConfig,
             generator: Generator | Sequence[Generator] | None, *, prefill_text: str = "",
             observers: Sequence[Observer] | None = None) -> list[MethodResult]:
    if len(budgets) != len(prompts):
        raise ValueError(f"got {len(budgets)} budgets for {len(prompts)} prompts")
    if any(b.min_thinking_tokens for b in budgets):
        raise ValueError("a minimum thinking length (extension with 'Wait') needs the in-process engine; "
                         "it does not run on a remote model")
    seeds = request_seeds(None if sampling.greedy else generator, len(prompts))
    kw = dict(temperature=sampling.temperature, top_p=sampling.top_p, seeds=seeds)
    if prefill_text:
        results = _answer_only(model, [p + prefill_text for p in prompts], budgets, kw)
    elif model.native_budget and not any(b.wrapup for b in budgets):  # the wrap-up style is client-side
        results = _native(model, prompts, budgets, kw)
    else:
        results = _two_phase(model, prompts, budgets, kw)
    for o, r in zip(observers or (), results):
        o.on_result(r)
    return results


def _fit(model: RemoteModel, prompt: str, want: int) -> int:
    """`want` new tokens, fewer when the server's context (if it says) leaves less room after the prompt (counted
    with the local tokenizer, if there is one): the engine caps a row the same way."""
    used = model.count_tokens(prompt) if model.context_length is not None else None
    return want if used is None else max(1, min(want, model.context_length - used - 1))


def _thinking_cap(b: BudgetConfig) -> int:
    if b.max_thinking_tokens is None:
        raise ValueError("an unlimited thinking budget cannot be sent to a remote server; give a cap")
    return b.max_thinking_tokens


def _two_phase(model: RemoteModel, prompts: Sequence[str], budgets: Sequence[BudgetConfig],
               kw: dict) -> list[MethodResult]:
    """At most the budget's thinking tokens, then an answer (never an empty turn after thinking). With
    `wrapup` (the Budget Guidance paper's budget forcing, which its code runs on vLLM exactly so): a thought
    that ran out of budget gets "\\n**Final Answer**" and goes on, at most another budget, until the close
    marker, a blank line or "Wait" (stop strings), then the bare marker."""
    prof, t0 = model.profile, time.perf_counter()
    caps = [_fit(model, p, _thinking_cap(b)) for p, b in zip(prompts, budgets)]
    thoughts = model.server.complete(prompts, max_tokens=caps, stop=[prof.think_close], **kw)
    texts = [t.text for t in thoughts]
    wrapups: dict[int, Completion] = {}
    todo = [i for i, (t, b) in enumerate(zip(thoughts, budgets)) if b.wrapup and t.finish_reason == "length"]
    if todo:
        heads = [prompts[i] + texts[i] + ("" if texts[i].endswith("\n") else "\n") + WRAPUP for i in todo]
        wrapped = model.server.complete(heads, max_tokens=[_fit(model, h, caps[i]) for h, i in zip(heads, todo)],
                                        stop=[prof.think_close, *WRAPUP_STOPS], **kw)
        for i, h, w in zip(todo, heads, wrapped):
            texts[i], wrapups[i] = h[len(prompts[i]):] + w.text, w
    # The model closed thinking itself (stop string, or EOS: it gets the marker too), or ran out of budget.
    closes = [prof.think_close if t.finish_reason != "length" or i in wrapups else prof.forcing
              for i, t in enumerate(thoughts)]
    follow = [p + x + c for p, x, c in zip(prompts, texts, closes)]
    answers = model.server.complete(follow, max_tokens=[_fit(model, f, b.max_answer_tokens)
                                                        for f, b in zip(follow, budgets)], **kw)
    wall = (time.perf_counter() - t0) / max(len(prompts), 1)
    out = []
    for i, (t, a, c) in enumerate(zip(thoughts, answers, closes)):
        calls = [t, wrapups[i], a] if i in wrapups else [t, a]
        wrap = _kept_tokens(model, wrapups[i]) if i in wrapups else 0
        forced = max(a.prompt_tokens - t.prompt_tokens - t.completion_tokens - wrap, 0)
        usage = _usage(model, calls, wall, thinking_tokens=t.completion_tokens, forced_tokens=forced,
                       answer_tokens=a.completion_tokens + wrap)
        trace = {"forced_close": c == prof.forcing or i in wrapups, "two_phase": True}
        if budgets[i].wrapup:
            trace.update(wrapup_tokens=wrap, paper_thinking_tokens=a.prompt_tokens - t.prompt_tokens - 1)
        out.append(MethodResult(tokens=(), thinking=texts[i].strip(), answer=prof.cut_answer(a.text), usage=usage,
                                finish_reason=a.finish_reason, trace=trace))
    return out


def _kept_tokens(model: RemoteModel, c: Completion) -> int:
    """Generated tokens that stay in the text: a matched stop string is generated and counted by the server but
    left out (the engine's controller rolls it back the same way), so count the kept text when we can."""
    stop = c.body.get("choices", [{}])[0].get("stop_reason")
    kept = model.count_tokens(c.text) if isinstance(stop, str) else None
    return min(kept, c.completion_tokens) if kept is not None else c.completion_tokens


def _native(model: RemoteModel, prompts: Sequence[str], budgets: Sequence[BudgetConfig],
            kw: dict) -> list[MethodResult]:
    """One request each; the server enforces `thinking_token_budget` (its default method does)."""
    t0 = time.perf_counter()
    slack = [b.max_answer_tokens + 64 for b in budgets]  # the forced end and the answer
    caps = [_fit(model, p, _thinking_cap(b) + s) for p, b, s in zip(prompts, budgets, slack)]
    extras = [{"thinking_token_budget": max(1, min(_thinking_cap(b), cap - s)),
               "method_config": {"max_answer_tokens": b.max_answer_tokens}} for b, cap, s in zip(budgets, caps, slack)]
    calls = model.server.complete(prompts, max_tokens=caps, extras=extras, **kw)
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


def _answer_only(model: RemoteModel, prompts: Sequence[str], budgets: Sequence[BudgetConfig],
                 kw: dict) -> list[MethodResult]:
    t0 = time.perf_counter()
    calls = model.server.complete(prompts, max_tokens=[_fit(model, p, b.max_answer_tokens)
                                                       for p, b in zip(prompts, budgets)], **kw)
    wall = (time.perf_counter() - t0) / max(len(prompts), 1)
    return [MethodResult(tokens=(), thinking="", answer=model.profile.cut_answer(c.text), finish_reason=c.finish_reason,
                         usage=_usage(model, [c], wall, answer_tokens=c.completion_tokens)) for c in calls]
