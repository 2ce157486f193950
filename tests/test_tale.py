"""TALE-EP end to end on a scripted model: the estimate is parsed, capped, written into the answering prompt,
and both calls are counted; an unparseable estimate falls back to the vanilla prompt."""

import pytest
import torch

from reasonbudget.engine.engine import Engine
from reasonbudget.engine.sampling import SamplingConfig
from reasonbudget.methods.base import make_method
from reasonbudget.methods.budget.tale_text import budget_prompt, estimate_prompt
from reasonbudget.models.registry import build_prompt
from tests.helpers import char_tokenizer, scripted_model

TOK = char_tokenizer()
QUESTIONS = ["What is 2+3?", "Name a colour."]


def writes_forever(text):
    ids = [TOK.convert_tokens_to_ids(ch) for ch in text]
    return scripted_model(lambda prefix: ids[len(prefix) % len(ids)])


def run_tale(model, budget=None):
    method = make_method("tale", SamplingConfig(), max_estimate_tokens=10, max_thinking_tokens=6,
                         max_answer_tokens=4)
    return method.run(Engine(model), [build_prompt(model, q) for q in QUESTIONS], budget=budget,
                      generator=torch.Generator())


def test_the_estimate_goes_into_the_prompt_and_both_calls_count():
    model = writes_forever("[[7]]")
    for budget, expected in ((None, 7), (5, 5)):  # a given budget caps the estimate
        results = run_tale(model, budget)
        for q, r in zip(QUESTIONS, results):
            assert r.trace["estimate"] == expected and "[[7]]" in r.trace["estimate_text"]
            prefill = len(model.encode(model.profile.nothinking))  # the estimate is answered without thinking
            prompts = len(build_prompt(model, estimate_prompt(q))) + len(build_prompt(model, budget_prompt(q, expected)))
            assert r.usage.prompt_tokens == prompts + prefill
            assert r.usage.answer_tokens > 4  # the estimate's reply is paid for too


def test_unparseable_estimate_falls_back_to_the_vanilla_prompt():
    model = writes_forever("no idea ")
    for q, r in zip(QUESTIONS, run_tale(model)):
        assert r.trace["estimate"] is None
        vanilla = len(build_prompt(model, estimate_prompt(q))) + len(build_prompt(model, budget_prompt(q, None)))
        assert r.usage.prompt_tokens == vanilla + len(model.encode(model.profile.nothinking))


def test_prompts_without_their_question_are_refused():
    model = writes_forever("[[7]]")
    method = make_method("tale", SamplingConfig())
    with pytest.raises(ValueError, match="build_prompt"):
        method.run(Engine(model), [tuple(TOK.encode("hi"))], budget=None, generator=torch.Generator())
