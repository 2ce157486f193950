"""serve_speculation.py end to end on the testbed pair: every request keeps its budget and answers, the
speculating requests used the server's draft and the others turned it off."""

import json

import pytest

from tests.helpers import load_benchmark


def test_budgeted_requests_with_and_without_the_servers_draft(tmp_path, capsys):
    out = tmp_path / "serve_spec.json"
    load_benchmark("serve_speculation").main(["--target", "testbed-target", "--draft", "testbed-draft",
                                              "--draft-quant", "none", "--problems", "2", "--budget", "12",
                                              "--threads", "1", "--json", "--out", str(out)])
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report == json.loads(out.read_text())
    spec, base = report["rows"]["speculative"], report["rows"]["target-only"]
    for row in (spec, base):
        assert row["over_budget"] == row["no_answer"] == 0 and 0 < row["max_thinking_tokens"] <= 12
    assert "draft=testbed-draft" in spec["method"] and "draft=none" in base["method"]
    assert spec["acceptance"] is not None and base["acceptance"] is None
    lo, hi = report["speedup_ci"]
    assert lo <= report["speedup"] <= hi and report["settings"]["task"].startswith("testbed")


def test_bad_sizes_are_usage_errors(capsys):
    with pytest.raises(SystemExit) as stop:
        load_benchmark("serve_speculation").main(["--budget", "0"])
    assert stop.value.code == 2 and "--budget" in capsys.readouterr().err
