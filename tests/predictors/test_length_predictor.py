"""The remaining-length predictor network: the training path equals the full-vocabulary path, files round-trip,
a predictor for other weights is refused, and training lowers the Gamma NLL on a tiny model."""

import pytest
import torch

from reasonbudget.predictors.length import (LengthPredictor, LengthPredictorConfig, PredictorError,
                                            hidden_layer_ids, load_predictor)
from reasonbudget.predictors.train_length import (PredictorTrainConfig, TraceTokens, lm_states,
                                                  train_length_predictor)
from tests.helpers import VOCAB, char_tokenizer, runtime_from_hf, tiny_hf_model

SMALL = dict(width=32, layers=1, heads=2, ffn=64, dropout=0.0)


@pytest.mark.parametrize("rank", [None, 8])
def test_gathered_rows_equal_the_full_vocabulary_heads(rank):
    torch.manual_seed(0)
    p = LengthPredictor(LengthPredictorConfig(lm_hidden_size=16, num_states=3, vocab_size=50, head_rank=rank,
                                              **SMALL)).eval()
    with torch.no_grad():
        for param in p.parameters():
            param.add_(torch.randn_like(param) * 0.2)  # CLS starts at zero: make every weight matter
    states, nxt = torch.randn(6, 3, 16), torch.tensor([0, 5, 49, 7, 7, 13])
    shape, rate = p(states)
    g_shape, g_rate = p.gather(states, nxt)
    rows = torch.arange(6)
    assert torch.allclose(shape[rows, nxt], g_shape, atol=1e-5) and torch.allclose(rate[rows, nxt], g_rate, atol=1e-5)
    assert torch.all(shape > 0) and torch.all(rate > 0)


def test_lm_states_are_all_layers_and_ignore_padding():
    model = runtime_from_hf(tiny_hf_model("llama"))
    a, b = (5, 9, 30, 31, 40), (5, 9, 30)
    both = lm_states(model, [a, b])
    assert both.shape == (2, 5, len(hidden_layer_ids(model)), 64)
    assert torch.allclose(both[1, :3], lm_states(model, [b])[0], atol=1e-5)


def test_save_load_and_refusals(tmp_path):
    model = runtime_from_hf(tiny_hf_model("llama", seed=0))
    other = runtime_from_hf(tiny_hf_model("llama", seed=1), name="other")
    tok = char_tokenizer()
    traces = [TraceTokens(tuple(tok.encode("Q<think>abc</think>A")), prompt_len=2, thinking_len=3)]
    cfg = LengthPredictorConfig(lm_hidden_size=64, num_states=3, vocab_size=VOCAB, **SMALL)
    pred, _ = train_length_predictor(model, traces, cfg, PredictorTrainConfig())
    assert 0 < pred.cfg.min_rate <= 10.0  # calibrated on the training traces, capped at the reference value
    pred.save(tmp_path / "p")
    again = load_predictor(tmp_path / "p", model)
    states = torch.randn(2, 3, 64)
    assert torch.equal(again(states)[0], pred(states)[0])
    with pytest.raises(PredictorError, match="trained for another model"):
        load_predictor(tmp_path / "p", other)
    with pytest.raises(PredictorError, match="missing length_predictor.json"):
        load_predictor(tmp_path / "nothing-here", model)


def test_training_lowers_the_gamma_nll():
    model = runtime_from_hf(tiny_hf_model("llama"))
    tok = char_tokenizer()
    traces = []
    for n in range(1, 9):  # the prompt digit tells the thinking length
        ids = tok.encode(f"{n}<think>" + "ab" * (4 * n) + "</think>x")
        traces += [TraceTokens(tuple(ids), prompt_len=2, thinking_len=8 * n)] * 4
    cfg = LengthPredictorConfig(lm_hidden_size=64, num_states=3, vocab_size=VOCAB, **SMALL)
    _, stats = train_length_predictor(model, traces, cfg, PredictorTrainConfig(epochs=10, batch_size=8, lr=1e-2),
                                      log_every=1)
    first, last = stats["history"][0]["nll"], stats["history"][-1]["nll"]
    assert last < 0.5 * first


def test_cached_states_train_the_same_predictor_as_recomputed_ones():
    model = runtime_from_hf(tiny_hf_model("llama"))
    tok = char_tokenizer()
    traces = [TraceTokens(tuple(tok.encode(f"{n}<think>" + "ab" * (2 * n) + "</think>x")), 2, 4 * n)
              for n in range(1, 7)]
    cfg = LengthPredictorConfig(lm_hidden_size=64, num_states=3, vocab_size=VOCAB, **SMALL)
    runs = [train_length_predictor(model, traces, cfg, PredictorTrainConfig(epochs=3, batch_size=4, lr=1e-2,
                                                                            cache_gib=gib))
            for gib in (8.0, 0.0)]
    (cached, stats_c), (recomputed, stats_r) = runs
    assert [h["nll"] for h in stats_c["history"]] == pytest.approx([h["nll"] for h in stats_r["history"]], rel=1e-4)
    # States of a trace differ in the last float bits with the batch's padding width; Adam turns that into
    # differences far below one step (lr 1e-2 moves a weight by ~1e-2 per step): a tenth of a step at most. (How
    # far below depends on the CPU's kernels: under 2e-4 on the AVX-512 machines, 3.1e-4 on an AVX2 one.)
    for a, b in zip(cached.parameters(), recomputed.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)
