"""The batched decode loop: the only hot loop in reasonbudget.

Each row keeps its token history; the KV cache holds all of it but the last token, which is fed on the next
forward. So a decode step is: feed every active row's last token, let controllers see the logits, sample,
let controllers see the token (force, replace, roll back, stop), check stop rules. Rows are independent:
ragged lengths, their own controllers, their own generator, their own stop.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Generator, Tensor

from reasonbudget.engine import generation
from reasonbudget.engine.budget import BudgetConfig, BudgetController
from reasonbudget.engine.controllers import BatchedWork, Controller, Observer
from reasonbudget.engine.errors import PromptTooLongError
from reasonbudget.engine.memory import retain_freed_memory
from reasonbudget.engine.sampling import SamplingConfig, child_generators, draw, probabilities, sample
from reasonbudget.engine.speculation import MTADSettings, RowSpeculation, Speculation
from reasonbudget.engine.verify import accepts, mtad_verify, residual
from reasonbudget.models.profiles import ReasoningProfile
from reasonbudget.models.registry import LoadedModel, build_prompt
from reasonbudget.types import MethodResult, PromptIds, TokenIds

__all__ = ["Decoded", "Engine", "PromptTooLongError"]

logger = logging.getLogger(__name__)
_DRAFTS: dict[tuple[str, str, str, str], LoadedModel] = {}
"""Draft models by (name, quant, dtype, device), loaded once per process."""


@dataclass(frozen=True)
class Joining:
    """A row that joins a running decode between steps (prefilled by the caller): continuous batching."""

    row: int
    controller: Controller | None = None
    generator: Generator | None = None


@dataclass(frozen=True)
class Decoded:
    tokens: TokenIds
    forced: tuple[bool, ...]  # per token: injected by a controller rather than sampled
    finish_reason: str  # "eos" | "length" | "stop"
    forward_passes: int
    speculation: RowSpeculation | None = None
    """Drafted and accepted tokens and the draft's passes, when the row ran under speculation."""


GATHER_WEIGHT = 2
"""A K/V element gathered costs about as much as 2 weight elements multiplied: one step of rows scattered over a
range, PyTorch's path (bfloat16), one thread, best of 10: the testbed target (1.8M weights, 1536 K/V per position,
300 positions, 256 rows) ran its whole range 2.3x faster than the gathered rows at 3/4 active (0.114 against
0.258 s) and 1.4x slower at half (0.113 against 0.082); Qwen2.5-0.5B (0.49B weights, 32 rows) gathered faster at
both (1.1x at 3/4, 1.35x at half: a row's matmuls cost far more than its copy). The old rule (the whole range
whenever at least half of it is active) fit the first and cost the second. The fused float32 kernels read rows
in place (the testbed: 0.044 s either way)."""


class Engine:
    """The in-process backend: every level of the backend protocol (text, steps, tokens)."""

    levels: frozenset[str] = frozenset({"text", "steps", "tokens"})

    def __init__(self, model: LoadedModel, *, prefill_chunk_tokens: int = 4096) -> None:
        retain_freed_memory()  # a decode step's large tensors reuse freed memory instead of faulting in new pages
        self.model = model
        self.backend = model.backend
        self.cache = None
        self.history: dict[int, list[int]] = {}
        self.prefill_chunk_tokens = prefill_chunk_tokens
        self.draft_engines: dict[tuple[str, str, str, str], Engine] = {}
        self.admission = None
        """Set by a server's scheduler while it runs a batch that requests may join (`generation.Admission`)."""

    # ---- text level (shared with remote backends) -------------------------------------------------------
    @property
    def name(self) -> str:
        return self.model.name

    @property
    def profile(self) -> ReasoningProfile:
        return self.model.profile

    def prompt(self, question: str) -> PromptIds:
        """The chat-templated prompt of one question (token ids that remember the question)."""
        return build_prompt(self.model, question)

    def generate(self, prompts: Sequence[TokenIds], budgets: Sequence[BudgetConfig], sampling: SamplingConfig,
                 generator: Generator | Sequence[Generator], *, prefill_text: str = "",
                 steering: Callable[[BudgetController], Controller] | None = None,
                 observers: Sequence[Observer] | None = None, speculation: Speculation | None = None) -> list[MethodResult]:
        """Think under budgets[i], then answer, for every prompt in one batch (see `engine.generation`)."""
        return generation.generate(self, prompts, budgets, sampling, generator, prefill_text=prefill_text,
                                   steering=steering, observers=observers, speculation=speculation)

    def speculation(self, draft: str, gamma: int, quant: str = "none", mtad: MTADSettings | None = None,
                    adaptive: bool = False) -> Speculation:
        """Speculation with the draft model `draft` (see `draft_engine`)."""
        return Speculation(self.draft_engine(draft, quant), gamma, mtad, adaptive)

    def draft_engine(self, draft: str, quant: str = "none") -> Engine:
        """An engine on the draft model `draft` (a registry name or path) in this engine's dtype and device
        (`quant`: its linears quantized, in the dtype their kernels want: `resolve_dtype`): the weights loaded once
        per process, the rows this engine's own. Refused when its tokenizer differs from this model's; a larger
        draft is allowed with a warning."""
        from reasonbudget.models.registry import DTYPES, check_shared_tokenizer, load_model, resolve_dtype

        device = str(getattr(self.backend, "device", "cpu"))
        own = next((k for k, v in DTYPES.items() if v == getattr(self.backend, "dtype", None)), "float32")
        dtype = own if quant == "none" else resolve_dtype("auto", device, quant)
        key = (draft, quant, dtype, device)
        if key not in _DRAFTS:
            _DRAFTS[key] = load_model(draft, dtype=dtype, device=device, quant=quant)
        check_shared_tokenizer(_DRAFTS[key], self.model)
        if _DRAFTS[key].num_params > self.model.num_params:
            logger.warning("draft %s (%d parameters) is larger than the target %s (%d): allowed, but a draft step "
                           "then costs more than the target step it saves", draft, _DRAFTS[key].num_params,
                           self.model.name, self.model.num_params)
        if key not in self.draft_engines:
            self.draft_engines[key] = Engine(_DRAFTS[key])
        return self.draft_engines[key]

    # ---- rows -------------------------------------------------------------------------------------------
    def _ensure_cache(self, num_rows: int, capacity: int) -> None:
        c = self.cache
        if c is not None and int((~c.in_use).sum()) >= num_rows and c.capacity >= capacity:
            return
        if c is not None and bool(c.in_use.any()):
            raise RuntimeError("KV cache too small while rows are live; release rows or reserve more up front")
        # Nothing is live: the new cache is sized for this request alone, so that one wide batch followed by
        # one long row does not leave a cache that is both wide and long (a server would keep growing).
        self.cache = None  # free the old one before allocating
        self.cache = self.backend.new_cache(max(num_rows, 1), capacity)

    def reserve(self, num_rows: int, capacity: int) -> None:
        """Make room for `num_rows` rows of `capacity` tokens (call before forking many rows)."""
        self._ensure_cache(num_rows, min(capacity, self.model.context_length))

    def release(self, rows: Tensor) -> None:
        self.cache.free(rows)
        for r in rows.tolist():
            self.history.pop(r, None)

    def tokens(self, row: int) -> list[int]:
        return self.history[row]

    def fork(self, rows: Tensor) -> Tensor:
        new = self.cache.fork(rows)
        for s, d in zip(rows.tolist(), new.tolist()):
            self.history[d] = list(self.history[s])
        return new

    def reorder(self, rows: Tensor, src_rows: Tensor) -> None:
        hist = [list(self.history[s]) for s in src_rows.tolist()]
        self.cache.reorder(rows, src_rows)
        for d, h in zip(rows.tolist(), hist):
            self.history[d] = h

    def truncate(self, rows: Tensor, num_tokens: Tensor) -> None:
        """Rollback: row keeps its first num_tokens tokens (prompt included)."""
        for r, n in zip(rows.tolist(), num_tokens.tolist()):
            del self.history[r][n:]
        self.cache.truncate(rows, num_tokens - 1)

    @torch.inference_mode()
    def forward_last(self, rows: Tensor) -> Tensor:
        """One decode step without sampling: feed each row its last token (its K/V join the cache) and return
        the next-token logits [R, V]; the caller appends the token it picks (MTAD's beams)."""
        forward_out = self._forward(torch.tensor([[self.history[r][-1]] for r in rows.tolist()]), rows,
                           torch.zeros(rows.numel(), dtype=torch.long), ())
        self.cache.lengths[rows] += 1
        return forward_out.logits

    def rewind_last(self, rows: Tensor) -> None:
        """Undo `forward_last` on rows whose history did not grow: their last token's K/V leave the cache (it is
        fed again next time), as after `prefill`."""
        if any(self.cache.lengths[r] != len(self.history[r]) for r in rows.tolist()):
            raise ValueError("rewind_last: a row whose last token is not in the cache")
        self.cache.lengths[rows] -= 1

    # ---- forward ----------------------------------------------------------------------------------------
    def _forward(self, tokens: Tensor, rows: Tensor, logits_at: Tensor, hidden_layers: Sequence[int]):
        return self.backend(tokens, self.cache, rows, logits_at=logits_at, hidden_layers=hidden_layers)

    @torch.inference_mode()
    def prefill(self, prompts: Sequence[TokenIds], *, max_new_tokens: int) -> Tensor:
        """Allocate one row per prompt and write all but each prompt's last token into the cache."""
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        longest = max(len(p) for p in prompts)
        if longest + max_new_tokens > self.model.context_length:
            raise PromptTooLongError(
                f"prompt of {longest} tokens + {max_new_tokens} new tokens exceeds the context of "
                f"{self.model.name} ({self.model.context_length} tokens)")
        self._ensure_cache(len(prompts), longest + max_new_tokens)
        rows = self.cache.allocate(len(prompts))
        for r, p in zip(rows.tolist(), prompts):
            self.history[r] = list(p)
        # chunks of rows keep the padded [R, T] prefill within a token budget
        per_chunk = max(1, self.prefill_chunk_tokens // max(longest - 1, 1))
        for i in range(0, len(prompts), per_chunk):
            chunk, chunk_rows = prompts[i : i + per_chunk], rows[i : i + per_chunk]
            t = max(len(p) for p in chunk) - 1
            if t == 0:
                continue
            tokens = torch.zeros(len(chunk), t, dtype=torch.long)
            for j, p in enumerate(chunk):
                tokens[j, : len(p) - 1] = torch.tensor(p[:-1])
            self._forward(tokens, chunk_rows, torch.zeros(len(chunk), dtype=torch.long), ())
            self.cache.lengths[chunk_rows] = torch.tensor([len(p) - 1 for p in chunk])
        return rows

    @torch.inference_mode()
    def peek(self, rows: Tensor, suffixes: Sequence[TokenIds]) -> Tensor:
        """Next-token logits after each row's tokens followed by suffixes[i], leaving the row as it was: the
        suffix's K/V land past the row's length, where its next token overwrites them. A look-ahead without a
        copy or a re-prefill (a judge's question appended to a partial solution). -> [R, V]"""
        if rows.numel() != len(suffixes):
            raise ValueError(f"{rows.numel()} rows, {len(suffixes)} suffixes")
        return self._feed(rows, [[self.history[r][-1], *s] for r, s in zip(rows.tolist(), suffixes)])[0]

    @torch.inference_mode()
    def append(self, rows: Tensor, suffixes: Sequence[TokenIds]) -> int:
        """Extend each row by suffixes[i] without sampling (tokens another model wrote: a draft/target loop
        hands the accepted step to the model that did not write it). One batched forward over the rows with a
        non-empty suffix; returns how many rows it fed (forward passes, for usage)."""
        if rows.numel() != len(suffixes):
            raise ValueError(f"{rows.numel()} rows, {len(suffixes)} suffixes")
        todo = [(r, list(s)) for r, s in zip(rows.tolist(), suffixes) if s]
        if not todo:
            return 0
        for r, s in todo:
            if len(self.history[r]) + len(s) > self.cache.capacity:
                raise PromptTooLongError(f"row of {len(self.history[r])} tokens + {len(s)} appended exceeds the "
                                         f"cache's {self.cache.capacity} positions")
        todo_rows = torch.tensor([r for r, _ in todo], dtype=torch.long)
        # the row's last token and all but the suffix's last: the cache keeps every token but the last one
        self._feed(todo_rows, [[self.history[r][-1], *s[:-1]] for r, s in todo])
        for r, s in todo:
            self.history[r].extend(s)
        self.cache.lengths[todo_rows] += torch.tensor([len(s) for _, s in todo])
        return len(todo)

    @torch.inference_mode()
    def look(self, rows: Tensor, feeds: Sequence[TokenIds], layers: Sequence[int]) -> dict[int, Tensor]:
        """Hidden states of `layers` (HF numbering: num_layers = the final normed state) at the last token of
        feeds[i], fed from row i's pending position on (so feeds[i] starts with the row's pending last token, or
        replaces it), leaving the row as it was, like `peek`. A PRM head over the policy's own states reads a
        step's end this way for the cost of one token. -> {layer: [R, d]}"""
        if rows.numel() != len(feeds):
            raise ValueError(f"{rows.numel()} rows, {len(feeds)} feeds")
        return self._feed(rows, feeds, layers)[1]

    def _feed(self, rows: Tensor, feeds: Sequence[Sequence[int]],
              layers: Sequence[int] = ()) -> tuple[Tensor, dict[int, Tensor]]:
        """Forward feeds[i] at row i's next positions (lengths unchanged). -> (logits [R, V], {layer: [R, d]}
        hidden states of `layers`), both at each feed's last token."""
        longest = max(len(self.history[r]) for r in rows.tolist()) + max(map(len, feeds))
        per_chunk = max(1, self.prefill_chunk_tokens // longest)  # bounds the K/V gathered per call
        logits, hidden = [], {k: [] for k in layers}
        for i in range(0, len(feeds), per_chunk):
            chunk = feeds[i : i + per_chunk]
            x = torch.zeros(len(chunk), max(map(len, chunk)), dtype=torch.long)
            for j, f in enumerate(chunk):
                x[j, : len(f)] = torch.tensor(f)
            at = torch.tensor([len(f) - 1 for f in chunk])
            forward_out = self._forward(x, rows[i : i + per_chunk], at, layers)
            logits.append(forward_out.logits)
            for k in layers:
                hidden[k].append(forward_out.hidden[k][torch.arange(len(chunk)), at.to(forward_out.hidden[k].device)])
        return torch.cat(logits), {k: torch.cat(v) for k, v in hidden.items()}

    def _step_forward(self, act_rows: Tensor, zeros: Tensor, layers: Sequence[int]):
        """Feed each active row its last token. Rows scattered over a range may be fed as the whole range (rows
        outside the call get their own last token at their next position: the K/V they will write there anyway),
        so that attention reads the cache as a view instead of gathering it: where that copy costs more than
        the idle rows' matmuls (`_feed_whole_range`)."""
        ids = act_rows.tolist()
        lo, hi = min(ids), max(ids)
        span = hi - lo + 1
        contiguous = span == len(ids) and ids == list(range(lo, hi + 1))
        if (contiguous or self.model.kind != "runtime"  # (the HF fallback recomputes rows)
                or not self._feed_whole_range(ids)):
            feed = torch.tensor([[self.history[r][-1]] for r in ids])
            return self._forward(feed, act_rows, zeros[: len(ids)], layers)
        span_rows = torch.arange(lo, hi + 1)
        feed = torch.tensor([[h[-1] if (h := self.history.get(r)) else 0] for r in range(lo, hi + 1)])
        forward_out = self._forward(feed, span_rows, torch.zeros(span, dtype=torch.long), layers)
        at = act_rows - lo
        hidden = {k: h[at] for k, h in forward_out.hidden.items()}
        return type(forward_out)(logits=forward_out.logits[at], hidden=hidden)

    def _feed_whole_range(self, ids: list[int]) -> bool:
        """Whether feeding the idle rows of the range of `ids` (the active rows) costs a step less than gathering
        the active rows' keys and values: idle rows x (the weights a row multiplies + its K/V read) <
        GATHER_WEIGHT x the active rows' K/V. Never where the step reads scattered rows in place (the fused
        float32 kernels); off the CPU, where the rule is not measured, the old one: the range at least half active."""
        lo, hi = min(ids), max(ids)
        range_longest = int(self.cache.lengths[lo : hi + 1].max())
        if range_longest >= self.cache.capacity:
            return False
        idle = hi - lo + 1 - len(ids)
        costs = getattr(self.backend, "step_row_costs", None)
        if costs is None or str(getattr(self.backend, "device", "cpu")) != "cpu":
            return idle <= len(ids)
        weights, kv = costs(self.cache)
        active_longest = int(self.cache.lengths[ids].max())
        return idle * (weights + range_longest * kv) < GATHER_WEIGHT * len(ids) * active_longest * kv

    @torch.inference_mode()
    def decode(
        self,
        rows: Tensor,
        *,
        max_new_tokens: int,
        sampling: SamplingConfig,
        generator: Generator | Sequence[Generator] | None = None,
        controllers: Sequence[Controller | None] | None = None,
        stop_on_eos: bool = True,
        on_step: Callable[[int], None] | None = None,
        on_finish: Callable[[int, Decoded], None] | None = None,
        speculation: Speculation | None = None,
        admit: Callable[[], Sequence[Joining]] | None = None,
    ) -> list[Decoded]:
        """Generate up to max_new_tokens per row; returns one `Decoded` per row, in order.

        `generator`: one generator for the call (row generators are derived from it), or one per row (a row's
        draws then depend only on its own generator, whatever batch it runs in). `on_finish(i, decoded)` is
        called as soon as row i is done, while the others go on (the server answers it right away).
        `speculation`: a draft proposes tokens that one target forward verifies (`engine.speculation`);
        controllers still see every emitted token in order. `admit()` is asked after every step for rows that
        join the batch (continuous batching): they get the next indices (n, n + 1, ...), report through
        `on_finish`, and are not in the returned list."""
        n = rows.numel()
        ctrl = list(controllers) if controllers is not None else [None] * n
        gens = None if sampling.greedy else _row_generators(generator, n)
        layers = tuple(sorted({i for c in ctrl if c is not None for i in c.hidden_layers}))
        eos = self.model.eos_ids if stop_on_eos else frozenset()
        out: list[list[int]] = [[] for _ in range(n)]
        forced: list[list[bool]] = [[] for _ in range(n)]
        queue: list[deque[int]] = [deque() for _ in range(n)]
        finish, passes = [""] * n, [0] * n

        def decoded(i: int) -> Decoded:
            spec = speculation.stats.get(int(rows[i])) if speculation is not None else None
            return Decoded(tuple(out[i]), tuple(forced[i]), finish[i], passes[i], spec)

        def emit(i: int, tok: int, is_forced: bool) -> tuple[bool, bool]:
            """Row i emits `tok`: its controller acts, stop rules apply. -> (the row goes on, the controller
            let the token stand and queued nothing)."""
            row = int(rows[i])
            stop, plain = False, True
            if ctrl[i] is not None:
                act = ctrl[i].on_token(tok, is_forced)
                plain = act.force == () and not act.stop
                if act.replace:
                    if act.rollback:
                        del out[i][-act.rollback :], forced[i][-act.rollback :], self.history[row][-act.rollback :]
                        self.cache.lengths[row] -= act.rollback
                    tok, is_forced = act.force[0], True
                    queue[i].extendleft(reversed(act.force[1:]))
                    ctrl[i].on_edit(act.rollback + 1, (tok,))
                else:
                    queue[i].extend(act.force)
                stop = act.stop
            out[i].append(tok)
            forced[i].append(is_forced)
            self.history[row].append(tok)
            if stop:
                finish[i] = "stop"
            elif not is_forced and tok in eos:
                finish[i] = "eos"
            elif len(out[i]) >= max_new_tokens:
                finish[i] = "length"
            else:
                return True, plain
            if on_finish is not None:
                on_finish(i, decoded(i))
            return False, plain

        active = list(range(n))
        zeros = torch.zeros(n, dtype=torch.long)
        draft_gens = None
        if speculation is not None:
            speculation.start(rows.tolist(), [self.history[int(r)] for r in rows], max_new_tokens + 1)
            draft_gens = [child_generators(g, 1)[0] for g in gens] if gens else None
        try:
            while active:
                if speculation is not None:
                    active = self._speculative_round(active, rows, speculation, sampling, gens, draft_gens, ctrl, queue,
                                                     layers, passes, out, max_new_tokens, emit)
                else:
                    active = self._step(active, rows, zeros, sampling, gens, ctrl, queue, layers, passes, emit)
                for jn in admit() if admit is not None and speculation is None else ():
                    rows = torch.cat([rows, torch.tensor([jn.row], dtype=rows.dtype)])
                    ctrl.append(jn.controller)
                    out.append([])
                    forced.append([])
                    queue.append(deque())
                    finish.append("")
                    passes.append(0)
                    if gens is not None:
                        if jn.generator is None:
                            raise ValueError("a row joining a sampled decode needs its own generator")
                        gens.append(jn.generator)
                    if jn.controller is not None:
                        layers = tuple(sorted({*layers, *jn.controller.hidden_layers}))
                    active.append(len(rows) - 1)
                    zeros = torch.zeros(len(rows), dtype=torch.long)
                if on_step is not None:
                    on_step(len(active))
        finally:
            if speculation is not None:
                speculation.close()
        return [decoded(i) for i in range(n)]

    def _step(self, active, rows, zeros, sampling, gens, ctrl, queue, layers, passes, emit) -> list[int]:
        """One token for every active row (the plain decode step)."""
        act_rows = rows[active]
        forward_out = self._step_forward(act_rows, zeros, layers)
        self.cache.lengths[act_rows] += 1
        logits = forward_out.logits  # [A, V]
        steered = {j: i for j, i in enumerate(active) if ctrl[i] is not None and not queue[i]}
        row_hidden = {j: {k: h[j, 0] for k, h in forward_out.hidden.items()} if layers else None for j in steered}
        _run_batched_work([(ctrl[i], row_hidden[j]) for j, i in steered.items()])
        for j, i in enumerate(active):
            passes[i] += 1
            if j in steered:
                logits[j] = ctrl[i].process_logits(logits[j], row_hidden[j])
        sampled = sample(logits, sampling, [gens[i] for i in active] if gens else None).tolist()
        still = []
        for j, i in enumerate(active):
            tok, is_forced = (queue[i].popleft(), True) if queue[i] else (sampled[j], False)
            if emit(i, tok, is_forced)[0]:
                still.append(i)
        return still

    def _speculative_round(self, active, rows, spec: Speculation, sampling, gens, draft_gens, ctrl, queue, layers,
                           passes, out, max_new_tokens, emit) -> list[int]:
        """One round of speculation: the draft proposes for the rows that would sample, one target forward
        scores every active row's last token and proposal, then each row walks its positions in order until a
        token is not a kept draft (see `engine.speculation`)."""
        act_rows = rows[active]
        base = self.cache.lengths[act_rows].tolist()
        sampling_rows = [i for i in active if not queue[i]]
        proposals = dict(zip(sampling_rows, spec.propose(
            [int(rows[i]) for i in sampling_rows], [self.history[int(rows[i])] for i in sampling_rows], sampling,
            [draft_gens[i] for i in sampling_rows] if draft_gens else None)))
        room = self.cache.capacity - max(base)  # positions every row of the batched forward can write
        feeds = []
        for i in active:
            drafted = proposals.get(i, ([], []))[0][: max(0, min(room - 1, max_new_tokens - len(out[i]) - 1))]
            feeds.append([self.history[int(rows[i])][-1], *drafted])
        for i, f in zip(active, feeds):
            if len(f) > 1:
                spec.stats[int(rows[i])].count_block(len(f) - 1)
        width = max(map(len, feeds))
        x = torch.zeros(len(active), width, dtype=torch.long)
        for j, f in enumerate(feeds):
            x[j, : len(f)] = torch.tensor(f)
        forward_out = self._forward(x, act_rows, None, layers)  # logits [A, T, V]
        keep_upto = (_mtad_lengths(forward_out.logits, feeds, proposals, active, spec, sampling)
                     if spec.mtad is not None else {})
        going, finished = set(range(len(active))), set()
        kept_in_round: dict[int, int] = {}
        for pos in range(width):
            in_run = [j for j in sorted(going) if pos < len(feeds[j])]
            if not in_run:
                break
            steered = [j for j in in_run if ctrl[active[j]] is not None and not queue[active[j]]]
            row_hidden = {j: {k: h[j, pos] for k, h in forward_out.hidden.items()} if layers else None for j in steered}
            _run_batched_work([(ctrl[active[j]], row_hidden[j]) for j in steered])
            for j in in_run:
                i = active[j]
                row = int(rows[i])
                self.cache.lengths[row] = base[j] + pos + 1  # the token fed at this position is in the cache now
                passes[i] += pos == 0
                kept = False
                if queue[i]:
                    tok, is_forced = queue[i].popleft(), True
                else:
                    logits = forward_out.logits[j, pos]
                    if j in steered:
                        logits = ctrl[i].process_logits(logits, row_hidden[j])
                    qs = proposals.get(i, ([], []))[1]
                    draft_tok = feeds[j][pos + 1] if pos + 1 < len(feeds[j]) else None
                    if spec.mtad is not None:  # kept up to MTAD's length, then one token from the target's p
                        kept = pos < keep_upto[j]
                        tok = draft_tok if kept else _verify_position(logits, None, None, sampling,
                                                                      gens[i] if gens else None)[0]
                    else:
                        tok, kept = _verify_position(logits, draft_tok, qs[pos] if draft_tok is not None and qs else None,
                                                     sampling, gens[i] if gens else None)
                    is_forced = False
                    if kept:
                        spec.stats[row].accepted += 1
                        spec.stats[row].position_accepted[pos] += 1
                        kept_in_round[j] = kept_in_round.get(j, 0) + 1
                alive, plain = emit(i, tok, is_forced)
                if not alive:
                    going.discard(j)
                    finished.add(j)
                elif not (kept and plain and not queue[i]):
                    going.discard(j)  # the run ends here; the row goes on next round
        for j, i in enumerate(active):
            if len(feeds[j]) > 1:
                row = int(rows[i])
                spec.record_round(row, len(feeds[j]) - 1, kept_in_round.get(j, 0))
        return [i for j, i in enumerate(active) if j not in finished]


def _mtad_lengths(logits: Tensor, feeds, proposals, active, spec: Speculation, sampling: SamplingConfig) -> dict[int, int]:
    """Per batch row: how many drafted tokens MTAD keeps (`verify.mtad_verify` on the target's post-processed
    log-probabilities of the block; greedy: the argmax is the target's only token)."""
    out = {}
    for j, i in enumerate(active):
        block = feeds[j][1:]
        if not block:
            out[j] = 0
            continue
        rows = logits[j, : len(block)]
        if sampling.greedy:
            lp = [0.0 if int(rows[k].argmax()) == t else float("-inf") for k, t in enumerate(block)]
        else:
            probs = probabilities(rows, sampling)
            lp = [math.log(float(probs[k, t])) if float(probs[k, t]) > 0 else float("-inf") for k, t in enumerate(block)]
        out[j] = mtad_verify(lp, proposals[i][1][: len(block)], spec.mtad.tau)
    return out


def _verify_position(logits: Tensor, drafted: int | None, q: Tensor | None, sampling: SamplingConfig,
                     generator: Generator | None) -> tuple[int, bool]:
    """The token one position of a speculative run emits, and whether it is the kept draft token."""
    if sampling.greedy:
        t = int(logits.argmax())
        return t, drafted is not None and t == drafted
    p = probabilities(logits[None], sampling)[0]
    if drafted is None:
        return int(draw(p[None], [generator])[0]), False
    if accepts(p, q, drafted, float(torch.rand(1, generator=generator, dtype=torch.float64))):
        return drafted, True
    return int(draw(residual(p, q)[None], [generator])[0]), False


def _run_batched_work(rows: Sequence[tuple[Controller, Mapping[int, Tensor] | None]]) -> None:
    """One call per distinct `BatchedWork` with all the rows that asked for it this step."""
    groups: dict[int, tuple[BatchedWork, list]] = {}
    for c, hidden in rows:
        for work, receiver in c.batched_work():
            groups.setdefault(id(work), (work, []))[1].append((receiver, hidden))
    for work, members in groups.values():
        work.run(members)


def _row_generators(generator: Generator | Sequence[Generator] | None, n: int) -> list[Generator]:
    if generator is None:
        raise ValueError("sampling with temperature > 0 needs a torch.Generator (seed it at the entry point)")
    if isinstance(generator, Generator):
        return child_generators(generator, n)
    if len(generator) != n:
        raise ValueError(f"got {len(generator)} generators for {n} rows")
    return list(generator)
