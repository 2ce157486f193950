"""Statistics over problems, not runs: a problem's seeds are not independent draws of the benchmark (they share
the problem), so intervals resample problems with all their runs (a cluster bootstrap), and two methods are
compared on the per-problem differences of their accuracies. Pure functions; seeded."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

Outcomes = Mapping[str, Sequence[bool]]
"""problem id -> the correctness of each of its runs (seeds)."""


def _per_problem(outcomes: Outcomes) -> list[float]:
    return [sum(map(bool, runs)) / len(runs) for runs in outcomes.values() if runs]


def accuracy(outcomes: Outcomes) -> float:
    """Accuracy over all runs (problems with equal numbers of runs weigh the same)."""
    runs = [bool(r) for rs in outcomes.values() for r in rs]
    return sum(runs) / len(runs) if runs else float("nan")


def bootstrap_interval(outcomes: Outcomes, *, rounds: int = 2000, level: float = 0.95,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile interval of the accuracy when problems (with all their runs) are resampled."""
    problems = [list(map(bool, rs)) for rs in outcomes.values() if rs]
    if not problems:
        return 0.0, 1.0
    rng = random.Random(seed)
    stats = []
    for _ in range(rounds):
        pick = [problems[rng.randrange(len(problems))] for _ in problems]
        stats.append(sum(sum(rs) for rs in pick) / sum(len(rs) for rs in pick))
    return _percentiles(stats, level)


def paired_difference(a: Outcomes, b: Outcomes, *, rounds: int = 2000, level: float = 0.95,
                      seed: int = 0) -> dict[str, float | int]:
    """A minus B on the problems both ran: the mean per-problem accuracy difference, its bootstrap interval over
    problems, and a two-sided sign-flip permutation p-value (under "no difference" each problem's difference
    is as likely negated)."""
    common = sorted(a.keys() & b.keys())
    diffs = [_per_problem({k: a[k]})[0] - _per_problem({k: b[k]})[0] for k in common if a[k] and b[k]]
    if not diffs:
        return {"diff": 0.0, "diff_ci_low": 0.0, "diff_ci_high": 0.0, "p": 1.0, "problems": 0}
    rng = random.Random(seed)
    observed = sum(diffs) / len(diffs)
    boot = [sum(diffs[rng.randrange(len(diffs))] for _ in diffs) / len(diffs) for _ in range(rounds)]
    lo, hi = _percentiles(boot, level)
    extreme = sum(abs(sum(d if rng.random() < 0.5 else -d for d in diffs)) >= abs(sum(diffs)) - 1e-12
                  for _ in range(rounds))
    return {"diff": observed, "diff_ci_low": lo, "diff_ci_high": hi, "p": (extreme + 1) / (rounds + 1),
            "problems": len(diffs)}


def rate_ratio_interval(amount_a: Sequence[float], seconds_a: Sequence[float], amount_b: Sequence[float],
                        seconds_b: Sequence[float], *, rounds: int = 2000, level: float = 0.95,
                        seed: int = 0) -> tuple[float, float, float]:
    """A speed-up with its interval: (sum amount_a / sum seconds_a) / (sum amount_b / sum seconds_b), e.g. tokens
    per second of a method over a baseline, when both ran the same items (problems, or batches of them) and item
    i of A pairs with item i of B. The interval resamples items, keeping the pairs. -> (ratio, low, high)."""
    n = len(amount_a)
    if not n or not (len(seconds_a) == len(amount_b) == len(seconds_b) == n):
        raise ValueError(f"paired items needed: {len(amount_a)}, {len(seconds_a)}, {len(amount_b)}, {len(seconds_b)}")

    def ratio(idx: Sequence[int]) -> float:
        a = sum(amount_a[i] for i in idx) / max(1e-12, sum(seconds_a[i] for i in idx))
        b = sum(amount_b[i] for i in idx) / max(1e-12, sum(seconds_b[i] for i in idx))
        return a / b if b > 0 else float("nan")

    rng = random.Random(seed)
    boot = [ratio([rng.randrange(n) for _ in range(n)]) for _ in range(rounds)]
    return (ratio(range(n)), *_percentiles(boot, level))


def verdict(p: Mapping[str, float], names: tuple[str, str] = ("A", "B")) -> str:
    """Words for a paired difference: a direction only when its interval excludes zero."""
    if p["diff_ci_low"] <= 0 <= p["diff_ci_high"]:
        return "no difference detected"
    return f"{names[0]} better" if p["diff"] > 0 else f"{names[1]} better"


def _percentiles(values: list[float], level: float) -> tuple[float, float]:
    values = sorted(values)
    lo = values[int((1 - level) / 2 * (len(values) - 1))]
    hi = values[int((1 + level) / 2 * (len(values) - 1))]
    return lo, hi
