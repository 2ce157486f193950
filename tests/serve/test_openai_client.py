"""The server driven by the official `openai` client on loopback (embedded model, greedy, small budgets)."""

import json

import httpx
import pytest

pytestmark = pytest.mark.slow
openai = pytest.importorskip("openai")

MODEL = "smollm2-135m"
Q = [{"role": "user", "content": "Tom has 3 apples and buys 4 more. How many apples does he have?"}]


def chat(client, **kw):
    kw.setdefault("max_tokens", 40)
    return client.chat.completions.create(model=MODEL, messages=Q, **kw)


def extra_usage(resp):
    return resp.model_extra["reasonbudget"]["usage"]


def test_chat_splits_thinking_from_the_answer_and_reports_usage(client):
    r = chat(client, extra_body={"thinking_token_budget": 12})
    msg = r.choices[0].message
    assert r.object == "chat.completion" and r.model == MODEL
    assert msg.model_extra["reasoning_content"] and msg.content  # an answer always follows the forced end
    assert msg.model_extra["reasoning"] == msg.model_extra["reasoning_content"]
    u, full = r.usage, extra_usage(r)
    assert u.completion_tokens_details.reasoning_tokens == full["thinking_tokens"] <= 12
    assert u.completion_tokens == full["thinking_tokens"] + full["forced_tokens"] + full["answer_tokens"] <= 40
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    assert r.model_extra["reasonbudget"]["method"] == "budget-forcing"


@pytest.mark.parametrize("extra", [
    {"thinking_token_budget": 10}, {"max_thinking_tokens": 10}, {"thinking_budget": 10},
    {"thinking_budget_tokens": 10}, {"reasoning_budget_tokens": 10}, {"custom_params": {"thinking_budget": 10}},
    {"thinking": {"type": "enabled", "budget_tokens": 10}}, {"reasoning": {"max_tokens": 10}},
])
def test_every_budget_alias_gives_the_same_capped_answer(client, extra):
    reference = chat(client, extra_body={"thinking_token_budget": 10})
    r = chat(client, extra_body=extra)
    assert extra_usage(r)["thinking_tokens"] <= 10
    assert r.choices[0].message.model_extra["reasoning_content"] == \
        reference.choices[0].message.model_extra["reasoning_content"]
    assert r.choices[0].message.content == reference.choices[0].message.content


def test_reasoning_effort_is_a_fraction_of_max_tokens(client):
    r = chat(client, max_tokens=40, reasoning_effort="low")
    assert r.model_extra["reasonbudget"]["budget"] == int(0.33 * 40)
    assert extra_usage(r)["thinking_tokens"] <= int(0.33 * 40)


def test_streaming_sends_reasoning_then_the_answer(client):
    body = {"thinking_token_budget": 12}
    whole = chat(client, extra_body=body)
    chunks = list(chat(client, extra_body=body, stream=True, stream_options={"include_usage": True}))
    reasoning = "".join(c.choices[0].delta.model_extra.get("reasoning_content") or "" for c in chunks if c.choices)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    kinds = [("r" if c.choices[0].delta.model_extra.get("reasoning_content") else "c")
             for c in chunks if c.choices and (c.choices[0].delta.content or
                                               c.choices[0].delta.model_extra.get("reasoning_content"))]
    assert kinds == sorted(kinds, key=lambda k: k == "c")  # all reasoning deltas come before the answer
    assert reasoning.strip() == whole.choices[0].message.model_extra["reasoning_content"]
    assert content.strip() == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_method_choice_per_request(client):
    off = chat(client, extra_body={"thinking": {"type": "disabled"}})
    assert off.model_extra["reasonbudget"]["method"] == "nothinking"
    assert off.choices[0].message.model_extra["reasoning_content"] == "" and off.usage.completion_tokens_details.reasoning_tokens == 0
    plain = chat(client, max_tokens=30, extra_body={"method": "plain"})
    assert plain.model_extra["reasonbudget"]["method"] == "plain"
    guided = chat(client, extra_body={"method": "budget-forcing", "method_config": {"max_answer_tokens": 4},
                                      "thinking_token_budget": 8})
    assert extra_usage(guided)["answer_tokens"] <= 4
    votes = chat(client, max_tokens=24, extra_body={"method": "majority-vote", "budget": 2})
    assert votes.model_extra["reasonbudget"] | {"usage": None} == {
        "method": "majority-vote", "budget": 2, "seed": votes.model_extra["reasonbudget"]["seed"], "usage": None,
        "finish_reason": votes.model_extra["reasonbudget"]["finish_reason"]}


def test_max_tokens_caps_what_is_generated(client):
    r = chat(client, max_tokens=20, extra_body={"method": "plain"})
    assert r.usage.completion_tokens <= 20


def test_text_completions_continue_raw_text(client):
    r = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=8, stop=["."])
    assert r.object == "text_completion" and "Paris" in r.choices[0].text and "." not in r.choices[0].text
    assert r.usage.completion_tokens <= 8
    budgeted = client.completions.create(model=MODEL, prompt="Q: 2+2?\nThink, then write 'Final answer:'.\n",
                                         max_tokens=30, extra_body={"thinking_token_budget": 6})
    assert extra_usage(budgeted)["thinking_tokens"] <= 6 and "Final answer:" in budgeted.choices[0].text


def test_models_and_health(client, server):
    cards = client.models.list().data
    assert [c.id for c in cards] == [MODEL] and cards[0].model_extra["reasonbudget"]["thinking_budget"] is True
    assert httpx.get(server[0].removesuffix("/v1") + "/health").json()["status"] == "ok"


@pytest.mark.parametrize("kwargs, status, param", [
    ({"extra_body": {"thinking_token_budget": 0}}, 400, "thinking_token_budget"),
    ({"extra_body": {"thinking_budget": -3}}, 400, "thinking_budget"),
    ({"extra_body": {"thinking_token_budget": 10**6}}, 400, "thinking_token_budget"),
    ({"max_tokens": 10**6}, 400, "max_tokens"),
    ({"extra_body": {"thinking_budget": 10, "max_thinking_tokens": 20}}, 400, "max_thinking_tokens"),
    ({"extra_body": {"method": "telepathy"}}, 400, "method"),
    ({"extra_body": {"method": "budget-forcing", "method_config": {"warp": 9}}}, 400, "method_config"),
    ({"extra_body": {"method": "plain", "thinking_budget": 10}}, 400, "thinking_budget"),
    ({"extra_body": {"method": "best-of-n", "budget": 10**5}}, 400, "budget"),
    ({"temperature": 7.0}, 400, "temperature"),
    ({"n": 3}, 400, "n"),
])
def test_bad_input_is_a_4xx_naming_the_field(client, kwargs, status, param):
    with pytest.raises(openai.APIStatusError) as e:
        chat(client, **kwargs)
    assert e.value.status_code == status
    assert e.value.body["param"] == param and e.value.body["message"]


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.chat.completions.create(model="gpt-17", messages=Q)


def test_invalid_json_and_huge_bodies_are_4xx_and_the_server_keeps_serving(client, server):
    url = server[0] + "/chat/completions"
    bad = httpx.post(url, content=b'{"model": "smollm2-135m", "messages": [', headers={"content-type": "application/json"})
    assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]["message"]
    huge = httpx.post(url, content=json.dumps({"model": MODEL, "messages": Q, "pad": "x" * (2 << 20)}),
                      headers={"content-type": "application/json"})
    assert huge.status_code == 413 and "larger than" in huge.json()["error"]["message"]
    wrong = httpx.post(url, json={"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]})
    assert wrong.status_code == 400 and wrong.json()["error"]["param"] == "messages.0.role"
    assert chat(client, max_tokens=12, extra_body={"thinking_token_budget": 4}).choices[0].message.content
