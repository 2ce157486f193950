"""Fitting TALE's learned budget estimator (`reasonbudget.methods.budget.budget_estimator`): TALE's budget
searches (`tale_text.BudgetSearch`) run for many problems in lockstep, one engine batch per round, then ridge
regression from the prompt features to log budget."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from reasonbudget.engine.budget import BudgetConfig
from reasonbudget.engine.sampling import SamplingConfig
from reasonbudget.methods.budget.budget_estimator import BudgetEstimator, prompt_features
from reasonbudget.methods.budget.tale_text import BudgetSearch, SearchResult, budget_prompt
from reasonbudget.predictors.length import lm_fingerprint


def fit_ridge(x: Tensor, y: Tensor, l2: float) -> tuple[Tensor, float, Tensor, Tensor]:
    """Ridge regression on standardized features: (weights, bias, feature mean, feature std). Pure."""
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    z = ((x - mean) / std).double()
    yc = y.double() - y.double().mean()
    w = torch.linalg.solve(z.T @ z + l2 * torch.eye(z.shape[1], dtype=torch.float64), z.T @ yc)
    return w.float(), float(y.double().mean()), mean, std


def search_budgets(engine, questions: Sequence[str], is_correct: Callable[[int, str], bool], *,
                   max_thinking_tokens: int = 2048, max_answer_tokens: int = 256,
                   binary: bool = False, layout: str = "reference",
                   outputs: dict | None = None) -> list[SearchResult | None]:
    """TALE's optimal-budget search for every question, greedy, batched per round; None where the vanilla
    answer is wrong. `is_correct(i, answer)` grades question i. Output tokens = thinking + answer tokens.
    `outputs`, when given, receives every generation: (i, budget) -> MethodResult, budget None for vanilla."""
    from reasonbudget.models.registry import build_prompt

    model = engine.model
    cfg = BudgetConfig(max_thinking_tokens=max_thinking_tokens, max_answer_tokens=max_answer_tokens)

    def solve(items: list[tuple[int, int | None]]) -> list[tuple[bool, int]]:
        prompts = [build_prompt(model, budget_prompt(questions[i], b, layout)) for i, b in items]
        results = (engine.generate(prompts, [cfg] * len(prompts), SamplingConfig(temperature=0.0),
                                   torch.Generator().manual_seed(0)) if prompts else [])
        if outputs is not None:
            outputs.update(zip(items, results))
        return [(is_correct(i, r.answer), r.usage.thinking_tokens + r.usage.answer_tokens)
                for (i, _), r in zip(items, results)]

    vanilla = solve([(i, None) for i in range(len(questions))])
    searches = {i: BudgetSearch(tokens, binary=binary) for i, (ok, tokens) in enumerate(vanilla) if ok and tokens}
    while todo := [(i, s.proposal) for i, s in searches.items() if s.proposal is not None]:
        for (i, _), outcome in zip(todo, solve(todo)):
            searches[i].record(*outcome)
    return [searches[i].result() if i in searches else None for i in range(len(questions))]


def fit_budget_estimator(model, questions: Sequence[str], budgets: Sequence[int], *, l2: float = 10.0) -> BudgetEstimator:
    from reasonbudget.models.registry import build_prompt

    if len(questions) != len(budgets) or len(questions) < 2:
        raise ValueError("fitting needs at least two questions, each with its searched budget")
    x = prompt_features(model, [build_prompt(model, q) for q in questions])
    y = torch.tensor([math.log(b) for b in budgets])
    w, b, mean, std = fit_ridge(x, y, l2)
    return BudgetEstimator(w, b, mean, std, lm_fingerprint(model))


def fit_on_task(model_name: str, task_spec: str, limit: int, out: Path, *, binary: bool = False,
                layout: str = "reference") -> dict:
    """Search budgets on a task's first `limit` problems, fit, save; statistics (also in searches.json)."""
    import time

    from reasonbudget.engine import Engine
    from reasonbudget.models import load_model
    from reasonbudget.tasks import get_task, grade_many

    t0 = time.time()
    task = get_task(task_spec)
    problems = task.problems(limit)
    model = load_model(model_name)
    questions = [task.question_text(p) for p in problems]

    def is_correct(i: int, answer: str) -> bool:
        return grade_many([(answer, problems[i].gold, task.grader)])[0]

    results = search_budgets(Engine(model), questions, is_correct, binary=binary, layout=layout)
    found = [(q, r) for q, r in zip(questions, results) if r is not None]
    if len(found) < 2:
        raise ValueError(f"only {len(found)} of {len(problems)} vanilla answers were correct: nothing to fit on")
    estimator = fit_budget_estimator(model, [q for q, _ in found], [r.budget for _, r in found])
    estimator.save(out)
    fitted = estimator.estimate(model, [task.prompt(model, p) for p, r in zip(problems, results) if r is not None])
    truth = [r.budget for _, r in found]
    log_err = [abs(math.log(a) - math.log(b)) for a, b in zip(fitted, truth)]
    stats = {"model": model_name, "task": task.spec, "problems": len(problems), "searched": len(found),
             "mean_budget": sum(truth) / len(truth), "mean_vanilla_tokens": sum(r.vanilla_tokens for _, r in found) / len(found),
             "in_sample_median_abs_log_error": sorted(log_err)[len(log_err) // 2], "seconds": round(time.time() - t0, 1)}
    (out / "searches.json").write_text(json.dumps({"stats": stats, "searches": [
        {"problem_id": p.id, "budget": r.budget, "tokens": r.tokens, "vanilla_tokens": r.vanilla_tokens,
         "attempts": [[a.budget, a.correct, a.tokens] for a in r.attempts]} if r else {"problem_id": p.id}
        for p, r in zip(problems, results)]}, indent=1))
    return stats
