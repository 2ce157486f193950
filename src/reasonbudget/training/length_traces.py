"""Training traces for the length predictor, as `TraceTokens` (prompt, thinking span, marker and answer).

- `testbed_traces`: the model's own traces (on-policy) sampled at temperature 1 on training problems of all
  difficulties, so the predictor sees long (self-checking) and short (merged) ways to the same answer.
- `sampled_traces`: the same for any model on any task's problems (on-policy: the lengths the model actually
  thinks, which reference solutions of ~100 tokens are far from), kept in a resumable JSONL file.
- `solution_traces`: worked solutions teacher-forced as thinking (GSM8K train for real models, as the paper
  uses R1 traces): prompt, solution as thinking, the profile's end-of-thinking marker, then the answer.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Sequence
from pathlib import Path

from reasonbudget.predictors.train_length import TraceTokens

logger = logging.getLogger(__name__)

PREDICTOR_SEED_OFFSET = 4_000_000  # testbed problems for the predictor: apart from every other seed range


def testbed_traces(model, *, per_difficulty: int, samples: int = 2, seed: int = 0) -> list[TraceTokens]:
    from reasonbudget.testbed.problems import MAX_DIFFICULTY, generate

    problems = [p for d in range(1, MAX_DIFFICULTY + 1)
                for p in generate(per_difficulty, difficulty=d, seed=PREDICTOR_SEED_OFFSET + d)]
    return sampled_traces(model, problems, samples=samples, temperature=1.0, seed=seed, max_thinking_tokens=400)


def sampled_traces(model, problems: Sequence, *, samples: int = 2, temperature: float = 0.7, seed: int = 0,
                   max_thinking_tokens: int = 1024, batch_size: int = 32, store: Path | None = None,
                   ) -> list[TraceTokens]:
    """The model's own plain-CoT traces that end their thinking themselves (a trace cut at the cap has no true
    remaining length). With `store`, every finished batch is appended there and a rerun resumes after it."""
    from reasonbudget.models.registry import build_prompt
    from reasonbudget.training.rollouts import rollouts

    done: dict[str, list[dict]] = {}
    if store is not None and store.exists():
        for line in store.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                done.setdefault(rec["problem"], []).append(rec)
    todo = [p for p in problems if p.id not in done]
    close = model.profile.think_close
    t0 = time.time()
    for i in range(0, len(todo), batch_size):
        chunk = todo[i : i + batch_size]
        results = rollouts(model, chunk, samples=samples, temperature=temperature, seed=seed,
                           batch_size=batch_size * samples, max_thinking_tokens=max_thinking_tokens)
        lines = []
        for j, r in enumerate(results):
            p = chunk[j // samples]
            n = r.usage.thinking_tokens
            # the marker's text, not its ids: "\n\nFinal answer:" tokenizes with the blank line as its own token
            ended = n < max_thinking_tokens and model.decode(r.tokens[n : n + 16]).lstrip().startswith(close)
            rec = {"problem": p.id, "sample": j % samples, "tokens": list(r.tokens), "thinking": n, "ended": ended}
            done.setdefault(p.id, []).append(rec)
            lines.append(json.dumps(rec))
        if store is not None:
            store.parent.mkdir(parents=True, exist_ok=True)
            with store.open("a") as f:
                f.write("\n".join(lines) + "\n")
        finished = i + len(chunk)
        rate = (time.time() - t0) / finished
        logger.info("sampled traces: %d/%d problems, ETA %.0f s", finished, len(todo), rate * (len(todo) - finished))
    out = []
    for p in problems:
        prompt = tuple(build_prompt(model, p.question))
        for rec in done.get(p.id, []):
            if rec["ended"]:
                out.append(TraceTokens(prompt + tuple(rec["tokens"]), len(prompt), rec["thinking"]))
    logger.info("sampled traces: %d of %d ended their thinking themselves", len(out),
                sum(len(done.get(p.id, [])) for p in problems))
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
