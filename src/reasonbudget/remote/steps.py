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
from dataclasses import replace
from typing import TYPE_CHECKING

from torch import Generator

from reasonbudget.engine.generation import model_usage
from reasonbudget.engine.sampling import SamplingConfig, child_generators
from reasonbudget.remote.client import Completion
from reasonbudget.remote.generation import request_seeds
from reasonbudget.steps.particles import Particle, PromptCost, RunnerBase, StepConfig
from reasonbudget.types import MethodResult

if TYPE_CHECKING:
    from reasonbudget.remote.model import RemoteModel


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

    def _room(self, p: Particle) -> int:
        """Tokens the particle may still generate: its own cap, and the server's context when known."""
        room = self.cfg.max_tokens - p.num_tokens
        if self.model.context_length is not None:
            room = min(room, self.model.context_length - self.prompt_tokens[p.prompt] - p.num_tokens - 1)
        return max(1, room)

    def spawn(self, counts: Sequence[int]) -> list[list[Particle]]:
        return [[Particle(i, None) for _ in range(c)] for i, c in enumerate(counts)]

    def rebind(self, old: Sequence[Particle], new: Sequence[Particle], *, keep_rows: Sequence[int] = ()) -> list[Particle]:
        return list(new)

    def fork_prefix(self, p: Particle, num_steps: int) -> Particle:
        cut = p.step_ends[num_steps - 1] if num_steps else 0
        share = cut / len(p.text) if p.text else 0.0
        return Particle(p.prompt, None, (), p.steps[:num_steps], p.step_ends[:num_steps], p.scores[:num_steps],
                        text=p.text[:cut], num_tokens=round(p.num_tokens * share))

    def materialize(self, p: Particle) -> Particle:
        return p

    def release(self, particles: Sequence[Particle]) -> None:
        pass

    def close(self) -> None:
        pass

    # ---- generation -------------------------------------------------------------------------------------
    def extend(self, particles: Sequence[Particle], generators: Sequence[Generator], *,
               to_end: bool = False) -> list[Particle]:
        """Every unfinished particle gets one more step (`to_end`: runs to the end of its answer), all
        requests of the call sent concurrently. generators[i] is prompt i's."""
        active = [j for j, p in enumerate(particles) if not p.done and not self.is_cancelled(p.prompt)]
        out = [replace(p, done=True, finish="cancelled") if not p.done and self.is_cancelled(p.prompt) else p
               for p in particles]
        if active:
            seeds = self._seeds(particles, active, generators)
            last = [to_end or len(particles[j].steps) >= self.cfg.max_steps - 1 for j in active]
            room = [self._room(particles[j]) for j in active]
            caps = [r if end else min(r, self.cfg.max_step_tokens) for r, end in zip(room, last)]
            steps = self._send([self.prompts[particles[j].prompt] + particles[j].text for j in active], caps, seeds,
                               [None if end else [self.delimiter] for end in last])
            for j, c, cap, end in zip(active, steps, caps, last):
                self._charge(particles[j].prompt, c, thinking=True)
            closing = self._answers(particles, active, steps, caps, last, seeds)
            for j, c, cap, end in zip(active, steps, caps, last):
                out[j] = self._advance(particles[j], c, cap, end, closing.get(j))
        self.rounds += 1
        self._report(out)
        return out

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

    def _charge(self, prompt: int, c: Completion, *, thinking: bool) -> None:
        cost = self.costs[prompt]
        cost.requests += 1
        cost.sent_tokens += c.prompt_tokens
        cost.passes += c.completion_tokens
        if thinking:
            cost.thinking += c.completion_tokens
        else:
            cost.answer += c.completion_tokens
        if not self.prompt_tokens[prompt]:
            self.prompt_tokens[prompt] = c.prompt_tokens

    def _at_delimiter(self, c: Completion) -> bool:
        choice = c.body.get("choices", [{}])[0]
        if "stop_reason" in choice:
            return choice["stop_reason"] == self.delimiter
        return c.finish_reason == "stop" and bool(c.text)

    def _answers(self, particles, active, steps, caps, last, seeds) -> dict[int, tuple[str, Completion]]:
        """The answer requests of particles whose thinking closed (or must be closed) in this step:
        j -> (the text the answer continues from, the answer's completion)."""
        close, todo = self.model.profile.think_close, []
        for k, (j, c, end) in enumerate(zip(active, steps, last)):
            if close in c.text:  # closed: the answer may have been cut at a delimiter or at the step cap
                if end and c.finish_reason != "length":
                    continue
                sep = self.delimiter if not end and self._at_delimiter(c) else ""
                todo.append((k, j, particles[j].text + c.text + sep))
            elif c.finish_reason != "length" and not (not end and self._at_delimiter(c)):
                todo.append((k, j, particles[j].text + c.text + self.model.profile.forcing))  # end of turn while thinking
        if not todo:
            return {}
        answers = self._send([self.prompts[particles[j].prompt] + t for _, j, t in todo],
                             [self.cfg.max_answer_tokens] * len(todo), [seeds[k] for k, _, _ in todo], [None] * len(todo))
        for (_, j, _), a in zip(todo, answers):
            self._charge(particles[j].prompt, a, thinking=False)
        return {j: (t, a) for (_, j, t), a in zip(todo, answers)}

    def _advance(self, p: Particle, c: Completion, cap: int, end: bool,
                 closing: tuple[str, Completion] | None) -> Particle:
        used = p.num_tokens + c.completion_tokens
        if closing is not None or (end and self.model.profile.think_close in c.text):
            text = closing[0] + closing[1].text if closing is not None else p.text + c.text
            used += closing[1].completion_tokens if closing is not None else 0
            steps = p.steps + tuple(self._split_steps(text[len(p.text):]))
            ends = p.step_ends + (len(text),) * (len(steps) - len(p.steps))
            return replace(p, text=text, steps=steps, step_ends=ends, num_tokens=used, done=True, finish="answer")
        at_delimiter = not end and self._at_delimiter(c)
        text = p.text + c.text + (self.delimiter if at_delimiter else "")
        step = c.text.strip()
        steps = p.steps + ((step,) if step else ())
        ends = p.step_ends + ((len(text),) if step else ())
        full = used >= self.cfg.max_tokens or (end and c.finish_reason == "length")
        if full or len(steps) >= self.cfg.max_steps:
            return replace(p, text=text, steps=steps, step_ends=ends, num_tokens=used, done=True,
                           finish="length" if full else "max_steps")
        return replace(p, text=text, steps=steps, step_ends=ends, num_tokens=used)

    def _split_steps(self, text: str) -> list[str]:
        """Thinking steps split at the delimiter, then the closing step (marker and answer) as one step."""
        close = self.model.profile.think_close
        head, sep, tail = text.partition(close)
        parts = [s.strip() for s in head.split(self.delimiter)]
        if sep:
            parts.append((close + tail).strip())
        return [s for s in parts if s]

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
