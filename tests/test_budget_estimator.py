"""TALE's learned budget estimator: the pure ridge fit, budget searches on a real (testbed) model in lockstep
batches, save/load with the model's fingerprint, and TALE using it."""

import math

import pytest
import torch

from reasonbudget.engine import Engine, SamplingConfig
from reasonbudget.methods.base import make_method
from reasonbudget.methods.budget.budget_estimator import BudgetEstimator, load_estimator
from reasonbudget.training.budget_estimator import fit_budget_estimator, fit_ridge, search_budgets
from reasonbudget.models import build_prompt, load_model
from reasonbudget.predictors.length import PredictorError, lm_fingerprint
from reasonbudget.testbed.problems import generate
from reasonbudget.testbed.traces import final_answer


def test_ridge_recovers_a_linear_map():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 5, generator=g) * torch.tensor([1.0, 10.0, 0.1, 3.0, 1.0]) + 4.0
    w = torch.tensor([0.5, -0.02, 3.0, 0.1, 0.0])
    y = x @ w + 1.5
    weights, bias, mean, std = fit_ridge(x, y, l2=1e-6)
    pred = ((x - mean) / std) @ weights + bias
    assert torch.allclose(pred, y, atol=1e-3)
    heavy = fit_ridge(x, y, l2=1e6)[0]  # strong shrinkage pulls every weight towards zero
    assert heavy.abs().max() < 0.01 * weights.abs().max()


@pytest.fixture(scope="module")
def target():
    return load_model("testbed-target")


def test_searches_fit_save_load_and_drive_tale(target, tmp_path):
    problems = generate(6, difficulty=2, seed=31) + generate(6, difficulty=6, seed=31)
    questions = [p.question for p in problems]
    # the committed testbed target learned TALE's prompts in our layout only (the retrained world learns both)
    results = search_budgets(Engine(target), questions, lambda i, a: final_answer(a) == problems[i].answer,
                             layout="ours")
    found = [(p, r) for p, r in zip(problems, results) if r is not None]
    assert len(found) >= 8  # the target answers most of these greedily
    for _, r in found:
        assert 1 <= r.budget <= r.vanilla_tokens and r.attempts  # halving tried something
        assert all(a.budget < r.vanilla_tokens for a in r.attempts)
    est = fit_budget_estimator(target, [p.question for p, _ in found], [r.budget for _, r in found])
    est.save(tmp_path)
    loaded = load_estimator(tmp_path, target)
    prompts = [build_prompt(target, q) for q in questions]
    assert loaded.estimate(target, prompts) == est.estimate(target, prompts)
    tale = make_method(f"tale:estimator={tmp_path},prompts=ours", SamplingConfig())
    out = tale.run(Engine(target), prompts[:3], budget=None, generator=torch.Generator().manual_seed(0))
    assert [r.trace["estimate"] for r in out] == est.estimate(target, prompts[:3])
    assert all(r.usage.prompt_tokens > len(p) for r, p in zip(out, prompts))  # the estimator's prefill counts
    capped = tale.run(Engine(target), prompts[:3], budget=5, generator=torch.Generator().manual_seed(0))
    assert all(r.trace["estimate"] <= 5 for r in capped)


def test_estimator_for_another_model_or_missing_is_refused(target, tmp_path):
    draft = load_model("testbed-draft")
    BudgetEstimator(torch.zeros(3), math.log(20), torch.zeros(3), torch.ones(3), lm_fingerprint(draft)).save(tmp_path)
    with pytest.raises(PredictorError, match="fitted for another model"):
        load_estimator(tmp_path, target)
    with pytest.raises(PredictorError, match="missing budget_estimator.json"):
        load_estimator(tmp_path / "nowhere", target)
