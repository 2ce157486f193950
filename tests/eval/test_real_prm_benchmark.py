"""The real-model PRM benchmark's difficulty reference: a score that knows the problem and nothing of the step."""

import pytest

from reasonbudget.training.step_labels import LabelledProblem, LabelledSolution
from tests.helpers import load_benchmark


def solution(correct, values):
    return LabelledSolution("", tuple(f"s{i}" for i in range(len(values) + 1)), correct, (*values, float(correct)),
                            tuple(3 if v is not None else 0 for v in values) + (1,))


def test_each_solution_is_scored_by_the_share_of_positive_steps_of_the_problems_other_solutions():
    bench = load_benchmark("real_prm")
    easy = LabelledProblem("e", "q", "1", (solution(True, [1.0, None]), solution(False, [1 / 3, 0.0])))
    alone = LabelledProblem("a", "q", "1", (solution(False, [0.0]),))
    a, b, c = bench.difficulty_scores([easy, alone])
    # the first solution reads the second's labelled steps (1/3 > 0, 0.0, wrong answer): 1 of 3 positive
    assert a.tolist() == pytest.approx([1 / 3] * 3)
    # the second reads the first's (1.0, right answer; the unlabelled step is skipped): 2 of 2
    assert b.tolist() == [1.0] * 3
    assert c.tolist() == [0.5] * 2  # no other solution: no knowledge
