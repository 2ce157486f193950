"""Particle Gibbs (Puri et al. 2025, Alg. 2): particle filtering repeated, each later iteration conditioned on
a reference particle drawn from the previous iteration's final set (softmax of logit weights over tau).

Budget N = particles x iterations (as its_hub: N must be divisible by `iterations`). In iterations after the
first, n - 1 free particles run alongside the reference; at round t the resampling pool holds the free
particles and the reference's prefix of t steps, weighted by the reference's own score after t steps (the
paper's code compares it one step off; its_hub#54 compared full against partial weights). Drawing the
reference forks its t-step prefix into a free particle (KV row forked and cut back; a finished reference
gets its row back by one prefill per iteration). The reference itself is never replaced. The answer: the
highest final weight of the last iteration.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from reasonbudget.engine.controllers import Observer
from reasonbudget.methods.base import Backend, Generators, register
from reasonbudget.methods.scaling.common import SearchMethod, Search, check_budget, setup
from reasonbudget.methods.scaling.particle_filter import (ParticleFilterConfig, particle_log_weights, run_filter,
                                                          select)
from reasonbudget.steps import Particle
from reasonbudget.search.resampling import normalized
from reasonbudget.types import MethodResult, TokenIds


@dataclass(frozen=True, kw_only=True)
class ParticleGibbsConfig(ParticleFilterConfig):
    iterations: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.iterations < 1:
            raise ValueError(f"iterations={self.iterations}: must be >= 1")


def particles_per_iteration(name: str, budget: int | None, iterations: int, chains: int = 1) -> int:
    n = check_budget(name, budget)
    per = n // (iterations * chains)
    if per < 1 or per * iterations * chains != n:
        raise ValueError(f"{name}: budget N={n} must be a positive multiple of iterations x chains = "
                         f"{iterations * chains} (N = particles x iterations x chains)")
    if iterations > 1 and per < 2:
        raise ValueError(f"{name}: with {iterations} iterations each needs >= 2 particles (budget >= "
                         f"{2 * iterations * chains})")
    return per


def draw_reference(pop: Sequence[Particle], cfg: ParticleFilterConfig, gen: torch.Generator, tau: float) -> Particle:
    probs = normalized(particle_log_weights(pop, cfg), tau)
    return pop[int(torch.multinomial(probs, 1, generator=gen))]


def gibbs_iterations(s: Search, cfg: ParticleGibbsConfig, per: int, taus: Sequence[float], *,
                     on_iteration=None) -> tuple[list[list[Particle]], list[dict]]:
    """`len(taus)` populations (runner prompts) of `per` particles, `cfg.iterations` PG iterations each.
    `on_iteration(references)` may rewrite the references between iterations (parallel tempering swaps)."""
    k = len(taus)
    stats: list[dict] = [{} for _ in range(k)]
    pops = s.runner.spawn([per] * k)
    pops = run_filter(s, pops, cfg, taus=taus, stats=stats)
    for _ in range(cfg.iterations - 1):
        refs = [draw_reference(pop, cfg, s.generators[j], taus[j]) for j, pop in enumerate(pops)]
        if on_iteration is not None:
            refs = on_iteration(refs)
        # free every row but the references'; a reference without one (it finished before the last round)
        # gets one back, so that each copy of its prefix is a fork, not a prefill
        s.runner.rebind([p for pop in pops for p in pop], [], keep_rows=[r.row for r in refs if r.row is not None])
        refs = [s.runner.materialize(r) for r in refs]
        free = s.runner.spawn([per - 1] * k)
        free = run_filter(s, free, cfg, taus=taus, references=refs, stats=stats)
        pops = [pop + [ref] for pop, ref in zip(free, refs)]
    return pops, stats


@register
@dataclass(frozen=True)
class ParticleGibbs(SearchMethod):
    name: ClassVar[str] = "particle-gibbs"
    config_type: ClassVar[type] = ParticleGibbsConfig
    config: ParticleGibbsConfig = field(default_factory=ParticleGibbsConfig)

    def run(self, backend: Backend, prompts: Sequence[TokenIds], *, budget: int | None,
            generator: Generators, observers: Sequence[Observer] | None = None) -> list[MethodResult]:
        cfg = self.config
        per = particles_per_iteration(self.name, budget, cfg.iterations)
        s = setup(cfg, backend, prompts, generator, method=self.name, observers=observers)
        s.runner.start(prompts, [0] * len(prompts), spare_rows=len(prompts) * (2 * per + 2))
        try:
            pops, stats = gibbs_iterations(s, cfg, per, [cfg.tau] * len(prompts))
        finally:
            s.runner.close()
        calls, tokens = s.prm_share(len(prompts))
        return s.finish([
            s.runner.result(select(pop, cfg, s.generators[i], s.runner), wall_seconds=s.wall(len(prompts)),
                                prm_calls=calls, prm_tokens=tokens,
                                trace={"particles": per, "iterations": cfg.iterations, "ess": stats[i].get("ess", [])})
                for i, pop in enumerate(pops)])
