"""What the step-level draft/target methods share (RSD, Arbitrage and its oracle): their settings, the
arbiters, and one run of `steps.draft_target.draft_target_loop` turned into results.

The draft writes each reasoning step; an arbiter keeps it or has the target write that step from the same
prefix (called lazily, only then, except for the oracle that needs both). Usage counts both models' tokens and
forward passes and the PRM's or router's calls (`prm_tokens`: the tokens the PRM or the router read); the trace has who wrote each step, the step and token
acceptance rates and the number of target calls (escalations).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from reasonbudget.engine.controllers import Observer
from reasonbudget.engine.generation import model_usage, split_thinking
from reasonbudget.engine.sampling import SamplingConfig
from reasonbudget.methods.base import Backend, Generators
from reasonbudget.rewards.router import RouterItem
from reasonbudget.steps import StepConfig, prompt_generators
from reasonbudget.steps.particles import make_runner
from reasonbudget.steps.draft_target import Decision, DraftTargetOutcome, Proposal, draft_target_loop
from reasonbudget.types import MethodResult, StepSequence, TokenIds


@dataclass(frozen=True, kw_only=True)
class StepDraftConfig:
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """Both models' sampling (greedy by default, as the reference scripts run)."""
    draft: str = ""
    """The draft model (registry name or path; same tokenizer as the target)."""
    draft_quant: str = "none"
    threshold: float = 0.5
    max_steps: int = 40
    max_step_tokens: int = 256
    max_tokens: int = 1024
    max_answer_tokens: int | None = None

    def __post_init__(self) -> None:
        from reasonbudget.models.quant import check_quant

        if not self.draft:
            raise ValueError("step-level drafting needs a draft model: draft=NAME (same tokenizer as the target)")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold={self.threshold}: accepted is 0 <= threshold <= 1")
        check_quant(self.draft_quant)
        StepConfig(max_steps=self.max_steps, max_step_tokens=self.max_step_tokens, max_tokens=self.max_tokens)


class PRMArbiter:
    """RSD (keep the draft step iff PRM(step) >= threshold) or, with `oracle`, Arbitrage's oracle (both models
    write; take the target's step iff its PRM score beats the draft's by more than the threshold). `measure`
    reads the scores, `takes_target` applies a threshold to them: a threshold sweep measures a step once."""

    def __init__(self, prm, threshold: float, *, oracle: bool = False) -> None:
        self.prm, self.threshold, self.needs_target = prm, threshold, oracle
        self.calls = 0

    def _last_scores(self, items: list[StepSequence]) -> list[float]:
        self.calls += len(items)
        return [float(s[-1]) if s.numel() else 0.0 for s in self.prm.score_steps(items)]

    def measure(self, questions: Sequence[str], proposals: Sequence[Proposal]) -> list[dict[str, float]]:
        hist = [tuple(s for s, _ in p.history) for p in proposals]
        drafts = self._last_scores([StepSequence(questions[p.prompt], h + p.draft) for p, h in zip(proposals, hist)])
        if not self.needs_target:
            return [{"draft_score": s} for s in drafts]
        targets = self._last_scores([StepSequence(questions[p.prompt], h + p.target) for p, h in zip(proposals, hist)])
        return [{"draft_score": d, "target_score": t} for d, t in zip(drafts, targets)]

    def forget(self) -> None:
        """A new run: the PRM drops the states of texts it read before (see `HeadPRM.forget`)."""
        getattr(self.prm, "forget", lambda: None)()

    def takes_target(self, measured: dict[str, float], threshold: float) -> bool:
        if self.needs_target:
            return measured["target_score"] - measured["draft_score"] > threshold
        return measured["draft_score"] < threshold

    def decide(self, questions: Sequence[str], proposals: Sequence[Proposal]) -> list[Decision]:
        return [Decision(self.takes_target(m, self.threshold), m) for m in self.measure(questions, proposals)]


class RouterArbiter:
    """Arbitrage: keep the draft step iff the router's y_hat (P(the target would do better)) <= threshold."""

    needs_target = False

    def __init__(self, router, threshold: float) -> None:
        self.router, self.threshold = router, threshold

    def measure(self, questions: Sequence[str], proposals: Sequence[Proposal]) -> list[dict[str, float]]:
        y = self.router.predict([RouterItem(questions[p.prompt], p.history, p.draft) for p in proposals])
        return [{"y_hat": v} for v in y]

    def forget(self) -> None:
        getattr(self.router, "forget", lambda: None)()

    def takes_target(self, measured: dict[str, float], threshold: float) -> bool:
        return measured["y_hat"] > threshold

    def decide(self, questions: Sequence[str], proposals: Sequence[Proposal]) -> list[Decision]:
        return [Decision(self.takes_target(m, self.threshold), m) for m in self.measure(questions, proposals)]


def draft_backend(cfg: StepDraftConfig, backend: Backend, method: str):
    """Where the draft runs: a draft engine beside the in-process target, or a remote server beside a remote
    target (`draft=remote:URL#MODEL`, as the reference code runs both models on SGLang/vLLM servers)."""
    from reasonbudget.remote.model import is_remote, load_remote

    if hasattr(backend, "draft_engine"):
        if is_remote(cfg.draft):
            raise ValueError(f"{method}: the target runs here, so the draft must too (draft={cfg.draft}); serve "
                             "both or neither")
        return backend.draft_engine(cfg.draft, cfg.draft_quant)
    if not is_remote(cfg.draft):
        raise ValueError(f"{method}: the target is served ({backend.name}), so the draft must be too: "
                         f"draft=remote:URL#MODEL (got draft={cfg.draft})")
    if cfg.draft_quant != "none":
        raise ValueError("draft_quant applies to a draft that runs here, not to a served one")
    return load_remote(cfg.draft)


def run_step_drafting(cfg: StepDraftConfig, backend: Backend, prompts: Sequence[TokenIds], generator: Generators,
                      arbiter, *, method: str, observers: Sequence[Observer] | None = None,
                      scorer_tokens=lambda: 0) -> list[MethodResult]:
    """The loop on the in-process engine (target) and a draft engine, or on two servers; one result per prompt."""
    from reasonbudget.methods.budget.tale import questions_of

    t0 = time.perf_counter()
    drafter = draft_backend(cfg, backend, method)
    answer = cfg.max_answer_tokens if cfg.max_answer_tokens is not None else backend.profile.answer_tokens
    steps = StepConfig(max_steps=cfg.max_steps, max_step_tokens=cfg.max_step_tokens, max_tokens=cfg.max_tokens,
                       max_answer_tokens=answer)
    draft, target = make_runner(drafter, cfg.sampling, steps), make_runner(backend, cfg.sampling, steps)
    questions = questions_of(prompts, method)
    arbiter.forget()  # the scorer is shared by the runs of a process: none reads another run's texts for free
    tokens_before = scorer_tokens()
    try:
        outcomes = draft_target_loop(draft, target, prompts, questions, arbiter,
                                     prompt_generators(generator, len(prompts)))
    finally:
        draft.close()
        target.close()
    wall = (time.perf_counter() - t0) / len(prompts)
    calls = getattr(arbiter, "calls", None)
    results = [_result(draft, target, i, o, wall, calls, scorer_tokens() - tokens_before, len(prompts))
               for i, o in enumerate(outcomes)]
    for obs, r in zip(observers or (), results):
        obs.on_result(r)
    return results


def sweep_step_drafting(cfg: StepDraftConfig, backend: Backend, prompt: TokenIds, question: str,
                        arbiters: Sequence, runs: Sequence[tuple[int, float]]) -> list[MethodResult]:
    """Many greedy runs of one prompt on the engine, each an (arbiter kind, threshold): `arbiters[kind]` is a
    PRMArbiter or RouterArbiter (its threshold unused). The runs are walked as one tree of shared prefixes
    (`steps.draft_target_tree`), then each run's scorer calls are replayed alone (the scorer's kept states
    forgotten first): one result per run, equal to the run alone, its usage and wall seconds
    those of the calls that run makes, timed at batch 1 (`trace["decision_flips"]`: replayed decisions that came
    out otherwise). `cfg`: the draft, its quantization and the step caps."""
    from reasonbudget.steps.draft_target_tree import draft_target_tree, replay_scorers

    if not hasattr(backend, "draft_engine"):
        raise ValueError("a threshold sweep as one tree runs on the in-process engine")
    drafter = draft_backend(cfg, backend, "step-drafting sweep")
    answer = cfg.max_answer_tokens if cfg.max_answer_tokens is not None else backend.profile.answer_tokens
    steps = StepConfig(max_steps=cfg.max_steps, max_step_tokens=cfg.max_step_tokens, max_tokens=cfg.max_tokens,
                       max_answer_tokens=answer)
    draft, target = make_runner(drafter, cfg.sampling, steps), make_runner(backend, cfg.sampling, steps)
    with torch.inference_mode():
        try:
            walked = draft_target_tree(draft, target, prompt, question, arbiters, runs)
        finally:
            draft.close()
            target.close()
        replay_scorers(question, walked, runs, arbiters, scorer_tokens_read)

    def cost(c) -> tuple[int, int]:  # as `_processed`: the prompt's prefill, generated and adopted tokens
        return len(prompt) + c.thinking + c.forced + c.answer + c.fed, c.passes + 1

    results = []
    for o, led in walked:
        r = outcome_result(target, draft.model, 0, o, target_cost=cost(led.target), draft_cost=cost(led.draft),
                           wall=led.wall_seconds, prm_calls=led.scorer_calls, prm_tokens=led.scorer_tokens)
        r.trace["decision_flips"] = led.flips
        results.append(r)
    return results


def scorer_tokens_read(arbiter) -> int:
    """Tokens an arbiter's PRM or router has read so far (0 for a scorer that does not count them)."""
    scorer = getattr(arbiter, "prm", None) or getattr(arbiter, "router", None)
    return getattr(scorer, "tokens_read", 0)


def _processed(runner, prompt: int) -> tuple[int, int]:
    """(tokens processed, forward passes) of one prompt on one runner: prompt, generated and adopted tokens on
    the engine; on a server, every request's prefix plus what it generated."""
    c = runner.costs[prompt]
    generated = c.thinking + c.forced + c.answer
    if hasattr(runner, "prompt_tokens"):  # a remote runner (prompts are text)
        return c.sent_tokens + generated, c.passes
    return len(runner.prompts[prompt]) + generated + c.fed, c.passes + 1


def _result(draft, target, i: int, o: DraftTargetOutcome, wall: float, calls: int | None, prm_tokens: int,
            num_prompts: int) -> MethodResult:
    return outcome_result(target, draft.model, i, o, target_cost=_processed(target, i), draft_cost=_processed(draft, i),
                          wall=wall, prm_calls=(calls or 0) // max(1, num_prompts),
                          prm_tokens=prm_tokens // max(1, num_prompts))


def outcome_result(target, draft_model, i: int, o: DraftTargetOutcome, *, target_cost: tuple[int, int],
                   draft_cost: tuple[int, int], wall: float, prm_calls: int, prm_tokens: int) -> MethodResult:
    """Prompt i's run as a result: `target_cost`, `draft_cost`: (tokens processed, forward passes) per model."""
    model = target.model
    router_calls = len(o.rounds) if any("y_hat" in d.measured for _, d in o.rounds) else 0
    (t_processed, t_passes), (d_processed, d_passes) = target_cost, draft_cost
    if o.final.tokens or not o.final.text:
        tokens = o.final.tokens
        thinking, answer = split_thinking(model, tokens, thinking_done=False)
        n_think = len(model.encode(thinking)) if thinking else 0
        n_answer = max(0, len(tokens) - n_think)
        prompt_tokens = len(target.prompts[i])
    else:  # text from a server: its own token counts
        tokens = ()
        head, sep, tail = o.final.text.partition(model.profile.think_close)
        thinking, answer = head.strip(), model.profile.cut_answer(tail) if sep else ""
        n_answer = round(o.final.num_tokens * len(tail) / max(1, len(o.final.text))) if sep else 0
        n_think = o.final.num_tokens - n_answer
        prompt_tokens = target.prompt_tokens[i]
    usage = model_usage(model, prompt_tokens=prompt_tokens, processed=t_processed, forward_passes=t_passes,
                        wall_seconds=wall, others=[(draft_model, d_processed, d_passes)],
                        thinking_tokens=n_think, answer_tokens=n_answer,
                        drafted_tokens=o.draft_tokens, accepted_tokens=o.accepted_draft_tokens,
                        prm_calls=prm_calls if not router_calls else 0, prm_tokens=prm_tokens)
    trace = {"writers": o.writers, "step_acceptance": round(o.acceptance, 4),
             "token_acceptance": round(o.token_acceptance, 4), "target_calls": o.target_calls,
             "rounds": len(o.rounds), "router_calls": router_calls}
    finish = "stop" if o.final.finish == "answer" else "length"
    return MethodResult(tokens=tokens, thinking=thinking, answer=answer, usage=usage, finish_reason=finish,
                        trace=trace)
