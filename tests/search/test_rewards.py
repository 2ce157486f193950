"""PRM backends: the Qwen2.5-Math-PRM protocol on a tiny random token classifier, the LLM judge, the scorer's
aggregation and failure isolation."""

import math

import pytest
import torch

from reasonbudget.rewards.base import StepSequence
from reasonbudget.search.scoring import RewardScorer
from tests.helpers import char_tokenizer


@pytest.fixture(scope="module")
def tiny_prm_dir(tmp_path_factory):
    import transformers

    tok = char_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<think>", "</think>", "<extra_0>"]})
    torch.manual_seed(0)
    cfg = transformers.Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1, num_labels=2,
                                   max_position_embeddings=512, pad_token_id=0)
    model = transformers.Qwen2ForTokenClassification(cfg)
    out = tmp_path_factory.mktemp("prm")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_qwen_prm_protocol_one_score_per_step(tiny_prm_dir):
    from reasonbudget.rewards.hf_prm import HFProcessRewardModel

    prm = HFProcessRewardModel(tiny_prm_dir)
    items = [StepSequence("1+1?", ("1+1=2", "so 2")), StepSequence("2+2?", ("2+2=4",)), StepSequence("q", ())]
    ids = prm.encode(items[0])
    assert ids.count(prm.separator_id) == 2
    scores = prm.score_steps(items)
    assert [s.numel() for s in scores] == [2, 1, 0]
    assert all(0 <= float(v) <= 1 for s in scores for v in s)
    # batched = one by one (padding must not leak into the scores)
    alone = prm.score_steps(items[1:2])[0]
    assert torch.allclose(alone, scores[1], atol=1e-5)
    assert prm.tokens_read > 0


def test_prm_without_the_separator_token_is_refused(tmp_path):
    import transformers

    from reasonbudget.rewards.hf_prm import HFProcessRewardModel

    tok = char_tokenizer()
    cfg = transformers.Qwen2Config(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1, num_labels=2)
    transformers.Qwen2ForTokenClassification(cfg).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="no step separator token"):
        HFProcessRewardModel(tmp_path)


def test_llm_judge_gives_one_probability_per_prefix(smollm):
    from reasonbudget.rewards.judge import LLMJudge

    judge = LLMJudge(smollm)
    items = [StepSequence("What is 2 + 3?", ("2 + 3 = 5.",)), StepSequence("What is 2 + 3?", ("2 + 3 = 7.",))]
    scores = judge.score_steps(items)
    assert [s.numel() for s in scores] == [1, 1] and all(0 < float(s) < 1 for s in scores)
    assert judge.tokens_read > 0


class _Scripted:
    step_separator = " | "

    def __init__(self):
        self.seen = []

    def score_steps(self, items):
        self.seen.append(items)
        if any("boom" in s for it in items for s in it.steps):
            raise RuntimeError("bad item")
        return [torch.tensor([0.9, 0.5, 0.8][: len(it.steps)]) for it in items]


def test_scorer_aggregates_isolates_failures_and_counts_calls():
    prm = _Scripted()
    items = [StepSequence("q", ("a", "b", "c")), StepSequence("q", ("boom",)), StepSequence("q", ("a",))]
    scorer = RewardScorer(prm, "min")
    values = scorer(items)
    assert values[0] == pytest.approx(0.5) and math.isnan(values[1]) and values[2] == pytest.approx(0.9)
    assert scorer.calls == 3
    assert RewardScorer(prm, "prod")(items[:1]) == [pytest.approx(0.36)]
    RewardScorer(prm, "model")(items[:1])
    assert prm.seen[-1][0].steps == ("a | b | c",)  # the whole prefix as one step
    with pytest.raises(ValueError, match="accepted are last, min, prod, mean, model"):
        RewardScorer(prm, "max")  # type: ignore[arg-type]


def test_self_judge_reads_the_policy_rows_like_a_full_prompt(smollm):
    """The KV-row judge equals the yes-probability of the full text (solution + question) computed from
    scratch; rows that ended their turn get the question without a second end-of-turn token; the rows are
    unchanged, and it reads only the question's tokens."""
    from reasonbudget.engine import Engine
    from reasonbudget.rewards.judge import SelfJudge, p_yes

    judge = SelfJudge(smollm)
    assert judge.closed_suffix == judge.open_suffix[1:] and judge.open_suffix[0] in smollm.eos_ids
    assert "correct" in smollm.decode(judge.open_suffix)
    e = Engine(smollm)
    prompt = smollm.encode("<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n")
    e.reserve(2, 128)
    rows = e.prefill([prompt + smollm.encode("2 + 3 = 5."), prompt + smollm.encode("2 + 3 = 7.<|im_end|>")],
                     max_new_tokens=40)
    before = [list(e.tokens(r)) for r in rows.tolist()]
    scores = judge.score_rows(e, rows.tolist())
    for h, s, suffix in zip(before, scores, (judge.open_suffix, judge.closed_suffix)):
        c = smollm.backend.new_cache(1, 128)
        logits = smollm.backend(torch.tensor([h + list(suffix)]), c, torch.tensor([0])).logits[:, -1]
        assert float(s) == pytest.approx(float(p_yes(logits, judge.yes, judge.no)), abs=1e-4)
    assert [e.tokens(r) for r in rows.tolist()] == before
    assert judge.tokens_read == len(judge.open_suffix) + len(judge.closed_suffix) + 2


def test_self_judge_scores_nan_without_room_and_scorer_needs_rows(smollm):
    from reasonbudget.engine import Engine
    from reasonbudget.rewards.judge import SelfJudge

    judge = SelfJudge(smollm)
    e = Engine(smollm)
    (row,) = e.prefill([smollm.encode("Hello there")], max_new_tokens=2).tolist()  # no room for the question
    assert math.isnan(float(judge.score_rows(e, [row])[0]))
    scorer = RewardScorer(judge, engine=e)
    assert math.isnan(scorer([StepSequence("q", ("a",))], rows=[None])[0])
    with pytest.raises(ValueError, match="reads KV rows"):
        RewardScorer(judge)([StepSequence("q", ("a",))])


def test_a_loaded_prm_is_kept_with_its_policy_and_goes_with_it():
    import gc
    import weakref
    from types import SimpleNamespace

    from reasonbudget.rewards.factory import load_prm

    def policy(name):
        return SimpleNamespace(name=name, profile=SimpleNamespace(name="testbed"))

    a, b = policy("testbed-a"), policy("testbed-b")
    prm = load_prm("oracle", a)
    assert load_prm("oracle", a) is prm  # built once per policy
    assert load_prm("oracle", b) is not prm  # never another policy's
    assert load_prm("oracle", a, noise=0.1) is not prm
    gone = weakref.ref(prm)
    del a, prm
    gc.collect()
    assert gone() is None  # nothing process-wide keeps a freed policy's PRM (or the models it holds)
