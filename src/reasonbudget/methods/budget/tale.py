"""TALE-EP (Han et al. 2025, arXiv 2412.18547): the model estimates its own token budget, then answers with
that budget written into the prompt ("Let's think step by step and use less than N tokens:").

1. Estimate: the same model, zero-shot, answers the estimation prompt directly (its thinking is prefilled
   as finished, as in NoThinking); the first [[n]] of its reply is the estimate.
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

from reasonbudget.engine.budget import BudgetConfig
from reasonbudget.engine.engine import Engine
from reasonbudget.engine.sampling import SamplingConfig
from reasonbudget.methods.base import BudgetedRun, Generators, register
from reasonbudget.methods.budget.tale_text import budget_prompt, estimate_prompt, parse_estimate
from reasonbudget.types import MethodResult, TokenIds, Usage


@dataclass(frozen=True, kw_only=True)
class TaleConfig:
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    max_estimate_tokens: int = 32
    max_thinking_tokens: int = 2048
    """Safety cap of the answering call (as for plain CoT); the budget in the prompt is not enforced."""
    max_answer_tokens: int = 256
    estimator: str | None = None
    """Directory of a fitted budget estimator; None: TALE-EP's zero-shot estimate."""

    def __post_init__(self) -> None:
        if self.max_estimate_tokens < 1:
            raise ValueError(f"max_estimate_tokens={self.max_estimate_tokens}: must be >= 1")


def questions_of(prompts: Sequence[TokenIds], method: str) -> list[str]:
    qs = [getattr(p, "question", None) for p in prompts]
    if any(q is None for q in qs):
        raise ValueError(f"{method} rewrites the question: build prompts with reasonbudget.models.build_prompt")
    return qs


@register
@dataclass(frozen=True)
class Tale:
    name: ClassVar[str] = "tale"
    uses_budget: ClassVar[bool] = False  # it estimates its own; a given budget only caps the estimate
    config_type: ClassVar[type] = TaleConfig
    config: TaleConfig = field(default_factory=TaleConfig)

    def run(self, engine: Engine, prompts: Sequence[TokenIds], *, budget: int | None,
            generator: Generators) -> list[MethodResult]:
        from reasonbudget.models.registry import build_prompt

        if budget is not None and budget < 1:
            raise ValueError(f"tale: a budget cap must be >= 1 tokens, got {budget}")
        c, model = self.config, engine.model
        questions = questions_of(prompts, self.name)
        if c.estimator is not None:
            estimates, betas = self._learned_estimates(engine, prompts, budget)
        else:
            estimator = BudgetedRun(BudgetConfig(max_thinking_tokens=1, max_answer_tokens=c.max_estimate_tokens),
                                    c.sampling, prefill_text=model.profile.nothinking, observed=False)
            estimates = estimator(engine, [build_prompt(model, estimate_prompt(q)) for q in questions], generator)
            betas = [parse_estimate(e.answer, maximum=budget) for e in estimates]
        answer = BudgetedRun(BudgetConfig(max_thinking_tokens=c.max_thinking_tokens,
                                          max_answer_tokens=c.max_answer_tokens), c.sampling)
        results = answer(engine, [build_prompt(model, budget_prompt(q, b)) for q, b in zip(questions, betas)],
                         generator)
        out = []
        for r, e, b in zip(results, estimates, betas):
            trace = {**r.trace, "estimate": b, "estimate_text": e.answer}
            out.append(MethodResult(tokens=r.tokens, thinking=r.thinking, answer=r.answer, usage=r.usage + e.usage,
                                    finish_reason=r.finish_reason, trace=trace))
        return out

    def _learned_estimates(self, engine: Engine, prompts: Sequence[TokenIds],
                           cap: int | None) -> tuple[list[MethodResult], list[int]]:
        from reasonbudget.methods.budget.budget_estimator import load_estimator

        model = engine.model
        t0 = time.perf_counter()
        betas = load_estimator(self.config.estimator, model).estimate(model, prompts)
        wall = (time.perf_counter() - t0) / len(prompts)
        betas = [min(b, cap) if cap is not None else b for b in betas]
        estimates = [MethodResult(tokens=(), thinking="", answer=f"[[{b}]]", finish_reason="stop", trace={},
                                  usage=Usage(prompt_tokens=len(p), tokens_by_model={model.name: len(p)},
                                              forward_passes_by_model={model.name: 1}, wall_seconds=wall,
                                              energy_flops=2.0 * model.num_params * len(p)))
                     for p, b in zip(prompts, betas)]
        return estimates, betas
