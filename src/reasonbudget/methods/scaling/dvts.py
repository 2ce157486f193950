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

from reasonbudget.engine.controllers import Observer
from reasonbudget.methods.base import Backend, Generators, register
from reasonbudget.methods.scaling.beam_search import BeamSearchConfig
from reasonbudget.methods.scaling.common import SearchMethod, best, check_budget, finite, setup, step_search
from reasonbudget.steps import Particle
from reasonbudget.types import MethodResult, TokenIds


@register
@dataclass(frozen=True)
class DVTS(SearchMethod):
    name: ClassVar[str] = "dvts"
    config_type: ClassVar[type] = BeamSearchConfig
    config: BeamSearchConfig = field(default_factory=BeamSearchConfig)

    def run(self, backend: Backend, prompts: Sequence[TokenIds], *, budget: int | None,
            generator: Generators, observers: Sequence[Observer] | None = None) -> list[MethodResult]:
        n = check_budget(self.name, budget)
        m = min(self.config.beam_width, n)
        trees = max(1, n // m)
        s = setup(self.config, backend, prompts, generator, method=self.name, observers=observers)

        def select(i: int, pop: list[Particle], finals: list[Particle]) -> list[Particle]:
            # a candidate's subtree is its position: slots [t*m, (t+1)*m) belong to subtree t
            new: list[Particle] = []
            for t in range(0, len(pop), m):
                beam = max(pop[t : t + m], key=lambda p: finite(p.score))
                if beam.done:
                    finals.append(beam)
                else:
                    new.extend([beam] * m)
            return new

        finals, rounds = step_search(s, prompts, trees * m, select)
        calls, tokens = s.prm_share(len(prompts))
        return s.finish([
            s.runner.result(best(done), wall_seconds=s.wall(len(prompts)), prm_calls=calls, prm_tokens=tokens,
                                trace={"n": trees * m, "subtrees": trees, "rounds": rounds})
                for done in finals])


