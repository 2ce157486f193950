"""Answer extraction and grading over hard cases: math-verify in a process pool with a timeout."""

import time

import pytest

from reasonbudget.tasks import grade
from reasonbudget.tasks.extraction import answer_phrase, extract_answer, last_boxed, last_number
from reasonbudget.tasks.grading import grade_many

CORRECT = [
    # fractions vs decimals
    ("\\boxed{\\frac{1}{2}}", "0.5", "math500"),
    ("1/2", "0.5", "math500"),
    ("\\dfrac{3}{4}", "\\frac34", "math500"),
    ("The answer is $0.75$.", "\\frac{3}{4}", "math500"),
    ("#### 2.5", "5/2", "gsm8k"),
    # roots
    ("$\\sqrt{2}/2$", "\\frac{\\sqrt{2}}{2}", "math500"),
    ("\\boxed{\\frac{1}{\\sqrt{2}}}", "\\frac{\\sqrt2}{2}", "math500"),
    ("\\boxed{2\\sqrt{3}}", "\\sqrt{12}", "math500"),
    # intervals, tuples, matrices
    ("\\boxed{(-\\infty,3]}", "(-\\infty, 3]", "math500"),
    ("\\boxed{(3, \\frac{\\pi}{2})}", "\\left( 3, \\frac{\\pi}{2} \\right)", "math500"),
    ("\\boxed{\\begin{pmatrix}1\\\\2\\end{pmatrix}}", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "math500"),
    # thousands separators, leading zeros, units and text
    ("She makes $1,000 in total.", "1000", "gsm8k"),
    ("Final answer: 18 eggs", "18", "gsm8k"),
    ("The answer is $18 dollars.", "18", "gsm8k"),
    ("\\boxed{25}", "025", "aime24"),
    ("so the answer is 033", "33", "aime24"),
    ("Final answer: 1,234,567", "1234567", "gsm8k"),
    # boxed nesting, last box wins
    ("first \\boxed{3} then \\boxed{\\frac{\\frac{1}{2}}{2}}", "\\frac14", "math500"),
    ("\\boxed{\\text{(C)}}", "\\text{(C)}", "math500"),
    ("x = \\boxed{-7}", "-7", "math500"),
]

WRONG = [
    ("\\boxed{17.99}", "18", "gsm8k"),
    ("\\boxed{0.33}", "\\frac{1}{3}", "math500"),
    ("\\boxed{-18}", "18", "gsm8k"),
    ("\\boxed{(-\\infty, 3)}", "(-\\infty, 3]", "math500"),
    ("\\boxed{(3, \\pi)}", "\\left( 3, \\frac{\\pi}{2} \\right)", "math500"),
    ("\\boxed{\\begin{pmatrix}2\\\\1\\end{pmatrix}}", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "math500"),
    ("Final answer: 100", "1000", "gsm8k"),
    ("\\boxed{250}", "025", "aime24"),
    ("\\boxed{\\sqrt{3}}", "\\sqrt{2}", "math500"),
    ("I think it is 12, no wait, 13. Final answer: 13", "12", "gsm8k"),
]

MALFORMED = [("", "5"), ("\\boxed{", "5"), ("}}}{{{", "5"), (None, "5"), ("42", None), ("42", ""), (3.5, "3.5")]


@pytest.mark.parametrize("output,gold,task", CORRECT)
def test_equivalent_answers_grade_true(output, gold, task):
    assert grade(output, gold, task=task)


@pytest.mark.parametrize("output,gold,task", WRONG)
def test_close_but_wrong_answers_grade_false(output, gold, task):
    assert not grade(output, gold, task=task)


@pytest.mark.parametrize("output,gold", MALFORMED)
@pytest.mark.parametrize("task", ["gsm8k", "math500", "aime24", "no-such-task"])
def test_malformed_input_never_raises(output, gold, task):
    assert grade(output, gold, task=task) is False


def test_pathological_expression_times_out_as_false():
    t0 = time.perf_counter()
    assert grade("\\boxed{9^{9^{9^{9}}}}", "1", task="math500", timeout=2.0) is False
    assert time.perf_counter() - t0 < 30
    # the pool survives the killed worker
    assert grade("\\boxed{2}", "2", task="math500")


def test_grade_many_matches_grade():
    items = [(o, g, t) for o, g, t in CORRECT[:5] + WRONG[:5]]
    assert grade_many(items) == [True] * 5 + [False] * 5


def test_extraction_helpers():
    assert last_boxed("a \\boxed{x^{2}} b \\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert last_boxed("\\boxed{unclosed") is None
    assert answer_phrase("blah\nThe answer is 42.\n") == "42"
    assert last_number("costs $1,250.50 total, 3 items") == "3"
    assert extract_answer("Final answer: $1,200", numeric=True) == "1,200"
    assert extract_answer("no numbers here", numeric=True) is None
