"""speculative.py end to end on the testbed pair, tiny: the JSON keys the speculative issue names, and MTAD
measured against speculative decoding in the same run."""

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
