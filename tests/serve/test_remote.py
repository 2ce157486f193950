"""The remote backend against this project's server on loopback: budget forcing keeps the same thinking cap
client-side (two-phase) and server-side (native), and matches the in-process engine token for token."""

import math

import pytest
import torch

from reasonbudget.engine import Engine, SamplingConfig
from reasonbudget.methods.base import make_method
from reasonbudget.models import build_prompt
from reasonbudget.remote.client import RemoteError
from reasonbudget.methods import solve
from reasonbudget.remote.model import load_remote, parse_remote_name

pytestmark = pytest.mark.slow

QUESTIONS = ["Tom has 3 apples and buys 4 more. How many apples does he have?",
             "A book costs 12 dollars. How much do 3 books cost?"]
GREEDY = SamplingConfig()


def G0():
    return torch.Generator().manual_seed(0)


@pytest.fixture(scope="module")
def remote_name(server):
    return f"remote:{server[0]}#smollm2-135m"


@pytest.mark.parametrize("budget", [6, 20])
def test_two_phase_budget_forcing_caps_thinking_like_the_engine(remote_name, smollm, budget):
    rm = load_remote(remote_name, native_budget=False)
    assert rm.profile == smollm.profile and not rm.native_budget
    remote = solve(rm, "budget-forcing", QUESTIONS, budget=budget, sampling=GREEDY, generator=G0())
    local = make_method("budget-forcing", GREEDY).run(Engine(smollm), [build_prompt(smollm, q) for q in QUESTIONS],
                                                      budget=budget, generator=torch.Generator().manual_seed(0))
    for r, loc in zip(remote, local):
        assert r.usage.thinking_tokens <= budget and r.answer
        assert r.usage.thinking_tokens == loc.usage.thinking_tokens
        assert r.thinking == loc.thinking  # greedy: the same thinking, cut at the same token


def test_native_budget_is_used_when_the_server_has_one(remote_name):
    rm = load_remote(remote_name)
    assert rm.native_budget  # this project's server publishes it in /v1/models
    native = solve(rm, "budget-forcing", QUESTIONS, budget=8, sampling=GREEDY, generator=G0())
    client_side = solve(load_remote(remote_name, native_budget=False), "budget-forcing", QUESTIONS, budget=8,
                        sampling=GREEDY, generator=G0())
    for n, c in zip(native, client_side):
        assert n.trace["native_budget"] and n.usage.thinking_tokens == c.usage.thinking_tokens <= 8
        assert n.thinking == c.thinking


def test_plain_nothinking_and_tale_run_remotely(remote_name):
    rm = load_remote(remote_name, native_budget=False)
    plain = solve(rm, "plain:max_thinking_tokens=24", QUESTIONS[:1], budget=None, sampling=GREEDY, generator=G0())[0]
    assert plain.usage.thinking_tokens <= 24 and plain.answer
    off = solve(rm, "nothinking", QUESTIONS[:1], budget=None, sampling=GREEDY, generator=G0())[0]
    assert off.thinking == "" and off.usage.thinking_tokens == 0 and off.answer
    # the answer capped: after 16 thinking tokens SmolLM2 rambles to its 1024-token answer cap (86 s on AVX2)
    tale = solve(rm, "tale:max_thinking_tokens=16,max_answer_tokens=48", QUESTIONS[:1], budget=None,
                 sampling=GREEDY, generator=G0())[0]
    assert "estimate" in tale.trace and tale.usage.prompt_tokens > 0


def test_remote_mistakes_are_clear(remote_name, server):
    with pytest.raises(RemoteError, match="remote:URL#MODEL"):
        parse_remote_name("remote:localhost:8000")
    with pytest.raises(RemoteError, match="does not serve 'gpt-17'"):
        load_remote(f"remote:{server[0]}#gpt-17")
    with pytest.raises(RemoteError, match="cannot reach"):
        load_remote("remote:http://127.0.0.1:9/v1#m")
    with pytest.raises(ValueError, match="needs token logits, hidden states and KV-cache fork/rollback"):
        solve(load_remote(remote_name), "budget-guidance", QUESTIONS[:1], budget=4, sampling=GREEDY, generator=G0())


def test_an_eval_sweep_runs_against_a_remote_model(remote_name, tmp_path):
    import json

    from reasonbudget.eval.runner import SweepConfig, run_sweep

    cfg = SweepConfig(task="gsm8k", methods=("budget-forcing",), budgets=(8,), limit=3, model=remote_name)
    summary = run_sweep(cfg, tmp_path, progress=False)
    records = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert len(records) == 3 and summary.exists()
    assert all(r["usage"]["thinking_tokens"] <= 8 and r["answer"] for r in records)


def test_completions_return_logprobs_like_the_engine(server, smollm):
    import httpx

    prompt = "The capital of France is"
    body = httpx.post(f"{server[0]}/completions", timeout=120, json={
        "model": "smollm2-135m", "prompt": prompt, "max_tokens": 3, "temperature": 0, "logprobs": 5}).json()
    lp = body["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == 3
    ids = smollm.encode(prompt)
    x = torch.tensor([ids])
    cache = smollm.backend.new_cache(1, len(ids) + 1)
    first = smollm.backend(x, cache, torch.arange(1), logits_at=torch.tensor([len(ids) - 1])).logits[0].log_softmax(-1)
    assert lp["token_logprobs"][0] == pytest.approx(float(first.max()), abs=1e-4)  # greedy: the top token
    assert max(lp["top_logprobs"][0].values()) == pytest.approx(lp["token_logprobs"][0], abs=1e-6)
    bad = httpx.post(f"{server[0]}/chat/completions", timeout=60, json={
        "model": "smollm2-135m", "messages": [{"role": "user", "content": "hi"}], "logprobs": 2})
    assert bad.status_code in (200, 400)  # chat: OpenAI's logprobs is a bool there; not supported, never a 500


def test_the_served_model_judges_a_remote_search(remote_name):
    from reasonbudget.remote.judge import p_yes_from_top

    assert p_yes_from_top({" Yes": -0.1, "no": -2.4, "maybe": -3.0}) == pytest.approx(1 / (1 + math.exp(-2.3)))
    assert math.isnan(p_yes_from_top({"maybe": -0.1}))
    assert p_yes_from_top({"No": -0.5}) == 0.0
    rm = load_remote(remote_name)
    r = solve(rm, "best-of-n:prm=judge,max_tokens=24,max_step_tokens=8", QUESTIONS[:1], budget=2,
              sampling=SamplingConfig(temperature=1.0), generator=G0())[0]
    assert r.usage.prm_calls == 2 and r.usage.prm_tokens > 0
    assert all(s is not None and 0 <= s <= 1 for s in r.trace["scores"])


def test_final_answer_style_forcing_runs_two_phase_like_the_paper(remote_name, smollm):
    """The Budget Guidance paper's budget forcing (its code runs it on vLLM with stop strings) over a server
    matches the engine's controller at greedy: same thinking (wrap-up included), same counts."""
    rm = load_remote(remote_name)
    spec = "budget-forcing:style=final-answer"
    remote = solve(rm, spec, QUESTIONS, budget=12, sampling=GREEDY, generator=G0())
    local = solve(Engine(smollm), spec, QUESTIONS, budget=12, sampling=GREEDY, generator=G0())
    for r, loc in zip(remote, local):
        assert r.usage.thinking_tokens == loc.usage.thinking_tokens == 12
        assert "**Final Answer**" in r.thinking and r.thinking == loc.thinking
        assert r.trace["wrapup_tokens"] == loc.trace["wrapup_tokens"] and r.answer
