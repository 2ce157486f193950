"""Method specs ("name:key=value,..."): typed settings, clear errors, comma-separated lists."""

from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from reasonbudget.engine import SamplingConfig
from reasonbudget.methods import base as methods_base
from reasonbudget.methods.base import make_method
from reasonbudget.methods.spec import _coerce, method_class, parse_method_spec, split_method_list


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
    assert method_class("budget-forcing:max_waits=2").capabilities.sweeps_budgets


def test_method_lists_keep_settings_with_their_method():
    assert split_method_list("plain, budget-guidance:hard_cap=true,strength=2 ,tale,") == [
        "plain", "budget-guidance:hard_cap=true,strength=2", "tale"]


# Coercion of annotations no method config uses yet; small configs defined here, registered only through
# monkeypatch so the global METHODS registry is restored after each test.

@pytest.mark.parametrize("annotation,text,expected", [
    (int | str, "7", 7),
    (int | str, "abc", "abc"),
    (Optional[int | float], "2.5", 2.5),
    (int | float | None, "none", None),
    (Literal["last", "min"], "min", "min"),
    (Literal[1, 2] | None, "2", 2),
    (tuple[float, ...], "1.0 2.0", (1.0, 2.0)),
    (tuple[int, ...], " 3;4 ; 5", (3, 4, 5)),
    (tuple[str, ...], "a b", ("a", "b")),
    (tuple[float, ...] | None, "none", None),
])
def test_coerce_tries_each_union_arm_and_reads_literals_and_tuples(annotation, text, expected):
    got = _coerce(text, annotation, "m:k")
    assert got == expected and type(got) is type(expected)
    if isinstance(got, tuple):
        assert all(type(g) is type(e) for g, e in zip(got, expected))


@pytest.mark.parametrize("annotation,text,fragment", [
    (int | float, "abc", "m:k='abc': expected int or float"),
    (Literal["last", "min"], "max", "m:k='max': accepted are last, min"),
    (Literal["last", "min"], "Last", "accepted are last, min"),
    (tuple[float, ...], "1.0 x", "m:k='1.0 x': expected float values separated by spaces or ';'"),
    (tuple[float, float], "1 2", "m:k cannot be set from a method spec"),
])
def test_coerce_errors_name_what_is_accepted(annotation, text, fragment):
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(")):
        _coerce(text, annotation, "m:k")


@dataclass(frozen=True, kw_only=True)
class _ToyConfig:
    temperatures: tuple[float, ...] = (1.0,)
    how: Literal["last", "min"] = "last"
    size: int | str = 1
    sampling: object = field(default=None)


class _Toy:
    name = "toy-spec"
    config_type = _ToyConfig


def test_tuple_values_fit_inside_one_setting_of_a_spec(monkeypatch):
    monkeypatch.setitem(methods_base.METHODS, _Toy.name, _Toy)
    assert parse_method_spec("toy-spec:temperatures=1.0 2.0,how=min,size=big") == (
        "toy-spec", {"temperatures": (1.0, 2.0), "how": "min", "size": "big"})
    assert parse_method_spec("toy-spec:temperatures=0.5;1;2,size=3")[1] == {"temperatures": (0.5, 1.0, 2.0), "size": 3}
    assert split_method_list("plain,toy-spec:temperatures=1.0 2.0,how=min") == [
        "plain", "toy-spec:temperatures=1.0 2.0,how=min"]


def test_method_settings_take_tuples_and_literal_choices():
    from reasonbudget.methods.spec import parse_method_spec

    assert parse_method_spec("parallel-tempering:temperatures=1.0 2.0 4.0")[1] == {"temperatures": (1.0, 2.0, 4.0)}
    assert make_method("parallel-tempering:temperatures=1 3", SamplingConfig()).config.taus() == [1.0, 3.0]
    with pytest.raises(ValueError, match="accepted are argmax, sample, vote"):
        parse_method_spec("particle-filter:selection=best")
    with pytest.raises(ValueError, match="accepted are last, min, prod, mean, model"):
        parse_method_spec("beam-search:aggregation=max")
