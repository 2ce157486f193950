"""Report math and files: Wilson intervals, grouping, markdown, plots."""

import json
import math

import pytest

from reasonbudget.eval.records import ResultsFile
from reasonbudget.eval.report import mcnemar, summarize, to_markdown, wilson, write_report


def test_wilson_interval_known_values():
    lo, hi = wilson(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-3) and hi == pytest.approx(0.9433, abs=1e-3)
    assert wilson(0, 10)[0] == pytest.approx(0.0, abs=1e-12) and wilson(10, 10)[1] == pytest.approx(1.0)
    assert wilson(0, 0) == (0.0, 1.0)


def _rec(pid, method, budget, seed, correct, thinking):
    usage = {"thinking_tokens": thinking, "completion_tokens": thinking + 5, "wall_seconds": 0.5,
             "forward_passes_by_model": {"m": thinking + 6}, "energy_flops": 1e9}
    return {"task": "gsm8k", "problem_id": pid, "method": method, "budget": budget, "seed": seed,
            "correct": correct, "usage": usage}


def test_mcnemar_exact_values():
    assert mcnemar(0, 0) == 1.0 and mcnemar(3, 3) == 1.0
    assert mcnemar(5, 0) == pytest.approx(2 / 32)  # all 5 discordant items on one side
    assert mcnemar(1, 9) == mcnemar(9, 1) == pytest.approx(2 * 11 / 1024)
    assert mcnemar(2, 4) == pytest.approx(2 * (1 + 6 + 15) / 64)


def test_summary_groups_by_method_and_budget_over_problems_and_seeds(tmp_path):
    recs = [_rec(str(i), "budget-forcing", 8, s, i % 2 == 0, 8) for i in range(4) for s in (0, 1)]
    recs += [_rec(str(i), "nothinking", None, 0, False, 0) for i in range(4)]
    rows = summarize(recs)
    bf = next(r for r in rows if r["method"] == "budget-forcing")
    assert (bf["n"], bf["problems"], bf["seeds"], bf["accuracy"]) == (8, 4, 2, 0.5)
    assert bf["mean_thinking_tokens"] == 8 and bf["mean_forward_passes"] == 14
    assert "| gsm8k | nothinking | - | 4 | 0.000 |" in to_markdown(rows)

    ResultsFile(tmp_path / "results.jsonl").append(recs)
    write_report(tmp_path)
    assert json.loads((tmp_path / "summary.json").read_text()) == rows
    for name in ("summary.md", "accuracy_vs_thinking_tokens.png", "accuracy_vs_wall_seconds.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert (tmp_path / "accuracy_vs_thinking_tokens.png").read_bytes()[:4] == b"\x89PNG"


def test_torn_trailing_line_is_dropped_and_cut(tmp_path, caplog):
    f = ResultsFile(tmp_path / "results.jsonl")
    f.append([_rec("0", "plain", None, 0, True, 3), _rec("1", "plain", None, 0, False, 3)])
    with open(f.path, "ab") as fh:
        fh.write(b'{"task": "gsm8k", "problem_id": "2", "meth')
    assert len(f.load()) == 2 and "corrupt line" in caplog.text
    f.append([_rec("2", "plain", None, 0, True, 3)])
    assert len(f.load()) == 3
    assert all(json.loads(line) for line in f.path.read_text().splitlines())


def test_spearman_known_values_and_ties():
    from reasonbudget.eval.report import average_ranks, spearman

    assert average_ranks([10, 20, 20, 5]) == [2.0, 3.5, 3.5, 1.0]
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [9, 7, 3, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4, 5], [1, 3, 2, 5, 4]) == pytest.approx(0.8)  # 1 - 6 * 4 / (5 * 24)
    # ties: Pearson over average ranks (scipy.stats.spearmanr([1, 2, 2, 3], [1, 2, 3, 4]) = 0.9486832980505138)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486832980505138)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError):
        spearman([1, 2], [1])
