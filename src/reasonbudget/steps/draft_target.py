"""Step-level drafting: a draft model writes each reasoning step, an arbiter keeps it or takes the target's step
from the same prefix instead. RSD (keep iff the PRM scores the draft step high enough), Arbitrage (keep iff a
router predicts that the target would not do better), their oracle, and the router's label generation (both
models write every step, the better one continues) are arbiters of this one loop.

The target is called lazily: in a round it writes only for the prompts whose draft step the arbiter rejects
(or for every prompt, when the arbiter needs both steps to decide). Each model catches up on the accepted
steps the other wrote only when it is next called (`StepRunner.adopt`: its KV row is cut back and fed the
other's tokens, never re-prefilled). Both models must share a tokenizer. The runners may also be remote ones
(two `remote:` servers): their particles are text, adopting one is taking its text, and token counts are the
servers'.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from torch import Generator

from reasonbudget.models.registry import check_shared_tokenizer
from reasonbudget.steps.particles import Particle, StepRunner
from reasonbudget.types import TokenIds

DRAFT, TARGET = 0, 1
"""Who wrote a step (the router's annotation: "Model 0" / "Model 1")."""


@dataclass(frozen=True)
class Proposal:
    """One round of one prompt: the accepted steps so far with their writers, the draft's next step(s) and,
    when the target was asked, its step(s) from the same prefix. A round usually adds one step; the round in
    which thinking closes adds the closing step (the answer) too."""

    prompt: int
    history: tuple[tuple[str, int], ...]
    draft: tuple[str, ...]
    target: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Decision:
    take_target: bool
    measured: Mapping[str, float] = field(default_factory=dict)
    """What the arbiter read to decide (PRM scores, the router's output), kept in the round log."""


class Arbiter(Protocol):
    needs_target: bool
    """True: the target writes every round and `decide` sees both steps (the oracle, label generation)."""

    def decide(self, questions: Sequence[str], proposals: Sequence[Proposal]) -> list[Decision]:
        """One decision per proposal; for an arbiter without `needs_target`, `take_target` asks the target to
        write the step."""
        ...


@dataclass
class DraftTargetOutcome:
    """One prompt's run: the accepted text (a particle on whichever model wrote its last step), who wrote each
    step, the round log and the counts that usage and acceptance rates are made of."""

    final: Particle
    writers: list[int] = field(default_factory=list)
    rounds: list[tuple[Proposal, Decision]] = field(default_factory=list)
    target_calls: int = 0
    draft_tokens: int = 0
    """Tokens the draft wrote (accepted or not)."""
    accepted_draft_tokens: int = 0
    target_tokens: int = 0

    @property
    def acceptance(self) -> float:
        """Share of the draft's steps that were kept (the papers' acceptance rate is per token: see
        `token_acceptance`)."""
        return sum(not d.take_target for _, d in self.rounds) / max(1, len(self.rounds))

    @property
    def token_acceptance(self) -> float:
        return self.accepted_draft_tokens / max(1, self.draft_tokens)


def new_steps(after: Particle, before: Particle) -> tuple[str, ...]:
    return after.steps[len(before.steps):]


def new_tokens(after: Particle, before: Particle) -> int:
    """How many tokens `after` wrote past `before` (token ids on the engine, the server's count remotely)."""
    if after.tokens or before.tokens:
        return len(after.tokens) - len(before.tokens)
    return after.num_tokens - before.num_tokens


def same_text(a: Particle, b: Particle) -> bool:
    return a.tokens == b.tokens and a.text == b.text


def record_round(o: DraftTargetOutcome, proposal: Proposal, decision: Decision, d: Particle, t: Particle,
                 state: Particle, *, called: bool) -> Particle:
    """Log one round of one prompt (`called`: the target wrote a step in it) -> its new accepted text: the draft's
    `d` or the target's `t`, each a continuation of `state`."""
    o.rounds.append((proposal, decision))
    drafted = new_tokens(d, state)
    o.draft_tokens += drafted
    if called:
        o.target_calls += 1
        o.target_tokens += new_tokens(t, state)
    chosen, writer = (t, TARGET) if decision.take_target else (d, DRAFT)
    if writer == DRAFT:
        o.accepted_draft_tokens += drafted
    o.writers += [writer] * len(new_steps(chosen, state))
    o.final = chosen
    return chosen


def _tokenizers_match(draft, target) -> None:
    """Refuse a pair whose tokenizers differ; a remote model that does not expose its tokenizer is trusted."""
    if getattr(draft, "tokenizer", None) is not None and getattr(target, "tokenizer", None) is not None:
        check_shared_tokenizer(draft, target)


def draft_target_loop(draft: StepRunner, target: StepRunner, prompts: Sequence[TokenIds], questions: Sequence[str],
                      arbiter: Arbiter, generators: Sequence[Generator]) -> list[DraftTargetOutcome]:
    """Run every prompt to its answer (or the runners' step and token limits). generators[i] is prompt i's;
    the draft's and the target's draws derive from it alike (greedy runs need none)."""
    _tokenizers_match(draft.model, target.model)
    d = [ps[0] for ps in draft.start(prompts, [1] * len(prompts))]
    t = [ps[0] for ps in target.start(prompts, [1] * len(prompts))]
    state = list(d)  # the accepted text of each prompt
    out = [DraftTargetOutcome(final=p) for p in state]
    while active := [i for i, p in enumerate(state) if not p.done]:
        behind = [i for i in active if not same_text(d[i], state[i])]
        for i, p in zip(behind, draft.adopt([d[i] for i in behind], [state[i] for i in behind])):
            d[i] = p
        for i, p in zip(active, draft.extend([d[i] for i in active], generators)):
            d[i] = p
        proposals = {i: Proposal(i, tuple(zip(state[i].steps, out[i].writers)), new_steps(d[i], state[i]))
                     for i in active}
        if arbiter.needs_target:
            ask, decisions = active, None
        else:
            decisions = dict(zip(active, arbiter.decide(questions, [proposals[i] for i in active])))
            ask = [i for i in active if decisions[i].take_target]
        if ask:
            synced = target.adopt([t[i] for i in ask], [state[i] for i in ask])
            for i, p in zip(ask, target.extend(synced, generators)):
                t[i] = p
                proposals[i] = Proposal(i, proposals[i].history, proposals[i].draft, new_steps(p, state[i]))
        if decisions is None:
            decisions = dict(zip(active, arbiter.decide(questions, [proposals[i] for i in active])))
        asked = set(ask)
        for i in active:
            state[i] = record_round(out[i], proposals[i], decisions[i], d[i], t[i], state[i], called=i in asked)
    return out
