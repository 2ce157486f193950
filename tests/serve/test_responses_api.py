"""POST /v1/responses driven by the official `openai` client (`client.responses.create`), plain and streamed,
with the thinking budget held, and its 4xx discipline."""

import httpx
import pytest

pytestmark = pytest.mark.slow
openai = pytest.importorskip("openai")

MODEL = "smollm2-135m"
Q = "Tom has 3 apples and buys 4 more. How many apples does he have?"


def test_plain_response_has_reasoning_and_message_items_and_usage(client):
    r = client.responses.create(model=MODEL, input=Q, max_output_tokens=40, extra_body={"thinking_token_budget": 12})
    assert r.object == "response" and r.model == MODEL and r.status in ("completed", "incomplete")
    kinds = [item.type for item in r.output]
    assert kinds == ["reasoning", "message"]
    reasoning, message = r.output
    assert reasoning.content[0].type == "reasoning_text" and reasoning.content[0].text
    assert message.role == "assistant" and message.content[0].type == "output_text"
    assert r.output_text == message.content[0].text  # the client's convenience accessor reads our items
    u, full = r.usage, r.model_extra["reasonbudget"]["usage"]
    assert u.output_tokens_details.reasoning_tokens == full["thinking_tokens"] <= 12  # the budget held
    assert u.output_tokens <= 40 and u.total_tokens == u.input_tokens + u.output_tokens


def test_effort_instructions_and_message_items(client):
    r = client.responses.create(model=MODEL, instructions="Answer with a number.", max_output_tokens=60,
                                input=[{"role": "user", "content": [{"type": "input_text", "text": Q}]}],
                                reasoning={"effort": "low"})
    budget = int(0.33 * 60)  # the server's effort table: low = a third of max_output_tokens
    assert r.usage.output_tokens_details.reasoning_tokens <= budget
    assert r.model_extra["reasonbudget"]["budget"] == budget


def test_streamed_events_arrive_in_order_and_rebuild_the_response(client):
    events = list(client.responses.create(model=MODEL, input=Q, max_output_tokens=40, stream=True,
                                          extra_body={"thinking_token_budget": 10}))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    thinking = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
    answer = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response
    assert thinking == final.output[0].content[0].text and answer == final.output_text
    assert kinds.index("response.reasoning_text.done") < kinds.index("response.output_text.delta")
    assert final.usage.output_tokens_details.reasoning_tokens <= 10


@pytest.mark.parametrize("body, param", [
    ({"input": [{"type": "function_call", "name": "f"}]}, "input.0"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, "input.0.content"),
    ({"input": [{"role": "system", "content": "be brief"}]}, "input"),
    ({"input": Q, "max_output_tokens": 0}, "max_output_tokens"),
    ({"input": Q, "max_output_tokens": 20, "max_tokens": 20}, "max_output_tokens"),
    ({"input": Q, "reasoning": {"effort": "huge"}}, "reasoning.effort"),
])
def test_bad_requests_are_4xx_naming_the_field(server, body, param):
    r = httpx.post(f"{server[0]}/responses", json={"model": MODEL, **body}, timeout=60)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert httpx.post(f"{server[0]}/responses", json={"model": "other", "input": Q}).status_code == 404
