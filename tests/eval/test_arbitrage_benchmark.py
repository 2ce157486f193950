"""The step-level drafting benchmark's comparisons (synthetic rows, no model) and its tree records (testbed pair)."""

import pytest

from tests.helpers import load_benchmark


def row(method, thr, acc, acceptance, flops):
    return {"pair": "testbed", "method": method, "threshold": thr, "accuracy": acc, "acceptance": acceptance,
            "flops": flops, "latency_s": flops / 100}


def test_each_arbitrage_threshold_meets_rsd_at_the_nearest_acceptance_on_the_same_problems():
    bench = load_benchmark("arbitrage")
    rows = [row("rsd", 0.2, 0.5, 0.9, 10), row("rsd", 0.8, 1.0, 0.5, 20),
            row("arbitrage", 0.3, 1.0, 0.85, 12), row("arbitrage", 0.7, 0.5, 0.55, 15)]
    problems = [f"p{i}" for i in range(40)]
    per_cell = {("testbed", "rsd", 0.2): {p: [i % 2 == 0] for i, p in enumerate(problems)},
                ("testbed", "rsd", 0.8): {p: [True] for p in problems},
                ("testbed", "arbitrage", 0.3): {p: [True] for p in problems},
                ("testbed", "arbitrage", 0.7): {p: [i % 2 == 0] for i, p in enumerate(problems)}}
    paired = bench.paired_at_acceptance(rows, per_cell)
    assert [(p["arbitrage_threshold"], p["rsd_threshold"]) for p in paired] == [(0.3, 0.2), (0.7, 0.8)]
    first, second = paired
    assert first["diff"] == 0.5 and first["diff_ci_low"] > 0 and first["verdict"] == "Arbitrage better"
    assert second["diff"] == -0.5 and second["verdict"] == "RSD better"
    assert first["problems"] == 40
    # matched accuracy: the cheapest RSD point at least as accurate as each Arbitrage frontier point
    (m,) = bench.matched(rows)  # Arbitrage's frontier is tau 0.3 alone (tau 0.7 costs more and is less accurate)
    assert m["arbitrage_threshold"] == 0.3 and m["rsd_threshold"] == 0.8 and m["speedup"] == 20 / 12


def test_the_speedup_ceiling_is_rsds_costliest_frontier_point_over_arbitrages_cheapest():
    bench = load_benchmark("arbitrage")
    rows = [row("rsd", 0.2, 0.5, 0.9, 10), row("rsd", 0.8, 1.0, 0.5, 20), row("target-only", None, 0.6, 0.0, 30),
            row("rsd", 0.0, 0.3, 1.0, 40),  # dearer and less accurate than both others: never a match
            row("arbitrage", 0.3, 1.0, 0.85, 12), row("arbitrage", 1.0, 0.4, 1.0, 8)]
    (c,) = bench.speedup_ceiling(rows)
    assert (c["rsd_max_threshold"], c["arbitrage_min_threshold"]) == (0.8, 1.0)
    assert c["ceiling"] == 20 / 8
    # every matched-accuracy speedup lies below it
    assert all(m["speedup"] <= c["ceiling"] for m in bench.matched(rows))
    assert bench.speedup_ceiling([r for r in rows if r["method"] != "arbitrage"]) == []


def test_tree_records_cover_every_run_and_resume_from_their_journal(tmp_path, monkeypatch):
    import types

    from reasonbudget.methods.drafting import steps

    bench = load_benchmark("arbitrage")
    pair = dict(bench.PAIRS["testbed"])
    args = types.SimpleNamespace(out=str(tmp_path), max_tokens=256, router="", thresholds=3, json=True)
    specs = bench.method_specs(pair, args, with_router=True)
    assert specs[("target-only", None)] == "plain:max_thinking_tokens=256"  # the step-level runs' token cap
    first = bench.tree_records("testbed", pair, "testbed:d=6", 2, specs, args)
    keys = [k for k in specs if k[0] != "target-only"]
    assert [k for k, _ in first] == keys * 2  # every step-level run of each problem
    for (method, _), r in first:
        assert r["usage"]["wall_seconds"] > 0 and isinstance(r["correct"], bool)
        assert (r["trace"]["router_calls"] > 0) == (method == "arbitrage")
    journal = next(tmp_path.rglob("tree.jsonl"))
    assert len(journal.read_text().splitlines()) == 2

    def no_walk(*a, **k):
        raise AssertionError("a journaled problem was walked again")

    monkeypatch.setattr(steps, "sweep_step_drafting", no_walk)
    assert bench.tree_records("testbed", pair, "testbed:d=6", 2, specs, args) == first
    args.max_tokens = 128  # other settings: nothing is reused
    with pytest.raises(AssertionError, match="walked again"):
        bench.tree_records("testbed", pair, "testbed:d=6", 1, specs, args)


def test_a_matched_speedup_carries_an_interval_over_the_problems_both_points_ran():
    bench = load_benchmark("arbitrage")
    rows = [row("rsd", 0.8, 1.0, 0.5, 20), row("arbitrage", 0.3, 1.0, 0.85, 10)]
    problems = [f"p{i}" for i in range(30)]
    # every problem costs RSD twice what it costs Arbitrage: no resampling moves the ratio
    even = {("testbed", "rsd", 0.8): {p: 2.0 * (1 + i) for i, p in enumerate(problems)},
            ("testbed", "arbitrage", 0.3): {p: 1.0 + i for i, p in enumerate(problems)}}
    (m,) = bench.matched(rows, even)
    assert m["speedup"] == 2.0 and m["speedup_ci_low"] == pytest.approx(2.0) == m["speedup_ci_high"]
    # half the problems 3x, half 1x: the interval is wide and holds the pooled ratio
    mixed = {("testbed", "rsd", 0.8): {p: 3.0 if i % 2 else 1.0 for i, p in enumerate(problems)},
             ("testbed", "arbitrage", 0.3): {p: 1.0 for p in problems}}
    (m,) = bench.matched(rows, mixed)
    assert m["speedup_ci_low"] < 2.0 < m["speedup_ci_high"] and m["speedup_ci_high"] - m["speedup_ci_low"] > 0.3
    assert "speedup_ci_low" not in bench.matched(rows)[0]  # no per-problem costs: no interval claimed


def test_merging_reports_replaces_the_measured_pairs_and_keeps_the_others():
    bench = load_benchmark("arbitrage")

    def report(pair, acc, seconds):
        r = dict(row("rsd", 0.5, acc, 0.5, 10), pair=pair)
        return {"rows": [r], "matched": [{"pair": pair}], "ceiling": [], "paired": [], "notes": [f"{pair}: n"],
                "seconds": seconds, "settings": {"pairs": [pair], "qwen_limit": 20}}

    old = bench.merge_reports(report("testbed", 0.6, 100.0), report("qwen", 0.4, 50.0))
    assert [(r["pair"], r["accuracy"]) for r in old["rows"]] == [("testbed", 0.6), ("qwen", 0.4)]
    newer = bench.merge_reports(old, report("qwen", 0.5, 70.0))
    assert [(r["pair"], r["accuracy"]) for r in newer["rows"]] == [("testbed", 0.6), ("qwen", 0.5)]
    assert newer["notes"] == ["testbed: n", "qwen: n"] and newer["seconds"] == 170.0
    assert newer["settings"]["pairs"] == ["qwen", "testbed"]
    assert newer["settings_by_pair"]["testbed"]["seconds"] == 100.0
