"""GSM8K (Cobbe et al. 2021): grade-school word problems with integer answers. Splits: test (1319), train (7473)."""

from __future__ import annotations

from reasonbudget.tasks.base import Problem, Task, read_jsonl_gz, register


@register
class GSM8K(Task):
    name = "gsm8k"
    grader = "gsm8k"

    def __init__(self, split: str = "test") -> None:
        if split not in ("test", "train"):
            raise ValueError(f"gsm8k split={split!r}: accepted are test, train")
        self.split = split

    @property
    def spec(self) -> str:
        return self.name if self.split == "test" else f"{self.name}:split={self.split}"

    def load(self) -> list[Problem]:
        rows = read_jsonl_gz(f"gsm8k_{self.split}.jsonl.gz")
        return [Problem(id=f"{self.split}-{i}", question=r["question"],
                        gold=r["answer"].rsplit("####", 1)[-1].strip().replace(",", ""),
                        meta={"solution": r["answer"]}) for i, r in enumerate(rows)]
