"""Plain chain of thought: think until the model ends thinking by itself, then answer.

`budget` is ignored (there is none); `max_thinking_tokens` is only a safety cap. If the model emits EOS
while still thinking, the profile's forcing string closes thinking so that an answer still follows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from reasonbudget.engine.budget import BudgetConfig
from reasonbudget.engine.controllers import Observer
from reasonbudget.engine.sampling import SamplingConfig
from reasonbudget.methods.base import Backend, Capabilities, DraftSettings, Generators, answer_cap, register
from reasonbudget.methods.base import speculation_for
from reasonbudget.types import MethodResult, TokenIds


@dataclass(frozen=True, kw_only=True)
class PlainConfig(DraftSettings):
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    max_thinking_tokens: int = 2048
    """Safety cap on thinking (not a budget: use budget-forcing for that)."""
    max_answer_tokens: int | None = None
    """None: the model profile's cap (`ReasoningProfile.answer_tokens`: the answer ends at its end of turn)."""


@register
@dataclass(frozen=True)
class PlainCoT:
    name: ClassVar[str] = "plain"
    capabilities: ClassVar[Capabilities] = Capabilities(budget="none", streams="tokens", joins_running_batch=True)
    config_type: ClassVar[type] = PlainConfig
    config: PlainConfig = field(default_factory=PlainConfig)

    def row_config(self, backend: Backend, budget: int | None = None) -> BudgetConfig:
        c = self.config
        return BudgetConfig(max_thinking_tokens=c.max_thinking_tokens, max_answer_tokens=answer_cap(c, backend))

    def run(self, backend: Backend, prompts: Sequence[TokenIds], *, budget: int | None = None,
            generator: Generators, observers: Sequence[Observer] | None = None) -> list[MethodResult]:
        c = self.config
        cfg = self.row_config(backend)
        return backend.generate(prompts, [cfg] * len(prompts), c.sampling, generator, observers=observers,
                                **speculation_for(c, backend))
