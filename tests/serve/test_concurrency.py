"""Concurrent requests share engine batches; a full queue answers 503; a client that leaves cancels its rows."""

import asyncio
import time

import httpx
import pytest

from reasonbudget.engine import Engine, SamplingConfig
from reasonbudget.serve.app import create_app
from reasonbudget.serve.background import serving
from reasonbudget.serve.jobs import Job, RowWatcher
from reasonbudget.serve.requests import ServeConfig
from reasonbudget.serve.scheduler import QueueFull, Scheduler, SchedulerConfig

MODEL = "smollm2-135m"


def body(budget, **kw):
    return {"model": MODEL, "max_tokens": 40, "thinking_token_budget": budget,
            "messages": [{"role": "user", "content": f"What is {budget} + 1?"}], **kw}


@pytest.mark.slow
def test_queued_requests_with_mixed_budgets_share_one_batch_and_match_solo_results(smollm):
    app = create_app(smollm, ServeConfig(), SchedulerConfig(gather_seconds=0.5))
    budgets = [4, 8, 12, 16, 6, 10]
    with serving(app) as url:
        solo = [httpx.post(url + "/chat/completions", json=body(b), timeout=120).json() for b in budgets]
        before = app.state.scheduler.batches

        async def together():
            async with httpx.AsyncClient(timeout=120) as c:
                return await asyncio.gather(*(c.post(url + "/chat/completions", json=body(b)) for b in budgets))

        replies = [r.json() for r in asyncio.run(together())]
        batches = app.state.scheduler.batches - before
    assert batches == 1  # six requests with six budgets, one engine batch
    for b, alone, joint in zip(budgets, solo, replies):
        assert joint["reasonbudget"]["usage"]["thinking_tokens"] <= b
        assert joint["choices"][0]["message"] == alone["choices"][0]["message"]  # greedy: batching changes nothing


def test_a_full_queue_refuses_with_retry_after(smollm):
    app = create_app(smollm, ServeConfig(retry_after_seconds=2), SchedulerConfig(max_queue=1))
    app.state.scheduler.queue.put_nowait(object())  # the engine thread is not started: the queue stays full
    transport = httpx.ASGITransport(app=app)

    async def send():
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return await c.post("/v1/chat/completions", json=body(4))

    r = asyncio.run(send())
    assert r.status_code == 503 and r.headers["retry-after"] == "2"
    assert "queue is full" in r.json()["error"]["message"]


def test_submit_beyond_the_bound_raises(smollm):
    s = Scheduler(Engine(smollm), SchedulerConfig(max_queue=2))
    job = Job(prompt=(1, 2), max_tokens=4, sampling=SamplingConfig(), seed=0)
    s.submit(job), s.submit(job)
    with pytest.raises(QueueFull):
        s.submit(job)


def test_watcher_stops_the_row_when_cancelled_or_at_max_tokens():
    job = Job(prompt=(1,), max_tokens=3, sampling=SamplingConfig(), seed=0)
    w = RowWatcher(job, lambda ids: "", frozenset(), "</think>", holdback=2)
    assert not w.on_token(5, False).stop
    job.cancelled.set()
    assert w.on_token(6, False).stop
    job.cancelled.clear()
    assert w.on_token(7, False).stop and w.capped  # the third token reaches max_tokens
    w.on_edit(2, (9,))
    assert w.tokens == [5, 9]


@pytest.mark.slow
def test_a_client_that_disconnects_mid_stream_cancels_its_rows(smollm):
    app = create_app(smollm, ServeConfig())
    seen = []
    original = RowWatcher.on_token

    def spy(self, token, forced):
        action = original(self, token, forced)
        seen.append((self.job.cancelled.is_set(), action.stop, len(self.tokens)))
        return action

    RowWatcher.on_token = spy
    try:
        with serving(app) as url:
            req = body(400, max_tokens=600, stream=True, temperature=1.0, seed=1, method="budget-forcing")
            with httpx.stream("POST", url + "/chat/completions", json=req, timeout=120) as r:
                for i, _ in enumerate(r.iter_lines()):
                    if i > 4:
                        break  # leave after a few deltas
            deadline = time.monotonic() + 60
            while not any(c and stop for c, stop, _ in seen) and time.monotonic() < deadline:
                time.sleep(0.05)
            health = httpx.get(url.removesuffix("/v1") + "/health").json()
    finally:
        RowWatcher.on_token = original
    stopped = [n for cancelled, stop, n in seen if cancelled and stop]
    assert stopped and stopped[0] < 400  # the row ended long before its budget
    assert health["status"] == "ok"


def test_groups_are_split_to_keep_the_kv_cache_within_its_limit(smollm):
    s = Scheduler(Engine(smollm), SchedulerConfig(max_kv_gib=0.05))
    per_token = s.kv_bytes_per_token  # SmolLM2: 30 layers x 2 x 3 heads x 64 x 4 bytes
    assert per_token == 30 * 2 * 3 * 64 * 4
    jobs = [Job(prompt=(1,) * 100, max_tokens=900, sampling=SamplingConfig(), seed=0) for _ in range(6)]
    batches = s._fit_memory(jobs)  # 1000 tokens x 46 KB = 46 MB a row: one row per 0.05 GiB batch
    assert [len(b) for b in batches] == [1] * 6
    small = [Job(prompt=(1,) * 10, max_tokens=40, sampling=SamplingConfig(), seed=0) for _ in range(6)]
    assert [len(b) for b in s._fit_memory(small)] == [6]


def test_the_engine_cache_is_resized_for_the_next_batch_alone(smollm):
    engine = Engine(smollm)
    engine.release(engine.prefill([(1, 2, 3)] * 8, max_new_tokens=5))
    engine.release(engine.prefill([(1, 2, 3)], max_new_tokens=200))
    assert (engine.cache.num_rows, engine.cache.capacity) == (1, 203)  # not 8 rows x 203


@pytest.mark.slow
def test_a_request_arriving_mid_batch_joins_it_and_finishes_first(smollm):
    """Continuous batching: a long request decodes; a short one sent later joins its batch between steps
    (no second batch), keeps its budget, answers like it does alone (greedy), and comes back before the long
    one. (How much sooner is the serve_load benchmark's business.)"""
    app = create_app(smollm, ServeConfig(), SchedulerConfig(gather_seconds=0.0))
    long_body = {**body(400), "max_tokens": 460}
    with serving(app) as url:
        alone = httpx.post(url + "/chat/completions", json=body(8), timeout=300).json()
        before = app.state.scheduler.batches

        async def late():
            async with httpx.AsyncClient(timeout=600) as c:
                t0 = time.perf_counter()
                first = asyncio.create_task(c.post(url + "/chat/completions", json=long_body))
                await asyncio.sleep(1.5)  # the long request is decoding by now
                short = await c.post(url + "/chat/completions", json=body(8))
                t_short = time.perf_counter() - t0
                long_reply = await first
                return short.json(), long_reply.json(), t_short, time.perf_counter() - t0

        short, long_reply, t_short, t_long = asyncio.run(late())
        batches = app.state.scheduler.batches - before
    assert batches == 1  # the short request joined the long one's batch
    assert short["reasonbudget"]["usage"]["thinking_tokens"] <= 8
    assert short["choices"][0]["message"] == alone["choices"][0]["message"]
    long_tokens = long_reply["usage"]["completion_tokens"]
    assert long_tokens > short["usage"]["completion_tokens"] + 20 and t_short < t_long  # answered while it ran
