"""Diverse verifier tree search (search-and-learn): N / M independent subtrees, one beam each.

Each round, every live subtree samples M candidate next steps from its beam, the PRM scores them, and the
best candidate becomes the beam (a subtree whose best candidate finished is done). Independent subtrees keep
the search diverse where a single beam search collapses onto one prefix. No lookahead (search-and-learn's
current default). The answer: the finished subtree beam with the highest score. (search-and-learn also emits
each subtree's other last candidates, some unfinished (its issue 57); here only finished beams compete.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from reasonbudget.engine.engine import Engine
from reasonbudget.methods.base import Generators, register
from reasonbudget.methods.scaling.beam_search import BeamSearchConfig
from reasonbudget.methods.scaling.common import best, check_budget, finite, setup, split
from reasonbudget.search.particles import Particle
from reasonbudget.types import MethodResult, TokenIds


@register
@dataclass(frozen=True)
class DVTS:
    name: ClassVar[str] = "dvts"
    uses_budget: ClassVar[bool] = True
    config_type: ClassVar[type] = BeamSearchConfig
    config: BeamSearchConfig = field(default_factory=BeamSearchConfig)

    def run(self, engine: Engine, prompts: Sequence[TokenIds], *, budget: int | None,
            generator: Generators) -> list[MethodResult]:
        n = check_budget(self.name, budget)
        m = min(self.config.beam_width, n)
        trees = max(1, n // m)
        s = setup(self.config, engine, prompts, generator, method=self.name)
        pops = s.runner.start(prompts, [trees * m] * len(prompts))
        # a particle's subtree is its position in the population: slots [t*m, (t+1)*m) belong to subtree t
        finals: list[list[Particle]] = [[] for _ in prompts]
        rounds = 0
        try:
            flat = [p for pop in pops for p in pop]
            while flat:
                flat = s.runner.extend(flat, s.generators)
                flat = s.runner.score(flat, range(len(flat)), s.scorer, s.questions)
                rounds += 1
                new: list[Particle] = []
                for i, pop in enumerate(split(flat, len(prompts))):
                    for t in range(0, len(pop), m):
                        beam = max(pop[t : t + m], key=lambda p: finite(p.score))
                        if beam.done:
                            finals[i].append(beam)
                        else:
                            new.extend([beam] * m)
                flat = s.runner.rebind(flat, new)
        finally:
            s.runner.close()
        calls, tokens = s.prm_share(len(prompts))
        return [s.runner.result(best(done), wall_seconds=s.wall(len(prompts)), prm_calls=calls, prm_tokens=tokens,
                                trace={"n": trees * m, "subtrees": trees, "rounds": rounds})
                for done in finals]


