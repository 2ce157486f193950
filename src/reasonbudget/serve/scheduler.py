"""The engine thread: takes queued jobs, batches compatible ones, runs them on the one engine.

Batching: every job waiting when the engine becomes free is taken at once (up to `max_batch`), grouped by
method, settings and sampling, and each group is decoded as one engine batch. Budget forcing takes one
budget per row (its capabilities say so), so mixed budgets share a batch. A request is answered as soon as its
method hands over its result (a one-decode method's row is done), while the other rows decode on.
Continuous batching: while a batch of a method that can take joining rows runs (its capabilities say so:
plain CoT, budget forcing, NoThinking), queued jobs with the same method and settings join it between decode
steps, on KV rows kept spare for them (within the memory budget), as long as their prompt and token cap fit the
batch's rows; other jobs wait for the next batch. A full queue refuses new jobs (the server answers 503).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from reasonbudget.engine.controllers import Chain, LogprobRecorder, StopOnText
from reasonbudget.engine.engine import Decoded, Engine
from reasonbudget.engine.generation import model_usage, profile_tokens
from reasonbudget.methods import METHODS, make_method
from reasonbudget.methods.spec import parse_method_spec
from reasonbudget.serve.jobs import Cancelled, Job, RowWatcher
from reasonbudget.types import MethodResult

log = logging.getLogger("reasonbudget.serve")


class QueueFull(Exception):
    pass


@dataclass(frozen=True)
class SchedulerConfig:
    max_batch: int = 64
    max_queue: int = 256
    gather_seconds: float = 0.05
    """After the first job arrives, wait this long for others to join its batch."""
    max_kv_gib: float = 4.0
    """A batch's KV cache (rows x longest prompt plus max_tokens) stays within this; larger groups are split."""
    join_rows: int = 8
    """KV-cache rows a running batch keeps free for requests that join it (continuous batching), within
    `max_kv_gib` and `max_batch`; each costs a row of the batch's length whether a request comes or not."""
    join_chunk_tokens: int = 256
    """Prompt tokens of joining requests prefilled between two decode steps (chunked prefill)."""


class Scheduler:
    def __init__(self, engine: Engine, config: SchedulerConfig = SchedulerConfig()) -> None:
        self.engine, self.config = engine, config
        self.queue: queue.Queue[Job | None] = queue.Queue(maxsize=config.max_queue)
        self.pending: deque[Job | None] = deque()
        """Jobs taken off the queue by a running batch's admission that did not join it (first in line next)."""
        self.admitted: list[Job] = []
        """Jobs that joined the batch now running."""
        self.running = 0
        self.batches = 0
        self.thread: threading.Thread | None = None
        probe = getattr(engine.backend.new_cache(1, 1), "k", None)  # the HF fallback caches token ids only
        self.kv_bytes_per_token = 2 * probe.numel() * probe.element_size() if probe is not None else 16

    def start(self) -> None:
        """Start the engine thread (again, after `stop`); a no-op while it runs."""
        if self.thread is None or not self.thread.is_alive():
            self.thread = threading.Thread(target=self._loop, name="reasonbudget-engine", daemon=True)
            self.thread.start()

    def stop(self) -> None:
        if self.thread is not None and self.thread.is_alive():
            self.queue.put(None)
            self.thread.join(timeout=30)

    def submit(self, job: Job) -> None:
        try:
            self.queue.put_nowait(job)
        except queue.Full:
            raise QueueFull from None

    # ---- engine thread ---------------------------------------------------------------------------------
    def _take(self) -> list[Job] | None:
        first = self.pending.popleft() if self.pending else self.queue.get()
        if first is None:
            return None
        jobs = [first]
        while self.pending and len(jobs) < self.config.max_batch:
            job = self.pending.popleft()
            if job is None:
                self.queue.put(None)
                break
            jobs.append(job)
        deadline = time.monotonic() + self.config.gather_seconds
        while len(jobs) < self.config.max_batch:
            try:
                job = self.queue.get(timeout=max(deadline - time.monotonic(), 0.0))
            except queue.Empty:
                break
            if job is None:
                self.queue.put(None)
                break
            jobs.append(job)
        return jobs

    def _loop(self) -> None:
        while (jobs := self._take()) is not None:
            live = []
            for job in jobs:
                (job.finish(Cancelled()) if job.cancelled.is_set() else live.append(job))
            groups: dict[tuple, list[Job]] = {}
            for job in live:
                groups.setdefault(job.group_key(), []).append(job)
            self.running = len(live)
            for group in groups.values():
                for batch in self._fit_memory(group):
                    self.batches += 1
                    self._run_isolated(batch)
            self.running = 0

    def _fit_memory(self, jobs: list[Job]) -> list[list[Job]]:
        """Consecutive slices of a group whose KV cache fits in `max_kv_gib` (a job alone always runs)."""
        budget = self.config.max_kv_gib * 2**30
        batches: list[list[Job]] = []
        current: list[Job] = []
        for job in jobs:
            trial = current + [job]
            rows = sum(j.rows for j in trial)
            length = max(len(j.prompt) + j.max_tokens for j in trial)
            if current and rows * length * self.kv_bytes_per_token > budget:
                batches.append(current)
                trial = [job]
            current = trial
        return batches + [current] if current else batches

    def _run_isolated(self, jobs: list[Job]) -> None:
        """Run a group; if it fails, run its jobs one by one so one bad request cannot fail the others."""
        try:
            results = self._run_group(jobs)
        except Exception as e:  # noqa: BLE001 - reported to the requests, the server keeps serving
            if len(jobs) == 1:
                log.exception("request failed")
                jobs[0].finish(e)
                return
            for job in [*jobs, *self.admitted]:
                if not job.answered:  # early results (rows that finished first) stay answered
                    self._run_isolated([job])
            return
        for watcher, result in results:
            watcher.settle(result)

    def _run_group(self, jobs: Sequence[Job]) -> list[tuple[RowWatcher, MethodResult]]:
        model = self.engine.model
        close = model.profile.think_close
        holdback = len(profile_tokens(model).close_ids) + 1
        watchers = [RowWatcher(j, model.decode, model.eos_ids, close, holdback) for j in jobs]
        generators = [torch.Generator().manual_seed(j.seed) for j in jobs]
        head = jobs[0]
        if head.method is None:
            results = self._continue_text(jobs, watchers, generators)
        else:
            name, settings = parse_method_spec(head.method)
            if "max_tokens" in getattr(METHODS[name].config_type, "__dataclass_fields__", {}):
                settings.setdefault("max_tokens", head.max_tokens)
            method = make_method(name, head.sampling, **settings)
            budget = [j.budget for j in jobs] if method.capabilities.per_row_budgets else head.budget
            self.admitted = []
            if method.capabilities.joins_running_batch:
                self.engine.admission = _Admission(self, head.group_key(), method, self._spare_rows(jobs),
                                                   lambda job: RowWatcher(job, model.decode, model.eos_ids, close,
                                                                          holdback))
            try:
                results = method.run(self.engine, [j.prompt for j in jobs], budget=budget, generator=generators,
                                     observers=watchers)
            finally:
                self.engine.admission = None
        return list(zip(watchers, results))

    def _spare_rows(self, jobs: Sequence[Job]) -> int:
        """KV rows to keep free for joining jobs: `join_rows`, within `max_batch` rows and `max_kv_gib` in all."""
        length = max(len(j.prompt) + j.max_tokens for j in jobs)
        fit = int(self.config.max_kv_gib * 2**30 // max(1, length * self.kv_bytes_per_token))
        return max(0, min(self.config.join_rows, min(self.config.max_batch, fit) - len(jobs)))

    def _continue_text(self, jobs: Sequence[Job], watchers: list[RowWatcher],
                       generators: list[torch.Generator]) -> list[MethodResult]:
        """Plain continuation of raw prompts (/v1/completions without thinking settings)."""
        model, engine = self.engine.model, self.engine
        t0 = time.perf_counter()
        limit = max(j.max_tokens for j in jobs)
        rows = engine.prefill([j.prompt for j in jobs], max_new_tokens=limit)
        recorders = [LogprobRecorder(j.logprobs) if j.logprobs is not None else None for j in jobs]
        ctrls = [Chain(*(c for c in (r, StopOnText(j.stop, model.decode, model.encode) if j.stop else None, w) if c))
                 for j, r, w in zip(jobs, recorders, watchers)]

        def result(i: int, d: Decoded) -> MethodResult:
            j = jobs[i]
            text = model.decode([t for t in d.tokens if t not in model.eos_ids])
            first = min(((text.index(s), s) for s in j.stop if s in text), default=None)  # (where, which stop)
            finish = "stop" if first or d.finish_reason == "eos" else d.finish_reason
            usage = model_usage(model, prompt_tokens=len(j.prompt), processed=len(j.prompt) + len(d.tokens),
                                forward_passes=d.forward_passes + 1, wall_seconds=(time.perf_counter() - t0) / len(jobs),
                                answer_tokens=len(d.tokens))
            trace = {"stop_reason": first[1] if first else None}
            if recorders[i] is not None:
                trace["logprobs"] = recorders[i].openai_format(model.decode)
            return MethodResult(tokens=d.tokens, thinking="", answer=text[: first[0]] if first else text, usage=usage,
                                finish_reason=finish, trace=trace)

        try:
            decoded = engine.decode(rows, max_new_tokens=limit, sampling=jobs[0].sampling, generator=generators,
                                    controllers=ctrls, on_finish=lambda i, d: watchers[i].settle(result(i, d)))
        finally:
            engine.release(rows)
        return [result(i, d) for i, d in enumerate(decoded)]


class _Admission:
    """A running batch's source of joining jobs (`engine.generation.Admission`), called on the engine thread
    between decode steps: it moves queued jobs to `pending` and hands over those of the batch's method and
    settings that fit, each with its observer and seeded generator."""

    def __init__(self, scheduler: Scheduler, key: tuple, method, spare_rows: int,
                 watcher: Callable[[Job], RowWatcher]) -> None:
        self.scheduler, self.key, self.method, self.spare_rows, self.watcher = scheduler, key, method, spare_rows, watcher
        self.chunk_tokens = scheduler.config.join_chunk_tokens

    def poll(self, fits, free_rows: int) -> list[tuple]:
        s = self.scheduler
        while True:
            try:
                s.pending.append(s.queue.get_nowait())
            except queue.Empty:
                break
        out = []
        for job in list(s.pending):
            if len(out) >= min(free_rows, self.spare_rows) or job is None:
                break  # a stop request ends admission; jobs behind it wait
            if job.group_key() != self.key:
                continue
            if job.cancelled.is_set():
                s.pending.remove(job)
                job.finish(Cancelled())
                continue
            cfg = self.method.row_config(s.engine, job.budget)
            if not fits(job.prompt, cfg):
                continue
            s.pending.remove(job)
            s.admitted.append(job)
            s.running += 1
            self.spare_rows -= 1
            out.append((job.prompt, cfg, self.watcher(job), torch.Generator().manual_seed(job.seed)))
        return out
