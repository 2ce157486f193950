"""RSD: reward-guided speculative decoding (Liao et al., ICML 2025; `../shared/specs/speculative.md` 2). The draft
writes each reasoning step; a PRM scores it; the step is kept iff its score >= delta (`threshold`, default 0.7),
else the target writes that step from the same prefix. Not lossless: the PRM decides what is good enough.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from reasonbudget.engine.controllers import Observer
from reasonbudget.methods.base import Backend, Capabilities, Generators, register
from reasonbudget.methods.drafting.steps import PRMArbiter, StepDraftConfig, run_step_drafting
from reasonbudget.types import MethodResult, TokenIds


@dataclass(frozen=True, kw_only=True)
class RSDConfig(StepDraftConfig):
    threshold: float = 0.7
    """delta: keep the draft's step iff PRM(step) >= delta."""
    prm: str = "auto"
    """The PRM that scores draft steps (`rewards.factory`: auto, testbed, oracle, judge, a directory...)."""


@register
@dataclass(frozen=True)
class RSD:
    name: ClassVar[str] = "rsd"
    capabilities: ClassVar[Capabilities] = Capabilities(budget="none", level="steps",
                                                        models=("policy", "draft", "prm"))
    config_type: ClassVar[type] = RSDConfig
    config: RSDConfig = field(default_factory=RSDConfig)

    def run(self, backend: Backend, prompts: Sequence[TokenIds], *, budget: int | None = None,
            generator: Generators, observers: Sequence[Observer] | None = None) -> list[MethodResult]:
        from reasonbudget.rewards.factory import load_prm

        prm = load_prm(self.config.prm, getattr(backend, "model", backend))
        return run_step_drafting(self.config, backend, prompts, generator, PRMArbiter(prm, self.config.threshold),
                                 method=self.name, observers=observers,
                                 scorer_tokens=lambda: getattr(prm, "tokens_read", 0))
