"""decode_speed.py end to end on the embedded model, tiny: the JSON keys the engine issue names, and every format."""

import json

import pytest

from reasonbudget.models import native
from tests.helpers import load_benchmark


@pytest.mark.skipif(not native.available(), reason=f"our kernels: {native.unavailable_reason()}")
def test_decode_speed_json_has_the_issues_keys_and_one_row_per_format_and_batch(tmp_path, capsys):
    bench = load_benchmark("decode_speed")
    out = tmp_path / "speed.json"
    bench.main(["--models", "smollm2-135m", "--weights", "bf16w,int8", "--batches", "1,2", "--tokens", "3",
                "--reps", "1", "--no-hf", "--json", "--out", str(out)])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result == json.loads(out.read_text())
    assert {"runs", "hf", "llama_cpp", "bandwidth_gb_s"} <= result.keys()
    rows = {(r["weights"], r["batch"]): r for r in result["runs"]}
    assert set(rows) == {("bf16w", 1), ("bf16w", 2), ("int8", 1), ("int8", 2)}
    for r in rows.values():
        assert r["model"] == "smollm2-135m" and r["tok_s"] > 0 and 0 < r["fraction_of_bound"]
    assert rows[("bf16w", 1)]["activations"] == "float32"
    # bf16 weights read twice the bytes of int8 ones (scales aside)
    assert 1.8 < rows[("bf16w", 1)]["weight_mb_per_token"] / rows[("int8", 1)]["weight_mb_per_token"] < 2.05
