"""Plain chain-of-thought rollouts of a model on many problems, batched, one seeded generator per
(problem, sample): the shared source of PRM and length-predictor training data and of the quality benchmark."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from reasonbudget.types import MethodResult


def rollouts(model, problems: Sequence, *, samples: int = 1, temperature: float = 0.0, seed: int = 0,
             batch_size: int = 64, max_thinking_tokens: int = 400, max_answer_tokens: int = 32,
             progress=None) -> list[MethodResult]:
    """Results for each (problem, sample) in order: problem-major, `samples` consecutive results each."""
    from reasonbudget.engine import Engine, SamplingConfig
    from reasonbudget.eval.runner import problem_seed
    from reasonbudget.methods.base import make_method
    from reasonbudget.models.registry import build_prompt

    engine = Engine(model)
    method = make_method("plain", SamplingConfig(temperature=temperature), max_thinking_tokens=max_thinking_tokens,
                         max_answer_tokens=max_answer_tokens)
    jobs = [(p, k) for p in problems for k in range(samples)]
    out: list[MethodResult] = []
    for i in range(0, len(jobs), batch_size):
        chunk = jobs[i : i + batch_size]
        gens = [torch.Generator().manual_seed(problem_seed(seed, f"{p.id}#{k}")) for p, k in chunk]
        out += method.run(engine, [build_prompt(model, p.question) for p, _ in chunk], budget=None, generator=gens)
        if progress is not None:
            progress(len(out), len(jobs))
    return out
