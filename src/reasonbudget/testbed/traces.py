"""Reference thinking traces for testbed problems, and the step checker.

A trace is one line per reasoning step inside <think> ... </think>, then the answer line:

    37 + 48 = 85
    85 - 19 = 66
    check: 85 - 19 = 66         a redundant self-check (rate drawn per trace: the overthinking to cut)
    *3=98                       a terse line: the left operand is the previous result
    The answer is 98.

Verbosity varies per trace: each step line is followed by a self-check with a rate r ~ U(0, 0.65) drawn per
trace (check lines are about a third of all thinking tokens on average), and lines are terse with a rate
~ U(0, 0.6) drawn per trace. Checks and written-out left operands are redundancy that a budget can cut (as
real chains of thought have filler to drop): the all-terse trace without checks is ~40% of the mean length.
Lines may also merge two operations ("(85 - 19) * 3 = 98", `merge_prob`); the checker reads them, but
reference traces no longer write them: at 850 training steps the target got 55-100% of its merged lines
wrong, and learning them cost accuracy everywhere else.

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


def reference_lines(problem: ArithProblem, rng: random.Random, *, check_rate: float | None = None,
                    merge_prob: float = 0.0, terse_rate: float | None = None) -> list[str]:
    """One trace's lines; verbosity drawn per trace unless given."""
    if check_rate is None:
        check_rate = rng.random() * 0.65  # check lines are ~1/3 of thinking tokens on average
    if terse_rate is None:
        terse_rate = rng.random() * 0.6
    lines, i, value = [], 0, problem.start
    while i < problem.difficulty:
        n = 2 if merge_prob > 0 and i + 1 < problem.difficulty and rng.random() < merge_prob else 1
        ops = list(problem.steps[i : i + n])
        result = value
        for op, k in ops:
            result = apply(result, op, k)
        if n == 1 and rng.random() < terse_rate:
            line = f"{ops[0][0]}{ops[0][1]}={result}"
        else:
            line = f"{_expr(value, ops)} = {result}"
        lines.append(line)
        if rng.random() < check_rate:
            lines.append("check: " + line)
        i, value = i + n, result
    return lines


def thinking_text(lines: list[str]) -> str:
    """The thinking as written after '<think>\\n', up to (not including) '</think>'."""
    return "".join(line + "\n" for line in lines)


def _completion(lines: list[str], problem: ArithProblem) -> str:
    return thinking_text(lines) + "</think>\n" + f"{ANSWER_PREFIX}{problem.answer}."


def reference_completion(problem: ArithProblem, rng: random.Random) -> str:
    """Everything the model writes after the prompt's '<think>\\n': thinking, close, answer."""
    return _completion(reference_lines(problem, rng), problem)


def concise_lines(problem: ArithProblem) -> list[str]:
    """The shortest safe trace: every line terse, no checks, no merges."""
    return reference_lines(problem, random.Random(0), check_rate=0.0, merge_prob=0.0, terse_rate=1.0)


def concise_length(problem: ArithProblem) -> int:
    """Thinking characters (= testbed tokens) of `concise_lines`: what the testbed model is taught to answer
    when asked to estimate its budget (TALE-EP's zero-shot estimate)."""
    return len(thinking_text(concise_lines(problem)))


def budgeted_lines(problem: ArithProblem, rng: random.Random, budget: int, *, tries: int = 4) -> list[str]:
    """A trace written under "use less than `budget` tokens": natural verbosity when it fits (a few draws),
    else no checks, then the concise trace (no checks, all terse), which is written even when it does not fit
    (the model overshoots a budget it cannot meet, as real models do)."""
    candidates = [reference_lines(problem, rng) for _ in range(tries)]
    candidates += [reference_lines(problem, rng, check_rate=0.0), concise_lines(problem)]
    for lines in candidates:
        if len(thinking_text(lines)) < budget:
            return lines
    return candidates[-1]


def budgeted_completion(problem: ArithProblem, rng: random.Random, budget: int) -> str:
    return _completion(budgeted_lines(problem, rng, budget), problem)


@dataclass(frozen=True)
class StepLabel:
    line: str
    correct: bool
    is_check: bool


def _parse(line: str) -> tuple[int | None, list[tuple[str, int]], int] | None:
    """(left operand, or None for a terse line; operations; result), or None when not a computation."""
    m = _COMPUTE.match(line.strip())
    if m is None:
        return None
    lhs = m.group("lhs").replace("(", " ").replace(")", " ").strip()
    first = re.match(r"\d+", lhs)
    rest = lhs[first.end() :] if first is not None else lhs
    terms = [(op, int(k)) for op, k in _TERM.findall(rest)]
    if not terms or (first is None and (len(terms) != 1 or _TERM.fullmatch(rest) is None)):
        return None
    return (int(first.group()) if first is not None else None), terms, int(m.group("rhs"))


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
                ok = (a is None or a == value) and tuple(terms) == tuple(expected) and result == true_value
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
