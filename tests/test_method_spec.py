"""Method specs ("name:key=value,..."): typed settings, clear errors, comma-separated lists."""

import pytest

from reasonbudget.engine import SamplingConfig
from reasonbudget.methods.base import make_method
from reasonbudget.methods.spec import method_class, parse_method_spec, split_method_list


def test_settings_are_typed_from_the_config():
    name, opts = parse_method_spec("budget-guidance:hard_cap=true,strength=2,min_rate=none,max_answer_tokens=9")
    assert name == "budget-guidance"
    assert opts == {"hard_cap": True, "strength": 2.0, "min_rate": None, "max_answer_tokens": 9}
    assert isinstance(opts["strength"], float) and isinstance(opts["max_answer_tokens"], int)
    assert parse_method_spec("plain") == ("plain", {})


@pytest.mark.parametrize("spec,fragment", [
    ("magic", "unknown method 'magic'; available:"),
    ("budget-guidance:nope=1", "no setting 'nope'; accepted: predictor, hard_cap"),
    ("budget-guidance:hard_cap", "is not key=value"),
    ("budget-guidance:hard_cap=perhaps", "accepted are true or false"),
    ("budget-guidance:strength=strong", "expected float"),
    ("tale:max_estimate_tokens=1.5", "expected int"),
    ("plain:sampling=greedy", "no setting 'sampling'"),
])
def test_bad_specs_say_what_is_accepted(spec, fragment):
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace("'", "'")):
        parse_method_spec(spec)


def test_make_method_applies_spec_then_keyword_overrides():
    m = make_method("budget-guidance:hard_cap=true,strength=3", SamplingConfig(temperature=0.5), strength=1.5)
    assert m.config.hard_cap is True and m.config.strength == 1.5 and m.config.sampling.temperature == 0.5
    with pytest.raises(ValueError, match="strength=-1.0: must be > 0"):  # the config's own validation still runs
        make_method("budget-guidance:strength=-1", SamplingConfig())
    assert method_class("budget-forcing:max_waits=2").uses_budget


def test_method_lists_keep_settings_with_their_method():
    assert split_method_list("plain, budget-guidance:hard_cap=true,strength=2 ,tale,") == [
        "plain", "budget-guidance:hard_cap=true,strength=2", "tale"]
