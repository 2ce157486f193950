"""Reference thinking traces for testbed problems, and the step checker.

A trace is one line per reasoning step inside <think> ... </think>, then the answer line:

    37 + 48 = 85
    (85 - 19) * 3 = 98          two operations merged into one line (some traces)
    check: (85 - 19) * 3 = 98   a redundant self-check (rate drawn per trace: the overthinking to cut)
    The answer is 98.

Verbosity varies per trace: each step line is followed by a self-check with a rate r ~ U(0, 0.65) drawn per
trace (check lines are about a third of all thinking tokens on average), and half of the traces merge pairs
of operations with probability 0.3.

Step labels ("process" labels, as a PRM learns them): a line is correct when its arithmetic is right and it
continues the true chain; after the first wrong line, every later line is wrong. `label_trace` adds the
closing step (end of thinking and the answer line), which is where a trace that skips steps goes wrong.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from reasonbudget.testbed.problems import ArithProblem, apply

ANSWER_PREFIX = "The answer is "
_COMPUTE = re.compile(r"^(?P<lhs>[\d()+\-* ]+?)\s*=\s*(?P<rhs>-?\d+)$")
_TERM = re.compile(r"([+\-*])\s*(\d+)")


def _expr(value: int, ops: list[tuple[str, int]]) -> str:
    expr = str(value)
    for i, (op, k) in enumerate(ops):
        expr = f"({expr} {op} {k})" if i < len(ops) - 1 else f"{expr} {op} {k}"
    return expr


def reference_lines(problem: ArithProblem, rng: random.Random) -> list[str]:
    check_rate = rng.random() * 0.65  # check lines are ~1/3 of thinking tokens on average
    merge_prob = 0.3 if rng.random() < 0.5 else 0.0
    lines, i, value = [], 0, problem.start
    while i < problem.difficulty:
        n = 2 if i + 1 < problem.difficulty and rng.random() < merge_prob else 1
        ops = list(problem.steps[i : i + n])
        result = value
        for op, k in ops:
            result = apply(result, op, k)
        line = f"{_expr(value, ops)} = {result}"
        lines.append(line)
        if rng.random() < check_rate:
            lines.append("check: " + line)
        i, value = i + n, result
    return lines


def reference_completion(problem: ArithProblem, rng: random.Random) -> str:
    """Everything the model writes after the prompt's '<think>\\n': thinking, close, answer."""
    return "\n".join(reference_lines(problem, rng)) + "\n</think>\n" + f"{ANSWER_PREFIX}{problem.answer}."


@dataclass(frozen=True)
class StepLabel:
    line: str
    correct: bool
    is_check: bool


def _parse(line: str) -> tuple[int, list[tuple[str, int]], int] | None:
    m = _COMPUTE.match(line.strip())
    if m is None:
        return None
    lhs = m.group("lhs").replace("(", " ").replace(")", " ").strip()
    first = re.match(r"\d+", lhs)
    if first is None:
        return None
    terms = [(op, int(k)) for op, k in _TERM.findall(lhs[first.end() :])]
    if not terms:
        return None
    return int(first.group()), terms, int(m.group("rhs"))


def label_steps(problem: ArithProblem, thinking: str) -> list[StepLabel]:
    """Label every non-empty line of a (model-written) thinking text."""
    labels, pos, value, last, derailed = [], 0, problem.start, None, False
    for raw in thinking.split("\n"):
        line = raw.strip()
        if not line or line in ("<think>", "</think>"):
            continue
        is_check = line.startswith("check:")
        if is_check:
            ok = not derailed and last is not None and line[len("check:") :].strip() == last
        else:
            parsed = _parse(line)
            ok = False
            if parsed is not None and not derailed:
                a, terms, result = parsed
                expected = problem.steps[pos : pos + len(terms)]
                true_value = value
                for op, k in expected:
                    true_value = apply(true_value, op, k)
                ok = a == value and tuple(terms) == tuple(expected) and result == true_value
                if ok:
                    pos, value, last = pos + len(terms), true_value, line
        derailed = derailed or not ok
        labels.append(StepLabel(line, ok, is_check))
    return labels


def label_trace(problem: ArithProblem, thinking: str, answer: str) -> list[StepLabel]:
    """`label_steps` plus the closing step ("</think>" and the answer line), correct when every line before
    it is and the answer is right: a trace that stops thinking a step early is wrong there, not nowhere."""
    labels = label_steps(problem, thinking)
    ok = all(lab.correct for lab in labels) and final_answer(answer) == problem.answer
    return labels + [StepLabel(closing_step(answer), ok, False)]


def closing_step(answer: str) -> str:
    return "</think>\n" + answer.strip()


def final_answer(text: str) -> int | None:
    m = re.search(re.escape(ANSWER_PREFIX) + r"(-?\d+)", text)
    return int(m.group(1)) if m else None
