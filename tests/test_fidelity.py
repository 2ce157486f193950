"""Fidelity fixes from the line-by-line audit against the specs (issue: budget control items 1-2), each a test
that failed before its fix."""

import torch

from reasonbudget.engine import BudgetConfig, Engine, SamplingConfig
from reasonbudget.methods import make_method
from reasonbudget.models.profiles import THINKING
from tests.helpers import char_tokenizer, runtime_from_hf, tiny_hf_model

TOK = char_tokenizer()
PROMPTS = [tuple(TOK.encode("What is 2+3?<think>")), tuple(TOK.encode("Say hi<think>"))]


def rambler(context: int):
    """A tiny random thinking model that never closes thinking on its own (greedy)."""
    hf = tiny_hf_model("llama", seed=3)
    hf.config.max_position_embeddings = context
    return runtime_from_hf(hf, profile=THINKING)


def test_an_unlimited_thinking_budget_still_ends_with_an_answer_within_the_context():
    """Soft budget guidance runs with no thinking cap; a trace that never closes used to stop at the row's
    limit with finish=length, no close and an empty answer. Now the close is forced where the answer still fits."""
    model = rambler(256)
    cfg = BudgetConfig(max_thinking_tokens=None, max_answer_tokens=16)
    for r in Engine(model).generate(PROMPTS, [cfg] * 2, SamplingConfig(), torch.Generator()):
        assert r.trace["forced_close"] and r.answer and r.usage.answer_tokens >= 1
        assert r.usage.prompt_tokens + r.usage.completion_tokens <= 256


def test_soft_budget_guidance_answers_on_long_thinking(monkeypatch):
    import reasonbudget.methods.budget.guidance as guidance
    from tests.test_guidance import EndsSoonPredictor

    class NeverEnds(EndsSoonPredictor):  # predicts long thinking everywhere: guidance never pushes the end
        def forward(self, states):
            shape, rate = super().forward(states)
            return shape.fill_(50.0), rate

    model = rambler(256)
    predictor = NeverEnds()
    predictor.cfg = type("Cfg", (), {"min_rate": 0.0})()
    monkeypatch.setattr(guidance, "cached_predictor", lambda path, m: predictor)
    monkeypatch.setattr(guidance, "hidden_layer_ids", lambda m: (0, 1, 2))
    method = make_method("budget-guidance:max_answer_tokens=16", SamplingConfig())
    for r in method.run(Engine(model), PROMPTS, budget=10_000, generator=torch.Generator()):
        assert r.finish_reason != "length" or r.answer
        assert r.answer and r.trace["forced_close"]


def test_answers_are_capped_by_the_profile_not_at_256_tokens():
    """NoThinking's answer is the whole solution; it used to stop at 256 tokens whatever the model."""
    model = rambler(1024)
    (r,) = make_method("nothinking", SamplingConfig()).run(Engine(model), PROMPTS[:1], budget=None,
                                                          generator=torch.Generator())
    assert r.usage.answer_tokens > 256  # the thinking profile's cap (2048) or the context ends it
    assert make_method("nothinking:max_answer_tokens=40", SamplingConfig()).run(
        Engine(model), PROMPTS[:1], budget=None, generator=torch.Generator())[0].usage.answer_tokens <= 40


def test_the_noisy_oracle_draws_its_noise_from_each_run_seed():
    """Every "noisy PRM" result used to be one noise draw (seed 0 for every run)."""
    from reasonbudget.methods.scaling.common import SearchConfig, setup
    from reasonbudget.models import load_model

    model = load_model("testbed-target")
    engine = Engine(model)
    from reasonbudget.tasks import get_task

    task = get_task("testbed:d=6")
    prompts = [task.prompt(model, p) for p in task.problems(2)]
    cfg = SearchConfig(prm="oracle", prm_noise=0.2)
    seeds = [setup(cfg, engine, prompts, [torch.Generator().manual_seed(s), torch.Generator().manual_seed(s + 7)],
                   method="test").scorer.prm.seed for s in (1, 2)]
    assert seeds[0] != seeds[1] and len(set(seeds[0].values())) == 2
    from reasonbudget.rewards.base import StepSequence

    item = StepSequence(prompts[0].question, tuple(f"{i} + 1 = {i + 1}" for i in range(40)))
    flips = [[float(x) for x in setup(cfg, engine, prompts[:1], [torch.Generator().manual_seed(s)],
                                      method="test").scorer.prm.score_steps([item])[0]] for s in (1, 2)]
    assert flips[0] != flips[1]  # another run, another draw of the label noise
