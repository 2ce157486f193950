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
