"""Engine and KV cache: batching, rollback, fork/reorder, multi-token append, controllers, seeding."""

import pytest
import torch

from reasonbudget.engine import Action, Controller, Engine, SamplingConfig, StopOnText
from reasonbudget.engine.engine import GATHER_WEIGHT
from reasonbudget.models import native
from reasonbudget.models.llama import Linear
from tests.helpers import runtime_from_hf, scripted_model, tiny_hf_model

GREEDY = SamplingConfig()


@pytest.fixture(scope="module")
def tiny():
    return runtime_from_hf(tiny_hf_model("qwen2", seed=5))


def _prompts(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [tuple(torch.randint(3, 99, (int(torch.randint(2, 40, (1,), generator=g)),), generator=g).tolist())
            for _ in range(n)]


def _alone(model, prompt, n=25, **kw):
    e = Engine(model)
    rows = e.prefill([prompt], max_new_tokens=n)
    return e.decode(rows, max_new_tokens=n, sampling=GREEDY, stop_on_eos=False, **kw)[0].tokens


def test_batch_of_different_prompts_decodes_as_each_alone(tiny):
    prompts = _prompts(6)
    e = Engine(tiny)
    rows = e.prefill(prompts, max_new_tokens=25)
    batch = e.decode(rows, max_new_tokens=25, sampling=GREEDY, stop_on_eos=False)
    assert [d.tokens for d in batch] == [_alone(tiny, p) for p in prompts]


@pytest.mark.slow
def test_smollm2_batch_equals_alone(smollm):
    prompts = [smollm.encode(q) for q in ("What is 2+2?", "Name a color.", "Count to five, please: one")]
    e = Engine(smollm)
    rows = e.prefill(prompts, max_new_tokens=12)
    batch = e.decode(rows, max_new_tokens=12, sampling=GREEDY, stop_on_eos=False)
    assert [d.tokens for d in batch] == [_alone(smollm, p, 12) for p in prompts]


def test_rows_finishing_early_do_not_change_the_others(tiny):
    prompts = _prompts(4, seed=1)
    e = Engine(tiny)
    rows = e.prefill(prompts, max_new_tokens=30)
    stop_first = [_StopAfter(3), None, _StopAfter(7), None]
    out = e.decode(rows, max_new_tokens=30, sampling=GREEDY, stop_on_eos=False, controllers=stop_first)
    assert [len(d.tokens) for d in out] == [3, 30, 7, 30]
    assert out[1].tokens == _alone(tiny, prompts[1], 30)
    assert out[3].tokens == _alone(tiny, prompts[3], 30)


@pytest.mark.parametrize("whole_range", [True, False])
def test_scattered_rows_leave_the_rows_between_intact(tiny, monkeypatch, whole_range):
    """Rows 4, 1, 3 (unordered, row 2 between them not in the call) decode fed as their whole range or gathered;
    row 2 decodes afterwards exactly as if nothing had touched it."""
    prompts = _prompts(6, seed=4)
    e = Engine(tiny)
    monkeypatch.setattr(e, "_feed_whole_range", lambda *a: whole_range)
    rows = e.prefill(prompts, max_new_tokens=20)
    picked = rows[torch.tensor([4, 1, 3])]
    out = e.decode(picked, max_new_tokens=20, sampling=GREEDY, stop_on_eos=False)
    assert [d.tokens for d in out] == [_alone(tiny, prompts[i], 20) for i in (4, 1, 3)]
    later = e.decode(rows[2:3], max_new_tokens=20, sampling=GREEDY, stop_on_eos=False)
    assert later[0].tokens == _alone(tiny, prompts[2], 20)


def test_idle_rows_are_fed_only_where_their_matmuls_cost_less_than_the_gather(tiny, monkeypatch):
    e = Engine(tiny)
    e.prefill(_prompts(4, seed=6), max_new_tokens=5)  # rows 0-3
    active, kv = [0, 3], 50  # rows 1 and 2 idle
    longest = int(e.cache.lengths.max())
    gather = GATHER_WEIGHT * 2 * int(e.cache.lengths[active].max()) * kv
    idle_row_weights = gather // 2 - longest * kv  # where two idle rows' matmuls and K/V reads cost as much
    for weights, expected in ((idle_row_weights - 1, True), (idle_row_weights + 1, False)):
        monkeypatch.setattr(tiny.backend, "step_row_costs", lambda cache, w=weights: (w, kv))
        assert e._feed_whole_range(active) is expected
    monkeypatch.setattr(tiny.backend, "step_row_costs", lambda cache: (1, 0))  # rows read in place
    assert e._feed_whole_range([0, 1, 3]) is False


def test_step_row_costs_count_the_linears_and_what_a_gather_copies():
    model = runtime_from_hf(tiny_hf_model("qwen2", seed=5))
    backend = model.backend
    weights = sum(m.weight.numel() for m in backend.modules() if isinstance(m, Linear))
    c = backend.cfg
    fused = native.available()  # float32 on the fused kernels reads rows in place
    kv_per_position = c.num_layers * 2 * c.num_kv_heads * c.head_dim
    assert backend.step_row_costs(backend.new_cache(2, 16)) == (weights, 0 if fused else kv_per_position)
    backend.to(torch.bfloat16)
    assert backend.step_row_costs(backend.new_cache(2, 16)) == (weights, kv_per_position)


class _StopAfter(Controller):
    def __init__(self, n):
        self.n = n

    def on_token(self, token, forced):
        self.n -= 1
        return Action(stop=self.n == 0)


def test_rollback_then_redecode_equals_never_decoded(tiny):
    prompt = _prompts(1, seed=2)[0]
    e = Engine(tiny)
    rows = e.prefill([prompt], max_new_tokens=40)
    first = e.decode(rows, max_new_tokens=20, sampling=GREEDY, stop_on_eos=False)[0].tokens
    e.truncate(rows, torch.tensor([len(prompt) + 5]))  # keep 5 generated tokens
    again = e.decode(rows, max_new_tokens=15, sampling=GREEDY, stop_on_eos=False)[0].tokens
    assert first[:5] + again == _alone(tiny, prompt, 20)
    # and the logits after rollback equal those of a fresh prefill of the same tokens
    hist = e.tokens(int(rows[0]))
    fresh = Engine(tiny)
    frow = fresh.prefill([tuple(hist)], max_new_tokens=1)
    a = tiny.backend(torch.tensor([[hist[-1]]]), e.cache, rows, logits_at=torch.zeros(1, dtype=torch.long)).logits
    b = tiny.backend(torch.tensor([[hist[-1]]]), fresh.cache, frow, logits_at=torch.zeros(1, dtype=torch.long)).logits
    assert torch.allclose(a, b, atol=1e-5)


def test_fork_and_reorder_continue_like_their_sources(tiny):
    prompts = _prompts(3, seed=3)
    e = Engine(tiny)
    e.reserve(8, 128)
    rows = e.prefill(prompts, max_new_tokens=40)
    e.decode(rows, max_new_tokens=6, sampling=GREEDY, stop_on_eos=False)
    forks = e.fork(rows[[2, 0]])
    e.reorder(rows, rows[[1, 1, 0]])  # rows := (1, 1, 0)
    out = e.decode(torch.cat([rows, forks]), max_new_tokens=10, sampling=GREEDY, stop_on_eos=False)
    ref = [_alone(tiny, p, 16)[6:] for p in prompts]
    assert [d.tokens for d in out] == [ref[1], ref[1], ref[0], ref[2], ref[0]]


def test_forward_last_forked_then_rewound_leaves_the_row_as_it_was(tiny):
    prompt = _prompts(1, seed=8)[0]
    e = Engine(tiny)
    e.reserve(4, 96)
    row = e.prefill([prompt], max_new_tokens=30)
    logits = e.forward_last(row)  # MTAD's depth 0: the row's own next-token logits, then beams fork from it
    fork = e.fork(row)
    e.rewind_last(row)
    with pytest.raises(ValueError, match="rewind_last"):
        e.rewind_last(row)  # its last token is no longer in the cache
    e.history[int(fork[0])].append(int(logits[0].argmax()))
    beam = e.decode(fork, max_new_tokens=9, sampling=GREEDY, stop_on_eos=False)[0].tokens
    own = e.decode(row, max_new_tokens=10, sampling=GREEDY, stop_on_eos=False)[0].tokens
    ref = _alone(tiny, prompt, 10)
    assert tuple(own) == tuple(ref) == (int(logits[0].argmax()), *beam)


def test_multi_token_append_equals_token_by_token(tiny):
    prompt = _prompts(1, seed=4)[0]
    extra = (5, 17, 42, 8)
    be = tiny.backend
    one = be.new_cache(1, 64)
    be(torch.tensor([prompt]), one, torch.tensor([0]))
    one.lengths[0] = len(prompt)
    many = be(torch.tensor([extra]), one, torch.tensor([0])).logits[0]  # [4, V]
    two = be.new_cache(1, 64)
    be(torch.tensor([prompt]), two, torch.tensor([0]))
    two.lengths[0] = len(prompt)
    for t, tok in enumerate(extra):
        step = be(torch.tensor([[tok]]), two, torch.tensor([0])).logits[0, 0]
        two.lengths[0] += 1
        assert torch.allclose(step, many[t], atol=1e-5)


def test_ragged_multi_token_append_in_one_forward(tiny):
    """Rows at different lengths get several tokens each in one call, equal to separate calls."""
    be = tiny.backend
    prompts = _prompts(2, seed=6)
    extra = torch.tensor([[5, 6, 7], [9, 10, 11]])
    cache = be.new_cache(2, 64)
    for r, p in enumerate(prompts):
        be(torch.tensor([p]), cache, torch.tensor([r]))
        cache.lengths[r] = len(p)
    both = be(extra, cache, torch.tensor([0, 1])).logits
    for r, p in enumerate(prompts):
        c = be.new_cache(1, 64)
        alone = be(torch.tensor([p + tuple(extra[r].tolist())]), c, torch.tensor([0])).logits[0, len(p):]
        assert torch.allclose(both[r], alone, atol=1e-5)


def test_sampling_is_seeded_per_row_and_independent_of_other_rows(tiny):
    prompts = _prompts(3, seed=7)
    hot = SamplingConfig(temperature=1.0)

    def run(ps, seed, stop=None):
        e = Engine(tiny)
        rows = e.prefill(ps, max_new_tokens=20)
        return [d.tokens for d in e.decode(rows, max_new_tokens=20, sampling=hot, stop_on_eos=False,
                                          generator=torch.Generator().manual_seed(seed), controllers=stop)]

    a, b = run(prompts, 11), run(prompts, 11)
    assert a == b
    assert run(prompts, 12) != a
    early = run(prompts, 11, stop=[_StopAfter(2), None, None])
    assert early[1:] == a[1:]


def test_sampling_requires_a_generator(tiny):
    e = Engine(tiny)
    rows = e.prefill(_prompts(1), max_new_tokens=3)
    with pytest.raises(ValueError, match="Generator"):
        e.decode(rows, max_new_tokens=3, sampling=SamplingConfig(temperature=0.7))


def test_stop_strings_and_forced_tokens():
    # the scripted model writes "ab\n\n" forever; a controller forces "XY" after the first token
    text = "ab\n\ncd"
    model = scripted_model(lambda prefix: model.encode(text[(len(prefix) - 2) % len(text)])[0])
    e = Engine(model)
    prompt = model.encode(">>")
    rows = e.prefill([prompt, prompt], max_new_tokens=20)

    class ForceOnce(Controller):
        done = False

        def on_token(self, token, forced):
            if self.done:
                return Action()
            self.done = True
            return Action(force=model.encode("XY"))

    stop = StopOnText(["\n\n"], model.decode, model.encode)
    out = e.decode(rows, max_new_tokens=20, sampling=GREEDY, controllers=[stop, ForceOnce()])
    assert model.decode(out[0].tokens) == "ab\n\n" and out[0].finish_reason == "stop"
    assert model.decode(out[1].tokens).startswith("aXY")
    assert out[1].forced[:3] == (False, True, True)


def test_prompt_too_long_is_a_clear_error(tiny):
    from reasonbudget.engine import PromptTooLongError

    with pytest.raises(PromptTooLongError, match="exceeds the context"):
        Engine(tiny).prefill([tuple(range(3, 99)) * 3], max_new_tokens=10)


def test_peek_reads_past_the_row_and_leaves_it_unchanged(tiny):
    """Logits after history + suffix equal a fresh forward of that text; ragged rows and suffixes in one call
    (chunked); the rows then decode exactly as if nothing had been peeked."""
    prompts = _prompts(3, seed=8)
    e = Engine(tiny, prefill_chunk_tokens=64)  # small chunks: the peek is split over several calls
    rows = e.prefill(prompts, max_new_tokens=40)
    e.decode(rows, max_new_tokens=5, sampling=GREEDY, stop_on_eos=False)
    suffixes = [(7, 8, 9), (11,), (12, 13, 14, 15, 16)]
    got = e.peek(rows, suffixes)
    for r, s, g in zip(rows.tolist(), suffixes, got):
        text = e.tokens(r) + list(s)
        c = tiny.backend.new_cache(1, 64)
        ref = tiny.backend(torch.tensor([text]), c, torch.tensor([0])).logits[0, -1]
        assert torch.allclose(g, ref, atol=1e-4)
    out = e.decode(rows, max_new_tokens=10, sampling=GREEDY, stop_on_eos=False)
    assert [d.tokens for d in out] == [_alone(tiny, p, 15)[5:] for p in prompts]
