"""Step-level beam search with a PRM, as search-and-learn runs it (Snell et al. 2024).

N beams per problem. Each round every live beam gets one sampled step; the PRM scores the prefixes; beams
that finished move to `completed`; the best N / M live beams (M = `beam_width`) are kept and each is copied
M times for the next round. Ends when N beams have completed or none is live (a beam on its last allowed
step runs to the end of its answer). The answer: the completed beam with the highest score.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from reasonbudget.engine.controllers import Observer
from reasonbudget.methods.base import Backend, Generators, register
from reasonbudget.methods.scaling.common import (SearchMethod, SearchConfig, best, check_budget, finite,
                                                 setup, step_search)
from reasonbudget.steps import Particle
from reasonbudget.types import MethodResult, TokenIds


@dataclass(frozen=True, kw_only=True)
class BeamSearchConfig(SearchConfig):
    beam_width: int = 4
    """M: copies of each kept beam; N / M beams survive each round."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.beam_width < 1:
            raise ValueError(f"beam_width={self.beam_width}: must be >= 1")


def keep_best(live: Sequence[Particle], n: int, width: int) -> list[Particle]:
    """The best max(1, n // width) live beams (failed PRM scores last), each copied to fill n slots."""
    kept = sorted(live, key=lambda p: finite(p.score), reverse=True)[: max(1, n // width)]
    return [kept[i % len(kept)] for i in range(n)]


@register
@dataclass(frozen=True)
class BeamSearch(SearchMethod):
    name: ClassVar[str] = "beam-search"
    config_type: ClassVar[type] = BeamSearchConfig
    config: BeamSearchConfig = field(default_factory=BeamSearchConfig)

    def run(self, backend: Backend, prompts: Sequence[TokenIds], *, budget: int | None,
            generator: Generators, observers: Sequence[Observer] | None = None) -> list[MethodResult]:
        n = check_budget(self.name, budget)
        s = setup(self.config, backend, prompts, generator, method=self.name, observers=observers)

        def select(i: int, pop: list[Particle], completed: list[Particle]) -> list[Particle]:
            completed.extend(p for p in pop if p.done)
            live = [p for p in pop if not p.done]
            return keep_best(live, n, self.config.beam_width) if live and len(completed) < n else []

        completed, rounds = step_search(s, prompts, n, select)
        calls, tokens = s.prm_share(len(prompts))
        return s.finish([
            s.runner.result(best(done), wall_seconds=s.wall(len(prompts)), prm_calls=calls, prm_tokens=tokens,
                                trace={"n": n, "rounds": rounds, "completed": len(done)})
                for done in completed])
