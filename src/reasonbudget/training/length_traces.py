"""Training traces for the length predictor, as `TraceTokens` (prompt, thinking span, marker and answer).

- `testbed_traces`: the model's own traces (on-policy) sampled at temperature 1 on training problems of all
  difficulties, so the predictor sees long (self-checking) and short (merged) ways to the same answer.
- `solution_traces`: worked solutions teacher-forced as thinking (GSM8K train for real models, as the paper
  uses R1 traces): prompt, solution as thinking, the profile's end-of-thinking marker, then the answer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from reasonbudget.predictors.train_length import TraceTokens

PREDICTOR_SEED_OFFSET = 4_000_000  # testbed problems for the predictor: apart from every other seed range


def testbed_traces(model, *, per_difficulty: int, samples: int = 2, seed: int = 0) -> list[TraceTokens]:
    from reasonbudget.models.registry import build_prompt
    from reasonbudget.testbed.problems import MAX_DIFFICULTY, generate
    from reasonbudget.training.rollouts import rollouts

    problems = [p for d in range(1, MAX_DIFFICULTY + 1)
                for p in generate(per_difficulty, difficulty=d, seed=PREDICTOR_SEED_OFFSET + d)]
    results = rollouts(model, problems, samples=samples, temperature=1.0, seed=seed)
    close = model.encode(model.profile.think_close)
    out = []
    for i, r in enumerate(results):
        prompt = build_prompt(model, problems[i // samples].question)
        n = r.usage.thinking_tokens
        if tuple(r.tokens[n : n + len(close)]) == close:  # thinking ended by the model itself
            out.append(TraceTokens(tuple(prompt) + tuple(r.tokens), len(prompt), n))
    return out


def solution_traces(model, problems: Sequence, max_tokens: int = 1024) -> list[TraceTokens]:
    """Problems with a worked solution in meta["solution"] (GSM8K style: '<<calc>>' notes and '#### answer')."""
    from reasonbudget.models.registry import build_prompt

    out = []
    for p in problems:
        work, _, final = p.meta["solution"].rpartition("####")
        thinking = re.sub(r"<<[^>]*>>", "", work).strip()
        prompt = build_prompt(model, p.question)
        think_ids = model.encode(thinking + "\n")
        rest = model.encode(model.profile.think_close) + model.encode(f" {final.strip()}")
        ids = (tuple(prompt) + think_ids + rest)[:max_tokens]
        out.append(TraceTokens(ids, len(prompt), len(think_ids)))
    return out
