"""TALE-EP (Han et al. 2025, arXiv 2412.18547): the model estimates its own token budget, then answers with
that budget written into the prompt ("Let's think step by step and use less than N tokens:").

1. Estimate: the same model, zero-shot, answers the estimation prompt directly (its thinking is prefilled
   as finished, as in NoThinking); the first [[n]] of its reply is the estimate.
   Prompts use the reference code's wording by default (`prompts=ours`: this library's earlier wording).
2. Answer: plain chain of thought on the budget prompt. The budget is only asked for, never enforced.
An unparseable estimate falls back to the vanilla prompt (the reference would ask for "less than -1 tokens").
`budget`, when given, caps the estimate. Both calls are counted in the result's usage.
With `estimator` (a directory from `reasonbudget fit-budget-estimator`), step 1 is a learned regression on the
prompt's hidden states instead (see `budget_estimator`): one prefill, no decoding.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from reasonbudget.engine.backend import check_level
from reasonbudget.engine.budget import BudgetConfig
from reasonbudget.engine.controllers import Observer
from reasonbudget.engine.generation import model_usage
from reasonbudget.engine.sampling import SamplingConfig
from reasonbudget.methods.base import Backend, Capabilities, Generators, answer_cap, register
from reasonbudget.methods.budget.tale_text import LAYOUTS, budget_prompt, estimate_prompt, parse_estimate
from reasonbudget.types import MethodResult, TokenIds


@dataclass(frozen=True, kw_only=True)
class TaleConfig:
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    max_estimate_tokens: int = 32
    max_thinking_tokens: int = 2048
    """Safety cap of the answering call (as for plain CoT); the budget in the prompt is not enforced."""
    max_answer_tokens: int | None = None
    """None: the model profile's cap (`ReasoningProfile.answer_tokens`: the answer ends at its end of turn)."""
    estimator: str | None = None
    """Directory of a fitted budget estimator; None: TALE-EP's zero-shot estimate."""
    prompts: str = "reference"
    """Prompt wording (`tale_text.LAYOUTS`): the reference code's (default) or ours."""

    def __post_init__(self) -> None:
        if self.max_estimate_tokens < 1:
            raise ValueError(f"max_estimate_tokens={self.max_estimate_tokens}: must be >= 1")
        if self.prompts not in LAYOUTS:
            raise ValueError(f"prompts={self.prompts!r}: accepted are {', '.join(LAYOUTS)}")


def questions_of(prompts: Sequence[TokenIds], method: str) -> list[str]:
    qs = [getattr(p, "question", None) for p in prompts]
    if any(q is None for q in qs):
        raise ValueError(f"{method} rewrites the question: build prompts with reasonbudget.models.build_prompt")
    return qs


def with_estimate(r: MethodResult, e: MethodResult, beta: int | None) -> MethodResult:
    """The answer's result charged with its estimate's cost, the estimate in the trace."""
    trace = {**r.trace, "estimate": beta, "estimate_text": e.answer}
    return MethodResult(tokens=r.tokens, thinking=r.thinking, answer=r.answer, usage=r.usage + e.usage,
                        finish_reason=r.finish_reason, trace=trace)


class _EstimateCharged(Observer):
    """Passes the answer row to the caller's observer; its early result is charged with the estimate."""

    def __init__(self, inner: Observer, estimate: MethodResult, beta: int | None) -> None:
        self.inner, self.estimate, self.beta = inner, estimate, beta
        self.hidden_layers = inner.hidden_layers

    def process_logits(self, logits, hidden):
        return self.inner.process_logits(logits, hidden)

    def on_token(self, token, forced):
        return self.inner.on_token(token, forced)

    def on_edit(self, dropped, inserted):
        self.inner.on_edit(dropped, inserted)

    def batched_work(self):
        return self.inner.batched_work()

    @property
    def cancelled(self) -> bool:
        return self.inner.cancelled

    def on_progress(self, event) -> None:
        self.inner.on_progress(event)

    def on_result(self, result: MethodResult) -> None:
        self.inner.on_result(with_estimate(result, self.estimate, self.beta))


@register
@dataclass(frozen=True)
class Tale:
    name: ClassVar[str] = "tale"
    # it estimates its own budget; a given thinking budget only caps the estimate
    capabilities: ClassVar[Capabilities] = Capabilities(budget="thinking tokens", budget_required=False,
                                                        streams="tokens")
    config_type: ClassVar[type] = TaleConfig
    config: TaleConfig = field(default_factory=TaleConfig)

    def run(self, backend: Backend, prompts: Sequence[TokenIds], *, budget: int | None,
            generator: Generators, observers: Sequence[Observer] | None = None) -> list[MethodResult]:
        if budget is not None and budget < 1:
            raise ValueError(f"tale: a budget cap must be >= 1 tokens, got {budget}")
        c = self.config
        questions = questions_of(prompts, self.name)
        if c.estimator is not None:
            check_level(backend, "tokens", "tale:estimator (a regression on the prompt's hidden states)")
            estimates, betas = self._learned_estimates(backend, prompts, budget)
        else:
            asks = [backend.prompt(estimate_prompt(q, c.prompts)) for q in questions]
            cfg = BudgetConfig(max_thinking_tokens=1, max_answer_tokens=c.max_estimate_tokens)
            estimates = backend.generate(asks, [cfg] * len(asks), c.sampling, generator,
                                         prefill_text=backend.profile.nothinking)
            betas = [parse_estimate(e.answer, maximum=budget) for e in estimates]
        cfg = BudgetConfig(max_thinking_tokens=c.max_thinking_tokens, max_answer_tokens=answer_cap(c, backend))
        watch = ([_EstimateCharged(o, e, b) for o, e, b in zip(observers, estimates, betas)]
                 if observers is not None else None)
        results = backend.generate([backend.prompt(budget_prompt(q, b, c.prompts)) for q, b in zip(questions, betas)],
                                   [cfg] * len(prompts), c.sampling, generator, observers=watch)
        return [with_estimate(r, e, b) for r, e, b in zip(results, estimates, betas)]

    def _learned_estimates(self, engine, prompts: Sequence[TokenIds],
                           cap: int | None) -> tuple[list[MethodResult], list[int]]:
        from reasonbudget.methods.budget.budget_estimator import load_estimator

        model = engine.model
        t0 = time.perf_counter()
        betas = load_estimator(self.config.estimator, model).estimate(model, prompts)
        wall = (time.perf_counter() - t0) / len(prompts)
        betas = [min(b, cap) if cap is not None else b for b in betas]
        estimates = [MethodResult(tokens=(), thinking="", answer=f"[[{b}]]", finish_reason="stop", trace={},
                                  usage=model_usage(model, prompt_tokens=len(p), processed=len(p), forward_passes=1,
                                                    wall_seconds=wall))
                     for p, b in zip(prompts, betas)]
        return estimates, betas
