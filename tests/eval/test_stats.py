"""Problem-level statistics: the cluster bootstrap keeps a problem's seeds together, the paired difference is
per problem."""

import pytest

from reasonbudget.eval.stats import accuracy, bootstrap_interval, paired_difference, rate_ratio_interval, verdict


def test_seeds_of_one_problem_do_not_narrow_the_interval():
    # 10 problems, each always right or always wrong: 3 seeds repeat the same information, not 3x more
    one = {f"p{i}": [i < 6] for i in range(10)}
    three = {f"p{i}": [i < 6] * 3 for i in range(10)}
    assert accuracy(one) == accuracy(three) == 0.6
    assert bootstrap_interval(one) == bootstrap_interval(three)
    lo, hi = bootstrap_interval(three)
    assert lo < 0.4 and hi > 0.8  # as wide as 10 draws, not 30


def test_paired_difference_sees_a_consistent_gain_and_not_noise():
    a = {f"p{i}": [True, True] for i in range(30)}
    b = {f"p{i}": [i % 3 == 0, False] for i in range(30)}
    d = paired_difference(a, b)
    assert d["diff"] == pytest.approx(1 - 10 / 60) and d["diff_ci_low"] > 0 and d["p"] < 0.01
    assert verdict(d, ("PF", "WBoN")) == "PF better"
    same = paired_difference(a, a)
    assert same["diff"] == 0 and same["p"] == 1.0 and verdict(same) == "no difference detected"
    noisy = paired_difference({f"p{i}": [i % 2 == 0] for i in range(20)}, {f"p{i}": [i % 2 == 1] for i in range(20)})
    assert noisy["diff_ci_low"] < 0 < noisy["diff_ci_high"] and noisy["p"] > 0.5


def test_rate_ratio_interval_pairs_items_and_covers_the_ratio():
    # A is 2x B's tokens per second on every item, with very different item sizes: the pairing keeps the
    # interval at exactly 2 (resampling the items does not change a constant ratio)
    tokens = [50.0, 400.0, 120.0, 90.0]
    base_s = [5.0, 40.0, 12.0, 9.0]
    ratio, lo, hi = rate_ratio_interval(tokens, [s / 2 for s in base_s], tokens, base_s)
    assert ratio == pytest.approx(2.0) and lo == pytest.approx(2.0) and hi == pytest.approx(2.0)
    # noisy items: the interval holds the point estimate and widens; one item only cannot be told apart from 1x
    g = [1.0, 1.6, 0.7, 1.3, 0.9, 1.2, 0.8, 1.1]
    ratio, lo, hi = rate_ratio_interval([10.0] * 8, [10 / x for x in g], [10.0] * 8, [10.0] * 8)
    assert lo < ratio < hi and lo < 1.0 < hi
    with pytest.raises(ValueError, match="paired"):
        rate_ratio_interval([1.0], [1.0], [1.0, 2.0], [1.0, 1.0])
