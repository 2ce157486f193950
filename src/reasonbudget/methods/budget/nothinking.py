"""NoThinking (Ma et al. 2025, arXiv 2504.09858): prefill an already finished thinking block and answer.

The profile's `nothinking` text ("Okay, I think I have finished thinking.</think>", or "Final answer:" for
instruct models) is appended to the prompt; only answer tokens are generated. `budget` is ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from reasonbudget.engine.budget import BudgetConfig
from reasonbudget.engine.controllers import Observer
from reasonbudget.engine.sampling import SamplingConfig
from reasonbudget.methods.base import Backend, Capabilities, Generators, answer_cap, register
from reasonbudget.types import MethodResult, TokenIds


@dataclass(frozen=True, kw_only=True)
class NoThinkingConfig:
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    max_answer_tokens: int | None = None
    """None: the model profile's cap (`ReasoningProfile.answer_tokens`: the answer ends at its end of turn)."""


@register
@dataclass(frozen=True)
class NoThinking:
    name: ClassVar[str] = "nothinking"
    capabilities: ClassVar[Capabilities] = Capabilities(budget="none", streams="tokens", thinks=False,
                                                        joins_running_batch=True)
    config_type: ClassVar[type] = NoThinkingConfig
    config: NoThinkingConfig = field(default_factory=NoThinkingConfig)

    def row_config(self, backend: Backend, budget: int | None = None) -> BudgetConfig:
        return BudgetConfig(max_thinking_tokens=1, max_answer_tokens=answer_cap(self.config, backend))

    def run(self, backend: Backend, prompts: Sequence[TokenIds], *, budget: int | None = None,
            generator: Generators, observers: Sequence[Observer] | None = None) -> list[MethodResult]:
        cfg = self.row_config(backend)
        return backend.generate(prompts, [cfg] * len(prompts), self.config.sampling, generator,
                                prefill_text=backend.profile.nothinking, observers=observers)
