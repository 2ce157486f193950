"""Budgeted generation on the engine: think under a `BudgetConfig` (one per prompt), then answer, in one
batched decode. This is the text level of the backend protocol (`reasonbudget.engine.backend`): plain CoT,
budget forcing, NoThinking and TALE are written against it and run unchanged on a remote server, whose
`generate` does the same with completions. Budget guidance adds a token-level `steering` controller.

Observers (`Observer`, one per prompt) are chained onto the prompt's row: the server streams, caps and
cancels through them, and hears a row's result as soon as it is done while the other rows decode on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Protocol

import torch
from torch import Generator

from reasonbudget.engine.budget import WRAPUP, WRAPUP_STOPS, BudgetConfig, BudgetController, ProfileTokens
from reasonbudget.engine.controllers import Chain, Controller, Observer
from reasonbudget.engine.errors import PromptTooLongError
from reasonbudget.engine.sampling import SamplingConfig
from reasonbudget.types import MethodResult, TokenIds, Usage

if TYPE_CHECKING:
    from reasonbudget.engine.engine import Decoded, Engine, Joining
    from reasonbudget.engine.speculation import RowSpeculation, Speculation
    from reasonbudget.models.registry import LoadedModel

THINKING_SAFETY_CAP = 32768
"""The most thinking an unlimited budget allows (the context usually ends it first)."""

Generators = Generator | Sequence[Generator]
"""One generator per call, or one per prompt (a prompt's draws then do not depend on its batch)."""


def profile_tokens(model: LoadedModel) -> ProfileTokens:
    p = model.profile
    return ProfileTokens(close=p.think_close, close_ids=model.encode(p.think_close),
                         forcing_ids=model.encode(p.forcing), wait_ids=model.encode(p.wait), eos_ids=model.eos_ids,
                         answer_stop=p.answer_stop, wrapup_ids=model.encode("\n" + WRAPUP),
                         wrapup_bare_ids=model.encode(WRAPUP), wrapup_stop_ids=tuple(model.encode(m) for m in WRAPUP_STOPS))


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


def helper_key(helper: LoadedModel, model: LoadedModel) -> str:
    """The usage key of a model that helps `model` (a draft): its name, or "NAME (draft)" when it has the target's
    name (a quantized copy drafting for its own full-precision model), so the two models' counts stay apart."""
    return helper.name if helper.name != model.name else f"{helper.name} (draft)"


def model_usage(model: LoadedModel, *, prompt_tokens: int, processed: int, forward_passes: int, wall_seconds: float,
                draft: tuple[LoadedModel, RowSpeculation] | None = None,
                others: Sequence[tuple[LoadedModel, int, int]] = (), **counts: int) -> Usage:
    """The one place a model's `Usage` is built: tokens processed and forward passes under the model's name,
    and the energy proxy 2 x parameters x tokens processed. `counts`: thinking/forced/answer/PRM counts.
    `draft`: a speculating row's draft model and what it did (its tokens and passes under its own name; the
    target also read the drafted tokens it rejected). `others`: (model, tokens processed, forward passes) of
    further models that worked on the request (a step-level draft)."""
    tokens, passes = {model.name: processed}, {model.name: forward_passes}
    energy = 2.0 * getattr(model, "num_params", 0) * processed
    if draft is not None:
        dm, spec = draft
        tokens[model.name] += spec.drafted - spec.accepted
        energy += 2.0 * getattr(model, "num_params", 0) * (spec.drafted - spec.accepted)
        d_processed = prompt_tokens + spec.drafted + spec.draft_beam_tokens + spec.draft_fed
        others = [(dm, d_processed, spec.draft_passes + 1), *others]
        counts = {**counts, "drafted_tokens": spec.drafted, "accepted_tokens": spec.accepted}
    for om, o_processed, o_passes in others:
        o_key = helper_key(om, model)
        tokens[o_key] = tokens.get(o_key, 0) + o_processed
        passes[o_key] = passes.get(o_key, 0) + o_passes
        energy += 2.0 * getattr(om, "num_params", 0) * o_processed
    return Usage(prompt_tokens=prompt_tokens, tokens_by_model=tokens, forward_passes_by_model=passes,
                 wall_seconds=wall_seconds, energy_flops=energy, **counts)


def check_room(model: LoadedModel, longest_prompt: int, needed: int) -> int:
    """Tokens left in the context after the longest prompt; PromptTooLongError if fewer than `needed`."""
    room = model.context_length - longest_prompt
    if room < needed:
        raise PromptTooLongError(f"the prompt has {longest_prompt} tokens and {model.name}'s context is "
                                 f"{model.context_length}; at least {needed} tokens must remain to generate")
    return room


def thinking_room(b: BudgetConfig, profile_ids: ProfileTokens, room: int) -> int:
    """An unlimited thinking budget made finite by the context: the most thinking that still leaves `room`
    for the forced close and the whole answer, so a soft budget (guidance) that never ends still answers."""
    waits = b.max_waits * len(profile_ids.wait_ids)
    return max(1, min(room - len(profile_ids.forcing_ids) - b.max_answer_tokens - 1 - waits, THINKING_SAFETY_CAP))


def max_new_tokens(b: BudgetConfig, profile_ids: ProfileTokens) -> int:
    thinking = b.max_thinking_tokens if b.max_thinking_tokens is not None else THINKING_SAFETY_CAP
    waits = b.max_waits * len(profile_ids.wait_ids)
    if b.wrapup:  # "**Final Answer**", up to another budget of wrap-up, the close marker
        return 2 * thinking + waits + len(profile_ids.wrapup_ids) + len(profile_ids.close_ids) + b.max_answer_tokens + 1
    return thinking + waits + len(profile_ids.forcing_ids) + b.max_answer_tokens + 1


class Admission(Protocol):
    """Where a running batch takes joining requests from (the server's scheduler sets `engine.admission`
    while it runs a method that can take them): continuous batching."""

    spare_rows: int
    """KV-cache rows to keep free for joining requests."""
    chunk_tokens: int
    """Prompt tokens prefilled for joining requests between two decode steps (chunked prefill): a long prompt
    joins over several steps instead of stalling the running rows for its whole prefill."""

    def poll(self, fits: Callable[[TokenIds, BudgetConfig], bool],
             free_rows: int) -> list[tuple[TokenIds, BudgetConfig, Observer, Generator]]:
        """Waiting requests that fit (`fits(prompt, budget)`), at most `free_rows` of them."""
        ...


def generate(engine: Engine, prompts: Sequence[TokenIds], budgets: Sequence[BudgetConfig], sampling: SamplingConfig,
             generator: Generators, *, prefill_text: str = "",
             steering: Callable[[BudgetController], Controller] | None = None,
             observers: Sequence[Observer] | None = None, speculation: Speculation | None = None) -> list[MethodResult]:
    """One batched decode, prompt i under budgets[i]. `prefill_text` is appended to every prompt (NoThinking
    prefills a finished thinking block, so only the answer is generated). `steering(row_budget)` builds a
    per-row controller chained after the row's budget controller (it may read that row's budget state).
    `speculation`: a draft proposes, the target verifies (`engine.speculation`); budgets hold all the same.
    With `engine.admission` set (and observers, and no speculation), requests join the batch between steps:
    each is prefilled on a spare row, in chunks between steps, and decoded with the others; its result goes to
    its observer."""
    model = engine.model
    if len(budgets) != len(prompts):
        raise ValueError(f"got {len(budgets)} budgets for {len(prompts)} prompts")
    if observers is not None and len(observers) != len(prompts):
        raise ValueError(f"got {len(observers)} observers for {len(prompts)} prompts")
    profile_ids = profile_tokens(model)
    in_answer = bool(prefill_text)
    prefill_ids = model.encode(prefill_text) if in_answer else ()
    prompts = [tuple(p) + prefill_ids for p in prompts]
    t0 = time.perf_counter()
    room = check_room(model, max(len(p) for p in prompts), len(profile_ids.forcing_ids) + 16)

    def resolved(b: BudgetConfig, room: int) -> BudgetConfig:
        if b.max_thinking_tokens is not None:
            return b
        return replace(b, max_thinking_tokens=thinking_room(b, profile_ids, room))

    budgets = [resolved(b, room) for b in budgets]
    limit = min(max(max_new_tokens(b, profile_ids) for b in budgets), room)
    admission: Admission | None = getattr(engine, "admission", None) if speculation is None and observers else None
    if admission is not None:
        engine.reserve(len(prompts) + admission.spare_rows, max(len(p) for p in prompts) + limit)
    rows = engine.prefill(prompts, max_new_tokens=limit)
    ctrls = [BudgetController(b, profile_ids, model.decode, start_in_answer=in_answer) for b in budgets]
    steer = [steering(c) for c in ctrls] if steering is not None else [None] * len(ctrls)
    watch: list[Observer | None] = list(observers or [None] * len(ctrls))
    row_ctrls = [_chain(c, s, o) for c, s, o in zip(ctrls, steer, watch)]
    starts, joined = [t0] * len(prompts), []

    def result(i: int, d: Decoded) -> MethodResult:
        r = _result(model, prompts[i], d, ctrls[i], (time.perf_counter() - starts[i]) / len(row_ctrls), in_answer,
                    speculation.draft.model if speculation is not None else None)
        r.trace.update(getattr(steer[i], "trace", {}))
        return r

    finished = [0]

    def early(i: int, d: Decoded) -> None:  # a finished row's result goes to its observer at once
        finished[0] += 1
        watch[i].on_result(result(i, d))  # type: ignore[union-attr]

    warming: list[list] = []  # [row, prompt, tokens prefilled, what joins with it] of rows still prefilling

    def hand_over(row: int, prompt: TokenIds, joining: tuple) -> Joining:
        """The row joins the decode now: its index there is the next one, so its records are appended now."""
        from reasonbudget.engine.engine import Joining

        c, st, observer, gen, admitted_at = joining
        prompts.append(prompt)
        ctrls.append(c)
        steer.append(st)
        watch.append(observer)
        starts.append(admitted_at)
        return Joining(row, _chain(c, st, observer), gen)

    def admit() -> list[Joining]:
        """Rows that join at the next step. A new request's prompt is prefilled at most `chunk_tokens` tokens
        per step (the warming rows' chunks in one forward) and joins once all of it is in, so a long prompt
        never stalls the running rows for its whole prefill. Once no row is running, nothing waits on the
        prefill: the warming rows are fed whole, or the decode would end with them half-prefilled."""
        idle = finished[0] == len(prompts)  # every row handed to the decode so far has finished
        room = max(1, admission.chunk_tokens) if not idle else sum(len(w[1]) - w[2] for w in warming) + \
            engine.cache.capacity
        ready = []
        if warming:
            feeds = []
            for w in warming:
                take = min(len(w[1]) - w[2], room)
                feeds.append(w[1][w[2] : w[2] + take])
                w[2] += take
                room -= take
            engine.append(torch.tensor([w[0] for w in warming]), feeds)
            ready = [hand_over(w[0], w[1], w[3]) for w in warming if w[2] >= len(w[1])]
            warming[:] = [w for w in warming if w[2] < len(w[1])]
        if room <= 0:
            return ready  # new requests are taken at a later step
        cap = engine.cache.capacity

        def fits(prompt: TokenIds, b: BudgetConfig) -> bool:
            p_len = len(prompt) + len(prefill_ids)
            return p_len + limit <= min(cap, model.context_length) and \
                max_new_tokens(resolved(b, model.context_length - p_len), profile_ids) <= limit

        for prompt, b, observer, gen in admission.poll(fits, int((~engine.cache.in_use).sum())):
            prompt = tuple(prompt) + prefill_ids
            first = max(1, min(len(prompt), room))
            (row,) = engine.prefill([prompt[:first]], max_new_tokens=limit + len(prompt) - first).tolist()
            room -= first
            joined.append(row)
            controller = BudgetController(resolved(b, model.context_length - len(prompt)), profile_ids, model.decode,
                                          start_in_answer=in_answer)
            joining = (controller, steering(controller) if steering is not None else None, observer, gen,
                       time.perf_counter())
            if first >= len(prompt):
                ready.append(hand_over(row, prompt, joining))
            else:
                warming.append([row, prompt, first, joining])
        return ready

    try:
        decoded = engine.decode(rows, max_new_tokens=limit, sampling=sampling, generator=generator,
                                controllers=row_ctrls, on_finish=early if observers else None, speculation=speculation,
                                admit=admit if admission is not None else None)
    finally:
        engine.release(torch.cat([rows, torch.tensor(joined, dtype=rows.dtype)]) if joined else rows)
    return [result(i, d) for i, d in enumerate(decoded)]


def _chain(c: BudgetController, steer: Controller | None, observer: Observer | None) -> Controller:
    return Chain(*(x for x in (c, steer, observer) if x is not None)) if (steer or observer) else c


def _result(model: LoadedModel, prompt: TokenIds, d: Decoded, c: BudgetController, wall: float,
            in_answer: bool, draft_model: LoadedModel | None = None) -> MethodResult:
    thinking, answer = split_thinking(model, d.tokens, thinking_done=in_answer)
    draft = (draft_model, d.speculation) if draft_model is not None and d.speculation is not None else None
    usage = model_usage(model, prompt_tokens=len(prompt), processed=len(prompt) + len(d.tokens),
                        forward_passes=d.forward_passes + 1, wall_seconds=wall, draft=draft,
                        thinking_tokens=c.state.thinking_tokens, forced_tokens=c.forced,
                        answer_tokens=c.state.answer_tokens + c.state.wrapup_tokens)
    trace = {"waits": c.state.waits, "forced_close": c.forced_close, "answer_has_text": c.answer_has_text}
    if d.speculation is not None:  # per position of a round's block: proposed and kept (acceptance by depth)
        trace["speculation"] = {"rounds": d.speculation.rounds, "position_drafted": d.speculation.position_drafted,
                                "position_accepted": d.speculation.position_accepted}
    if c.cfg.wrapup:  # the paper counts thinking up to the last close marker, forced tokens included
        trace.update(wrapup_tokens=c.state.wrapup_tokens, paper_thinking_tokens=c.tokens_before_close)
    return MethodResult(tokens=d.tokens, thinking=thinking, answer=answer, usage=usage,
                        finish_reason=d.finish_reason, trace=trace)
