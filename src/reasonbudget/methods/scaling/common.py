"""What every inference-time scaling method shares: its config fields (PRM, steps, sampling), the budget N
check, and the setup of one batched search (step runner, scorer, questions, per-prompt generators)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import ClassVar

import torch
from torch import Generator

from reasonbudget.engine.controllers import Observer
from reasonbudget.engine.sampling import SamplingConfig
from reasonbudget.methods.base import Backend, Capabilities, Generators
from reasonbudget.rewards.base import Aggregation
from reasonbudget.search.scoring import RewardScorer
from reasonbudget.steps import Particle, StepConfig, StepRunner, make_runner, prompt_generators
from reasonbudget.types import MethodResult, TokenIds

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class SearchConfig:
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    default_temperature: float = 0.8
    """Used when `sampling` is greedy (the harness default): N copies of one greedy answer buy nothing."""
    prm: str = "auto"
    """auto | testbed | oracle | judge | judge-text | a PRM directory or hub id (see `rewards.factory`)."""
    prm_noise: float = 0.0
    """Oracle PRM only: probability of flipping each step label."""
    prm_calibrated: bool = False
    """Noisy oracle only: score P(correct | flipped label) = 1 - prm_noise or prm_noise, not the 0/1 label."""
    judge_model: str = ""
    """prm=judge-text only: the model that judges (registry name or path); empty: the policy itself."""
    aggregation: Aggregation = "last"
    """How per-step scores become one: last | min | prod | mean | model."""
    max_steps: int = 40
    max_step_tokens: int = 256
    max_tokens: int = 1024
    """Per particle, thinking and answer; with the prompt it sets the KV cache's row length (rows x length
    floats per layer: keep it near the longest trace you expect)."""
    max_answer_tokens: int | None = None
    """None: the model profile's cap (`ReasoningProfile.answer_tokens`: the answer ends at its end of turn)."""

    def __post_init__(self) -> None:
        StepConfig(**self.step_fields(answer_tokens=1))  # validates
        if not 0.0 <= self.prm_noise <= 0.5:
            raise ValueError(f"prm_noise={self.prm_noise}: accepted is 0 <= prm_noise <= 0.5")

    def step_fields(self, *, answer_tokens: int) -> dict:
        """StepConfig fields; `answer_tokens`: the profile's default when `max_answer_tokens` is None."""
        answer = self.max_answer_tokens if self.max_answer_tokens is not None else answer_tokens
        return dict(max_steps=self.max_steps, max_step_tokens=self.max_step_tokens, max_tokens=self.max_tokens,
                    max_answer_tokens=answer)

    def search_sampling(self) -> SamplingConfig:
        if self.sampling.greedy:
            return replace(self.sampling, temperature=self.default_temperature)
        return self.sampling


class SearchMethod:
    """What the search methods share: their budget is N samples or particles, they extend partial solutions
    step by step (any backend with the steps level) and score them with a PRM."""

    capabilities: ClassVar[Capabilities] = Capabilities(budget="samples", default_budget=8, level="steps",
                                                        models=("policy", "prm"))


def check_budget(name: str, budget: int | None, *, minimum: int = 1) -> int:
    if budget is None or isinstance(budget, bool) or not isinstance(budget, int) or budget < minimum:
        raise ValueError(f"{name} needs a budget N >= {minimum} (samples or particles; --budgets N), got {budget}")
    return budget


@dataclass
class Search:
    """One batched search: runner, scorer, the prompts' questions and generators, and a clock."""

    runner: StepRunner
    scorer: RewardScorer | None
    questions: list[str]
    generators: list[Generator]
    started: float
    observers: Sequence[Observer] | None = None

    def finish(self, results: list[MethodResult]) -> list[MethodResult]:
        """Hand each prompt's result to its observer; returns the results."""
        for o, r in zip(self.observers or (), results):
            o.on_result(r)
        return results

    def wall(self, num_prompts: int) -> float:
        return (time.perf_counter() - self.started) / max(num_prompts, 1)

    def prm_share(self, num_prompts: int) -> tuple[int, int]:
        """PRM calls and tokens per prompt (the batch shares one scorer)."""
        if self.scorer is None:
            return 0, 0
        return round(self.scorer.calls / num_prompts), round(self.scorer.tokens / num_prompts)


def setup(cfg: SearchConfig, backend: Backend, prompts: Sequence[TokenIds], generator: Generators, *,
          method: str, needs_prm: bool = True, observers: Sequence[Observer] | None = None) -> Search:
    from reasonbudget.methods.budget.tale import questions_of
    from reasonbudget.rewards.factory import load_prm

    started = time.perf_counter()
    questions, generators = questions_of(prompts, method), prompt_generators(generator, len(prompts))
    scorer = None
    if needs_prm:
        # a noisy oracle draws its label flips from each problem's run seed: runs get independent noise
        noise_seeds = {q: g.initial_seed() for q, g in zip(questions, generators)} if cfg.prm_noise else 0
        prm = load_prm(cfg.prm, getattr(backend, "model", backend), noise=cfg.prm_noise, seed=noise_seeds,
                       calibrated=cfg.prm_calibrated, judge_model=cfg.judge_model)
        getattr(prm, "forget", lambda: None)()  # shared by a process's runs: none reads another's texts for free
        scorer = RewardScorer(prm, cfg.aggregation, engine=backend)  # type: ignore[arg-type]
    runner = make_runner(backend, cfg.search_sampling(), StepConfig(**cfg.step_fields(
                         answer_tokens=backend.profile.answer_tokens)),
                         lookahead=getattr(scorer.prm, "lookahead_tokens", 0) if scorer else 0)
    runner.watch(observers)
    return Search(runner, scorer, questions, generators, started, observers)


def finite(x: float) -> float:
    """Scores for ranking: NaN (PRM failed) ranks last."""
    return -math.inf if math.isnan(x) else x


def score_list(particles: Sequence[Particle]) -> list[float | None]:
    """Scores for a JSON trace: NaN (no PRM, or it failed) as null."""
    return [None if math.isnan(p.score) else round(p.score, 6) for p in particles]


def best(particles: Sequence[Particle]) -> Particle:
    """Highest score, preferring particles that reached an answer; ties: first."""
    answered = [p for p in particles if p.finish == "answer"] or list(particles)
    return max(answered, key=lambda p: finite(p.score))


def split(flat: Sequence[Particle], num_prompts: int) -> list[list[Particle]]:
    out: list[list[Particle]] = [[] for _ in range(num_prompts)]
    for p in flat:
        out[p.prompt].append(p)
    return out


def scores_tensor(particles: Sequence[Particle]) -> torch.Tensor:
    return torch.tensor([p.score for p in particles], dtype=torch.float64)


Selector = Callable[[int, list[Particle], list[Particle]], list[Particle]]


def step_search(s: Search, prompts: Sequence[TokenIds], count: int,
                select: Selector) -> tuple[list[list[Particle]], int]:
    """Rounds of one step for every live candidate, a PRM score each, then `select(i, pop, kept_i)` per
    problem: it moves the candidates to keep as results into kept_i and returns problem i's next population.
    Ends when no problem has a population left. -> (kept per problem, rounds). Beam search and DVTS."""
    pops = s.runner.start(prompts, [count] * len(prompts))
    kept: list[list[Particle]] = [[] for _ in prompts]
    rounds = 0
    try:
        flat = [p for pop in pops for p in pop]
        while flat:
            flat = s.runner.extend(flat, s.generators)
            flat = s.runner.score(flat, range(len(flat)), s.scorer, s.questions)
            rounds += 1
            new = [q for i, pop in enumerate(split(flat, len(prompts))) for q in select(i, pop, kept[i])]
            flat = s.runner.rebind(flat, new)
    finally:
        s.runner.close()
    return kept, rounds
