"""Budget forcing: the pure state machine, the controller on scripted models, and the embedded model."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from reasonbudget.engine import BudgetConfig, BudgetState, Engine, SamplingConfig
from reasonbudget.engine.budget import step
from reasonbudget.methods import METHODS
from reasonbudget.methods.budget import BudgetForcingConfig
from reasonbudget.models import INSTRUCT, THINKING, build_prompt
from tests.helpers import runtime_from_hf, scripted_model, tiny_hf_model

events = st.lists(st.sampled_from(["token", "token", "token", "close", "eos"]), max_size=200)


@settings(max_examples=300, deadline=None)
@given(events, st.integers(1, 50), st.integers(0, 60), st.integers(0, 5))
def test_thinking_never_exceeds_budget_and_answer_phase_is_final(evs, budget, minimum, waits):
    cfg = BudgetConfig(max_thinking_tokens=budget, min_thinking_tokens=min(minimum, budget), max_waits=waits)
    state, seen_answer, num_waits = BudgetState(), False, 0
    for ev in evs:
        state, decision = step(state, ev, cfg)
        assert state.thinking_tokens <= budget
        num_waits += decision == "wait_instead"
        if seen_answer:
            assert state.phase == "answer" and decision in ("keep", "stop")
        seen_answer = state.phase == "answer"
        if decision == "keep_then_close":
            assert state.thinking_tokens == budget
    assert num_waits <= waits


def test_close_below_minimum_becomes_wait_then_allowed():
    cfg = BudgetConfig(max_thinking_tokens=10, min_thinking_tokens=3, max_waits=1)
    s, d = step(BudgetState(thinking_tokens=1), "close", cfg)
    assert d == "wait_instead" and s.phase == "thinking" and s.waits == 1
    s, d = step(s, "close", cfg)  # waits exhausted: the close is accepted
    assert d == "keep" and s.phase == "answer"


def test_eos_while_thinking_forces_the_close():
    s, d = step(BudgetState(thinking_tokens=4), "eos", BudgetConfig(max_thinking_tokens=10))
    assert d == "close_instead" and s.phase == "answer"


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="max_thinking_tokens"):
        BudgetConfig(max_thinking_tokens=0)
    with pytest.raises(ValueError, match="min_thinking_tokens"):
        BudgetConfig(min_thinking_tokens=-1)


def _script(text_after_prompt):
    """A model that writes `text_after_prompt` after the prompt '>', then EOS forever."""

    def policy(prefix):
        generated = list(prefix[1:])
        if generated == script[: len(generated)] and len(generated) < len(script):
            return script[len(generated)]
        return 0

    model = scripted_model(policy)
    script = list(model.encode(text_after_prompt))
    return model


def _forcing(model, budget, **kw):
    cfg = BudgetForcingConfig(**kw)
    return METHODS["budget-forcing"](cfg).run(Engine(model), [model.encode(">")], budget=budget,
                                               generator=torch.Generator().manual_seed(0))[0]


def test_budget_reached_forces_the_end_and_an_answer_follows():
    model = _script("x" * 500)
    r = _forcing(model, 17)
    assert r.usage.thinking_tokens == 17 and r.trace["forced_close"]
    assert r.usage.forced_tokens == len(model.encode(model.profile.forcing))
    assert r.answer and r.thinking.startswith("x" * 17)


def test_natural_close_within_budget_is_kept():
    model = _script("abc</think>42")
    r = _forcing(model, 50)
    assert r.thinking == "abc" and r.answer == "42"
    assert r.usage.thinking_tokens == 3 and r.usage.forced_tokens == 0 and not r.trace["forced_close"]


def test_eos_inside_thinking_still_yields_an_answer():
    model = _script("ab")  # then EOS while thinking, and EOS again right after the forced close
    r = _forcing(model, 50)
    assert r.trace["forced_close"] and r.usage.thinking_tokens == 2
    assert r.answer.strip() != "" and r.usage.answer_tokens >= 1


def test_minimum_budget_replaces_early_close_with_wait():
    model = _script("ab</think>1")
    r = _forcing(model, 40, min_thinking_tokens=10, max_waits=2)
    assert r.trace["waits"] == 2
    assert r.thinking.count("Wait") == 2


def test_minimum_budget_with_a_multi_token_marker_rolls_the_marker_back():
    model = _script("ab\nFinal answer: 7")
    model.profile = INSTRUCT
    r = _forcing(model, 40, min_thinking_tokens=30, max_waits=1)
    assert r.trace["waits"] == 1
    assert "Wait" in r.thinking and "Final answer" not in r.thinking


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_random_model_many_budgets_sampled(arch):
    model = runtime_from_hf(tiny_hf_model(arch, seed=3))
    prompts = [model.encode(f"q{i}: ") + (1,) for i in range(6)]  # prompts end inside <think>
    for budget in (1, 2, 3, 7, 20, 64):
        cfg = BudgetForcingConfig(sampling=SamplingConfig(temperature=1.0), max_answer_tokens=8)
        results = METHODS["budget-forcing"](cfg).run(Engine(model), prompts, budget=budget,
                                                       generator=torch.Generator().manual_seed(budget))
        for r in results:
            assert r.usage.thinking_tokens <= budget
            assert r.usage.answer_tokens >= 1 and r.trace["answer_has_text"]


@pytest.mark.slow
def test_smollm2_thinking_never_exceeds_budget(smollm):
    questions = ["What is 17 + 25?", "A train travels 60 km in 1.5 hours. What is its average speed?",
                 "Tom has 3 boxes of 12 pencils. He gives away 10. How many are left?",
                 "What is half of 48?"]
    prompts = [build_prompt(smollm, q) for q in questions]
    engine = Engine(smollm)
    for budget in (1, 4, 9, 24, 48):
        results = METHODS["budget-forcing"]().run(engine, prompts, budget=budget,
                                                   generator=torch.Generator().manual_seed(0))
        for r in results:
            assert r.usage.thinking_tokens <= budget
            assert r.answer.strip(), f"empty answer at budget {budget}"


def test_markdown_after_the_marker_is_not_the_whole_answer():
    """'**Final answer:**' then a newline: the answer line stop waits for a letter or digit, so the answer is
    the value on the next line, not '**'."""
    model = _script("ab\n**Final answer:**\n  \\boxed{18}\nmore text")
    model.profile = INSTRUCT
    r = _forcing(model, 40)
    assert r.answer.endswith("\\boxed{18}") and "more" not in r.answer
    # the text-level rule (remote methods) ends the answer where the engine does
    assert INSTRUCT.cut_answer("**\n  \\boxed{18}\nmore text") == r.answer


def test_cut_answer_waits_for_a_value_then_stops_at_the_answer_stop():
    assert INSTRUCT.cut_answer(" 18\nmore") == "18"
    assert INSTRUCT.cut_answer("**\n\n$\\boxed{7}$\nnext") == "**\n\n$\\boxed{7}$"
    assert INSTRUCT.cut_answer(" **\n") == "**"  # no value at all: the text as it is
    assert THINKING.cut_answer("The answer is 3.\nMore.") == "The answer is 3.\nMore."  # no answer stop


def _wrapup_model(after_final: str):
    """Writes 'x' while thinking; after '**Final Answer**' writes `after_final` then 'y' forever; after the close
    marker writes '7' then EOS."""
    model = scripted_model(lambda prefix: 0)

    def policy(prefix):
        text = model.decode(list(prefix[1:]))
        if "</think>" in text:
            return model.encode("7")[0] if not text.split("</think>")[-1] else 0
        if "**Final Answer**" in text:
            tail = text.split("**Final Answer**")[-1]
            return model.encode(after_final[len(tail)] if len(tail) < len(after_final) else "y")[0]
        return model.encode("x")[0]

    model.backend.policy = policy
    return model


def test_final_answer_style_wraps_up_until_a_blank_line_then_closes():
    model = _wrapup_model(" 42\n\nmore")
    r = _forcing(model, 10, style="final-answer")
    assert r.usage.thinking_tokens == 10 and r.trace["forced_close"]
    assert r.thinking == "x" * 10 + "\n**Final Answer** 42" and r.answer == "7"  # the blank line left out
    assert r.trace["wrapup_tokens"] == 3
    forced = len(model.encode("\n**Final Answer**")) + len(model.encode("</think>"))
    assert r.usage.forced_tokens == forced
    assert r.trace["paper_thinking_tokens"] == 10 + len(model.encode("\n**Final Answer**")) + 3


def test_final_answer_style_caps_the_wrap_up_at_another_budget():
    model = _wrapup_model("")
    r = _forcing(model, 6, style="final-answer")
    assert r.usage.thinking_tokens == 6 and r.trace["wrapup_tokens"] == 6
    assert r.thinking == "x" * 6 + "\n**Final Answer**" + "y" * 6 and r.answer == "7"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["token", "token", "close", "eos", "wrapup_end"]), max_size=120), st.integers(1, 30))
def test_wrap_up_keeps_thinking_within_the_budget_and_ends(evs, budget):
    cfg = BudgetConfig(max_thinking_tokens=budget, wrapup=True)
    state = BudgetState()
    for ev in evs:
        if ev == "wrapup_end" and state.phase != "wrapup":
            ev = "token"
        state, decision = step(state, ev, cfg)
        assert state.thinking_tokens <= budget and state.wrapup_tokens <= budget
        if decision == "keep_then_wrapup":
            assert state.phase == "wrapup" and state.thinking_tokens == budget
