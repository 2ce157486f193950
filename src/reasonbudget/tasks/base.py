"""The `Task` interface and the task registry.

A task is a list of problems with ids and gold answers, a grading family, and a prompt builder (through the
model's reasoning profile). Specs select variants: "gsm8k", "gsm8k:split=train", later "testbed:d=3,seed=7".
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

DATA = "reasonbudget.tasks.data"


@dataclass(frozen=True)
class Problem:
    id: str
    question: str
    gold: str
    meta: Mapping[str, Any] = field(default_factory=dict)


class Task:
    """Subclasses set `name` and implement `load`; the prompt defaults to the profile's chat prompt."""

    name: str = ""
    grader: str = ""
    """Grading family passed to `grade(..., task=...)`: gsm8k (numbers), aime24 (integers), math500 (LaTeX)."""

    def __init__(self, **options: str) -> None:
        if options:
            raise ValueError(f"task {self.name!r} takes no options, got {', '.join(options)}")

    @property
    def spec(self) -> str:
        return self.name

    def load(self) -> list[Problem]:
        raise NotImplementedError

    def problems(self, limit: int | None = None) -> list[Problem]:
        items = self.load()
        return items[:limit] if limit is not None else items

    def question_text(self, problem: Problem) -> str:
        return problem.question

    def prompt(self, model, problem: Problem) -> tuple[int, ...]:
        from reasonbudget.models.registry import build_prompt

        return build_prompt(model, self.question_text(problem))


def read_jsonl_gz(filename: str) -> list[dict[str, Any]]:
    with resources.files(DATA).joinpath(filename).open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


TASKS: dict[str, Callable[..., Task]] = {}


def register(cls: type[Task]) -> type[Task]:
    TASKS[cls.name] = cls
    return cls


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """'testbed:d=3,seed=7' -> ('testbed', {'d': '3', 'seed': '7'})."""
    name, _, rest = spec.strip().partition(":")
    options: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = part.partition("=")
        if not eq or not key or not value:
            raise ValueError(f"task option {part!r} in {spec!r} is not key=value")
        options[key.strip()] = value.strip()
    return name, options


def get_task(spec: str) -> Task:
    from reasonbudget.tasks import aime, gsm8k, math500, testbed  # noqa: F401  (register the built-in tasks)

    name, options = parse_spec(spec)
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; available: {', '.join(sorted(TASKS))}")
    try:
        return TASKS[name](**options)
    except TypeError:
        raise ValueError(f"task {name!r} does not accept options {', '.join(options)}") from None
