"""Particle filtering over reasoning steps (Puri et al. 2025, arXiv 2502.01618; specs/particle-filtering.md).

N particles per problem. Each round: every unfinished particle gets one more step (one batched decode), the
PRM scores each extended prefix, and the N particles are resampled from softmax(w / tau), w = logit of the
prefix score (`weighting="odds"`, the paper's code: copies proportional to odds s/(1-s) at tau = 1) or log
of it (`"probability"`). Weights are not accumulated: a particle's weight is its current prefix's score.
Finished particles stay in the pool with their final weight (`resample_finished`, the paper's setting) or
are frozen out of it (absorbing). Multinomial or systematic resampling, every round or only when the
effective sample size falls below `ess_threshold * N`. The answer: the highest final weight (`argmax`), a
draw from the final weights (`sample`), or a weighted vote over equivalent answers (`vote`).

Order per round (its_hub's): extend, score, resample; no resampling once every particle has finished.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import ClassVar, Literal

import torch
from torch import Generator

from reasonbudget.engine.controllers import Observer
from reasonbudget.methods.base import Backend, Generators, register
from reasonbudget.methods.scaling.common import (Search, SearchConfig, SearchMethod, best, check_budget, score_list,
                                                 setup, split)
from reasonbudget.steps import Particle
from reasonbudget.search.resampling import effective_sample_size, log_weights, normalized, resample
from reasonbudget.search.voting import answer_groups, vote
from reasonbudget.types import MethodResult, TokenIds


@dataclass(frozen=True, kw_only=True)
class ParticleFilterConfig(SearchConfig):
    tau: float = 1.0
    """Softmax temperature over the log-weights."""
    eps: float = 1e-7
    """Scores are clipped to [eps, 1 - eps] before the logit."""
    weighting: Literal["odds", "probability"] = "odds"
    resampler: Literal["multinomial", "systematic"] = "multinomial"
    ess_threshold: float | None = None
    """None: resample every round (paper); else only when ESS < ess_threshold * N."""
    resample_finished: bool = True
    selection: Literal["argmax", "sample", "vote"] = "argmax"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.tau <= 0 or not 0 < self.eps < 0.5:
            raise ValueError("tau must be > 0 and 0 < eps < 0.5")
        if self.weighting not in ("odds", "probability"):
            raise ValueError(f"weighting={self.weighting!r}: accepted are odds, probability")
        if self.resampler not in ("multinomial", "systematic"):
            raise ValueError(f"resampler={self.resampler!r}: accepted are multinomial, systematic")
        if self.selection not in ("argmax", "sample", "vote"):
            raise ValueError(f"selection={self.selection!r}: accepted are argmax, sample, vote")
        if self.ess_threshold is not None and not 0 < self.ess_threshold <= 1:
            raise ValueError(f"ess_threshold={self.ess_threshold}: accepted is 0 < x <= 1 (or none)")


def particle_log_weights(particles: Sequence[Particle], cfg: ParticleFilterConfig) -> torch.Tensor:
    scores = torch.tensor([p.score for p in particles], dtype=torch.float64)
    return log_weights(scores, weighting=cfg.weighting, eps=cfg.eps)  # type: ignore[arg-type]


def resample_population(pop: list[Particle], cfg: ParticleFilterConfig, gen: Generator, *,
                        tau: float | None = None, reference: Particle | None = None, step: int = 0,
                        stats: dict | None = None) -> list[Particle]:
    """One resampling of one problem's particles. With a `reference` (particle Gibbs) the pool also holds the
    reference cut to `step` steps, weighted by its own score after that step, and len(pop) draws are made;
    drawing it forks that prefix (done by the caller: the result holds the marker `REFERENCE`)."""
    tau = cfg.tau if tau is None else tau
    movable = [p for p in pop if cfg.resample_finished or not p.done]
    frozen = [p for p in pop if not (cfg.resample_finished or not p.done)]
    if not movable:
        return pop
    pool: list[Particle | None] = list(movable)
    logw = particle_log_weights(movable, cfg)
    if reference is not None:
        ref_score = reference.scores[min(step, len(reference.scores)) - 1] if reference.scores else float("nan")
        ref_w = log_weights(torch.tensor([ref_score], dtype=torch.float64),
                            weighting=cfg.weighting, eps=cfg.eps)  # type: ignore[arg-type]
        pool.append(None)  # stands for the reference's prefix
        logw = torch.cat([logw, ref_w])
    probs = normalized(logw, tau)
    ess = effective_sample_size(probs)
    if stats is not None:
        stats.setdefault("ess", []).append(round(ess, 3))
    if cfg.ess_threshold is not None and ess >= cfg.ess_threshold * len(pool):
        return pop
    idx = resample(probs, len(movable), gen, cfg.resampler).tolist()  # type: ignore[arg-type]
    return frozen + [pool[i] if pool[i] is not None else REFERENCE for i in idx]


REFERENCE = Particle(-1, None)
"""Placeholder in a resampled population for a copy of the particle Gibbs reference's prefix."""


def run_filter(s: Search, pops: list[list[Particle]], cfg: ParticleFilterConfig, *,
               taus: Sequence[float] | None = None, references: Sequence[Particle | None] | None = None,
               stats: list[dict] | None = None) -> list[list[Particle]]:
    """Rounds of extend, score, resample until every particle of every population has finished.
    `pops[k]` belongs to runner prompt k; `taus[k]` and `references[k]` are per population (PG, PT)."""
    runner = s.runner
    k_pops = len(pops)
    flat = [p for pop in pops for p in pop]
    step = 0
    while any(not p.done for p in flat):
        before = [p.done for p in flat]
        flat = runner.extend(flat, s.generators)
        flat = runner.score(flat, [j for j, d in enumerate(before) if not d], s.scorer, s.questions)
        step += 1
        if all(p.done for p in flat):
            break
        grouped = split(flat, k_pops)
        new = []
        for k, pop in enumerate(grouped):
            if all(p.done for p in pop):
                new.extend(pop)
                continue
            ref = references[k] if references is not None else None
            drawn = resample_population(pop, cfg, s.generators[k], tau=taus[k] if taus else None, reference=ref,
                                        step=step, stats=stats[k] if stats is not None else None)
            new.extend(_reference_copy(runner, ref, step) if p is REFERENCE else p for p in drawn)
        keep = [r.row for r in references or () if r is not None and r.row is not None]
        flat = runner.rebind(flat, new, keep_rows=keep)
    return split(flat, k_pops)


def _reference_copy(runner, ref: Particle, step: int) -> Particle:
    """The reference cut to its first `step` rounds as a free particle (its scores are per round); from the
    round it finished in on, the finished reference itself."""
    if step >= len(ref.round_ends):
        return replace(ref, row=None)
    return runner.fork_prefix(ref, step)


def select(pop: Sequence[Particle], cfg: ParticleFilterConfig, gen: Generator, runner) -> Particle:
    answered = [p for p in pop if p.finish == "answer"] or list(pop)
    if cfg.selection == "argmax":
        return best(answered)
    probs = normalized(particle_log_weights(answered, cfg), cfg.tau)
    if cfg.selection == "sample":
        return answered[int(torch.multinomial(probs, 1, generator=gen))]
    answers = [runner.result(p, wall_seconds=0).answer for p in answered]
    pick = vote(answer_groups(answers), weights=probs.tolist())
    return answered[pick] if pick is not None else best(answered)


@register
@dataclass(frozen=True)
class ParticleFilter(SearchMethod):
    name: ClassVar[str] = "particle-filter"
    config_type: ClassVar[type] = ParticleFilterConfig
    config: ParticleFilterConfig = field(default_factory=ParticleFilterConfig)

    def run(self, backend: Backend, prompts: Sequence[TokenIds], *, budget: int | None,
            generator: Generators, observers: Sequence[Observer] | None = None) -> list[MethodResult]:
        n = check_budget(self.name, budget)
        s = setup(self.config, backend, prompts, generator, method=self.name, observers=observers)
        pops = s.runner.start(prompts, [n] * len(prompts))
        stats: list[dict] = [{} for _ in prompts]
        try:
            pops = run_filter(s, pops, self.config, stats=stats)
        finally:
            s.runner.close()
        calls, tokens = s.prm_share(len(prompts))
        out = []
        for i, pop in enumerate(pops):
            chosen = select(pop, self.config, s.generators[i], s.runner)
            # what the deterministic selection rules would return, so one run reports both (benchmarks)
            picks = {rule: pop.index(select(pop, replace(self.config, selection=rule), s.generators[i], s.runner))
                     for rule in ("argmax", "vote")}
            trace = {"n": n, "rounds": len(stats[i].get("ess", [])), "ess": stats[i].get("ess", []),
                     "final_scores": score_list(pop), "picks": picks,
                     "answers": [s.runner.result(p, wall_seconds=0).answer for p in pop]}
            out.append(s.runner.result(chosen, wall_seconds=s.wall(len(prompts)), prm_calls=calls,
                                       prm_tokens=tokens, trace=trace))
        return s.finish(out)
