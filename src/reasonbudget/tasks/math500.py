"""MATH-500 (Lightman et al. 2023's split of MATH): LaTeX answers graded symbolically."""

from __future__ import annotations

from reasonbudget.tasks.base import Problem, Task, read_jsonl_gz, register


@register
class Math500(Task):
    name = "math500"
    grader = "math500"

    def load(self) -> list[Problem]:
        return [Problem(id=r["unique_id"], question=r["problem"], gold=r["answer"],
                        meta={"subject": r["subject"], "level": r["level"]})
                for r in read_jsonl_gz("math500_test.jsonl.gz")]
