"""Step-level drafting methods (RSD, Arbitrage, its oracle) on the testbed pair: the thresholds' ends reproduce
draft-only and target-only decoding, the trace and usage count both models, bad settings and routers are refused."""

import json

import pytest
import torch

from reasonbudget.engine import Engine, SamplingConfig
from reasonbudget.methods import make_method
from reasonbudget.models import load_model


@pytest.fixture(scope="module")
def pair():
    from reasonbudget.tasks import get_task

    target = load_model("testbed-target")
    task = get_task("testbed:d=4")
    return Engine(target), [task.prompt(target, p) for p in task.problems(4)]


def _run(engine, prompts, spec):
    return make_method(spec, SamplingConfig()).run(engine, prompts, budget=None,
                                                   generator=torch.Generator().manual_seed(0))


def _alone(model_name, prompts):
    return [r.tokens for r in _run(Engine(load_model(model_name)), prompts, "plain")]


@pytest.fixture(scope="module")
def router_dir(tmp_path_factory):
    from typer.testing import CliRunner

    from reasonbudget.cli import app

    out = tmp_path_factory.mktemp("router")
    r = CliRunner().invoke(app, ["train-router", "--problems", "2", "--epochs", "1", "--out", str(out)])
    assert r.exit_code == 0, r.output
    return out


def test_rsd_thresholds_span_draft_only_to_target_only(pair):
    engine, prompts = pair
    keep_all = _run(engine, prompts, "rsd:draft=testbed-draft,threshold=0")
    assert [r.tokens for r in keep_all] == _alone("testbed-draft", prompts)
    assert all(r.trace["target_calls"] == 0 and r.trace["step_acceptance"] == 1.0 for r in keep_all)
    escalate_all = _run(engine, prompts, "rsd:draft=testbed-draft,threshold=1")
    assert [r.tokens for r in escalate_all] == _alone("testbed-target", prompts)
    mid = _run(engine, prompts, "rsd:draft=testbed-draft")
    for r in mid:
        u = r.usage
        assert set(u.tokens_by_model) == {"testbed-target", "testbed-draft"} and u.prm_calls > 0
        t = r.trace  # the target is called lazily: exactly in the rounds whose draft step was rejected
        assert t["target_calls"] == t["rounds"] - round(t["step_acceptance"] * t["rounds"])
        assert u.thinking_tokens + u.answer_tokens == len(r.tokens)


def test_arbitrage_router_and_oracle(pair, router_dir):
    engine, prompts = pair
    keep_all = _run(engine, prompts, f"arbitrage:draft=testbed-draft,router={router_dir},threshold=1")
    assert [r.tokens for r in keep_all] == _alone("testbed-draft", prompts)
    assert all(r.trace["router_calls"] == r.trace["rounds"] and r.usage.prm_calls == 0 for r in keep_all)
    oracle = _run(engine, prompts, "arbitrage:draft=testbed-draft,oracle=true,threshold=0")
    # the oracle runs both models every round: the target is called in every round
    assert all(r.trace["target_calls"] == r.trace["rounds"] for r in oracle)


def test_bad_settings_and_routers_are_refused(pair, router_dir, tmp_path):
    engine, prompts = pair
    with pytest.raises(ValueError, match="needs a draft model"):
        make_method("rsd", SamplingConfig())
    with pytest.raises(ValueError, match="threshold=1.5"):
        make_method("arbitrage:draft=testbed-draft,threshold=1.5", SamplingConfig())
    with pytest.raises(ValueError, match="no router"):
        _run(engine, prompts, f"arbitrage:draft=testbed-draft,router={tmp_path}")
    other = tmp_path / "other"
    other.mkdir()
    for f in router_dir.iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((other / "router.json").read_text())
    (other / "router.json").write_text(json.dumps({**cfg, "pair": {"draft": "qwen2.5-coder-0.5b",
                                                                   "target": "qwen2.5-coder-1.5b"}}))
    with pytest.raises(ValueError, match="trained for qwen2.5-coder-0.5b"):
        _run(engine, prompts, f"arbitrage:draft=testbed-draft,router={other}")
