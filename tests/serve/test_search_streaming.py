"""Search methods on the server: a streamed request hears progress events while it searches, then the chosen
text; a client that leaves mid-search stops it and its KV rows are freed."""

import json
import threading
import time

import httpx
import pytest

from reasonbudget.models import load_model
from reasonbudget.serve.app import create_app
from reasonbudget.serve.background import serving
from reasonbudget.serve.jobs import Job
from reasonbudget.serve.requests import ServeConfig
from reasonbudget.tasks import get_task

pytestmark = pytest.mark.slow
QUESTION = get_task("testbed:d=8").problems(1)[0].question  # a long chain: many steps


@pytest.fixture(scope="module")
def testbed_server():
    app = create_app(load_model("testbed-target"), ServeConfig(default_max_tokens=512,
                                                               allowed_prm_urls=("http://127.0.0.1:9/v1",)))
    with serving(app) as url:
        yield url, app


def test_a_streamed_particle_filter_sends_progress_before_its_answer(testbed_server):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=testbed_server[0], api_key="unused", max_retries=0, timeout=300)
    stream = client.chat.completions.create(
        model="testbed-target", messages=[{"role": "user", "content": QUESTION}], stream=True,
        extra_body={"method": "particle-filter", "budget": 4, "seed": 3})
    kinds = []
    for chunk in stream:
        d = chunk.model_dump()
        if (d.get("reasonbudget") or {}).get("progress"):
            kinds.append("progress")
        elif d["choices"] and (d["choices"][0]["delta"].get("content") or ""):
            kinds.append("content")
    assert "content" in kinds and kinds.index("progress") < kinds.index("content")
    assert kinds.count("progress") >= 3  # one per step: the search was heard while it searched


def test_a_client_that_leaves_mid_search_stops_it_and_frees_its_rows(testbed_server, monkeypatch):
    url, app = testbed_server
    outcomes, finished = [], threading.Event()
    original = Job.finish

    def record(self, outcome):
        outcomes.append(outcome)
        finished.set()
        original(self, outcome)

    monkeypatch.setattr(Job, "finish", record)
    body = {"model": "testbed-target", "messages": [{"role": "user", "content": QUESTION}], "stream": True,
            "method": "particle-filter:max_tokens=4096,max_steps=400", "budget": 32, "seed": 1}
    t0 = time.perf_counter()
    with httpx.stream("POST", f"{url}/chat/completions", json=body, timeout=120) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and "progress" in line:
                progress = json.loads(line[6:])["reasonbudget"]["progress"]
                break  # leave after the first step
    assert progress["step"] == 1 and progress["candidates"] == 32
    assert finished.wait(60), "the search went on after the client left"
    assert outcomes[0].finish_reason == "cancelled"
    engine = app.state.scheduler.engine
    deadline = time.monotonic() + 10
    while engine.cache.in_use.any() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not engine.cache.in_use.any()  # every row of the 32 particles handed back
    ok = httpx.post(f"{url}/chat/completions", timeout=120, json={
        "model": "testbed-target", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 200})
    assert ok.status_code == 200  # and the server keeps serving
    assert time.perf_counter() - t0 < 120


def test_a_prm_server_that_is_down_fails_its_request_alone(testbed_server):
    url, _ = testbed_server
    body = {"model": "testbed-target", "messages": [{"role": "user", "content": QUESTION}],
            "method": "particle-filter", "method_config": {"prm": "pool:http://127.0.0.1:9/v1#prm"}, "budget": 2}
    r = httpx.post(f"{url}/chat/completions", json=body, timeout=120)
    assert r.status_code == 502
    assert "the PRM at http://127.0.0.1:9/v1 cannot be reached" in r.json()["error"]["message"]
    ok = httpx.post(f"{url}/chat/completions", timeout=120, json={
        "model": "testbed-target", "messages": [{"role": "user", "content": QUESTION}], "method": "particle-filter",
        "budget": 2})
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"]
    elsewhere = dict(body, method_config={"prm": "pool:http://169.254.169.254/v1#prm"})
    refused = httpx.post(f"{url}/chat/completions", json=elsewhere, timeout=60)
    assert refused.status_code == 400 and "calls no URL a request names" in refused.json()["error"]["message"]
