"""The remote backend against this project's server on loopback: budget forcing keeps the same thinking cap
client-side (two-phase) and server-side (native), and matches the in-process engine token for token."""

import pytest
import torch

from reasonbudget.engine import Engine, SamplingConfig
from reasonbudget.methods.base import make_method
from reasonbudget.models import build_prompt
from reasonbudget.remote.client import RemoteError
from reasonbudget.remote.methods import run_remote
from reasonbudget.remote.model import load_remote, parse_remote_name

pytestmark = pytest.mark.slow

QUESTIONS = ["Tom has 3 apples and buys 4 more. How many apples does he have?",
             "A book costs 12 dollars. How much do 3 books cost?"]
GREEDY = SamplingConfig()


@pytest.fixture(scope="module")
def remote_name(server):
    return f"remote:{server[0]}#smollm2-135m"


@pytest.mark.parametrize("budget", [6, 20])
def test_two_phase_budget_forcing_caps_thinking_like_the_engine(remote_name, smollm, budget):
    rm = load_remote(remote_name, native_budget=False)
    assert rm.profile == smollm.profile and not rm.native_budget
    remote = run_remote(rm, "budget-forcing", QUESTIONS, budget=budget, sampling=GREEDY, seeds=[0, 0])
    local = make_method("budget-forcing", GREEDY).run(Engine(smollm), [build_prompt(smollm, q) for q in QUESTIONS],
                                                      budget=budget, generator=torch.Generator().manual_seed(0))
    for r, loc in zip(remote, local):
        assert r.usage.thinking_tokens <= budget and r.answer
        assert r.usage.thinking_tokens == loc.usage.thinking_tokens
        assert r.thinking == loc.thinking  # greedy: the same thinking, cut at the same token


def test_native_budget_is_used_when_the_server_has_one(remote_name):
    rm = load_remote(remote_name)
    assert rm.native_budget  # this project's server publishes it in /v1/models
    native = run_remote(rm, "budget-forcing", QUESTIONS, budget=8, sampling=GREEDY, seeds=[0, 0])
    client_side = run_remote(load_remote(remote_name, native_budget=False), "budget-forcing", QUESTIONS, budget=8,
                             sampling=GREEDY, seeds=[0, 0])
    for n, c in zip(native, client_side):
        assert n.trace["native_budget"] and n.usage.thinking_tokens == c.usage.thinking_tokens <= 8
        assert n.thinking == c.thinking


def test_plain_nothinking_and_tale_run_remotely(remote_name):
    rm = load_remote(remote_name, native_budget=False)
    plain = run_remote(rm, "plain:max_thinking_tokens=24", QUESTIONS[:1], budget=None, sampling=GREEDY, seeds=[0])[0]
    assert plain.usage.thinking_tokens <= 24 and plain.answer
    off = run_remote(rm, "nothinking", QUESTIONS[:1], budget=None, sampling=GREEDY, seeds=[0])[0]
    assert off.thinking == "" and off.usage.thinking_tokens == 0 and off.answer
    tale = run_remote(rm, "tale:max_thinking_tokens=16", QUESTIONS[:1], budget=None, sampling=GREEDY, seeds=[0])[0]
    assert "estimate" in tale.trace and tale.usage.prompt_tokens > 0


def test_remote_mistakes_are_clear(remote_name, server):
    with pytest.raises(RemoteError, match="remote:URL#MODEL"):
        parse_remote_name("remote:localhost:8000")
    with pytest.raises(RemoteError, match="does not serve 'gpt-17'"):
        load_remote(f"remote:{server[0]}#gpt-17")
    with pytest.raises(RemoteError, match="cannot reach"):
        load_remote("remote:http://127.0.0.1:9/v1#m")
    with pytest.raises(ValueError, match="does not run on a remote model"):
        run_remote(load_remote(remote_name), "particle-filter", QUESTIONS[:1], budget=4, sampling=GREEDY, seeds=[0])


def test_an_eval_sweep_runs_against_a_remote_model(remote_name, tmp_path):
    import json

    from reasonbudget.eval.runner import SweepConfig, run_sweep

    cfg = SweepConfig(task="gsm8k", methods=("budget-forcing",), budgets=(8,), limit=3, model=remote_name)
    summary = run_sweep(cfg, tmp_path, progress=False)
    records = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert len(records) == 3 and summary.exists()
    assert all(r["usage"]["thinking_tokens"] <= 8 and r["answer"] for r in records)
