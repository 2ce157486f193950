"""TALE-PT: budget-optimal answers from TALE's search, then SFT on the plain question."""

import pytest

from reasonbudget.models import load_model
from reasonbudget.models.registry import testbed_checkpoints as checkpoints_dir  # not test_*: pytest would collect it
from reasonbudget.testbed.problems import generate
from reasonbudget.testbed.traces import final_answer


def test_budget_optimal_answers_and_sft(tmp_path):
    from reasonbudget.training.tale_pt import SFTConfig, budget_optimal_examples, sft

    target = load_model("testbed-target")
    problems = [p for d in (2, 5, 8) for p in generate(3, difficulty=d, seed=6_000_123 + d)]
    right = lambda i, a: final_answer(a) == problems[i].answer  # noqa: E731
    examples = budget_optimal_examples(target, [p.question for p in problems], right, layout="ours", max_thinking_tokens=256)
    assert len(examples) >= 6  # the committed target gets most of these right
    shorter = 0
    for e in examples:
        p = next(p for p in problems if p.question == e.question)
        text = target.decode(e.completion)
        assert final_answer(text) == p.answer and e.completion[-1] in target.eos_ids  # a right, finished answer
        assert e.tokens <= e.vanilla_tokens and (e.budget < e.vanilla_tokens) == (e.tokens < e.vanilla_tokens)
        shorter += e.tokens < e.vanilla_tokens
    assert shorter >= 1
    stats = sft(checkpoints_dir() / "target", examples, tmp_path, SFTConfig(epochs=1, batch_size=4))
    assert stats["examples"] == len(examples) and len(stats["history"]) == 1
    tuned = load_model(str(tmp_path))
    assert tuned.profile.name == "testbed" and (tmp_path / "model.safetensors").stat().st_size < 4_000_000  # bf16


def test_sft_without_examples_says_why(tmp_path):
    from reasonbudget.training.tale_pt import SFTConfig, sft

    with pytest.raises(ValueError, match="nothing to train on"):
        sft(checkpoints_dir() / "target", [], tmp_path, SFTConfig())
