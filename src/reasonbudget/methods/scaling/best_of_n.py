"""Best-of-N, weighted best-of-N and majority vote: N complete samples per problem, one PRM call each.

- best-of-n: the sample with the highest aggregated PRM score.
- weighted-best-of-n: PRM scores summed per group of equivalent final answers; the best group wins.
- majority-vote (maj@N, self-consistency): the most frequent equivalent answer; no PRM.
Samples share the prompt's KV rows (one prefill, forked) and decode in one batch with every other prompt's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import ClassVar

from reasonbudget.engine.controllers import Observer
from reasonbudget.methods.base import Backend, Capabilities, Generators, register
from reasonbudget.methods.scaling.common import (SearchConfig, SearchMethod, best, check_budget, score_list, setup,
                                                 split)
from reasonbudget.search.voting import answer_groups, vote
from reasonbudget.types import MethodResult, TokenIds


@dataclass(frozen=True, kw_only=True)
class BestOfNConfig(SearchConfig):
    pass


class _Sampled(SearchMethod):
    """N samples per prompt, then a selection rule (`choose`)."""

    name: ClassVar[str]
    config_type: ClassVar[type] = BestOfNConfig
    config: BestOfNConfig

    def choose(self, answers: Sequence[str], scores: Sequence[float]) -> int | None:
        raise NotImplementedError

    def run(self, backend: Backend, prompts: Sequence[TokenIds], *, budget: int | None,
            generator: Generators, observers: Sequence[Observer] | None = None) -> list[MethodResult]:
        n = check_budget(self.name, budget)
        s = setup(self.config, backend, prompts, generator, method=self.name, needs_prm="prm" in self.capabilities.models,
                  observers=observers)
        pops = s.runner.start(prompts, [n] * len(prompts))
        try:
            flat = s.runner.extend([p for pop in pops for p in pop], s.generators, to_end=True)
            if s.scorer is not None:
                flat = s.runner.score(flat, range(len(flat)), s.scorer, s.questions)
        finally:
            s.runner.close()
        calls, tokens = s.prm_share(len(prompts))
        results = []
        for pop in split(flat, len(prompts)):
            answers = [s.runner.result(p, wall_seconds=0).answer for p in pop]
            pick = self.choose(answers, [p.score for p in pop])
            chosen = pop[pick] if pick is not None else best(pop)
            trace = {"n": n, "answers": answers, "scores": score_list(pop)}
            results.append(s.runner.result(chosen, wall_seconds=s.wall(len(prompts)), prm_calls=calls,
                                           prm_tokens=tokens, trace=trace))
        return s.finish(results)


@register
@dataclass(frozen=True)
class BestOfN(_Sampled):
    name: ClassVar[str] = "best-of-n"
    config: BestOfNConfig = field(default_factory=BestOfNConfig)

    def choose(self, answers, scores):
        return None  # `best`: highest score, answered samples first


@register
@dataclass(frozen=True)
class WeightedBestOfN(_Sampled):
    name: ClassVar[str] = "weighted-best-of-n"
    config: BestOfNConfig = field(default_factory=BestOfNConfig)

    def choose(self, answers, scores):
        return vote(answer_groups(answers), weights=scores)


@register
@dataclass(frozen=True)
class MajorityVote(_Sampled):
    name: ClassVar[str] = "majority-vote"
    capabilities: ClassVar[Capabilities] = replace(SearchMethod.capabilities, models=("policy",))  # no PRM
    config: BestOfNConfig = field(default_factory=BestOfNConfig)

    def choose(self, answers, scores):
        return vote(answer_groups(answers))
