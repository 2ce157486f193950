from reasonbudget.search.voting import answer_groups, vote


def test_equivalent_answers_vote_together():
    answers = ["\\boxed{\\frac{1}{2}}", "The answer is 0.5.", "Final answer: 3", "no idea", "\\boxed{1/2}",
               "Final answer: 3.0", ""]
    groups = answer_groups(answers)
    assert groups[0] == groups[1] == groups[4]  # 1/2 three ways (math-verify)
    assert groups[2] == groups[5] != groups[0]  # 3 and 3.0 as numbers
    assert groups[6] is None
    assert vote(groups) == 0  # three votes for 1/2, first of its group
    # weights decide weighted voting: two confident votes for 3 beat three weak ones for 1/2
    weights = [0.1, 0.1, 0.9, 0.5, 0.1, 0.9, 1.0]
    assert vote(groups, weights) == 2


def test_ties_go_to_the_first_group_and_no_answer_means_none():
    assert vote([1, 0, 0, 1]) == 0
    assert vote([None, None]) is None
    assert vote([0, 1], [float("nan"), 0.2]) == 1  # a failed PRM score does not vote
