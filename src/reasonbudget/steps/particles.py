"""Partial solutions on the engine: a step generator that extends a whole population by one reasoning step in
one batched decode, and moves KV rows when a search duplicates or drops candidates (fork and release, never
a re-prefill of a prefix).

A *particle* is one partial solution of one prompt: its generated tokens, its steps (text, for the PRM),
where each step ends, its PRM scores. A step ends at the step delimiter (the profile's, "\n\n" for chat
models, "\n" for the testbed) once it has some text; a step that reaches `max_step_tokens` is cut there. The
step in which thinking closes runs on through the answer, and the particle is finished. A particle is also
finished at `max_steps` steps or `max_tokens` tokens (no answer then: it cannot win unless nothing else did).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import Generator, Tensor

from reasonbudget.engine.budget import BudgetConfig, BudgetController
from reasonbudget.engine.controllers import KEEP, Action, Controller, MarkerDetector, Observer
from reasonbudget.engine.engine import Engine
from reasonbudget.engine.generation import check_room, model_usage, profile_tokens, split_thinking
from reasonbudget.engine.sampling import SamplingConfig, child_generators
from reasonbudget.types import MethodResult, StepSequence, TokenIds


@dataclass(frozen=True, kw_only=True)
class StepConfig:
    max_steps: int = 40
    max_step_tokens: int = 256
    """A step that has not met the delimiter after this many tokens ends there (a step that never ends)."""
    max_tokens: int = 2048
    """Per particle: thinking and answer together."""
    max_answer_tokens: int = 256
    delimiter: str | None = None
    """None: the model profile's step delimiter."""

    def __post_init__(self) -> None:
        for name in ("max_steps", "max_step_tokens", "max_tokens", "max_answer_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 1")
        if self.delimiter is not None and not self.delimiter:
            raise ValueError("the step delimiter must not be empty")


@dataclass(frozen=True)
class Particle:
    prompt: int
    """Index of its prompt in the batch."""
    row: int | None
    """Its engine row (None once it no longer needs one: a finished copy)."""
    tokens: TokenIds = ()
    steps: tuple[str, ...] = ()
    step_ends: tuple[int, ...] = ()
    """Where each step ends: len(tokens) on the engine, len(text) on a remote server."""
    scores: tuple[float, ...] = ()
    """The PRM's (aggregated) score of the prefix after each round (see `round_ends`); NaN where it failed."""
    done: bool = False
    finish: str = ""
    """answer | max_steps | length | cancelled"""
    text: str = ""
    """The generated text (a remote runner's particles, which have no token ids)."""
    num_tokens: int = 0
    """Tokens generated so far, as the remote server counts them (remote runners)."""
    round_ends: tuple[int, ...] = ()
    """Where each round (one `extend`, one score) ended, in the units of `step_ends`. A round may add several
    steps (the closing step with the rest of the answer, a last step run to the end), so prefixes of a particle
    that are paired with its per-round scores are cut at rounds, not at steps."""
    round_steps: tuple[int, ...] = ()
    """len(steps) at the end of each round."""

    @property
    def score(self) -> float:
        return self.scores[-1] if self.scores else float("nan")

    def end_round(self) -> Particle:
        """This particle with its current end recorded as the end of a round."""
        return replace(self, round_ends=self.round_ends + (max(len(self.tokens), len(self.text)),),
                       round_steps=self.round_steps + (len(self.steps),))

    def prefix(self, num_rounds: int) -> Particle:
        """The unfinished particle made of its first `num_rounds` rounds (< the rounds it took): steps, scores
        and position; the caller gives it a row (or keeps the text)."""
        cut = self.round_ends[num_rounds - 1] if num_rounds else 0
        k = self.round_steps[num_rounds - 1] if num_rounds else 0
        return Particle(self.prompt, None, self.tokens[:cut], self.steps[:k], self.step_ends[:k],
                        self.scores[:num_rounds], text=self.text[:cut], round_ends=self.round_ends[:num_rounds],
                        round_steps=self.round_steps[:num_rounds])


@dataclass
class PromptCost:
    """What one prompt's particles consumed, summed over all of them."""

    thinking: int = 0
    forced: int = 0
    answer: int = 0
    passes: int = 0
    requests: int = 0
    """Completion requests sent (remote runners)."""
    sent_tokens: int = 0
    """Prompt tokens the server read for them (remote runners: every request re-sends its prefix)."""
    fed: int = 0
    """Tokens written by another model that this one read without sampling (`StepRunner.adopt`)."""


class _StepController(Controller):
    """One step of one particle: budget rules of plain CoT (EOS while thinking forces the close, the answer
    is never empty) plus the stop at the step delimiter."""

    def __init__(self, budget: BudgetController, delimiter: MarkerDetector, decode, max_step_tokens: int,
                 to_end: bool, cancelled: Callable[[], bool]) -> None:
        self.budget, self.delimiter, self.decode = budget, delimiter, decode
        self.max_step_tokens, self.to_end, self.cancelled = max_step_tokens, to_end, cancelled
        self.sampled, self.has_text = 0, False

    def process_logits(self, logits: Tensor, hidden) -> Tensor:
        return self.budget.process_logits(logits, hidden)

    def on_token(self, token: int, forced: bool) -> Action:
        if self.cancelled():  # the caller went away: stop the row, the runner drops the particle
            return Action(stop=True)
        act = self.budget.on_token(token, forced)
        if act != KEEP or forced or self.to_end or self.budget.state.phase == "answer":
            return act
        self.sampled += 1
        hit = self.delimiter.push(token)
        if hit and self.has_text:
            return Action(stop=True)
        text = self.decode([token])
        self.has_text = self.has_text or bool(text.strip())
        if self.sampled >= self.max_step_tokens:
            return Action(stop=True)
        return KEEP


def _shared_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def split_steps(text: str, delimiter: str, close: str) -> list[str]:
    """Text generated to the end of the answer: thinking steps split at the delimiter, then the closing step
    (end-of-thinking marker and answer) as one step. Pure."""
    head, sep, tail = text.partition(close)
    parts = [s.strip() for s in head.split(delimiter)]
    if sep:
        parts.append((close + tail).strip())
    return [s for s in parts if s]


class RunnerBase:
    """What every step runner shares (the engine's and a remote server's): observers, progress, scoring."""

    observers: Sequence[Observer] | None = None
    rounds: int = 0
    """Steps taken so far (calls of `extend`)."""

    def watch(self, observers: Sequence[Observer] | None) -> None:
        """Observers of the prompts (one each; several prompts may share one, as parallel tempering's chains
        do): progress after every step, and a cancelled prompt's particles stop (on the engine at their next
        token, on a remote server at the next step) and finish as `cancelled`."""
        self.observers = observers

    def is_cancelled(self, prompt: int) -> bool:
        return self.observers is not None and self.observers[prompt].cancelled

    def score(self, particles: Sequence[Particle], which: Sequence[int], scorer,
              questions: Sequence[str]) -> list[Particle]:
        """Append the PRM's score of the current prefix to particles[j] for j in `which` (one batched call)."""
        items = [StepSequence(questions[particles[j].prompt], particles[j].steps) for j in which]
        values = scorer(items, rows=[particles[j].row for j in which])  # rows: for a PRM that reads them
        out = list(particles)
        for j, v in zip(which, values):
            out[j] = replace(out[j], scores=out[j].scores + (v,))
        return out

    def _report(self, particles: Sequence[Particle]) -> None:
        """Progress per prompt after a step (a streamed search request shows it while it searches)."""
        if self.observers is None:
            return
        groups: dict[int, tuple[Observer, list[Particle]]] = {}  # by observer: one event per problem
        for p in particles:
            o = self.observers[p.prompt]
            groups.setdefault(id(o), (o, []))[1].append(p)
        for o, mine in groups.values():
            if not o.cancelled:
                o.on_progress({"step": self.rounds, "live": sum(not p.done for p in mine), "candidates": len(mine),
                               "generated_tokens": sum(max(len(p.tokens), p.num_tokens) for p in mine)})


class StepRunner(RunnerBase):
    """Particles of a batch of prompts on one engine. Typical use: `start`, then repeatedly `extend`,
    `score`, and `rebind` (after a search method chose the next population), then `results`."""

    def __init__(self, engine: Engine, sampling: SamplingConfig, cfg: StepConfig, *, lookahead: int = 0) -> None:
        """`lookahead`: room kept in every row past its last token (a scorer that peeks, `Engine.peek`)."""
        self.engine, self.model, self.sampling, self.cfg = engine, engine.model, sampling, cfg
        self.lookahead = lookahead
        self.profile_ids = profile_tokens(self.model)
        self.delimiter = cfg.delimiter or self.model.profile.step_delimiter
        self.delimiter_ids = self.model.encode(self.delimiter)
        self.prompts: list[TokenIds] = []
        self.costs: list[PromptCost] = []
        self.owned: set[int] = set()

    # ---- population -------------------------------------------------------------------------------------
    def start(self, prompts: Sequence[TokenIds], counts: Sequence[int], *, spare_rows: int = 0) -> list[list[Particle]]:
        """counts[i] empty particles for prompt i: one prefill per prompt (kept as the prompt's root row, for
        `spawn`), then KV-row forks of it."""
        if any(c < 0 for c in counts):
            raise ValueError("particle counts must be >= 0")
        if self.observers is not None and len(self.observers) != len(prompts):
            raise ValueError(f"got {len(self.observers)} observers for {len(prompts)} prompts")
        self.prompts, self.costs = [tuple(p) for p in prompts], [PromptCost() for _ in prompts]
        longest = max(len(p) for p in prompts)
        room = check_room(self.model, longest, len(self.profile_ids.forcing_ids) + 16)
        self.capacity = longest + min(room, self.cfg.max_tokens + len(self.profile_ids.forcing_ids) + 1)
        self.engine.reserve(sum(counts) + len(prompts) + spare_rows,
                            min(self.capacity + self.lookahead, self.model.context_length))
        self.roots = self.engine.prefill(list(prompts), max_new_tokens=self.capacity - longest).tolist()
        self.owned.update(self.roots)
        return self.spawn(counts)

    def spawn(self, counts: Sequence[int]) -> list[list[Particle]]:
        """counts[i] new empty particles for prompt i, forked from its root row."""
        src = [r for r, c in zip(self.roots, counts) for _ in range(c)]
        forked = self.engine.fork(torch.tensor(src, dtype=torch.long)).tolist() if src else []
        self.owned.update(forked)
        out, k = [], 0
        for i, c in enumerate(counts):
            out.append([Particle(i, row) for row in forked[k : k + c]])
            k += c
        return out

    def rebind(self, old: Sequence[Particle], new: Sequence[Particle], *,
               keep_rows: Sequence[int] = ()) -> list[Particle]:
        """Make `new` (drawn from `old`, duplicates allowed) own rows: the first copy of an unfinished particle
        keeps its row, further copies get forked rows, finished particles need none (their rows are freed, so
        live rows stay packed at the low end of the cache: see `Engine._step_forward`); rows nobody keeps are
        freed."""
        claimed: set[int] = set()
        to_fork: list[int] = []
        plan: list[tuple[Particle, str]] = []
        for p in new:
            if p.row is None or p.done:
                plan.append((p, "none"))
            elif p.row not in claimed:
                claimed.add(p.row)
                plan.append((p, "keep"))
            else:
                plan.append((p, "fork"))
                to_fork.append(p.row)
        keep = claimed | set(keep_rows)
        stale = sorted({p.row for p in old if p.row is not None} - keep)
        self._free(stale)
        forked_rows = self.engine.fork(torch.tensor(to_fork, dtype=torch.long)).tolist() if to_fork else []
        self.owned.update(forked_rows)
        forked = iter(forked_rows)
        return [p if how == "keep" else replace(p, row=None if how == "none" else next(forked)) for p, how in plan]

    def fork(self, p: Particle) -> Particle:
        """A copy of `p` on a forked row (its row must exist; finished or not)."""
        if p.row is None:
            raise RuntimeError("a particle without an engine row cannot be forked")
        (row,) = self.engine.fork(torch.tensor([p.row])).tolist()
        self.owned.add(row)
        return replace(p, row=row)

    def fork_prefix(self, p: Particle, num_rounds: int) -> Particle:
        """A new unfinished particle with the first `num_rounds` rounds of `p` (see `Particle.prefix`): a fork
        of its row cut back, or (if `p` no longer has a row) a prefill of that prefix."""
        cut = p.prefix(num_rounds)
        prefix = self.prompts[p.prompt] + cut.tokens
        if p.row is not None:
            (row,) = self.engine.fork(torch.tensor([p.row])).tolist()
            self.engine.truncate(torch.tensor([row]), torch.tensor([len(prefix)]))
        else:
            (row,) = self.engine.prefill([prefix], max_new_tokens=self.capacity - len(prefix)).tolist()
        self.owned.add(row)
        return replace(cut, row=row)

    def adopt(self, particles: Sequence[Particle], others: Sequence[Particle]) -> list[Particle]:
        """particles[i] (this runner's particle of a prompt) moved to others[i]'s text (the same prompt's
        particle on another model with the same tokenizer): each row is cut back to what both texts share and
        fed the rest without sampling (one batched forward), so that its next step continues others[i]. A
        draft/target loop keeps both models on the accepted prefix this way, each only when it is next called."""
        rows, rests = [], []
        for p, o in zip(particles, others, strict=True):
            if p.row is None:
                raise RuntimeError("a particle without an engine row cannot adopt a prefix")
            base, common = len(self.prompts[p.prompt]), _shared_length(p.tokens, o.tokens)
            if base + len(o.tokens) >= self.capacity:
                raise RuntimeError("the adopted prefix does not fit this runner's rows")
            if common < len(p.tokens):
                self.engine.truncate(torch.tensor([p.row]), torch.tensor([base + common]))
            rows.append(p.row)
            rests.append(o.tokens[common:])
            self.costs[p.prompt].fed += len(o.tokens) - common
        if rows:
            self.engine.append(torch.tensor(rows, dtype=torch.long), rests)
            for p, rest in zip(particles, rests):
                self.costs[p.prompt].passes += bool(rest)  # a row fed in the batched forward
        return [replace(o, row=p.row) for p, o in zip(particles, others)]

    def materialize(self, p: Particle) -> Particle:
        """`p` with an engine row holding its whole text (one prefill if it had none), so that prefixes of it
        are forks cut back rather than prefills (particle Gibbs's reference, copied at many rounds)."""
        if p.row is not None:
            return p
        text = self.prompts[p.prompt] + p.tokens
        (row,) = self.engine.prefill([text], max_new_tokens=max(0, self.capacity - len(text))).tolist()
        self.owned.add(row)
        return replace(p, row=row)

    def release(self, particles: Sequence[Particle]) -> None:
        self._free(sorted({p.row for p in particles if p.row is not None}))

    def close(self) -> None:
        """Free every row this runner still holds (also after an error)."""
        self._free(sorted(self.owned))

    def _free(self, rows: Sequence[int]) -> None:
        rows = [r for r in rows if r in self.owned]
        if rows:
            self.engine.release(torch.tensor(rows, dtype=torch.long))
            self.owned.difference_update(rows)

    # ---- generation and scoring -------------------------------------------------------------------------
    def _step_limit(self) -> int:
        return self.cfg.max_step_tokens + len(self.profile_ids.forcing_ids) + self.cfg.max_answer_tokens + 1

    def extend(self, particles: Sequence[Particle], generators: Sequence[Generator], *,
               to_end: bool = False) -> list[Particle]:
        """Every unfinished particle gets one more step (`to_end`: runs to the end of its answer) in one
        batched decode. generators[i] is prompt i's: each particle's draws derive from its prompt's only."""
        active = [j for j, p in enumerate(particles) if not p.done]
        if not active:
            return list(particles)
        if any(particles[j].row is None for j in active):
            raise RuntimeError("an unfinished particle has no engine row")
        per_prompt: dict[int, list[int]] = {}
        for j in active:
            per_prompt.setdefault(particles[j].prompt, []).append(j)
        gens: dict[int, Generator] = {}
        if not self.sampling.greedy:
            for i, js in per_prompt.items():
                gens.update(zip(js, child_generators(generators[i], len(js))))
        budget_cfg = BudgetConfig(max_thinking_tokens=None, max_answer_tokens=self.cfg.max_answer_tokens)
        budgets = [BudgetController(budget_cfg, self.profile_ids, self.model.decode) for _ in active]
        # a particle on its last allowed step runs to the end of its answer, so that it has one
        last = [to_end or len(particles[j].steps) >= self.cfg.max_steps - 1 for j in active]
        ctrls = [_StepController(b, MarkerDetector(self.delimiter, self.model.decode, self.delimiter_ids,
                                                inside_tokens=True),
                                 self.model.decode, self.cfg.max_step_tokens, end,
                                 lambda i=particles[j].prompt: self.is_cancelled(i))
                 for j, b, end in zip(active, budgets, last)]
        rows = torch.tensor([particles[j].row for j in active], dtype=torch.long)
        longest = max(len(self.engine.tokens(r)) for r in rows.tolist())
        per_call = self.cfg.max_tokens + len(self.profile_ids.forcing_ids) + 1 if any(last) else self._step_limit()
        limit = max(1, min(per_call, self.capacity - longest))
        decoded = self.engine.decode(rows, max_new_tokens=limit, sampling=self.sampling,
                                     generator=[gens[j] for j in active] if gens else None, controllers=ctrls)
        out = list(particles)
        for j, d, b in zip(active, decoded, budgets):
            p = particles[j]
            cost = self.costs[p.prompt]
            cost.thinking += b.state.thinking_tokens
            cost.forced += b.forced
            cost.answer += b.state.answer_tokens
            cost.passes += d.forward_passes
            out[j] = self._advance(p, d.tokens, closed=b.state.phase == "answer").end_round()
            if self.is_cancelled(p.prompt):
                out[j] = replace(out[j], done=True, finish="cancelled")
        self.rounds += 1
        self._report(out)
        return out

    def _advance(self, p: Particle, new: TokenIds, *, closed: bool) -> Particle:
        tokens = p.tokens + tuple(new)
        if closed or len(new) == 0:
            texts = self._split_steps(new) if closed else []
        else:
            texts = [self._text(new)]
        steps = p.steps + tuple(t for t in texts if t)
        ends = p.step_ends + (len(tokens),) * (len(steps) - len(p.steps))
        full = len(tokens) >= self.cfg.max_tokens or len(self.prompts[p.prompt]) + len(tokens) >= self.capacity
        if closed:
            return replace(p, tokens=tokens, steps=steps, step_ends=ends, done=True, finish="answer")
        if full or len(steps) >= self.cfg.max_steps:
            return replace(p, tokens=tokens, steps=steps, step_ends=ends, done=True,
                           finish="length" if full else "max_steps")
        return replace(p, tokens=tokens, steps=steps, step_ends=ends)

    def _text(self, tokens: Sequence[int]) -> str:
        return self.model.decode([t for t in tokens if t not in self.model.eos_ids]).strip()

    def _split_steps(self, tokens: TokenIds) -> list[str]:
        text = self.model.decode([t for t in tokens if t not in self.model.eos_ids])
        return split_steps(text, self.delimiter, self.model.profile.think_close)

    # ---- results ----------------------------------------------------------------------------------------
    def result(self, p: Particle, *, wall_seconds: float, prm_calls: int = 0, prm_tokens: int = 0,
               trace: dict | None = None, charge: Sequence[int] | None = None) -> MethodResult:
        """The chosen particle as the prompt's result; usage counts every particle of the prompt (of every
        runner prompt in `charge`, when one problem ran as several: parallel tempering's chains)."""
        thinking, answer = split_thinking(self.model, p.tokens, thinking_done=False)
        charged = [self.costs[i] for i in (charge if charge is not None else [p.prompt])]
        cost = PromptCost(*(sum(getattr(c, f) for c in charged) for f in ("thinking", "forced", "answer", "passes")))
        generated = cost.thinking + cost.forced + cost.answer
        processed = len(self.prompts[p.prompt]) * len(charged) + generated
        usage = model_usage(self.model, prompt_tokens=len(self.prompts[p.prompt]), processed=processed,
                            forward_passes=cost.passes + 1, wall_seconds=wall_seconds, thinking_tokens=cost.thinking,
                            forced_tokens=cost.forced, answer_tokens=cost.answer, prm_calls=prm_calls,
                            prm_tokens=prm_tokens)
        finish = {"answer": "stop", "max_steps": "length", "length": "length",
                  "cancelled": "cancelled"}.get(p.finish, "length")
        return MethodResult(tokens=p.tokens, thinking=thinking, answer=answer, usage=usage,
                            finish_reason=finish, trace=trace or {})


def make_runner(backend, sampling: SamplingConfig, cfg: StepConfig, *, lookahead: int = 0):
    """The step runner of a backend: the engine's KV-row runner, or the backend's own (a remote server's)."""
    own = getattr(backend, "step_runner", None)
    if own is not None:
        return own(sampling, cfg, lookahead=lookahead)
    return StepRunner(backend, sampling, cfg, lookahead=lookahead)


def prompt_generators(generator: Generator | Sequence[Generator], n: int) -> list[Generator]:
    """One generator per prompt (search draws depend on the prompt's own generator only)."""
    if isinstance(generator, Generator):
        return child_generators(generator, n)
    if len(generator) != n:
        raise ValueError(f"got {len(generator)} generators for {n} prompts")
    return list(generator)

