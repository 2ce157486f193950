"""The thinking policy: every alias gives the same budget; conflicts and bad values are 400s naming the field."""

import pytest

from reasonbudget.serve.jobs import split_stream_text
from reasonbudget.serve.thinking import EffortTable, RequestError, thinking_policy

EFFORT = EffortTable()


def policy(body, max_tokens=1000):
    return thinking_policy(body, max_tokens=max_tokens, effort=EFFORT)


@pytest.mark.parametrize("body, source", [
    ({"thinking_token_budget": 64}, "thinking_token_budget"),
    ({"max_thinking_tokens": 64}, "max_thinking_tokens"),
    ({"thinking_budget": 64}, "thinking_budget"),
    ({"thinking_budget_tokens": 64}, "thinking_budget_tokens"),
    ({"reasoning_budget_tokens": 64}, "reasoning_budget_tokens"),
    ({"custom_params": {"thinking_budget": 64}}, "custom_params.thinking_budget"),
    ({"thinking": {"type": "enabled", "budget_tokens": 64}}, "thinking.budget_tokens"),
    ({"reasoning": {"max_tokens": 64}}, "reasoning.max_tokens"),
])
def test_every_alias_gives_the_budget(body, source):
    p = policy(body)
    assert (p.enabled, p.budget, p.source) == (True, 64, source)


def test_the_same_budget_under_two_names_is_accepted():
    assert policy({"thinking_budget": 64, "thinking": {"type": "enabled", "budget_tokens": 64}}).budget == 64


@pytest.mark.parametrize("effort, fraction", [("low", 0.33), ("medium", 0.66), ("high", 0.9)])
def test_effort_is_a_fraction_of_max_tokens(effort, fraction):
    assert policy({"reasoning_effort": effort}, max_tokens=1000).budget == int(fraction * 1000)
    assert policy({"reasoning": {"effort": effort}}, max_tokens=1000).budget == int(fraction * 1000)


@pytest.mark.parametrize("body", [{"thinking": {"type": "disabled"}}, {"reasoning_effort": "none"},
                                  {"chat_template_kwargs": {"enable_thinking": False}}])
def test_thinking_off(body):
    assert policy(body).enabled is False


def test_nothing_given_leaves_the_default():
    p = policy({"chat_template_kwargs": {"enable_thinking": True}})
    assert (p.enabled, p.budget, p.source) == (True, None, None)


@pytest.mark.parametrize("body, param, words", [
    ({"thinking_budget": 10, "max_thinking_tokens": 20}, "max_thinking_tokens", "conflicting thinking budgets"),
    ({"thinking_budget": 10, "reasoning_effort": "low"}, "reasoning_effort", "not both"),
    ({"thinking": {"type": "disabled"}, "thinking_budget": 10}, "thinking_budget", "both off"),
    ({"reasoning_effort": "low", "reasoning": {"effort": "high"}}, "reasoning_effort", "conflicting efforts"),
    ({"thinking_token_budget": 0}, "thinking_token_budget", ">= 1"),
    ({"thinking_token_budget": -5}, "thinking_token_budget", ">= 1"),
    ({"thinking_token_budget": "many"}, "thinking_token_budget", "whole number"),
    ({"thinking_token_budget": True}, "thinking_token_budget", "whole number"),
    ({"thinking": {"type": "enabled"}}, "thinking.budget_tokens", "required"),
    ({"thinking": {"type": "adaptive"}}, "thinking.type", "accepted are enabled, disabled"),
    ({"reasoning_effort": "extreme"}, "reasoning_effort", "accepted are none, minimal, low, medium, high"),
    ({"custom_params": 3}, "custom_params", "must be an object"),
])
def test_bad_or_conflicting_settings_name_the_field(body, param, words):
    with pytest.raises(RequestError, match=words) as e:
        policy(body)
    assert e.value.param == param


@pytest.mark.parametrize("text, final, expected", [
    ("abc Final answer: 42", False, ("abc ", " 42")),
    ("abc Final ans", False, ("abc ", "")),  # a tail that may become the marker is held back
    ("abc Final ans", True, ("abc Final ans", "")),
    ("abc Fx", False, ("abc Fx", "")),
])
def test_stream_split_holds_back_a_partial_marker(text, final, expected):
    assert split_stream_text(text, "Final answer:", False, final) == expected


def test_stream_split_in_answer_is_all_content():
    assert split_stream_text("Final answer: 3", "Final answer:", True, False) == ("", "Final answer: 3")
