"""AIME 2024: 30 problems with integer answers 0-999 (gold may carry leading zeros; compared as integers)."""

from __future__ import annotations

from reasonbudget.tasks.base import Problem, Task, read_jsonl_gz, register


@register
class AIME24(Task):
    name = "aime24"
    grader = "aime24"

    def load(self) -> list[Problem]:
        return [Problem(id=str(r["id"]), question=r["problem"], gold=str(r["answer"]), meta={"url": r.get("url")})
                for r in read_jsonl_gz("aime24_test.jsonl.gz")]
