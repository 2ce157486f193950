"""The value-ceiling benchmark's pure parts: rows from outcomes, and the scorers' AUROCs."""

import pytest

from tests.helpers import load_benchmark


def test_rows_split_each_steps_outcomes_into_its_label_and_its_value():
    bench = load_benchmark("value_ceiling")
    outcomes = {("p", 0, 0): [False, False, True, True, True, False, True],  # label any-of-3 True, V = 3/4
                ("p", 0, 1): [False, False, False, False],  # label False, V = 0
                ("q", 1, 2): [True, True]}  # no extra outcome: no value, skipped
    rows = bench.value_rows(outcomes, 3)
    assert [(r["problem"], r["step"], r["label"], r["value"]) for r in rows] == [("p", 0, True, 0.75),
                                                                                ("p", 1, False, 0.0)]


def test_a_problem_level_score_ranks_across_problems_and_not_within():
    bench = load_benchmark("value_ceiling")
    # problem e is easy (steps mostly right), h hard; within each, the value separates the labels
    rows = [{"problem": p, "solution": 0, "step": i, "label": lab, "value": v}
            for p, steps in (("e", [(True, 0.9), (True, 0.8), (False, 0.5)]), ("h", [(True, 0.4), (False, 0.1),
                                                                                       (False, 0.05)]))
            for i, (lab, v) in enumerate(steps)]
    m = bench.ceiling_metrics(rows, {"constant": [0.5] * 6})["scorers"]
    assert m["value"]["pooled_auroc"] > 0.85 and m["value"]["within_problem_auroc"] == 1.0
    assert m["problem mean value"]["within_problem_auroc"] == 0.5  # one score per problem
    # pooled it still ranks: of the 9 (right, wrong) pairs, the easy problem's right steps beat the hard one's
    # wrong steps (4), same-problem pairs tie (4 halves), the hard right step loses to the easy wrong one
    assert m["problem mean value"]["pooled_auroc"] == pytest.approx(6 / 9)
    assert m["constant"]["pooled_auroc"] == 0.5 and m["value"]["problems_with_both"] == 2
