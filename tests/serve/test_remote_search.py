"""Step-level search over a remote server (`remote:URL#MODEL`): the testbed target served by this project's
server on loopback, the search on the client, the testbed PRM local (it reads text) or served over HTTP
(vLLM's pooling protocol, a stand-in here)."""

import pytest
import torch
from fastapi import FastAPI

from reasonbudget.engine import Engine, SamplingConfig
from reasonbudget.methods import METHODS, solve
from reasonbudget.models import load_model
from reasonbudget.remote.model import load_remote
from reasonbudget.rewards.pooling import SEPARATOR
from reasonbudget.serve.app import create_app
from reasonbudget.serve.background import serving
from reasonbudget.serve.requests import ServeConfig
from reasonbudget.tasks import get_task

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def target():
    return load_model("testbed-target")


@pytest.fixture(scope="module")
def remote(target):
    with serving(create_app(target, ServeConfig(default_max_tokens=64))) as url:
        yield load_remote(f"remote:{url}#testbed-target")


@pytest.fixture(scope="module")
def questions():
    task = get_task("testbed:d=5")
    return [task.question_text(p) for p in task.problems(3)]


def _gen():
    return torch.Generator().manual_seed(0)


@pytest.mark.parametrize("spec", ["particle-filter", "beam-search", "weighted-best-of-n", "particle-gibbs"])
def test_greedy_search_over_the_server_equals_the_engine(target, remote, questions, spec):
    """With greedy steps (default_temperature=0) the server writes the same steps as the engine, the PRM scores
    the same texts, so the searches pick the same answers with the same scores."""
    full = f"{spec}:prm=testbed,default_temperature=0"
    local = solve(Engine(target), full, questions, budget=4, generator=_gen())
    over_http = solve(remote, full, questions, budget=4, generator=_gen())
    for a, b in zip(local, over_http):
        assert a.answer == b.answer and a.thinking == b.thinking
        assert a.usage.thinking_tokens + a.usage.answer_tokens > 0 and b.trace["requests"] > 0


def test_sampled_particle_filter_over_the_server_answers_and_counts_requests(remote, questions):
    results = solve(remote, "particle-filter:prm=testbed", questions, budget=4, generator=_gen())
    for r in results:
        assert r.answer.startswith("The answer is") and r.usage.prm_calls > 0
        assert r.trace["requests"] >= 4 and r.trace["sent_tokens"] > r.usage.prompt_tokens


def test_every_registered_method_runs_remotely_or_is_refused_in_one_line(remote, questions):
    ran = []
    for name, cls in METHODS.items():
        caps = cls.capabilities
        budget = {"samples": 4 if name.startswith("particle-gibbs") else 8 if name == "parallel-tempering" else 2,
                  "thinking tokens": 16}.get(caps.budget)
        if caps.level not in remote.levels:
            with pytest.raises(ValueError, match=r"^[^\n]*which remote:[^\n]*does not offer[^\n]*$"):
                solve(remote, name, questions[:1], budget=budget, generator=_gen())
            continue
        spec = name
        if "draft" in caps.models:  # step drafting: a served draft (here the target serves as its own draft)
            spec = f"{name}:draft={remote.name}" + (",oracle=true" if name == "arbitrage" else "")
        (r,) = solve(remote, spec, questions[:1], budget=budget, sampling=SamplingConfig(temperature=1.0),
                     generator=_gen())
        assert r.answer and r.usage.completion_tokens > 0, name
        ran.append(name)
    token_level = [n for n, c in METHODS.items() if c.capabilities.level == "tokens"]
    assert "budget-guidance" in token_level and len(ran) == len(METHODS) - len(token_level)


def pooling_stand_in(prm) -> FastAPI:
    """vLLM's /pooling for a Qwen2.5-Math-PRM-protocol model, here over the testbed PRM."""
    from reasonbudget.rewards.base import StepSequence

    app = FastAPI()

    @app.post("/v1/pooling")
    def pooling(body: dict) -> dict:
        messages = body["messages"]
        steps = tuple(messages[-1]["content"].split(SEPARATOR)[:-1])
        (scores,) = prm.score_steps([StepSequence(messages[1]["content"], steps)])
        return {"data": [{"index": 0, "data": [[1 - s, s] for s in scores.tolist()]}],
                "usage": {"prompt_tokens": 10}}

    return app


def test_a_served_prm_scores_like_the_local_one(remote, questions):
    from reasonbudget.rewards.factory import load_prm

    prm = load_prm("testbed", remote)
    with serving(pooling_stand_in(prm)) as url:
        served = solve(remote, f"particle-filter:prm=pool:{url}#testbed-prm,default_temperature=0", questions[:2],
                       budget=2, generator=_gen())
    local = solve(remote, "particle-filter:prm=testbed,default_temperature=0", questions[:2], budget=2,
                  generator=_gen())
    for s, lo in zip(served, local):
        assert s.answer == lo.answer and s.trace["final_scores"] == pytest.approx(lo.trace["final_scores"], abs=1e-5)


def test_a_prm_server_that_is_down_fails_the_run_in_one_line(remote, questions):
    from reasonbudget.rewards.base import PRMUnavailable

    with pytest.raises(PRMUnavailable, match="cannot be reached"):
        solve(remote, "particle-filter:prm=pool:http://127.0.0.1:9/v1#prm", questions[:1], budget=2, generator=_gen())


def test_step_drafting_over_two_servers_equals_the_in_process_run(target, remote, questions):
    """Arbitrage (its router and its oracle) and RSD with the testbed pair served by two loopback servers
    (greedy): the same steps, writers and answers as on the engine; a local draft beside a served target is
    refused in one line."""
    draft = load_model("testbed-draft")
    with serving(create_app(draft, ServeConfig(default_max_tokens=64))) as draft_url:
        for spec in ("arbitrage:threshold=0.5", "arbitrage:oracle=true,threshold=0", "rsd:threshold=0.7"):
            local = solve(Engine(target), f"{spec},draft=testbed-draft", questions, generator=_gen())
            served = solve(remote, f"{spec},draft=remote:{draft_url}#testbed-draft", questions, generator=_gen())
            for a, b in zip(local, served):
                assert (a.thinking, a.answer) == (b.thinking, b.answer), spec
                assert a.trace["writers"] == b.trace["writers"] and a.trace["target_calls"] == b.trace["target_calls"]
                if "oracle" not in spec and spec.startswith("arbitrage"):  # the router decided every round
                    assert b.trace["router_calls"] == b.trace["rounds"] > 0
                assert set(b.usage.tokens_by_model) == {remote.name, f"remote:{draft_url}#testbed-draft"}
    with pytest.raises(ValueError, match="the draft must be too"):
        solve(remote, "rsd:draft=testbed-draft", questions[:1], generator=_gen())
