"""Budget forcing (s1, Muennighoff et al. 2025, arXiv 2501.19393; baseline in Budget Guidance).

1. Think; at most B thinking tokens (B = `budget`, counted in model tokens sampled before the end of thinking).
2. When B is reached, inject the profile's forcing string (Qwen's "Considering the limited time ... </think>",
   or "Final answer:" for instruct models) and continue with the answer.
3. Optionally, below `min_thinking_tokens`, replace an attempt to end thinking by "Wait" (at most
   `max_waits` times): s1's way of making the model think longer.
The answer is generated after the forced end (never an empty answer; at most `max_answer_tokens`).

`style=final-answer` is the baseline of the Budget Guidance paper instead of step 2 (its code's
`force_final_answer`): at B write "\n**Final Answer**" and let the model go on, at most B more tokens, until it
closes thinking, writes a blank line or "Wait" (those stop strings are left out, as vLLM does); then the bare
close marker and a full answer. The wrap-up tokens count as answer tokens, so thinking still never exceeds B;
the trace also has the paper's count, `paper_thinking_tokens` (everything before the last close marker, forced
tokens included).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from reasonbudget.engine.budget import BudgetConfig
from reasonbudget.engine.controllers import Observer
from reasonbudget.engine.sampling import SamplingConfig
from reasonbudget.methods.base import Backend, Capabilities, DraftSettings, Generators, answer_cap, register
from reasonbudget.methods.base import speculation_for
from reasonbudget.types import MethodResult, TokenIds


@dataclass(frozen=True, kw_only=True)
class BudgetForcingConfig(DraftSettings):
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    min_thinking_tokens: int = 0
    """Extend thinking with "Wait" while below this many tokens (0 = off)."""
    max_waits: int = 4
    style: Literal["sentence", "final-answer"] = "sentence"
    """sentence: the profile's forcing sentence closes thinking (s1, Qwen3); final-answer: the Budget Guidance
    paper's baseline (see the module docstring)."""
    max_answer_tokens: int | None = None
    """None: the model profile's cap (`ReasoningProfile.answer_tokens`: the answer ends at its end of turn)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.min_thinking_tokens < 0:
            raise ValueError(f"min_thinking_tokens={self.min_thinking_tokens}: must be >= 0")


@register
@dataclass(frozen=True)
class BudgetForcing:
    name: ClassVar[str] = "budget-forcing"
    capabilities: ClassVar[Capabilities] = Capabilities(budget="thinking tokens", default_budget=256,
                                                        per_row_budgets=True, streams="tokens",
                                                        joins_running_batch=True)
    config_type: ClassVar[type] = BudgetForcingConfig
    config: BudgetForcingConfig = field(default_factory=BudgetForcingConfig)

    def row_config(self, backend: Backend, budget: int) -> BudgetConfig:
        c = self.config
        return BudgetConfig(max_thinking_tokens=budget, min_thinking_tokens=min(c.min_thinking_tokens, budget),
                            max_waits=c.max_waits, max_answer_tokens=answer_cap(c, backend),
                            wrapup=c.style == "final-answer")

    def run(self, backend: Backend, prompts: Sequence[TokenIds], *, budget: int | Sequence[int] | None,
            generator: Generators, observers: Sequence[Observer] | None = None) -> list[MethodResult]:
        """`budget`: one thinking budget for all prompts, or one per prompt (the server batches mixed budgets)."""
        budgets = [budget] * len(prompts) if budget is None or isinstance(budget, int) else list(budget)
        if len(budgets) != len(prompts):
            raise ValueError(f"budget-forcing got {len(budgets)} budgets for {len(prompts)} prompts")
        for b in budgets:
            if b is None or b < 1:
                raise ValueError(f"budget-forcing needs a thinking budget >= 1 tokens, got {b}")
        c = self.config
        cfgs = [self.row_config(backend, b) for b in budgets]
        return backend.generate(prompts, cfgs, c.sampling, generator, observers=observers, **speculation_for(c, backend))
