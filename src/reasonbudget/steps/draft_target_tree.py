"""Many greedy step-level drafting runs of one problem at once, as a tree of shared prefixes.

Greedy, a step-level run (`draft_target.draft_target_loop`) is a walk: at each accepted prefix the draft writes
its step, an arbiter measures it (a PRM score, a router's output) and a threshold decides whether the target
writes the step instead. Runs that differ in the threshold, or in the arbiter (RSD, Arbitrage, its oracle), walk
the same prefix until their decisions first differ. Here they walk together: a branch holds the runs that
share a prefix and made the same calls so far; each node's draft step, measurements and target step are
computed once, and a branch splits (its KV rows forked) where its runs decide differently or where some call the
target and others do not (so that every run in a branch has the same rows, and the target's catching up costs
what it would alone).

Calls run one branch at a time (batch 1), each timed, and every run is charged the model calls its own run
makes: the prefills, the draft's catching up and step, the target's catching up and step where it calls the
target. Its `Ledger` is then the batch-1 latency and the token counts of that run, which a threshold sweep would
otherwise pay for every threshold. Scorers are charged differently: a scorer that keeps states of the texts it
read (a PRM head's KV rows) would read other amounts in the tree than alone (a sibling branch overwrites a row,
an identical text in another branch is a free hit), so `replay_scorers` replays each run's own scorer calls, round
by round, on its kind's arbiter after `forget()`, timed: what its run alone would read and wait for. The replay also
recomputes each decision (`Ledger.flips`: decisions that differ, only possible through rounding, e.g. bf16 states
read in other chunks). Tested equal to separate runs, token for token and count for count.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace

import torch

from reasonbudget.steps.draft_target import (
    Decision,
    DraftTargetOutcome,
    Proposal,
    _tokenizers_match,
    new_steps,
    record_round,
    same_text,
)
from reasonbudget.steps.particles import Particle, PromptCost, StepRunner
from reasonbudget.types import TokenIds


@dataclass
class Ledger:
    """What one run cost at batch 1: seconds of the calls it made, per model and scorer, and each model's tokens
    (the prompt's runner costs: generated, forced, fed, forward passes)."""

    seconds: dict[str, float] = field(default_factory=lambda: {"draft": 0.0, "target": 0.0, "scorer": 0.0})
    draft: PromptCost = field(default_factory=PromptCost)
    target: PromptCost = field(default_factory=PromptCost)
    scorer_calls: int = 0
    scorer_tokens: int = 0
    flips: int = 0
    """Rounds whose replayed measurement decides otherwise than the tree's did."""

    @property
    def wall_seconds(self) -> float:
        return sum(self.seconds.values())


@dataclass
class _Branch:
    runs: list[int]
    d: Particle
    t: Particle
    state: Particle


def _add_cost(into: PromptCost, after: PromptCost, before: PromptCost) -> None:
    for f in fields(PromptCost):
        setattr(into, f.name, getattr(into, f.name) + getattr(after, f.name) - getattr(before, f.name))


class _Meter:
    """Times a call on one runner and charges its seconds and cost deltas to the given runs."""

    def __init__(self, draft: StepRunner, target: StepRunner) -> None:
        self.runners = {"draft": draft, "target": target}

    def call(self, who: str, fn: Callable, ledgers: Sequence[Ledger], *, starts: bool = False):
        """`starts`: the call is the runner's `start`, which resets its costs (nothing to diff against)."""
        runner = self.runners[who]
        before = PromptCost() if starts else replace(runner.costs[0])
        t0 = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - t0
        for led in ledgers:
            led.seconds[who] += seconds
            _add_cost(getattr(led, who), runner.costs[0], before)
        return out


def draft_target_tree(draft: StepRunner, target: StepRunner, prompt: TokenIds, question: str, arbiters: Sequence,
                      runs: Sequence[tuple[int, float]]) -> list[tuple[DraftTargetOutcome, Ledger]]:
    """runs[k] = (index into `arbiters`, threshold): one greedy run each, of one prompt. An arbiter has
    `needs_target`, `forget()`, `measure(questions, proposals)` and `takes_target(measured, threshold)` (the
    step-level methods' arbiters). -> per run, its outcome (as `draft_target_loop` returns it) and its ledger, which holds
    its model calls; `replay_scorers` adds its scorer's."""
    if not (draft.sampling.greedy and target.sampling.greedy):
        raise ValueError("runs share prefixes only when greedy: sampled runs draw their own steps")
    _tokenizers_match(draft.model, target.model)
    meter, question_list = _Meter(draft, target), [question]
    for arbiter in arbiters:
        arbiter.forget()
    ledgers = {k: Ledger() for k in range(len(runs))}
    everyone = list(ledgers.values())
    (d0,) = meter.call("draft", lambda: draft.start([prompt], [1], spare_rows=2 * len(runs))[0], everyone, starts=True)
    (t0,) = meter.call("target", lambda: target.start([prompt], [1], spare_rows=2 * len(runs))[0], everyone,
                       starts=True)
    outcomes = {k: DraftTargetOutcome(final=d0) for k in ledgers}  # each run's own; a branch names its runs
    stack = [_Branch(list(range(len(runs))), d0, t0, d0)]
    out: dict[int, tuple[DraftTargetOutcome, Ledger]] = {}
    none = [torch.Generator()]  # greedy: never drawn from
    while stack:
        b = stack.pop()
        if b.state.done:
            for k in b.runs:
                outcomes[k].final = b.state
                out[k] = (outcomes[k], ledgers[k])
            draft.release([b.d])
            target.release([b.t])
            continue
        led = [ledgers[k] for k in b.runs]
        d = b.d
        if not same_text(d, b.state):
            d = meter.call("draft", lambda: draft.adopt([b.d], [b.state])[0], led)
        d = meter.call("draft", lambda: draft.extend([d], none)[0], led)
        first = outcomes[b.runs[0]]
        proposal = Proposal(0, tuple(zip(b.state.steps, first.writers)), new_steps(d, b.state))
        kinds = {runs[k][0] for k in b.runs}
        measured: dict[int, dict[str, float]] = {}

        def measure(kind: int, prop: Proposal) -> None:  # decides; its cost is charged by `replay_scorers`
            measured[kind] = arbiters[kind].measure(question_list, [prop])[0]

        for kind in sorted(kinds):
            if not arbiters[kind].needs_target:
                measure(kind, proposal)
        calls = {k: arbiters[runs[k][0]].needs_target or arbiters[runs[k][0]].takes_target(measured[runs[k][0]],
                                                                                         runs[k][1])
                 for k in b.runs}
        t, asked = b.t, [ledgers[k] for k in b.runs if calls[k]]
        t_before = b.t  # the target row of the runs that do not call it (theirs catches up later, from here)
        if asked and len(asked) < len(b.runs):
            t_before = target.fork(b.t)
        if asked:
            t = meter.call("target", lambda: target.adopt([b.t], [b.state])[0], asked)
            t = meter.call("target", lambda: target.extend([t], none)[0], asked)
            with_target = replace(proposal, target=new_steps(t, b.state))
            for kind in sorted(kinds):
                if arbiters[kind].needs_target:
                    measure(kind, with_target)
        groups: dict[tuple[bool, bool], list[int]] = {}
        for k in b.runs:
            kind, threshold = runs[k]
            take = arbiters[kind].takes_target(measured[kind], threshold)
            record_round(outcomes[k], with_target if calls[k] else proposal, Decision(take, measured[kind]), d, t,
                         b.state, called=calls[k])
            groups.setdefault((take, calls[k]), []).append(k)
        firsts: set[bool] = set()
        for (take, called), members in groups.items():  # forks are the tree's work, charged to no run
            dk = d if not firsts else draft.fork(d)
            t_row = t if called else t_before
            tk = t_row if called not in firsts else target.fork(t_row)
            firsts.add(called)
            stack.append(_Branch(members, dk, tk, t if take else d))
    return [out[k] for k in range(len(runs))]


def replay_scorers(question: str, walked: Sequence[tuple[DraftTargetOutcome, Ledger]],
                   runs: Sequence[tuple[int, float]], arbiters: Sequence, tokens_read: Callable[[object], int]) -> None:
    """Charge each run its scorer: its rounds' measurements replayed in order on its kind's arbiter after
    `forget()` (its scorer then holds no state of any text), each call timed; seconds, texts scored (a PRM
    arbiter's `calls`), tokens read (`tokens_read(arbiter)`) and decisions that come out otherwise go into its
    ledger. Runs of one kind whose rounds are the same (thresholds that decided alike all the way) make the same
    calls alone: those are replayed once and charged to each (a sweep's thresholds often share a whole run)."""
    groups: dict[tuple, list[int]] = {}
    for k, ((outcome, _), (kind, _)) in enumerate(zip(walked, runs)):
        groups.setdefault((kind, tuple(proposal for proposal, _ in outcome.rounds)), []).append(k)
    for (kind, proposals), members in groups.items():
        arbiter = arbiters[kind]
        arbiter.forget()
        calls0, read0 = getattr(arbiter, "calls", 0), tokens_read(arbiter)
        seconds, measured = 0.0, []
        for proposal in proposals:
            t0 = time.perf_counter()
            measured.append(arbiter.measure([question], [proposal])[0])
            seconds += time.perf_counter() - t0
        calls, read = getattr(arbiter, "calls", 0) - calls0, tokens_read(arbiter) - read0
        for k in members:
            (outcome, ledger), threshold = walked[k], runs[k][1]
            ledger.seconds["scorer"] += seconds
            ledger.flips += sum(arbiter.takes_target(m, threshold) != decision.take_target
                                for m, (_, decision) in zip(measured, outcome.rounds))
            ledger.scorer_calls += calls
            ledger.scorer_tokens += read
