"""The steps level on a remote server: partial solutions as text, extended with completions that stop at the
step delimiter, so that every search method runs against vLLM, SGLang, llama.cpp's server or ours.

A step request continues prompt + the particle's text with `stop=[delimiter]` and at most `max_step_tokens`
tokens; a particle on its last allowed step (or `to_end`) gets no stop string. When thinking closes inside a
step, or the model ends its turn while still thinking (the profile's forcing string then closes it, as on the
engine), a second request writes the whole answer. Duplicating or dropping particles costs nothing (there are no
rows to fork); instead every request re-sends its prefix, which the usage counts (`requests`, `sent_tokens`).
Whether a completion stopped at the delimiter or at the end of turn is read from `stop_reason` (vLLM's field,
this project's server sends it too); a server without it is taken to have stopped at the delimiter unless it
returned no text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from torch import Generator

from reasonbudget.engine.generation import model_usage
from reasonbudget.engine.sampling import SamplingConfig, child_generators
from reasonbudget.remote.client import Completion
from reasonbudget.remote.generation import request_seeds
from reasonbudget.steps.particles import Particle, PromptCost, RunnerBase, StepConfig, split_steps
from reasonbudget.types import MethodResult

if TYPE_CHECKING:
    from reasonbudget.remote.model import RemoteModel


BLANK_RETRIES = 3


@dataclass
class _Step:
    """What the server wrote for one particle this round: `lead` (blank steps asked again, with their
    delimiters), then `text`; how the last request ended; tokens generated in all."""

    lead: str = ""
    text: str = ""
    finish: str = ""
    at_delimiter: bool = False
    tokens: int = 0
    last_prompt_tokens: int = 0
    last_tokens: int = 0

    def add(self, c: Completion, *, at_delimiter: bool) -> None:
        self.text, self.finish, self.at_delimiter = c.text, c.finish_reason, at_delimiter
        self.tokens += c.completion_tokens
        self.last_prompt_tokens, self.last_tokens = c.prompt_tokens, c.completion_tokens


class RemoteStepRunner(RunnerBase):
    def __init__(self, model: RemoteModel, sampling: SamplingConfig, cfg: StepConfig) -> None:
        self.model, self.sampling, self.cfg = model, sampling, cfg
        self.delimiter = cfg.delimiter or model.profile.step_delimiter
        self.prompts: list[str] = []
        self.costs: list[PromptCost] = []
        self.prompt_tokens: list[int] = []

    # ---- population: text only, nothing to fork or free ------------------------------------------------
    def start(self, prompts: Sequence[str], counts: Sequence[int], *, spare_rows: int = 0) -> list[list[Particle]]:
        if any(c < 0 for c in counts):
            raise ValueError("particle counts must be >= 0")
        if self.observers is not None and len(self.observers) != len(prompts):
            raise ValueError(f"got {len(self.observers)} observers for {len(prompts)} prompts")
        self.prompts, self.costs = [str(p) for p in prompts], [PromptCost() for _ in prompts]
        self.prompt_tokens = [self.model.count_tokens(p) or 0 for p in self.prompts]
        return self.spawn(counts)

    def spawn(self, counts: Sequence[int]) -> list[list[Particle]]:
        return [[Particle(i, None) for _ in range(c)] for i, c in enumerate(counts)]

    def rebind(self, old: Sequence[Particle], new: Sequence[Particle], *, keep_rows: Sequence[int] = ()) -> list[Particle]:
        return list(new)

    def fork_prefix(self, p: Particle, num_rounds: int) -> Particle:
        cut = p.prefix(num_rounds)
        share = len(cut.text) / len(p.text) if p.text else 0.0
        return replace(cut, num_tokens=round(p.num_tokens * share))

    def materialize(self, p: Particle) -> Particle:
        return p

    def adopt(self, particles: Sequence[Particle], others: Sequence[Particle]) -> list[Particle]:
        """particles[i] moved to others[i]'s text (another server's particle of the same prompt, in a draft/target
        loop): the next request sends that text, so there is nothing to feed here."""
        return [replace(o, row=None) for _, o in zip(particles, others, strict=True)]

    def release(self, particles: Sequence[Particle]) -> None:
        pass

    def close(self) -> None:
        pass

    # ---- generation -------------------------------------------------------------------------------------
    def extend(self, particles: Sequence[Particle], generators: Sequence[Generator], *,
               to_end: bool = False) -> list[Particle]:
        """Every unfinished particle gets one more step (`to_end`: runs to the end of its answer), all
        requests of the call sent concurrently. generators[i] is prompt i's."""
        out = [replace(p, done=True, finish="cancelled") if not p.done and self.is_cancelled(p.prompt) else p
               for p in particles]
        active = [j for j, p in enumerate(out) if not p.done]
        for j in [j for j in active if self._room(out[j]) < 1]:  # no context or token budget left
            out[j] = replace(out[j], done=True, finish="length")
        active = [j for j in active if not out[j].done]
        if active:
            seeds = self._seeds(out, active, generators)
            last = [to_end or len(out[j].steps) >= self.cfg.max_steps - 1 for j in active]
            steps = self._steps(out, active, last, seeds)
            answers = self._answers(out, active, steps, last, seeds)
            for j, step, end in zip(active, steps, last):
                out[j] = self._advance(out[j], step, end, answers.get(j)).end_round()
        self.rounds += 1
        self._report(out)
        return out

    def _room(self, p: Particle) -> int:
        """Tokens the particle may still generate: its own cap, and the server's context when known."""
        room = self.cfg.max_tokens - p.num_tokens
        if self.model.context_length is not None:
            room = min(room, self.model.context_length - self.prompt_tokens[p.prompt] - p.num_tokens - 1)
        return room

    def _seeds(self, particles, active, generators) -> list[int | None]:
        if self.sampling.greedy:
            return [None] * len(active)
        per_prompt: dict[int, list[int]] = {}
        for k, j in enumerate(active):
            per_prompt.setdefault(particles[j].prompt, []).append(k)
        seeds: list[int | None] = [None] * len(active)
        for i, ks in per_prompt.items():
            for k, s in zip(ks, request_seeds(child_generators(generators[i], len(ks)), len(ks))):
                seeds[k] = s
        return seeds

    def _send(self, prompts: list[str], caps: list[int], seeds: list[int | None],
              stops: list[list[str] | None]) -> list[Completion]:
        extras = [{"stop": s} if s else None for s in stops]
        return self.model.server.complete(prompts, max_tokens=caps, seeds=seeds, extras=extras,
                                          temperature=self.sampling.temperature, top_p=self.sampling.top_p)

    def _steps(self, particles, active, last, seeds) -> list[_Step]:
        """One step per particle. As on the engine, a step ends at the delimiter only once it holds text: a
        blank one is asked again after the delimiter (at most `BLANK_RETRIES` times)."""
        steps = [_Step() for _ in active]
        pending = list(range(len(active)))
        for _ in range(BLANK_RETRIES + 1):
            if not pending:
                break
            ps = [particles[active[k]] for k in pending]
            caps = [self._room(p) - steps[k].tokens if last[k] else
                    min(self._room(p) - steps[k].tokens, self.cfg.max_step_tokens - steps[k].tokens)
                    for k, p in zip(pending, ps)]
            sent = [k for k, cap in zip(pending, caps) if cap >= 1]
            caps = [cap for cap in caps if cap >= 1]
            calls = self._send([self.prompts[particles[active[k]].prompt] + particles[active[k]].text + steps[k].lead
                                for k in sent], caps, [seeds[k] for k in sent],
                               [None if last[k] else [self.delimiter] for k in sent])
            pending = []
            for k, c in zip(sent, calls):
                self._charge(particles[active[k]].prompt, c)
                steps[k].add(c, at_delimiter=not last[k] and self._at_delimiter(c))
                if steps[k].at_delimiter and not c.text.strip():  # bounded: BLANK_RETRIES
                    steps[k].lead += c.text + self.delimiter
                    pending.append(k)
        return steps

    def _charge(self, prompt: int, c: Completion) -> None:
        cost = self.costs[prompt]
        cost.requests += 1
        cost.sent_tokens += c.prompt_tokens
        cost.passes += c.completion_tokens
        if not self.prompt_tokens[prompt]:
            self.prompt_tokens[prompt] = c.prompt_tokens

    def _at_delimiter(self, c: Completion) -> bool:
        """The completion stopped at the step delimiter (not at the end of the turn, nor at its length cap)."""
        choice = c.body.get("choices", [{}])[0]
        for field in ("stop_reason", "matched_stop"):  # vLLM and this project's server; SGLang
            if field in choice:
                return choice[field] == self.delimiter
        return c.finish_reason == "stop" and bool(c.text)  # a server that does not say: text, then a stop

    def _answers(self, particles, active, steps, last, seeds) -> dict[int, tuple[str, Completion]]:
        """The answer requests of particles whose thinking closed in this step with the answer cut short (at a
        delimiter or the step cap), or whose turn ended while thinking (the forcing string closes it):
        j -> (the text the answer continues from, the answer's completion)."""
        close, forcing = self.model.profile.think_close, self.model.profile.forcing
        todo = []
        for k, (j, step, end) in enumerate(zip(active, steps, last)):
            base = particles[j].text + step.lead + step.text
            if close in step.text:
                if step.at_delimiter or (step.finish == "length" and not end):
                    todo.append((k, j, base + (self.delimiter if step.at_delimiter else "")))
            elif step.finish == "stop" and not step.at_delimiter:
                todo.append((k, j, base + forcing))
        forcing_tokens = self.model.count_tokens(forcing) or 16  # sent, not generated: room for it too
        caps = [min(self.cfg.max_answer_tokens, self._room(particles[j]) - steps[k].tokens
                    - (0 if close in t[len(particles[j].text):] else forcing_tokens)) for k, j, t in todo]
        todo = [t for t, cap in zip(todo, caps) if cap >= 1]
        caps = [cap for cap in caps if cap >= 1]
        if not todo:
            return {}
        answers = self._send([self.prompts[particles[j].prompt] + t for _, j, t in todo], caps,
                             [seeds[k] for k, _, _ in todo], [None] * len(todo))
        for (_, j, _), a in zip(todo, answers):
            self._charge(particles[j].prompt, a)
        return {j: (t, a) for (_, j, t), a in zip(todo, answers)}

    def _advance(self, p: Particle, step: _Step, end: bool, answer: tuple[str, Completion] | None) -> Particle:
        close = self.model.profile.think_close
        used = p.num_tokens + step.tokens
        cost = self.costs[p.prompt]
        if answer is not None or close in step.text:
            text = answer[0] + answer[1].text if answer is not None else p.text + step.lead + step.text
            head, sep, tail = (p.text + step.lead + step.text).partition(close)
            tail_tokens = (self.model.count_tokens(tail) or 0) if sep else 0
            cost.thinking += step.tokens - tail_tokens
            cost.answer += tail_tokens + (answer[1].completion_tokens if answer is not None else 0)
            if answer is not None and not sep:  # the forcing string: what the server read beyond the step
                cost.forced += max(answer[1].prompt_tokens - step.last_prompt_tokens - step.last_tokens, 0)
            used += answer[1].completion_tokens if answer is not None else 0
            steps = p.steps + tuple(split_steps(text[len(p.text):], self.delimiter, close))
            ends = p.step_ends + (len(text),) * (len(steps) - len(p.steps))
            return replace(p, text=text, steps=steps, step_ends=ends, num_tokens=used, done=True, finish="answer")
        cost.thinking += step.tokens
        text = p.text + step.lead + step.text + (self.delimiter if step.at_delimiter else "")
        new = step.text.strip()
        steps = p.steps + ((new,) if new else ())
        ends = p.step_ends + ((len(text),) if new else ())
        full = self._room(replace(p, num_tokens=used)) < 1 or (end and step.finish == "length")
        if full or len(steps) >= self.cfg.max_steps:
            return replace(p, text=text, steps=steps, step_ends=ends, num_tokens=used, done=True,
                           finish="length" if full else "max_steps")
        return replace(p, text=text, steps=steps, step_ends=ends, num_tokens=used)

    # ---- results ----------------------------------------------------------------------------------------
    def result(self, p: Particle, *, wall_seconds: float, prm_calls: int = 0, prm_tokens: int = 0,
               trace: dict | None = None, charge: Sequence[int] | None = None) -> MethodResult:
        close = self.model.profile.think_close
        thinking, sep, answer = p.text.partition(close)
        charged = [self.costs[i] for i in (charge if charge is not None else [p.prompt])]
        total = {f: sum(getattr(c, f) for c in charged)
                 for f in ("thinking", "forced", "answer", "passes", "requests", "sent_tokens")}
        usage = model_usage(self.model, prompt_tokens=self.prompt_tokens[p.prompt],
                            processed=total["sent_tokens"] + total["passes"], forward_passes=total["passes"],
                            wall_seconds=wall_seconds, thinking_tokens=total["thinking"], forced_tokens=total["forced"],
                            answer_tokens=total["answer"], prm_calls=prm_calls, prm_tokens=prm_tokens)
        finish = {"answer": "stop", "cancelled": "cancelled"}.get(p.finish, "length")
        trace = {**(trace or {}), "requests": total["requests"], "sent_tokens": total["sent_tokens"]}
        return MethodResult(tokens=(), thinking=thinking.strip(), answer=self.model.profile.cut_answer(answer) if sep else "",
                            usage=usage, finish_reason=finish, trace=trace)
