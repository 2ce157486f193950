"""MTAD: multi-token joint decoding with an auxiliary model (Qin et al., ICLR 2025; `../shared/specs/speculative.md`
4). The draft beam-samples W candidate blocks of gamma tokens (its q^: logits at the draft temperature, top-k 10,
top-p 0.9), the most likely block goes to one target forward, and the longest prefix whose joint likelihood ratio
P(x_1..i) / Q(x_1..i) exceeds tau is kept, then one token from the target's own distribution (no residual).
Lossy by design: it favours blocks the target finds jointly likely (the paper reports better downstream scores
and 1.26x over speculative decoding); with a greedy target it keeps the argmax-matching prefix of the block.

Fixed from the reference (spec 4.6): beam scores are normalised in log space, not by a log-softmax over
probabilities. The target's sampling uses the same top-k and top-p as the draft, as in the reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import ClassVar

from reasonbudget.engine.budget import BudgetConfig
from reasonbudget.engine.controllers import Observer
from reasonbudget.engine.speculation import MTADSettings
from reasonbudget.methods.base import Backend, Capabilities, Generators, answer_cap, register, speculation_for
from reasonbudget.methods.budget.plain import PlainConfig
from reasonbudget.types import MethodResult, TokenIds


@dataclass(frozen=True, kw_only=True)
class MTADConfig(PlainConfig):
    width: int = MTADSettings.width
    """W: beams the draft samples per block."""
    tau: float = MTADSettings.tau
    """Keep the longest prefix with P/Q > tau (the reference's --accept-thres)."""
    draft_temperature: float = MTADSettings.temperature
    top_k: int = MTADSettings.top_k
    top_p: float = MTADSettings.top_p
    replacement: bool = MTADSettings.replacement

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.draft:
            raise ValueError("mtad needs a draft model: mtad:draft=NAME (it must share the target's tokenizer)")
        self.mtad_settings  # validates width, tau, temperature

    @property
    def mtad_settings(self) -> MTADSettings:
        return MTADSettings(width=self.width, tau=self.tau, temperature=self.draft_temperature, top_k=self.top_k,
                            top_p=self.top_p, replacement=self.replacement)


@register
@dataclass(frozen=True)
class MTAD:
    name: ClassVar[str] = "mtad"
    capabilities: ClassVar[Capabilities] = Capabilities(budget="none", level="tokens", models=("policy", "draft"),
                                                        streams="tokens")
    config_type: ClassVar[type] = MTADConfig
    config: MTADConfig = field(default_factory=MTADConfig)

    def run(self, backend: Backend, prompts: Sequence[TokenIds], *, budget: int | None = None,
            generator: Generators, observers: Sequence[Observer] | None = None) -> list[MethodResult]:
        c = self.config
        cfg = BudgetConfig(max_thinking_tokens=c.max_thinking_tokens, max_answer_tokens=answer_cap(c, backend))
        sampling = c.sampling if c.sampling.greedy else replace(c.sampling, top_k=c.top_k, top_p=c.top_p)
        return backend.generate(prompts, [cfg] * len(prompts), sampling, generator, observers=observers,
                                **speculation_for(c, backend))
