"""Speculative decoding (Leviathan et al. 2023; Chen et al. 2023; `../shared/specs/speculative.md` 1): plain
chain of thought on the target, written faster: a draft model proposes `gamma` tokens per round and one target
forward verifies them (greedy: kept while they equal the target's argmax; sampled: exact rejection sampling).
The output follows the target's distribution (greedy: equals greedy decoding up to floating-point order). Usage
counts drafted and accepted tokens and each model's tokens and forward passes.

Budget forcing and budget guidance take the same settings (`budget-forcing:draft=...`): their budgets hold
under speculation, because the decode loop hands every accepted token to their controllers in order and cuts
a round's accepted run where a controller forces or stops (`engine.speculation`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from reasonbudget.methods.base import Capabilities, register
from reasonbudget.methods.budget.plain import PlainConfig, PlainCoT


@dataclass(frozen=True, kw_only=True)
class SpeculativeConfig(PlainConfig):
    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.draft:
            raise ValueError("speculative needs a draft model: speculative:draft=NAME (e.g. testbed-draft, "
                             "qwen2.5-coder-0.5b); it must share the target's tokenizer")


@register
@dataclass(frozen=True)
class SpeculativeDecoding(PlainCoT):
    name: ClassVar[str] = "speculative"
    capabilities: ClassVar[Capabilities] = Capabilities(budget="none", level="tokens", models=("policy", "draft"),
                                                        streams="tokens")
    config_type: ClassVar[type] = SpeculativeConfig
    config: SpeculativeConfig = field(default_factory=SpeculativeConfig)
