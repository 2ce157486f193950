"""The budget-control benchmark's statistics (synthetic records, no model): rows carry problem-level intervals
(a problem's seeds resampled together), and `paired` compares the headline cells per problem."""

from tests.helpers import load_benchmark


def record(method, fraction, scope, d, pid, seed, correct, thinking=10):
    usage = {"thinking_tokens": thinking, "forced_tokens": 0, "answer_tokens": 5, "wall_seconds": 0.1}
    return {"method": method, "fraction": fraction, "scope": scope, "difficulty": d, "problem_id": pid,
            "seed": seed, "correct": correct, "budget": None if fraction is None else 5, "usage": usage,
            "trace": {}}


def test_paired_rows_compare_per_problem_and_name_the_winner():
    bench = load_benchmark("budget_control")
    records = []
    for d in (1, 2):
        for i in range(20):
            pid = f"d{d}-{i}"  # the same id at two difficulties is two problems
            for seed in range(3):
                records.append(record("plain", None, None, d, pid, seed, correct=True))
                records.append(record("tale-pt", None, None, d, pid, seed, correct=i % 4 != 0, thinking=4))
                records.append(record("budget-forcing", 0.5, "difficulty", d, pid, seed, correct=i % 2 == 0))
                records.append(record("budget-guidance", 0.5, "difficulty", d, pid, seed, correct=True))
    pairs = {(p["a"][0], p["b"][0]): p for p in bench.paired_rows(records)}
    g = pairs[("budget-guidance", "budget-forcing")]
    assert g["problems"] == 40 and abs(g["diff"] - 0.5) < 1e-9 and g["verdict"] == "budget-guidance better"
    t = pairs[("tale-pt", "plain")]
    assert abs(t["diff"] + 0.25) < 1e-9 and t["verdict"] == "plain better"
    assert ("tale", "plain") not in pairs  # no TALE-EP records: no row, not a zero


def test_intervals_resample_problems_with_their_seeds():
    bench = load_benchmark("budget_control")
    # 10 problems, each right on all 3 seeds or wrong on all 3: the interval is that of 10 draws, not 30
    records = [record("plain", None, None, 1, f"p{i}", seed, correct=i < 5) for i in range(10) for seed in range(3)]

    class Args:
        scope, seeds, per_difficulty, temperature, top_p, task_seed = "both", 3, 10, 1.0, 1.0, None

    row = bench.summarize(records, {1: 10.0}, Args)["rows"][0]
    assert row["accuracy"] == 0.5 and row["n"] == 30
    assert row["ci_high"] - row["ci_low"] > 0.45  # 30 independent runs would give about 0.35
