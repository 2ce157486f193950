"""The testbed as an evaluation task.

    testbed                 the fixed default test sets of every difficulty (1..8), mixed
    testbed:d=K             the fixed default test set of difficulty K
    testbed:d=K,seed=S      a fresh test set of difficulty K drawn from seed S (testbed:seed=S: all difficulties)
    testbed:...,n=N         N problems per difficulty (fresh sets; default 100)

The fixed sets are committed data (`testbed_default.jsonl.gz`, generated from DEFAULT_SEED), so they do
not move if the generator ever changes; fresh sets come from the generator on demand.
"""

from __future__ import annotations

from reasonbudget.tasks.base import Problem, Task, read_jsonl_gz, register
from reasonbudget.testbed.problems import MAX_DIFFICULTY, ArithProblem, generate

DEFAULT_SEED = 20261123
DEFAULT_PER_DIFFICULTY = 100


def _to_problem(p: ArithProblem) -> Problem:
    return Problem(id=p.id, question=p.question, gold=str(p.answer),
                   meta={"difficulty": p.difficulty, "start": p.start, "steps": [list(s) for s in p.steps],
                         "wording": p.wording})


def problem_from_meta(p: Problem) -> ArithProblem:
    m = p.meta
    return ArithProblem(id=p.id, start=m["start"], steps=tuple((op, k) for op, k in m["steps"]), wording=m["wording"])


@register
class Testbed(Task):
    name = "testbed"
    grader = "testbed"

    def __init__(self, d: str | None = None, seed: str | None = None, n: str | None = None) -> None:
        try:
            self.difficulties = [int(d)] if d is not None else list(range(1, MAX_DIFFICULTY + 1))
            self.seed = int(seed) if seed is not None else None
            self.n = int(n) if n is not None else DEFAULT_PER_DIFFICULTY
        except ValueError:
            raise ValueError("testbed options d, seed and n must be integers (e.g. testbed:d=3,seed=7)") from None
        if not all(1 <= x <= MAX_DIFFICULTY for x in self.difficulties):
            raise ValueError(f"testbed d={d}: accepted are 1..{MAX_DIFFICULTY}")
        if n is not None and self.seed is None:
            raise ValueError("testbed n=N applies to fresh sets: give seed=S too")
        self.options = {k: v for k, v in (("d", d), ("seed", seed), ("n", n)) if v is not None}

    @property
    def spec(self) -> str:
        opts = ",".join(f"{k}={v}" for k, v in self.options.items())
        return f"{self.name}:{opts}" if opts else self.name

    def load(self) -> list[Problem]:
        if self.seed is None:
            rows = read_jsonl_gz("testbed_default.jsonl.gz")
            return [Problem(id=r["id"], question=r["question"], gold=r["gold"], meta=r["meta"]) for r in rows
                    if r["meta"]["difficulty"] in self.difficulties]
        return [_to_problem(p) for d in self.difficulties for p in generate(self.n, difficulty=d, seed=self.seed)]


def write_default_sets(path) -> None:
    """Regenerate the committed fixed test sets (only when deliberately changing them)."""
    import gzip
    import json

    with gzip.open(path, "wt", encoding="utf-8") as f:
        for d in range(1, MAX_DIFFICULTY + 1):
            for p in generate(DEFAULT_PER_DIFFICULTY, difficulty=d, seed=DEFAULT_SEED):
                q = _to_problem(p)
                f.write(json.dumps({"id": q.id, "question": q.question, "gold": q.gold, "meta": dict(q.meta)}) + "\n")
