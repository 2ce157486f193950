"""The PRM's prefix cache: segments kept per prefix, LRU eviction, and scores equal to a full re-read."""

import random

import pytest
import torch

from reasonbudget.rewards import StepSequence
from reasonbudget.rewards.segment_kv import SegmentKV
from reasonbudget.rewards.testbed_prm import TestbedPRM as PRM
from reasonbudget.testbed.problems import generate
from reasonbudget.testbed.traces import label_steps, reference_completion
from reasonbudget.training.testbed import CHECKPOINTS


class _Cache:  # what SegmentKV.add reads of a DynamicCache
    def __init__(self, n: int) -> None:
        t = torch.arange(n, dtype=torch.float32).view(1, 1, n, 1)
        self.layers = [type("L", (), {"keys": t, "values": -t})()]


def test_lookup_returns_the_leading_run_and_evicts_least_recently_used():
    kv = SegmentKV(max_segments=3)
    kv.add(["q", "q1", "q12"], _Cache(6), 0, [2, 3, 1], ["a", "b", "c"])
    assert [s.extra for s in kv.lookup(["q", "q1", "q12", "q123"])] == ["a", "b", "c"]
    assert kv.lookup(["q", "q1", "q12"])[1].keys[0].flatten().tolist() == [2.0, 3.0, 4.0]  # its own tokens only
    assert [s.extra for s in kv.lookup(["q", "qX"])] == ["a"]  # "q" is now the most recently used
    kv.add(["r"], _Cache(1), 0, [1], ["d"])  # evicts "q1", the least recently used
    assert len(kv) == 3 and [s.extra for s in kv.lookup(["q", "q1", "q12"])] == ["a"]
    past = kv.past(kv.lookup(["q"]))
    assert past.get_seq_length() == 2
    with pytest.raises(ValueError, match="at least 1"):
        SegmentKV(0)


def _traces():
    rng = random.Random(0)
    items = []
    for d in (3, 8):
        for p in generate(3, difficulty=d, seed=99):
            steps = [s.line for s in label_steps(p, reference_completion(p, rng))]
            items.append(StepSequence(p.question, tuple(steps)))
    return items


def test_cached_scores_equal_a_full_reread_while_reading_each_token_once():
    """Growing prefixes, as drafting and search score them. In float32 the cached path equals the full re-read
    to rounding; it reads each token once."""
    full, cached = PRM(CHECKPOINTS / "prm", prefix_cache=0), PRM(CHECKPOINTS / "prm")
    for prm in (full, cached):
        prm.lm.float()
    items = _traces()
    longest = max(len(it.steps) for it in items)
    for k in range(0, longest + 1):
        batch = [StepSequence(it.problem, it.steps[:k]) for it in items if len(it.steps) >= k]
        for a, b in zip(full.score_steps(batch), cached.score_steps(batch)):
            assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)
    assert cached.tokens_read == full.count_tokens(items)  # every token of the longest traces, once
    assert full.tokens_read > 3 * cached.tokens_read
    # a branch off a cached prefix (a different last step) feeds only that step
    it = items[-1]
    before = cached.tokens_read
    branch = StepSequence(it.problem, it.steps[:2] + ("1 + 1 = 3",))
    (a,), (b,) = full.score_steps([branch]), cached.score_steps([branch])
    assert torch.allclose(a, b, atol=1e-5)
    assert cached.tokens_read - before == len(cached.tok.encode("1 + 1 = 3\n", add_special_tokens=False))


def test_cached_router_equals_a_full_reread(tmp_path):
    """The fine-tuned router over growing histories (a draft step kept or replaced by the target's), as Arbitrage
    asks it each round: y_hat equal to reading the whole text, with each round feeding only its new step. (An
    untrained classifier over the PRM's LM: the equality does not depend on the weights.)"""
    import json

    from transformers import AutoTokenizer, LlamaForSequenceClassification

    from reasonbudget.rewards.router import CONFIG_FILE, RouterItem, StepRouter

    tok = AutoTokenizer.from_pretrained(str(CHECKPOINTS / "prm"))
    torch.manual_seed(0)
    LlamaForSequenceClassification.from_pretrained(str(CHECKPOINTS / "prm"), num_labels=2, dtype=torch.float32,
                                                   pad_token_id=tok.pad_token_id).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    (tmp_path / CONFIG_FILE).write_text(json.dumps({"separator": "\n", "annotate": True}))
    full, cached = StepRouter(tmp_path, prefix_cache=0), StepRouter(tmp_path)
    items = _traces()
    asked = []
    for it in items:
        history: tuple = ()
        for k, step in enumerate(it.steps):
            asked.append(RouterItem(it.problem, history, (step,)))
            history += ((step, k % 3 == 2),)  # every third step written by the target
    a, b = full.predict(asked), cached.predict(asked)
    assert a == pytest.approx(b, abs=1e-5)
    assert full.tokens_read > 3 * cached.tokens_read
