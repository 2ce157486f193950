"""Training recipe of the length predictor: the loss weighs every trace the same (the reference's per-sequence
mean), the paper's predictor size is available, sampled (on-policy) traces are kept in a resumable file and only
traces that ended their own thinking are used, and the weights' identity does not depend on the load dtype."""

import json

import pytest
import torch

from reasonbudget.models import load_model
from reasonbudget.predictors.length import LengthPredictorConfig, lm_fingerprint, lm_fingerprints, _fingerprint
from reasonbudget.predictors.train_length import per_sequence_mean
from reasonbudget.testbed.problems import generate
from reasonbudget.training.length_predictor import predictor_config
from reasonbudget.training.length_traces import sampled_traces


def test_per_sequence_mean_weighs_every_trace_the_same():
    values = torch.tensor([1.0, 1.0, 1.0, 1.0, 5.0])  # a long trace of ones, a one-position trace of 5
    rows = torch.tensor([0, 0, 0, 0, 1])
    assert per_sequence_mean(values, rows).item() == pytest.approx(3.0)  # a token mean would say 1.8
    assert per_sequence_mean(values, torch.tensor([0, 0, 2, 2, 2])).item() == pytest.approx((1 + 7 / 3) / 2)


@pytest.fixture(scope="module")
def target():
    return load_model("testbed-target")


def test_paper_size_and_overrides(target):
    paper = predictor_config(target, "paper")
    assert (paper.width, paper.layers, paper.heads, paper.ffn, paper.head_rank) == (768, 12, 12, 3072, None)
    assert paper.dropout == 0.1
    small = predictor_config(target, "small", layers=3, head_rank=0)
    assert small.layers == 3 and small.head_rank is None and small.width == 128
    with pytest.raises(ValueError, match="accepted are small, paper"):
        predictor_config(target, "huge")
    with pytest.raises(ValueError, match="multiple of its heads"):
        predictor_config(target, "small", width=130)


def test_sampled_traces_resume_from_their_file_and_keep_only_ended_thinking(target, tmp_path):
    problems = generate(3, difficulty=2, seed=5)
    store = tmp_path / "traces.jsonl"
    first = sampled_traces(target, problems, samples=2, temperature=1.0, max_thinking_tokens=400, store=store)
    lines = store.read_text().splitlines()
    assert len(lines) == 6 and first
    close = target.encode(target.profile.think_close)
    for t in first:
        assert t.ids[t.prompt_len + t.thinking_len:][: len(close)] == close
    again = sampled_traces(target, problems, samples=2, temperature=1.0, max_thinking_tokens=400, store=store)
    assert store.read_text().splitlines() == lines and again == first  # read back, not sampled again
    # a cap shorter than every trace: nothing ended its own thinking (a cut trace has no true remaining length)
    cut = sampled_traces(target, problems[:1], samples=1, temperature=1.0, max_thinking_tokens=3)
    assert cut == []
    assert not json.loads(lines[0])["tokens"] == []


def test_fingerprint_is_the_same_for_float32_and_bfloat16_loads(target):
    bf16 = load_model("testbed-target", dtype="bfloat16")
    assert lm_fingerprint(target) == lm_fingerprint(bf16)
    assert _fingerprint(target, torch.float32) in lm_fingerprints(target)  # companions trained before still load
    assert lm_fingerprint(load_model("testbed-draft")) not in lm_fingerprints(target)
    assert isinstance(LengthPredictorConfig(lm_hidden_size=1, num_states=1, vocab_size=1).lm_fingerprint, str)
