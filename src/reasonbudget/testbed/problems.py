"""Synthetic multi-step arithmetic problems: the testbed's reasoning world.

A problem starts from a number 0..99 and applies `difficulty` operations (+ k and - k with k in 1..49, * k with
k in 2..3), every result taken mod 100, e.g. "((37 + 28) - 9) * 3 mod 100" or in words "Start with 37, add 28,
subtract 9, multiply by 3. What is the result mod 100?". Two-digit operands make a single step hard enough
that a tiny model errs on some (testbed v2: in the first world, k in 1..9, greedy decoding had caught up with
search), while chains of up to 8 steps compound those errors. The value after every step is kept: it is the ground truth that the step
checker and the oracle PRM compare against. Generation is seeded (a private random.Random per call).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

MOD = 100
OPS = ("+", "-", "*")
WORDS = {"+": "add", "-": "subtract", "*": "multiply by"}
MAX_DIFFICULTY = 8
ADD_OPERANDS = (1, 49)
"""Range of k in + k and - k (inclusive)."""
MUL_OPERANDS = (2, 3)
"""Range of k in * k (inclusive)."""


def apply(value: int, op: str, operand: int) -> int:
    if op == "+":
        return (value + operand) % MOD
    if op == "-":
        return (value - operand) % MOD
    if op == "*":
        return (value * operand) % MOD
    raise ValueError(f"unknown operation {op!r}")


@dataclass(frozen=True)
class ArithProblem:
    id: str
    start: int
    steps: tuple[tuple[str, int], ...]
    wording: str  # "symbols" | "words"

    @property
    def difficulty(self) -> int:
        return len(self.steps)

    @property
    def values(self) -> tuple[int, ...]:
        """The value after each step (the last one is the answer)."""
        out, v = [], self.start
        for op, k in self.steps:
            v = apply(v, op, k)
            out.append(v)
        return tuple(out)

    @property
    def answer(self) -> int:
        return self.values[-1]

    @property
    def question(self) -> str:
        if self.wording == "words":
            parts = ", ".join(f"{WORDS[op]} {k}" for op, k in self.steps)
            return f"Start with {self.start}, {parts}. What is the result mod {MOD}?"
        expr = str(self.start)
        for i, (op, k) in enumerate(self.steps):
            expr = f"({expr} {op} {k})" if i < len(self.steps) - 1 else f"{expr} {op} {k}"
        return f"{expr} mod {MOD}"


def generate(n: int, *, difficulty: int, seed: int, prefix: str = "") -> list[ArithProblem]:
    """n problems of `difficulty` steps (1..8), reproducible from `seed`."""
    if not 1 <= difficulty <= MAX_DIFFICULTY:
        raise ValueError(f"difficulty={difficulty}: accepted are 1..{MAX_DIFFICULTY}")
    rng = random.Random(f"{seed}:{difficulty}")
    problems = []
    for i in range(n):
        steps = []
        for _ in range(difficulty):
            op = rng.choice(OPS)
            steps.append((op, rng.randint(*MUL_OPERANDS) if op == "*" else rng.randint(*ADD_OPERANDS)))
        problems.append(ArithProblem(id=f"{prefix}d{difficulty}-s{seed}-{i}", start=rng.randint(0, 99),
                                     steps=tuple(steps), wording=rng.choice(("symbols", "words"))))
    return problems


_WORD_OPS = {v: k for k, v in WORDS.items()}


def parse_question(text: str, problem_id: str = "") -> ArithProblem:
    """Inverse of `ArithProblem.question` (both wordings); raises ValueError on anything else."""
    import re

    t = text.strip()
    if t.startswith("Start with "):
        m = re.fullmatch(r"Start with (\d+), (.+)\. What is the result mod \d+\?", t)
        if m is None:
            raise ValueError(f"not a testbed question: {text!r}")
        steps = []
        for part in m.group(2).split(", "):
            word, _, k = part.rpartition(" ")
            if word not in _WORD_OPS:
                raise ValueError(f"not a testbed question: {text!r}")
            steps.append((_WORD_OPS[word], int(k)))
        return ArithProblem(problem_id, int(m.group(1)), tuple(steps), "words")
    m = re.fullmatch(r"([\d()+\-* ]+) mod \d+", t)
    if m is None:
        raise ValueError(f"not a testbed question: {text!r}")
    expr = m.group(1).replace("(", " ").replace(")", " ")
    first = re.match(r"\s*(\d+)", expr)
    steps = tuple((op, int(k)) for op, k in re.findall(r"([+\-*])\s*(\d+)", expr[first.end():]))
    if not steps:
        raise ValueError(f"not a testbed question: {text!r}")
    return ArithProblem(problem_id, int(first.group(1)), steps, "symbols")
