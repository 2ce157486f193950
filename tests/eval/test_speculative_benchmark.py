"""speculative.py: a malformed --pairs refused before any model loads; end to end on the testbed pair, tiny: the
JSON keys the speculative issue names, and MTAD measured against speculative decoding in the same run."""

import json

import pytest

from tests.helpers import load_benchmark

ISSUE_KEYS = {"method", "draft", "target", "batch", "temperature", "tok_s", "speedup_vs_target", "acceptance",
              "block_efficiency", "accuracy", "energy_proxy"}


def test_speculative_json_has_the_issues_keys_and_greedy_speculation_matches_the_target(tmp_path, capsys):
    bench = load_benchmark("speculative")
    out = tmp_path / "spec.json"
    bench.main(["--pairs", "testbed", "--problems", "2", "--batches", "1", "--temperatures", "0", "--threads", "1",
                "--json", "--out", str(out)])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result == json.loads(out.read_text())
    rows = {r["method"]: r for r in result["rows"]}
    assert set(rows) == {"target-only", "speculative", "mtad"}
    for r in rows.values():
        assert ISSUE_KEYS <= r.keys() and r["tok_s"] > 0 and r["target"].startswith("testbed-target")
    assert rows["speculative"]["greedy_mismatches"] == 0
    assert 0 < rows["speculative"]["acceptance"] <= 1 and rows["speculative"]["block_efficiency"] >= 1
    assert rows["mtad"]["speedup_vs_speculative"] > 0 and "speedup_vs_speculative" not in rows["speculative"]


def test_methods_option_skips_mtad_and_refuses_unknown_names(tmp_path, capsys):
    bench = load_benchmark("speculative")
    bench.main(["--pairs", "testbed", "--problems", "1", "--batches", "1", "--temperatures", "1", "--threads", "1",
                "--methods", "speculative", "--json"])
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rows"]
    assert [r["method"] for r in rows] == ["target-only", "speculative"]
    with pytest.raises(SystemExit) as stop:
        bench.main(["--pairs", "testbed", "--methods", "speculative,eagle"])
    assert stop.value.code == 2
    assert "expected a comma-separated subset of speculative,mtad" in capsys.readouterr().err


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


def test_a_journaled_run_resumes_without_generating_again_and_a_cut_line_reruns_its_group(tmp_path, capsys,
                                                                                          monkeypatch):
    bench = load_benchmark("speculative")
    journal = tmp_path / "spec.jsonl"
    argv = ["--pairs", "testbed", "--problems", "3", "--batches", "2", "--temperatures", "0", "--threads", "1",
            "--methods", "speculative", "--json", "--resume", str(journal)]
    bench.main(argv)
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rows"]
    lines = journal.read_text().splitlines()
    c_line = lines[0] + "\n"
    lines = lines[1:]  # the first holds the step-cost ratio c
    assert len(lines) == 2  # batches of 2 problems: 0-1 and 2-2, each with both methods timed back to back
    assert all(set(json.loads(ln)["methods"]) == {"target-only", "speculative"} for ln in lines)

    def no_generation(*args, **kwargs):
        raise AssertionError("a journaled group ran again")

    real_run_batch = bench.run_batch
    monkeypatch.setattr(bench, "run_batch", no_generation)
    bench.main(argv)
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rows"] == first

    journal.write_text(c_line + lines[0] + "\n" + lines[1][: len(lines[1]) // 2])  # a kill cut the last line
    calls = []
    monkeypatch.setattr(bench, "run_batch", lambda *a, **k: calls.append(a[3]) or real_run_batch(*a, **k))
    bench.main(argv)
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rows"]
    assert calls == [2, 2]  # only the cut group (problem 2), once per method
    assert [r["tokens"] for r in rows] == [r["tokens"] for r in first]
    monkeypatch.setattr(bench, "run_batch", no_generation)  # the rerun group was journaled on a line of its own
    bench.main(argv)
    assert [r["tokens"] for r in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rows"]] == \
        [r["tokens"] for r in first]
