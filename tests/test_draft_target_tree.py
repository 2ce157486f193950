"""A threshold sweep of step-level drafting walked as one tree of shared prefixes equals the runs alone: the same
tokens, writers, calls and token counts per model for RSD, Arbitrage and its oracle at every threshold, and each
run is charged only the calls it makes, its scorer's included (replayed alone: a scorer keeps states of the
texts it read, and runs of one problem share prefixes)."""

import pytest
import torch

from reasonbudget.engine import Engine, SamplingConfig
from reasonbudget.methods import make_method
from reasonbudget.models import load_model

RUNS = [(0, 0.0), (0, 0.3), (0, 0.7), (0, 1.0), (1, 0.0), (1, 0.5), (2, 0.2), (2, 0.9)]
SPECS = ["rsd:draft=testbed-draft,threshold={t}", "arbitrage:draft=testbed-draft,threshold={t},oracle=true",
         "arbitrage:draft=testbed-draft,threshold={t}"]


@pytest.fixture(scope="module")
def setting():
    from reasonbudget.tasks import get_task

    target = load_model("testbed-target")
    task = get_task("testbed:d=6")
    problems = task.problems(3)
    return Engine(target), [task.prompt(target, p) for p in problems], [p.question for p in problems]


def _arbiters(target):
    from reasonbudget.methods.drafting.arbitrage import load_router
    from reasonbudget.methods.drafting.steps import PRMArbiter, RouterArbiter
    from reasonbudget.rewards.factory import load_prm

    return [PRMArbiter(load_prm("auto", target), 0.5), PRMArbiter(load_prm("auto", target), 0.5, oracle=True),
            RouterArbiter(load_router("auto", "testbed-draft", target), 0.5)]


def test_tree_equals_each_run_alone(setting):
    from reasonbudget.methods.drafting.steps import StepDraftConfig, sweep_step_drafting

    engine, prompts, questions = setting
    greedy = SamplingConfig(temperature=0.0)
    for prompt, question in zip(prompts, questions):
        swept = sweep_step_drafting(StepDraftConfig(draft="testbed-draft", sampling=greedy), engine, prompt, question,
                                    _arbiters(engine.model), RUNS)
        for (kind, t), got in zip(RUNS, swept):
            (alone,) = make_method(SPECS[kind].format(t=t), greedy).run(engine, [prompt], budget=None,
                                                                         generator=torch.Generator().manual_seed(0))
            assert got.tokens == alone.tokens and got.answer == alone.answer
            for key in ("writers", "target_calls", "rounds", "step_acceptance", "token_acceptance", "router_calls"):
                assert got.trace[key] == alone.trace[key], (kind, t, key)
            g, a = got.usage, alone.usage
            assert g.tokens_by_model == a.tokens_by_model and g.forward_passes_by_model == a.forward_passes_by_model
            assert (g.drafted_tokens, g.accepted_tokens, g.prm_calls) == (a.drafted_tokens, a.accepted_tokens,
                                                                          a.prm_calls)
            assert g.prm_tokens == a.prm_tokens  # its scorer replayed alone reads what the run alone reads
            assert got.trace["decision_flips"] == 0 and g.wall_seconds > 0
    assert not bool(engine.cache.in_use.any())  # every row given back


def test_sampled_runs_are_refused(setting):
    from reasonbudget.methods.drafting.steps import StepDraftConfig, sweep_step_drafting

    engine, prompts, questions = setting
    cfg = StepDraftConfig(draft="testbed-draft", sampling=SamplingConfig(temperature=1.0))
    with pytest.raises(ValueError, match="greedy"):
        sweep_step_drafting(cfg, engine, prompts[0], questions[0], _arbiters(engine.model), RUNS)
