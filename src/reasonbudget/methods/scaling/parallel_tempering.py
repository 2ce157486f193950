"""Parallel tempering over particle Gibbs (Puri et al. 2025, Alg. 3): M chains, chain k resampling with
softmax(w / tau_k); after each PG iteration, neighbouring chains swap their references with probability
min(1, exp((1/tau_k - 1/tau_k+1) (S(x_k+1) - S(x_k)))), S(x) = sum over steps of logit(score) (the target
p_M(x) prod_t odds_t^(1/tau), under which the policy terms cancel). Budget N = particles x iterations x
chains. With one iteration (the paper's evaluated setting) it is M independent filters at M temperatures.
The answer: the highest final weight over all chains.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from reasonbudget.engine.controllers import Observer
from reasonbudget.engine.sampling import child_generators
from reasonbudget.methods.base import Backend, Generators, register
from reasonbudget.methods.scaling.common import SearchMethod, best, setup
from reasonbudget.methods.scaling.particle_gibbs import ParticleGibbsConfig, gibbs_iterations, particles_per_iteration
from reasonbudget.steps import Particle
from reasonbudget.search.resampling import log_weights
from reasonbudget.types import MethodResult, TokenIds


@dataclass(frozen=True, kw_only=True)
class ParallelTemperingConfig(ParticleGibbsConfig):
    temperatures: tuple[float, ...] = (1.0, 2.0)
    """Softmax temperatures of the chains, first = the target (tau = 1); in a spec: `temperatures=1.0 2.0`."""

    def taus(self) -> list[float]:
        if not self.temperatures or any(t <= 0 for t in self.temperatures):
            raise ValueError(f"temperatures={self.temperatures}: need at least one, all > 0")
        return list(self.temperatures)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.taus()


def path_log_odds(p: Particle, weighting: str, eps: float) -> float:
    """S(x): the sum over steps of the log-weight of each prefix score."""
    if not p.scores:
        return 0.0
    w = log_weights(torch.tensor(p.scores, dtype=torch.float64), weighting=weighting, eps=eps)  # type: ignore[arg-type]
    return float(w.sum()) if bool(torch.isfinite(w).all()) else -math.inf


def swap_probability(tau_a: float, tau_b: float, s_a: float, s_b: float) -> float:
    """Metropolis acceptance for exchanging the states (path log-odds s_a, s_b) of chains at tau_a, tau_b."""
    log_accept = (1 / tau_a - 1 / tau_b) * (s_b - s_a)
    if math.isnan(log_accept):
        return 0.0
    return 1.0 if log_accept >= 0 else math.exp(log_accept)


@register
@dataclass(frozen=True)
class ParallelTempering(SearchMethod):
    name: ClassVar[str] = "parallel-tempering"
    config_type: ClassVar[type] = ParallelTemperingConfig
    config: ParallelTemperingConfig = field(default_factory=ParallelTemperingConfig)

    def run(self, backend: Backend, prompts: Sequence[TokenIds], *, budget: int | None,
            generator: Generators, observers: Sequence[Observer] | None = None) -> list[MethodResult]:
        cfg = self.config
        taus = cfg.taus()
        m = len(taus)
        per = particles_per_iteration(self.name, budget, cfg.iterations, m)
        # chain c of problem i runs as runner prompt i * m + c, with its own generator
        s = setup(cfg, backend, prompts, generator, method=self.name, observers=observers)
        chained = [p for p in prompts for _ in range(m)]
        s.runner.watch([o for o in observers for _ in range(m)] if observers is not None else None)
        s.questions = [q for q in s.questions for _ in range(m)]
        s.generators = [g for gen in s.generators for g in child_generators(gen, m)]
        s.runner.start(chained, [0] * len(chained), spare_rows=len(chained) * (2 * per + 2))
        swaps = [0] * len(prompts)

        def exchange(refs: list[Particle]) -> list[Particle]:
            for i in range(len(prompts)):
                gen = s.generators[i * m]
                for c in range(m - 1):
                    a, b = i * m + c, i * m + c + 1
                    s_a = path_log_odds(refs[a], cfg.weighting, cfg.eps)
                    s_b = path_log_odds(refs[b], cfg.weighting, cfg.eps)
                    if float(torch.rand((), generator=gen)) < swap_probability(taus[c], taus[c + 1], s_a, s_b):
                        refs[a], refs[b] = _moved(refs[b], a), _moved(refs[a], b)
                        swaps[i] += 1
            return refs

        try:
            pops, _ = gibbs_iterations(s, cfg, per, taus * len(prompts), on_iteration=exchange)
        finally:
            s.runner.close()
        calls, tokens = s.prm_share(len(prompts))
        out = []
        for i in range(len(prompts)):
            chains = pops[i * m : (i + 1) * m]
            chosen = best([p for pop in chains for p in pop])
            out.append(s.runner.result(chosen, wall_seconds=s.wall(len(prompts)), prm_calls=calls, prm_tokens=tokens,
                                       charge=range(i * m, (i + 1) * m),
                                       trace={"particles": per, "chains": m, "swaps": swaps[i]}))
        return s.finish(out)


def _moved(p: Particle, prompt: int) -> Particle:
    """A reference handed to another chain (same problem): it now belongs to that chain's runner prompt."""
    from dataclasses import replace

    return replace(p, prompt=prompt)
