"""The server with a default draft (`serve --draft-model`): a thinking-budget request speculates, its budget
holds and its usage shows the draft's work; a request may name its own method settings."""

import httpx
import pytest

from reasonbudget.serve.app import create_app
from reasonbudget.serve.background import serving
from reasonbudget.serve.requests import ServeConfig

Q = "(12 + 5) * 3 mod 100"


@pytest.fixture(scope="module")
def testbed_server():
    from reasonbudget.models import load_model

    app = create_app(load_model("testbed-target"), ServeConfig(default_max_tokens=200, default_draft="testbed-draft"))
    with serving(app) as url:
        yield url


def _ask(url, **extra):
    body = {"model": "testbed-target", "messages": [{"role": "user", "content": Q}], "max_tokens": 120, **extra}
    r = httpx.post(f"{url}/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def test_budgeted_request_speculates_and_keeps_its_budget(testbed_server):
    r = _ask(testbed_server, thinking_token_budget=10)
    usage = r["reasonbudget"]["usage"]
    assert r["reasonbudget"]["method"].startswith("budget-forcing:") and "draft=testbed-draft" in r["reasonbudget"]["method"]
    assert usage["thinking_tokens"] <= 10 and r["choices"][0]["message"]["content"]
    assert usage["drafted_tokens"] >= usage["accepted_tokens"] > 0
    assert usage["forward_passes_by_model"]["testbed-target"] < usage["thinking_tokens"] + usage["answer_tokens"]


def test_request_settings_come_first_and_bad_ones_are_400(testbed_server):
    r = _ask(testbed_server, method="speculative", method_config={"gamma": 2})
    assert "gamma=2" in r["reasonbudget"]["method"] and r["reasonbudget"]["usage"]["drafted_tokens"] > 0
    bad = httpx.post(f"{testbed_server}/chat/completions", json={
        "model": "testbed-target", "messages": [{"role": "user", "content": Q}], "method": "speculative",
        "method_config": {"gamma": 0}}, timeout=60)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "method_config"


def test_the_servers_draft_quantization_applies_to_its_own_draft_only():
    from reasonbudget.models import load_model

    app = create_app(load_model("testbed-target"), ServeConfig(default_max_tokens=200, default_draft="testbed-draft",
                                                                default_draft_quant="int8"))
    with serving(app) as url:
        method = _ask(url, thinking_token_budget=10)["reasonbudget"]["method"]
        assert "draft=testbed-draft" in method and "draft_quant=int8" in method
        own = _ask(url, method="speculative", method_config={"draft": "testbed-draft"})["reasonbudget"]["method"]
        assert "draft_quant" not in own  # a request naming its draft names its quantization too
