"""The `Method` interface, the method registry, and the shared budgeted run behind the budget methods."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from torch import Generator

from reasonbudget.engine.budget import BudgetConfig, BudgetController, ProfileTokens
from reasonbudget.engine.controllers import Chain, Controller
from reasonbudget.engine.engine import Decoded, Engine, PromptTooLongError
from reasonbudget.engine.sampling import SamplingConfig
from reasonbudget.models.registry import LoadedModel
from reasonbudget.types import MethodResult, TokenIds, Usage


Generators = Generator | Sequence[Generator]
"""One generator per call, or one per prompt (a prompt's draws then do not depend on its batch)."""

_observers: ContextVar[Sequence[Controller] | None] = ContextVar("reasonbudget_observers", default=None)


@contextmanager
def observing(observers: Sequence[Controller]) -> Iterator[None]:
    """Within this block, a method's final decode chains `observers[i]` onto prompt i's row (the server
    streams and cancels through them). Methods that decode in steps (search) do not consult it."""
    token = _observers.set(observers)
    try:
        yield
    finally:
        _observers.reset(token)


class Method(Protocol):
    name: ClassVar[str]
    uses_budget: ClassVar[bool]
    config_type: ClassVar[type]

    def run(self, engine: Engine, prompts: Sequence[TokenIds], *, budget: int | None,
            generator: Generators) -> list[MethodResult]: ...


METHODS: dict[str, Callable[..., Method]] = {}


def takes_samples(name: str) -> bool:
    """The method's budget is N samples or particles (search methods), not thinking tokens."""
    return getattr(METHODS[name], "budget_unit", "thinking tokens") != "thinking tokens"


def register(cls: type) -> type:
    METHODS[cls.name] = cls
    return cls


def make_method(spec: str, sampling: SamplingConfig, **options: Any) -> Method:
    """A registered method with its config built from a sampling config, the settings of its spec
    ("name:key=value,...", see `methods.spec`) and keyword overrides."""
    from reasonbudget.methods.spec import parse_method_spec

    name, settings = parse_method_spec(spec)
    cls = METHODS[name]
    return cls(cls.config_type(sampling=sampling, **{**settings, **options}))


def profile_tokens(model: LoadedModel) -> ProfileTokens:
    p = model.profile
    return ProfileTokens(close=p.think_close, close_ids=model.encode(p.think_close),
                         forcing_ids=model.encode(p.forcing), wait_ids=model.encode(p.wait), eos_ids=model.eos_ids,
                         answer_stop=p.answer_stop)


def split_thinking(model: LoadedModel, tokens: TokenIds, *, thinking_done: bool) -> tuple[str, str]:
    """(thinking, answer) text of generated tokens; EOS tokens are dropped."""
    text = model.decode([t for t in tokens if t not in model.eos_ids])
    if thinking_done:
        return "", text.strip()
    close = model.profile.think_close
    if close not in text:
        return text.strip(), ""
    thinking, answer = text.split(close, 1)
    return thinking.strip(), answer.strip()


@dataclass(frozen=True)
class BudgetedRun:
    """One batched decode under a `BudgetConfig` (one for all prompts, or one per prompt): the shared core of
    plain CoT, budget forcing, NoThinking."""

    budget: BudgetConfig | Sequence[BudgetConfig]
    sampling: SamplingConfig
    prefill_text: str = ""
    """Appended to every prompt (NoThinking prefills a finished thinking block)."""
    steering: Callable[[BudgetController], Controller] | None = None
    """A per-row controller chained after the budget controller (it may read that row's budget state)."""
    observed: bool = True
    """Chain the `observing` controllers onto the rows (False for helper decodes such as TALE's estimate)."""

    def row_budgets(self, n: int) -> list[BudgetConfig]:
        if isinstance(self.budget, BudgetConfig):
            return [self.budget] * n
        if len(self.budget) != n:
            raise ValueError(f"got {len(self.budget)} budgets for {n} prompts")
        return list(self.budget)

    @staticmethod
    def max_new_tokens(b: BudgetConfig, ptok: ProfileTokens) -> int:
        thinking = b.max_thinking_tokens if b.max_thinking_tokens is not None else 4096
        waits = b.max_waits * len(ptok.wait_ids)
        return thinking + waits + len(ptok.forcing_ids) + b.max_answer_tokens + 1

    def __call__(self, engine: Engine, prompts: Sequence[TokenIds], generator: Generators) -> list[MethodResult]:
        model = engine.model
        ptok = profile_tokens(model)
        in_answer = bool(self.prefill_text)
        prompts = [tuple(p) + model.encode(self.prefill_text) for p in prompts] if in_answer else list(prompts)
        t0 = time.perf_counter()
        longest = max(len(p) for p in prompts)
        room, needed = model.context_length - longest, len(ptok.forcing_ids) + 16
        if room < needed:
            raise PromptTooLongError(f"the prompt has {longest} tokens and {model.name}'s context is "
                                     f"{model.context_length}; at least {needed} tokens must remain for the answer")
        budgets = self.row_budgets(len(prompts))
        limit = min(max(self.max_new_tokens(b, ptok) for b in budgets), room)
        rows = engine.prefill(prompts, max_new_tokens=limit)
        ctrls = [BudgetController(b, ptok, model.decode, start_in_answer=in_answer) for b in budgets]
        steer = [self.steering(c) for c in ctrls] if self.steering is not None else [None] * len(ctrls)
        observers = _observers.get() if self.observed else None
        if observers is not None and len(observers) != len(prompts):
            raise ValueError(f"got {len(observers)} observers for {len(prompts)} prompts")
        watch = observers or [None] * len(ctrls)
        row_ctrls = [Chain(*(x for x in (c, s, o) if x is not None)) if (s or o) else c
                     for c, s, o in zip(ctrls, steer, watch)]

        def result(i: int, d: Decoded) -> MethodResult:
            r = _result(model, prompts[i], d, ctrls[i], (time.perf_counter() - t0) / len(prompts), in_answer)
            r.trace.update(getattr(steer[i], "trace", {}))
            return r

        def early(i: int, d: Decoded) -> None:  # an observer may hand a finished row's result on at once
            if hasattr(watch[i], "on_result"):
                watch[i].on_result(result(i, d))

        try:
            decoded = engine.decode(rows, max_new_tokens=limit, sampling=self.sampling, generator=generator,
                                    controllers=row_ctrls, on_finish=early if observers else None)
        finally:
            engine.release(rows)
        return [result(i, d) for i, d in enumerate(decoded)]


def _result(model: LoadedModel, prompt: TokenIds, d: Decoded, c: BudgetController, wall: float,
            in_answer: bool) -> MethodResult:
    thinking, answer = split_thinking(model, d.tokens, thinking_done=in_answer)
    processed = len(prompt) + len(d.tokens)
    usage = Usage(prompt_tokens=len(prompt), thinking_tokens=c.state.thinking_tokens, forced_tokens=c.forced,
                  answer_tokens=c.state.answer_tokens, tokens_by_model={model.name: processed},
                  forward_passes_by_model={model.name: d.forward_passes + 1}, wall_seconds=wall,
                  energy_flops=2.0 * model.num_params * processed)
    trace = {"waits": c.state.waits, "forced_close": c.forced_close,
             "answer_has_text": c.answer_has_text}
    return MethodResult(tokens=d.tokens, thinking=thinking, answer=answer, usage=usage,
                        finish_reason=d.finish_reason, trace=trace)
