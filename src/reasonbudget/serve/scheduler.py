"""The engine thread: takes queued jobs, batches compatible ones, runs them on the one engine.

Batching: every job waiting when the engine becomes free is taken at once (up to `max_batch`), grouped by
method, settings and sampling, and each group is decoded as one engine batch. Budget forcing takes one
budget per row, so mixed budgets share a batch. Rows leave the batch as they finish: for the one-decode
methods (EARLY_RESULT_METHODS) a request is answered as soon as its row is done, while the others decode on.
Jobs that arrive while a batch runs wait for the next one (rows do not join a running batch). A full queue refuses new jobs (the server answers 503).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from reasonbudget.engine.controllers import Chain, StopOnText
from reasonbudget.engine.engine import Decoded, Engine
from reasonbudget.methods.base import METHODS, make_method, observing, profile_tokens, takes_samples
from reasonbudget.methods.spec import parse_method_spec
from reasonbudget.serve.jobs import Cancelled, Job, RowWatcher
from reasonbudget.types import MethodResult, Usage

log = logging.getLogger("reasonbudget.serve")

PER_ROW_BUDGET_METHODS = frozenset({"budget-forcing"})
EARLY_RESULT_METHODS = frozenset({"plain", "budget-forcing", "nothinking", "budget-guidance"})
"""Methods whose result is their one decode's row: a request is answered as soon as its row is done."""


def _rows_of(job: Job) -> int:
    """KV rows a job holds at once: N for search methods (samples, particles), else one."""
    return (job.budget or 1) if job.method_name is not None and takes_samples(job.method_name) else 1


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


class Scheduler:
    def __init__(self, engine: Engine, config: SchedulerConfig = SchedulerConfig()) -> None:
        self.engine, self.config = engine, config
        self.queue: queue.Queue[Job | None] = queue.Queue(maxsize=config.max_queue)
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
        first = self.queue.get()
        if first is None:
            return None
        jobs = [first]
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
                groups.setdefault(job.group_key(PER_ROW_BUDGET_METHODS), []).append(job)
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
            rows = sum(_rows_of(j) for j in trial)
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
            for job in jobs:
                self._run_isolated([job])
            return
        for watcher, result in results:
            watcher.settle(result)

    def _run_group(self, jobs: Sequence[Job]) -> list[tuple[RowWatcher, MethodResult]]:
        model = self.engine.model
        close = model.profile.think_close
        holdback = len(profile_tokens(model).close_ids) + 1
        early = jobs[0].method_name in EARLY_RESULT_METHODS
        watchers = [RowWatcher(j, model.decode, model.eos_ids, close, holdback, early) for j in jobs]
        generators = [torch.Generator().manual_seed(j.seed) for j in jobs]
        head = jobs[0]
        if head.method is None:
            results = self._continue_text(jobs, watchers, generators)
        else:
            name, settings = parse_method_spec(head.method)
            if "max_tokens" in getattr(METHODS[name].config_type, "__dataclass_fields__", {}):
                settings.setdefault("max_tokens", head.max_tokens)
            method = make_method(name, head.sampling, **settings)
            budget = [j.budget for j in jobs] if name in PER_ROW_BUDGET_METHODS else head.budget
            with observing(watchers):
                results = method.run(self.engine, [j.prompt for j in jobs], budget=budget, generator=generators)
        return list(zip(watchers, results))

    def _continue_text(self, jobs: Sequence[Job], watchers: list[RowWatcher],
                       generators: list[torch.Generator]) -> list[MethodResult]:
        """Plain continuation of raw prompts (/v1/completions without thinking settings)."""
        model, engine = self.engine.model, self.engine
        t0 = time.perf_counter()
        limit = max(j.max_tokens for j in jobs)
        rows = engine.prefill([j.prompt for j in jobs], max_new_tokens=limit)
        ctrls = [Chain(StopOnText(j.stop, model.decode, model.encode), w) if j.stop else w
                 for j, w in zip(jobs, watchers)]

        def result(i: int, d: Decoded) -> MethodResult:
            j = jobs[i]
            text = model.decode([t for t in d.tokens if t not in model.eos_ids])
            cut = [text.index(s) for s in j.stop if s in text]
            finish = "stop" if cut or d.finish_reason == "eos" else d.finish_reason
            processed = len(j.prompt) + len(d.tokens)
            usage = Usage(prompt_tokens=len(j.prompt), answer_tokens=len(d.tokens),
                          tokens_by_model={model.name: processed},
                          forward_passes_by_model={model.name: d.forward_passes + 1},
                          wall_seconds=(time.perf_counter() - t0) / len(jobs),
                          energy_flops=2.0 * model.num_params * processed)
            return MethodResult(tokens=d.tokens, thinking="", answer=text[: min(cut)] if cut else text, usage=usage,
                                finish_reason=finish)

        try:
            decoded = engine.decode(rows, max_new_tokens=limit, sampling=jobs[0].sampling, generator=generators,
                                    controllers=ctrls, on_finish=lambda i, d: watchers[i].settle(result(i, d)))
        finally:
            engine.release(rows)
        return [result(i, d) for i, d in enumerate(decoded)]
