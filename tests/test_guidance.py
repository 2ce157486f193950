"""Budget guidance as an engine controller: where it guides, what it does under tight and loose budgets, the
hard cap, and the method's loading path (fingerprinted predictor files)."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from reasonbudget.engine.budget import BudgetConfig
from reasonbudget.engine.engine import Engine
from reasonbudget.engine.sampling import SamplingConfig
from reasonbudget.methods.base import make_method
from reasonbudget.methods.budget.guidance import GuidanceController, PredictorBatch, newline_table
from reasonbudget.predictors.length import LengthPredictorConfig, PredictorError, hidden_layer_ids
from reasonbudget.predictors.train_length import PredictorTrainConfig, TraceTokens, train_length_predictor
from tests.helpers import VOCAB, char_tokenizer, runtime_from_hf, tiny_hf_model

TOK = char_tokenizer()
END = TOK.convert_tokens_to_ids("</think>")
PROMPTS = [tuple(TOK.encode("What is 2+3?<think>")), tuple(TOK.encode("Say hi<think>"))]


class EndsSoonPredictor(nn.Module):
    """Says `</think>` ends thinking at once (L ~ 1) and every other token leaves ~130 tokens to go."""

    def forward(self, states):
        shape = torch.full((states.shape[0], VOCAB), 50.0)
        rate = torch.full((states.shape[0], VOCAB), 10.0)
        shape[:, END] = 8.0
        return shape, rate


class CountingBatch(PredictorBatch):
    calls: list

    def run(self, rows):
        self.calls = getattr(self, "calls", []) + [len(rows)]
        super().run(rows)


def guided_run(model, budget, *, hard_cap=False, max_thinking=60):
    batch, table = CountingBatch(EndsSoonPredictor(), hidden_layer_ids(model)), newline_table(model)
    ctrls = []

    def steer(row_budget):
        ctrls.append(GuidanceController(batch, table, budget, row_budget, 1.0))
        return ctrls[-1]

    cfg = BudgetConfig(max_thinking_tokens=budget if hard_cap else max_thinking, max_answer_tokens=8)
    results = Engine(model).generate(PROMPTS, [cfg] * len(PROMPTS), SamplingConfig(), torch.Generator(), steering=steer)
    return results, batch


def test_a_tight_budget_ends_thinking_at_the_first_guided_step():
    model = runtime_from_hf(tiny_hf_model("llama"))
    results, batch = guided_run(model, budget=3)
    assert batch.calls == [2]  # both rows' first thinking token: one predictor call
    for r in results:
        assert r.usage.thinking_tokens == 0 and r.trace["guided_steps"] == 1 and r.answer
        assert r.trace["fallback_steps"] == 0


def test_a_loose_budget_changes_nothing():
    model = runtime_from_hf(tiny_hf_model("llama"))
    cfg = BudgetConfig(max_thinking_tokens=60, max_answer_tokens=8)
    plain = Engine(model).generate(PROMPTS, [cfg] * len(PROMPTS), SamplingConfig(), torch.Generator())
    guided, _ = guided_run(model, budget=10**6)
    assert [g.tokens for g in guided] == [p.tokens for p in plain]


def test_guides_the_first_thinking_token_and_line_starts_only():
    model = runtime_from_hf(tiny_hf_model("llama"))
    row = SimpleNamespace(state=SimpleNamespace(phase="thinking", thinking_tokens=0))
    ctrl = GuidanceController(PredictorBatch(EndsSoonPredictor(), hidden_layer_ids(model)), newline_table(model), 10,
                              row, 1.0)
    hidden = {i: torch.zeros(64) for i in hidden_layer_ids(model)}
    guided = []
    for text in ["a", "b", "\n", "c", "\n"]:
        before = ctrl.guided_steps
        ctrl.process_logits(torch.zeros(VOCAB), hidden)
        guided.append(ctrl.guided_steps > before)
        ctrl.on_token(TOK.convert_tokens_to_ids(text), forced=False)
    assert guided == [True, False, False, True, False]
    row.state.phase = "answer"  # after the end of thinking nothing is guided, even at a line start
    ctrl.process_logits(torch.zeros(VOCAB), hidden)
    assert ctrl.guided_steps == 2


def test_hard_cap_bounds_thinking():
    model = runtime_from_hf(tiny_hf_model("qwen2"))
    results, _ = guided_run(model, budget=5, hard_cap=True)
    assert all(r.usage.thinking_tokens <= 5 and r.answer for r in results)


def test_method_loads_its_predictor_and_refuses_bad_ones(tmp_path):
    model = runtime_from_hf(tiny_hf_model("llama"))
    traces = [TraceTokens(tuple(TOK.encode("Q<think>ab\ncd\n</think>A")), prompt_len=2, thinking_len=6)] * 2
    cfg = LengthPredictorConfig(lm_hidden_size=64, num_states=3, vocab_size=VOCAB, width=16, layers=1, heads=2,
                                ffn=32, dropout=0.0)
    predictor, _ = train_length_predictor(model, traces, cfg, PredictorTrainConfig())
    predictor.save(tmp_path / "pred")
    method = make_method("budget-guidance", SamplingConfig(), predictor=str(tmp_path / "pred"), hard_cap=True,
                         max_answer_tokens=8)
    results = method.run(Engine(model), PROMPTS, budget=6, generator=torch.Generator())
    assert all(r.usage.thinking_tokens <= 6 and r.trace["guided_steps"] >= 1 for r in results)
    alone = [method.run(Engine(model), [p], budget=6, generator=torch.Generator())[0] for p in PROMPTS]
    assert [r.tokens for r in results] == [r.tokens for r in alone]  # batched predictor calls change nothing
    other = runtime_from_hf(tiny_hf_model("llama", seed=3), name="other")
    with pytest.raises(PredictorError, match="trained for another model"):
        method.run(Engine(other), PROMPTS, budget=6, generator=torch.Generator())
    missing = make_method("budget-guidance", SamplingConfig(), predictor=str(tmp_path / "none"))
    with pytest.raises(PredictorError, match="missing"):
        missing.run(Engine(model), PROMPTS, budget=6, generator=torch.Generator())
    with pytest.raises(ValueError, match="budget >= 1"):
        method.run(Engine(model), PROMPTS, budget=0, generator=torch.Generator())
