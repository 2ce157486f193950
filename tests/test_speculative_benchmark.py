"""The speculative benchmark refuses a malformed --pairs before loading any model."""

import pytest

from tests.helpers import load_benchmark


@pytest.mark.parametrize("pairs", ["qwen2.5-coder-0.5b", "a:int4>b", "a:int4>b:none:x"])
def test_malformed_pairs_get_a_usage_error_naming_the_format(pairs, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_benchmark("speculative").main(["--pairs", pairs])
    assert exit_info.value.code == 2
    assert "DRAFT:QUANT>TARGET:QUANT" in capsys.readouterr().err


def test_pairs_parse_into_draft_quant_target_quant():
    parse = load_benchmark("speculative").parse_pairs
    assert parse("a:int4>b:none,c:none>b:int8") == (("a", "int4", "b", "none"), ("c", "none", "b", "int8"))
    assert parse("a:int4>b:") == ()


def test_testbed_pair_rows_carry_speedups_with_intervals_and_accuracy_intervals():
    from reasonbudget.tasks import get_task

    bench = load_benchmark("speculative")
    task = get_task("testbed:d=6")
    pair = {"draft": "testbed-draft", "draft_quant": "none", "target": "testbed-target", "target_quant": "none",
            "task": task}
    rows = bench.measure_pair(pair, task.problems(3), [1], [0.0], 3, "float32")
    assert [r["method"] for r in rows] == ["target-only", "speculative", "mtad"]
    for r in rows:
        assert len(r["batch_seconds"]) == len(r["batch_tokens"]) == 3
        lo, hi = r["accuracy_ci"]
        assert 0 <= lo <= r["accuracy"] <= hi <= 1
    for r in rows[1:]:
        lo, hi = r["speedup_ci"]
        assert lo <= r["speedup_vs_target"] <= hi and r["acceptance"] is not None
    assert rows[1]["greedy_mismatches"] == 0  # float32 greedy speculation writes the target's own tokens
