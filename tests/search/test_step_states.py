"""A text scorer's step states read each prefix once (`rewards.step_states`): equal to a fresh read of every
text, only new tokens fed when a text extends one read before, and right when texts fork and rows run out."""

import pytest
import torch

from reasonbudget.rewards.head_prm import step_features
from reasonbudget.rewards.step_states import StepStates, step_keys


def test_step_keys_name_prefixes_at_step_ends():
    a = step_keys([1, 2, 3, 4, 5, 6], [1, 3, 5])
    assert a[:2] == step_keys([1, 2, 3, 4, 9], [1, 3])  # the same prefixes, whatever follows
    assert step_keys([1, 2, 3, 4], [3]) == [a[1]] and len(set(a)) == 3
    assert step_keys([1, 7, 3, 4], [1, 3])[0] != a[0] and step_keys([], []) == []


@pytest.fixture(scope="module")
def target():
    from reasonbudget.models import load_model

    return load_model("testbed-target")


def texts(target, n: int = 6, steps: int = 5):
    """n texts of `steps` steps each: a shared question, steps that differ between texts from step 2 on."""
    from reasonbudget.rewards.head_prm import encode_steps
    from reasonbudget.tasks import get_task

    q = get_task("testbed:d=5").problems()[0].question
    out = []
    for i in range(n):
        st = [f"x = {k}" if k < 2 else f"y{i} = {k + i}" for k in range(steps)]
        ids, ends, _ = encode_steps(target, q, st, "\n\n")
        out.append((q, st, ids, ends))
    return out


def fresh(target, q, st, layers):
    (f,) = step_features(target, [(q, st)], layers, separator="\n\n", logprobs=False)
    return f


@pytest.mark.parametrize("layers", [(2, 4), (2,)])  # (2,): the blocks above layer 2 never run
def test_states_equal_a_fresh_read_and_a_growing_text_feeds_only_its_new_tokens(target, layers):
    ss = StepStates(target, layers, rows=1)  # grows to the three texts of a call
    items = texts(target, n=3)
    # round k: every text with its first k steps, as a search scores its particles
    prev = 0
    for k in (1, 3, 5):
        before = ss.tokens_fed
        got = ss.features([(ids[: ends[k - 1] + 1], ends[:k]) for _, _, ids, ends in items])
        for (q, st, _, _), g in zip(items, got):
            assert g.shape == (k, len(layers) * target.backend.cfg.hidden_size)
            assert torch.allclose(g, fresh(target, q, st[:k], layers), atol=1e-4)
        # the first round reads whole texts; later ones feed each text from where the previous round stopped
        assert ss.tokens_fed - before == sum(ends[k - 1] + 1 - (ends[prev - 1] + 1 if prev else 0)
                                             for _, _, _, ends in items)
        prev = k
    assert ss.num_rows == 3 and ss.cache.k.shape[0] == max(layers)  # no K/V for blocks a read never runs
    fed = ss.tokens_fed
    ss.features([(ids, ends) for _, _, ids, ends in items])  # all read: nothing fed
    assert ss.tokens_fed == fed
    ss.clear()  # a new run: everything is read again, and read right
    got = ss.features([(ids, ends) for _, _, ids, ends in items])
    assert ss.tokens_fed - fed == sum(len(ids) for _, _, ids, _ in items)
    assert all(torch.allclose(g, fresh(target, q, st, layers), atol=1e-4) for (q, st, _, _), g in zip(items, got))


def test_forked_texts_and_too_few_rows_still_read_right(target):
    layers = (4,)
    ss = StepStates(target, layers, rows=1, max_batch_tokens=64)  # and small forwards: several groups a call
    items = texts(target, n=5)
    # five texts share their first two steps, then diverge; rows for two only: rows are copied and reused
    c = target.backend.cfg
    ss.max_bytes = 2 * (2 * c.num_layers * c.num_kv_heads * c.head_dim * 256 * target.backend.dtype.itemsize)
    got = ss.features([(ids, ends) for _, _, ids, ends in items])
    assert ss.num_rows == 2
    for (q, st, _, _), g in zip(items, got):
        assert torch.allclose(g, fresh(target, q, st, layers), atol=1e-4)
    # a text that forks off one read before starts from the shared prefix, not from scratch
    q, st, ids, ends = items[0]
    from reasonbudget.rewards.head_prm import encode_steps

    fork = [*st[:3], "z = 9"]
    f_ids, f_ends, _ = encode_steps(target, q, fork, "\n\n")
    before = ss.tokens_fed
    (g,) = ss.features([(f_ids, f_ends)])
    assert torch.allclose(g, fresh(target, q, fork, layers), atol=1e-4)
    assert ss.tokens_fed - before <= len(f_ids) - (ends[1] + 1)  # at most what follows the shared two steps
    with pytest.raises(ValueError, match="exceeds"):
        ss.features([(list(range(target.context_length + 1)), [0])])


def test_a_search_round_feeds_each_new_token_once(target):
    """A search's rounds: the shared prompt read once in the first round, then children of a few parents (beam
    search keeps some texts, particle filtering duplicates some) fed their new step only; no parent's row is
    handed to another text before its children read from it."""
    from reasonbudget.rewards.head_prm import encode_steps
    from reasonbudget.tasks import get_task

    layers = (4,)
    q = get_task("testbed:d=5").problems()[0].question
    ss = StepStates(target, layers, rows=1)
    prompt = len(encode_steps(target, q, [], "\n\n")[0])

    def read(all_steps):
        enc = [encode_steps(target, q, st, "\n\n") for st in all_steps]
        before = ss.tokens_fed
        got = ss.features(enc)
        for st, g in zip(all_steps, got):
            assert torch.allclose(g, fresh(target, q, st, layers), atol=1e-4)
        return ss.tokens_fed - before, [e for _, e, _ in enc]

    last_round = [[f"y{i} = {3 * i + 1}"] for i in range(6)]
    fed, ends = read(last_round)
    assert fed == prompt + sum(e[-1] + 1 - prompt for e in ends)  # the prompt once, then each first step
    for parents in ([0, 0, 5, 5, 5, 2], [1, 1, 1, 3, 3, 4]):  # the rows of the last round's texts, reused
        children = [[*last_round[p], f"z{j} = {j + 7}"] for j, p in enumerate(parents)]
        fed, ends = read(children)
        assert fed == sum(e[-1] - e[-2] for e in ends)  # only the new steps
        last_round = children
