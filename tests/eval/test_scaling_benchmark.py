"""The scaling benchmark's statistics (on synthetic records, no model): greedy counts once per problem, rows
carry problem-level intervals and cost, and `paired` holds the per-problem comparisons."""

from types import SimpleNamespace

from tests.helpers import load_benchmark


def record(method, budget, seed, pid, correct, n_samples=4):
    usage = {"completion_tokens": 100, "prm_calls": 8, "prm_tokens": 50, "wall_seconds": 0.1}
    answer = "The answer is 7." if correct else "The answer is 3."
    trace = {"answers": [answer] * n_samples, "scores": [0.9] * n_samples, "picks": {"argmax": 0, "vote": 0}}
    return {"method": method, "budget": budget, "seed": seed, "problem_id": pid, "correct": correct,
            "usage": usage, "trace": trace, "gold": "7"}


def test_greedy_counts_once_and_paired_rows_are_per_problem(monkeypatch):
    scaling = load_benchmark("scaling")
    calls = []

    def fake_sweep(task, methods, budgets, args, out, temperature=0.8, **kw):
        seeds = kw.get("seeds", args.seeds)
        calls.append((methods[0].split(":")[0], seeds))
        out_records = []
        for pid in ("p0", "p1", "p2"):
            for seed in range(seeds):
                for m in methods:
                    for b in budgets or [None]:
                        out_records.append(record(m, b, seed, f"{task}-{pid}", correct=pid != "p2"))
        return out_records

    monkeypatch.setattr(scaling, "sweep", fake_sweep)
    args = SimpleNamespace(seeds=3, per_difficulty=3, ns=(1, 4), search_max=4, temperature=0.8, out="/tmp/x",
                           prms={"trained": "prm=testbed"}, json=True, batch_size=3, threads=2)
    report = scaling.measure(args)
    greedy = next(r for r in report["rows"] if r["method"] == "greedy")
    assert greedy["count"] == greedy["problems"] == 6  # 3 problems x 2 difficulties, not x 3 seeds
    assert ("plain", 1) in calls
    pf = next(r for r in report["rows"] if r["method"] == "particle-filter" and r["n"] == 1)
    assert pf["count"] == 18 and pf["problems"] == 6 and pf["ci_low"] <= pf["accuracy"] <= pf["ci_high"]
    assert {"mean_prm_calls", "mean_prm_tokens", "mean_generated_tokens"} <= pf.keys()
    passed = next(r for r in report["rows"] if r["method"] == "pass@n" and r["n"] == 4)
    assert passed["prm"] == "-" and passed["accuracy"] == 2 / 3 and passed["mean_prm_calls"] == 0
    against = {tuple(p["b"][:1]) for p in report["paired"] if p["a"][0] == "particle-filter"}
    assert against == {("weighted-best-of-n",), ("dvts",), ("greedy",)}
    for p in report["paired"]:
        assert {"a", "b", "diff", "diff_ci_low", "diff_ci_high", "p"} <= p.keys()


def test_pass_at_n_is_right_when_any_of_the_first_n_samples_is():
    scaling = load_benchmark("scaling")
    r = record("best-of-n", 4, 0, "p0", correct=False)
    r["trace"]["answers"] = ["The answer is 3.", "The answer is 3.", "The answer is 7.", "The answer is 3."]
    assert not scaling.subsample(r, 2)["pass@n"]["correct"]
    four = scaling.subsample(r, 4)
    assert four["pass@n"]["correct"] and not four["majority-vote"]["correct"]
    assert four["pass@n"]["prm_tokens"] == 0
