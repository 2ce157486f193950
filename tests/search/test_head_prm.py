"""A PRM for models without one: rollout step labels (Math-Shepherd), the head over a frozen base model, its
training metrics, and how `prm=` finds it. Runs on the testbed models (the real models are too slow here)."""

import json
import math

import pytest
import torch

from reasonbudget.rewards.head_prm import HEAD_CONFIG, HEAD_FILE, HeadPRM, HeadSpec, logprob_features
from reasonbudget.training.head_prm import (
    expected_calibration_error,
    fit_platt,
    problem_folds,
    split_problems,
    within_problem_auroc,
)
from reasonbudget.training.step_labels import (
    LabelConfig,
    LabelledProblem,
    label_task,
    load_labels,
    spread,
    step_boundaries,
)
from reasonbudget.types import StepSequence


def test_step_boundaries_follow_the_step_runners_rule():
    pieces = ["First", " step", ".\n\n", "\n\n", "Second", "\n\n", "Answer: 4", "\n\n"]
    # a delimiter right after another one has no text of its own: it joins the step that follows
    assert step_boundaries(pieces, "\n\n") == [3, 6, 8]
    assert step_boundaries(["a", "b"], "\n\n") == [2]
    assert step_boundaries(["a\n\n", " "], "\n\n") == [2]  # trailing whitespace joins the last step
    # the runner counts text before the token that completes the delimiter: ".\n\n" alone ends no step
    assert step_boundaries([".\n\n", "b", "\n\n", "c"], "\n\n") == [3, 4]
    # after the end-of-thinking marker the rest is one step; a step is cut at max_step_tokens
    assert step_boundaries(["a", "\n\n", "Final answer:", " 4", "\n\n", "done"], "\n\n", "Final answer:") == [2, 6]
    assert step_boundaries(["a"] * 7, "\n\n", max_step_tokens=3) == [3, 6, 7]
    assert spread(3, 6) == [0, 1, 2] and spread(10, 3) == [0, 4, 9] and spread(5, 1) == [4]


def test_logprob_features_are_per_step_minimum_mean_and_running_minimum():
    lp = torch.tensor([0.0, 0.0, -1.0, -3.0, -0.5, -2.0])  # prompt of 2 tokens, steps [2..3] and [4..5]
    f = logprob_features(lp, [3, 5], 2) * 20
    assert torch.allclose(f, torch.tensor([[-3.0, -2.0, -3.0], [-2.0, -1.25, -3.0]]))


def test_calibration_and_split_helpers():
    assert expected_calibration_error([0.2, 0.8], [0.2, 0.8]) == pytest.approx(0.0)
    assert expected_calibration_error([0.9, 0.9], [0.0, 0.0]) == pytest.approx(0.9)
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(400, generator=gen)
    y = torch.sigmoid(2.0 * z - 0.5)  # soft labels from a known scaling: Platt finds it
    a, b = fit_platt(z, y)
    assert a == pytest.approx(2.0, abs=0.05) and b == pytest.approx(-0.5, abs=0.05)
    import random

    held = split_problems(["p1", "p1", "p2", "p3", "p4"], 0.5, random.Random(0))
    assert len(held) == 2 and held <= {"p1", "p2", "p3", "p4"}
    folds = problem_folds(["p1", "p1", "p2", "p3", "p4", "p5"], 2, random.Random(0))
    assert set(folds) == {"p1", "p2", "p3", "p4", "p5"} and sorted(folds.values()) == [0, 0, 0, 1, 1]


@pytest.fixture(scope="module")
def target():
    from reasonbudget.models import load_model

    return load_model("testbed-target")


@pytest.fixture(scope="module")
def labels(target, tmp_path_factory):
    from reasonbudget.tasks import get_task

    task = get_task("testbed:d=5")
    out = tmp_path_factory.mktemp("labels") / "labels.jsonl"
    cfg = LabelConfig(samples=2, rollouts=3, max_tokens=160, temperature=1.0)
    return task, out, cfg, label_task(target, task.problems()[:12], out, cfg, task=task.name, chunk=6,
                                      progress=False)


def test_within_problem_auroc_ranks_steps_of_one_problem_only():
    # problem a: ranked right; problem b: ranked backwards; c has one kind of label and does not count
    scores = [0.9, 0.1, 0.2, 0.8, 0.5, 0.6]
    labels = [True, False, True, False, True, True]
    groups = ["a", "a", "b", "b", "c", "c"]
    assert within_problem_auroc(scores, labels, groups) == (0.5, 2)
    # a scorer that knows only which problem is easy: perfect pooled ranking, chance within problems
    scores, labels, groups = [0.9, 0.9, 0.9, 0.1, 0.1, 0.1], [True, True, False, False, False, True], list("aaabbb")
    assert within_problem_auroc(scores, labels, groups) == (0.5, 2)
    assert math.isnan(within_problem_auroc([0.3], [True], ["a"])[0])


def test_labels_are_shares_of_rollouts_and_the_last_step_is_the_outcome(labels):
    task, _, cfg, labelled = labels
    assert len(labelled) == 12 and all(len(lp.solutions) == 2 for lp in labelled)
    for lp in labelled:
        for s in lp.solutions:
            assert len(s.values) == len(s.steps) == len(s.outcomes)
            assert s.values[-1] == float(s.correct) and s.outcomes[-1] == 1
            for v, n in zip(s.values[:-1], s.outcomes[:-1]):
                assert (v is None and n == 0) or (n == cfg.rollouts and v * n == pytest.approx(round(v * n)))
    values = [v for lp in labelled for s in lp.solutions for v in s.values[:-1] if v is not None]
    assert 0 < sum(values) / len(values) < 1  # the labels are not constant


def test_more_rollouts_keep_the_labels_outcomes_first(labels, target):
    """Rollout r draws the same tokens whatever `rollouts` is: a label made with 3 outcomes is the first 3 of a
    run with 6 (what benchmarks/value_ceiling.py builds on)."""
    from dataclasses import replace

    from reasonbudget.training.step_labels import StepLabeller

    task, _, cfg, labelled = labels
    labeller = StepLabeller(target, replace(cfg, rollouts=6), task=task.name)
    labeller.label(task.problems()[:3])
    checked = 0
    for lp in labelled[:3]:
        for s, sol in enumerate(lp.solutions):
            for k, v in enumerate(sol.values[:-1]):
                outcomes = labeller.outcomes.get((lp.problem_id, s, k))
                assert (outcomes is None) == (v is None)
                if outcomes is not None:
                    assert len(outcomes) == 6 and outcomes[0] == sol.correct
                    assert sum(outcomes[:3]) / 3 == v
                    checked += 1
    assert checked >= 6


def test_labelling_resumes_and_refuses_other_settings(labels, target, tmp_path):
    task, out, cfg, labelled = labels
    lines = out.read_text().splitlines()
    part = tmp_path / "part.jsonl"
    part.write_text("\n".join(lines[:5]) + "\n" + lines[5][: len(lines[5]) // 2])  # a run killed mid-line
    (tmp_path / "part.settings.json").write_text(out.with_suffix(".settings.json").read_text())
    resumed = label_task(target, task.problems()[:12], part, cfg, task=task.name, chunk=6, progress=False)
    assert [lp.to_json() for lp in resumed] == [lp.to_json() for lp in labelled]  # seeded per problem
    assert [lp.to_json() for lp in load_labels(part)] == [lp.to_json() for lp in labelled]  # as re-read
    with pytest.raises(ValueError, match="other settings"):
        label_task(target, task.problems()[:12], part, LabelConfig(samples=3), task=task.name, progress=False)
    assert LabelledProblem.from_json(labelled[0].to_json()) == labelled[0]
    assert len(load_labels(part)) == 12
    eos_texts = [target.decode([e]) for e in target.eos_ids]  # dropped, as the step runner drops them
    assert not any(e in s.text or any(e in st for st in s.steps) for lp in labelled for s in lp.solutions
                   for e in eos_texts if e.strip())


def test_features_cache_computes_only_new_solutions_and_rebuilds_for_other_settings(labels, target, tmp_path,
                                                                                   monkeypatch):
    from reasonbudget.training import head_prm as hp

    _, _, _, labelled = labels
    path = tmp_path / "f.pt"
    first = hp.cached_data(target, labelled[:6], (1,), separator="\n", logprobs=True, path=path)
    asked = []
    real = hp.step_features
    monkeypatch.setattr(hp, "step_features", lambda m, items, *a, **k: asked.append(len(items)) or real(m, items, *a, **k))
    grown = hp.cached_data(target, labelled, (1,), separator="\n", logprobs=True, path=path)
    keys = lambda ls: {hp._solution_key(lp.question, s.steps) for lp, s in hp.solutions_of(ls)}  # noqa: E731
    assert asked == [len(keys(labelled) - keys(labelled[:6]))]  # the label file grew: only its new solutions
    fresh = hp.build_data(target, labelled, (1,), separator="\n", logprobs=True)
    assert torch.allclose(grown.x, fresh.x, atol=1e-4) and torch.equal(grown.x[: len(first.x)], first.x)
    hp.cached_data(target, labelled, (2,), separator="\n", logprobs=True, path=path)  # other layers: all again
    assert asked[-1] == len(keys(labelled))
    # a cache of more layers (states only) serves a subset without a forward
    wide = tmp_path / "wide.pt"
    both = hp.cached_data(target, labelled, (1, 3), separator="\n", logprobs=False, path=wide)
    calls = len(asked)
    three = hp.cached_data(target, labelled, (3,), separator="\n", logprobs=False, path=wide)
    assert len(asked) == calls and torch.equal(three.x, both.x[:, both.x.shape[1] // 2 :])
    with pytest.raises(ValueError, match="nothing to train"):
        hp.step_table([], [])


def test_head_trains_scores_steps_and_refuses_another_base(labels, target, tmp_path):
    from reasonbudget.models import load_model
    from reasonbudget.training.head_prm import HeadTrainConfig, train_head

    _, _, _, labelled = labels
    out = tmp_path / "head"
    report = train_head(target, labelled, out, HeadTrainConfig(epochs=30, hidden=16, val_fraction=0.25, folds=1))
    assert report["steps"] > report["held_out"]["steps"] > 0 and report["head_parameters"] > 0
    assert (out / HEAD_FILE).exists() and HeadSpec.load(out).base == "testbed-target"
    prm = HeadPRM(out, base=target)
    s = labelled[0].solutions[0]
    whole, part = prm.score_steps([StepSequence(labelled[0].question, s.steps),
                                   StepSequence(labelled[0].question, s.steps[:2])])
    assert whole.shape == (len(s.steps),) and bool(((whole > 0) & (whole < 1)).all())
    assert torch.allclose(whole[:2], part, atol=1e-4)  # a step's score does not depend on later steps
    assert prm.tokens_read > 0
    # on the training steps the head ranks outcomes better than chance (held-out is too small to assert on)
    assert report["train"]["step_auroc"] > 0.6
    with pytest.raises(ValueError, match="testbed-target.*testbed-draft"):
        HeadPRM(out, base=load_model("testbed-draft"))
    with pytest.raises(ValueError, match="not a PRM head directory"):
        HeadPRM(tmp_path)


def test_a_cross_fitted_head_reports_and_calibrates_on_out_of_fold_scores(labels, target, tmp_path):
    import random

    from reasonbudget.rewards.head_prm import probe_layer
    from reasonbudget.training import head_prm as hp

    _, _, _, labelled = labels
    cfg = hp.HeadTrainConfig(epochs=10, hidden=16, folds=2)
    report = hp.train_head(target, labelled, tmp_path / "head", cfg)
    data = hp.build_data(target, labelled, probe_layer(target.backend.cfg.num_layers),
                         separator=target.profile.step_delimiter, logprobs=False)
    labelled_steps = int((~torch.isnan(data.y)).sum())
    # every labelled step is held out once: the report covers them all, and so does the head's own
    assert report["held_out"]["steps"] == report["train"]["steps"] == labelled_steps
    assert report["held_out_problems"] == report["problems"] == len(set(data.problem))
    # a step's out-of-fold score comes from a head that never saw its problem (train_head's order of draws)
    fold_of = hp.problem_folds(data.problem, 2, random.Random(cfg.seed))
    fold = torch.tensor([fold_of[data.problem[int(k)]] for k in data.solution])
    torch.manual_seed(cfg.seed)
    hp.fit_fixed(data.x, data.y, cfg)
    state = torch.get_rng_state()
    z = hp.out_of_fold_logits(data, cfg)
    torch.set_rng_state(state)
    first, _ = hp.fit_fixed(data.x[fold != 0], data.y[fold != 0], cfg)
    with torch.no_grad():
        assert torch.allclose(z[fold == 0], first(data.x[fold == 0]))
        assert not torch.allclose(z[fold == 1], first(data.x[fold == 1]))
    lab = ~torch.isnan(data.y)
    assert report["calibration"] == pytest.approx(list(hp.fit_platt(z[lab], data.y[lab])), rel=1e-6)
    with pytest.raises(ValueError, match="folds"):
        hp.HeadTrainConfig(folds=0)


def test_a_states_only_head_scores_the_policys_rows_as_it_scores_the_text(labels, target, tmp_path):
    from reasonbudget.engine import Engine
    from reasonbudget.rewards.factory import _build
    from reasonbudget.rewards.head_prm import encode_steps
    from reasonbudget.search.scoring import RewardScorer
    from reasonbudget.training.head_prm import HeadTrainConfig, train_head

    _, _, _, labelled = labels
    out = tmp_path / "head"
    train_head(target, labelled, out, HeadTrainConfig(epochs=5, hidden=16, val_fraction=0.25, logprobs=False))
    prm = _build(str(out), target, 0.0, False, 0, "")  # what prm=auto / prm=DIR gives this policy
    assert prm.reads_rows and prm.lookahead_tokens >= 1
    lp = labelled[1]
    s = lp.solutions[0]
    ids, ends, _ = encode_steps(target, lp.question, s.steps, prm.step_separator)
    engine = Engine(target)
    engine.reserve(len(ends) + 1, len(ids) + 8)
    # one row per step prefix, holding the tokens the text encodes to (its last token pending, as after a step)
    prefixes = [ids[: e + 1] for e in ends]
    rows = engine.prefill(prefixes, max_new_tokens=4)
    before = [engine.tokens(r) for r in rows.tolist()], engine.cache.lengths.clone()
    by_rows = RewardScorer(prm, engine=engine)([StepSequence(lp.question, s.steps[: k + 1]) for k in range(len(ends))],
                                               rows=rows.tolist())
    (by_text,) = prm.score_steps([StepSequence(lp.question, s.steps)])
    assert by_rows == pytest.approx(by_text.tolist(), abs=1e-4)
    # its text entry (another model's steps: RSD's drafts) keeps the prefixes it read: one more step feeds that step
    read = prm.tokens_read
    (longer,) = prm.score_steps([StepSequence(lp.question, (*s.steps, "1 + 1 = 2"))])
    longer_ids = encode_steps(target, lp.question, (*s.steps, "1 + 1 = 2"), prm.step_separator)[0]
    assert prm.tokens_read - read == len(longer_ids) - len(ids)
    assert longer[:-1].tolist() == pytest.approx(by_text.tolist(), abs=1e-4)
    assert [engine.tokens(r) for r in rows.tolist()] == before[0] and torch.equal(engine.cache.lengths, before[1])
    # a row that ended its turn is read with the separator in place of its end-of-sequence token
    (eos,) = sorted(target.eos_ids)[:1]
    sep = prm.separator_ids
    assert ids[ends[-1] + 1 - len(sep) : ends[-1] + 1] == sep  # (the testbed's separator is a token of its own)
    (done,) = engine.prefill([ids[: ends[-1] + 1 - len(sep)] + [eos]], max_new_tokens=4).tolist()
    (closed,) = prm.score_rows(engine, [done])
    assert float(closed) == pytest.approx(float(by_text[-1]), abs=1e-4)
    # particle filtering scores its particles' rows: a call reads one token (a finished one the separator)
    from reasonbudget.engine import SamplingConfig
    from reasonbudget.methods import make_method

    prompts = [engine.prompt(lp.question) for lp in labelled[:2]]
    results = make_method(f"particle-filter:prm={out}", SamplingConfig(temperature=1.0)).run(
        Engine(target), prompts, budget=3, generator=torch.Generator().manual_seed(0))
    for r in results:
        assert r.usage.prm_calls > 0 and r.usage.prm_tokens <= r.usage.prm_calls * len(sep)
    with pytest.raises(ValueError, match="scores text"):
        HeadPRM(tmp_path / "logprob-head" if train_head(target, labelled, tmp_path / "logprob-head", HeadTrainConfig(
            epochs=1, hidden=8, val_fraction=0.25, logprobs=True)) else None, base=target, rows=True)


def test_untrained_adapters_give_the_frozen_models_final_state_and_train_through_autograd(target):
    from reasonbudget.rewards.lora_top import LoraTop

    backend = target.backend
    ids = torch.tensor([target.encode("3 + 4 = 7\n\n7 * 2 = 14")] * 2)
    ids[1, -3:] = 0  # a row with different tail tokens: causal, so its first positions match row 0's
    top = LoraTop(backend, 2, rank=4, alpha=8.0)
    with torch.inference_mode():
        forward_out = backend(ids, backend.new_cache(2, ids.shape[1]), torch.arange(2),
                              hidden_layers=(top.start, top.start + 2))
    entering, final = forward_out.hidden[top.start].clone(), forward_out.hidden[top.start + 2]
    assert torch.allclose(top(entering), final, atol=1e-4)
    top(entering).square().mean().backward()
    grads = [p.grad for n, p in top.named_parameters() if n.endswith(".b")]
    assert len(grads) == 2 * 4 and all(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(not p.requires_grad for p in backend.parameters())  # the base stays frozen
    with pytest.raises(ValueError, match="tuned layers"):
        LoraTop(backend, backend.cfg.num_layers + 1, rank=4, alpha=8.0)


def test_a_tuned_head_trains_saves_its_adapters_and_scores_text_only(labels, target, tmp_path):
    from reasonbudget.training.head_prm import HeadTrainConfig
    from reasonbudget.training.tuned_prm import train_tuned_head

    _, _, _, labelled = labels
    out = tmp_path / "tuned"
    cfg = HeadTrainConfig(epochs=4, hidden=16, val_fraction=0.25, tuned_layers=1, lora_rank=4, lora_lr=1e-3)
    report = train_tuned_head(target, labelled, out, cfg)
    assert report["adapter_parameters"] > 0 and report["steps"] > report["held_out"]["steps"] > 0
    assert report["train"]["step_auroc"] > 0.6
    spec = HeadSpec.load(out)
    assert spec.tuned_layers == 1 and not spec.reads_rows
    prm = HeadPRM(out, base=target)
    assert any(float(v.abs().sum()) > 0 for k, v in prm.top.state_dict().items() if k.endswith(".b"))
    s = labelled[0].solutions[0]
    whole, part = prm.score_steps([StepSequence(labelled[0].question, s.steps),
                                   StepSequence(labelled[0].question, s.steps[:2])])
    assert whole.shape == (len(s.steps),) and bool(((whole > 0) & (whole < 1)).all())
    assert torch.allclose(whole[:2], part, atol=1e-4)
    with pytest.raises(ValueError, match="scores text"):
        HeadPRM(out, base=target, rows=True)
    with pytest.raises(ValueError, match="--logprobs"):
        HeadTrainConfig(tuned_layers=2, logprobs=True)


def test_the_qwen_pair_shares_a_committed_prm_head_over_the_target():
    from reasonbudget.models.registry import registered_companion
    from reasonbudget.rewards.head_prm import HeadSpec

    where = registered_companion("qwen2.5-coder-0.5b", "prm")
    assert where == registered_companion("qwen2.5-coder-1.5b", "prm")
    spec = HeadSpec.load(where)
    assert (where / HEAD_FILE).exists() and spec.base == "qwen2.5-coder-1.5b" and spec.reads_rows
    assert spec.base_shape == (1536, 28, 151936) and spec.calibration[0] > 0


def test_prm_auto_picks_a_models_trained_head(labels, target, tmp_path, monkeypatch):
    from reasonbudget.models import load_model
    from reasonbudget.rewards import factory
    from reasonbudget.training.head_prm import HeadTrainConfig, train_head

    _, _, _, labelled = labels
    smol = load_model("smollm2-135m")
    monkeypatch.setenv("REASONBUDGET_CACHE", str(tmp_path))
    no_head = factory.load_prm("auto", smol)  # no head: the policy's lowest token probability (measured > the judge)
    assert type(no_head).__name__ == "PolicyLogProb" and no_head.aggregate == "min"
    from types import SimpleNamespace

    unknown = SimpleNamespace(name="remote:http://127.0.0.1:9#not-here", served_model="not-here", profile=smol.profile,
                              judge=lambda: "the server's judge")
    assert factory.load_prm("auto", unknown) == "the server's judge"  # its model is not available here
    from reasonbudget.models.registry import companion_dir

    where = companion_dir(smol.name, "prm")
    train_head(target, labelled, where, HeadTrainConfig(epochs=2, hidden=8, val_fraction=0.25))
    spec = json.loads((where / HEAD_CONFIG).read_text())
    assert spec["base"] == "testbed-target" and not math.isnan(spec["calibration"][0])
    prm = factory.load_prm("auto", smol)
    assert type(prm).__name__ == "HeadPRM" and prm.base.name == "testbed-target"
    # a remote policy serving that model gets the same head (it scores text; its base model runs here)
    remote = SimpleNamespace(name="remote:http://127.0.0.1:9#smollm2-135m", served_model="smollm2-135m",
                             profile=smol.profile)
    assert type(factory.load_prm("auto", remote)).__name__ == "HeadPRM"
    # a head whose base model is not installed here: prm=auto passes over it to the fallback
    spec["base"] = "qwen-not-installed"
    (where / HEAD_CONFIG).write_text(json.dumps(spec))
    factory.loaded_prms(smol).clear()
    assert type(factory.load_prm("auto", smol)).__name__ == "PolicyLogProb"


def test_policy_confidence_is_the_geometric_mean_token_probability_so_far(labels, target):
    from reasonbudget.rewards.factory import load_prm
    from reasonbudget.rewards.logprob import prefix_confidence

    # steps of 2 and 1 tokens with mean log-probs -1 and -4: exp(-1), then exp((-2 - 4) / 3)
    f = torch.tensor([[0.0, -1.0 / 20, 0.0], [0.0, -4.0 / 20, 0.0]])
    assert torch.allclose(prefix_confidence(f, [2, 1]), torch.tensor([math.exp(-1), math.exp(-2)]))
    _, _, _, labelled = labels
    prm = load_prm("logprob", target)
    s = labelled[0].solutions[0]
    whole, part = prm.score_steps([StepSequence(labelled[0].question, s.steps),
                                   StepSequence(labelled[0].question, s.steps[:2])])
    assert whole.shape == (len(s.steps),) and bool(((whole > 0) & (whole <= 1)).all())
    assert torch.allclose(whole[:2], part, atol=1e-5)


def test_policy_min_confidence_is_the_least_likely_token_so_far(labels, target):
    from reasonbudget.rewards.factory import load_prm
    from reasonbudget.rewards.logprob import PolicyLogProb, prefix_min_confidence

    f = torch.tensor([[-1.0 / 20, -0.5 / 20, -1.0 / 20], [-0.5 / 20, -0.2 / 20, -1.0 / 20],
                      [-3.0 / 20, -1.0 / 20, -3.0 / 20]])  # running minimum -1, -1, -3
    assert torch.allclose(prefix_min_confidence(f), torch.tensor([math.exp(-1), math.exp(-1), math.exp(-3)]))
    _, _, _, labelled = labels
    prm = load_prm("logprob-min", target)
    s = labelled[0].solutions[0]
    (scores,) = prm.score_steps([StepSequence(labelled[0].question, s.steps)])
    assert bool((scores[1:] <= scores[:-1]).all()) and bool(((scores > 0) & (scores <= 1)).all())
    with pytest.raises(ValueError, match="accepted are mean, min"):
        PolicyLogProb(target, "max")


def test_train_prm_command_labels_resumably_trains_and_refuses_bad_input(tmp_path):
    from typer.testing import CliRunner

    from reasonbudget.cli import app

    run = lambda *a: CliRunner().invoke(app, ["train-prm", *a])  # noqa: E731
    args = ["--model", "testbed-target", "--task", "testbed:d=3", "--limit", "4", "--samples", "2", "--rollouts", "2",
            "--max-tokens", "96", "--epochs", "3", "--labels", str(tmp_path / "l.jsonl"), "--out", str(tmp_path / "h")]
    r = run(*args, "--label-only")
    assert r.exit_code == 0, r.output
    assert len((tmp_path / "l.jsonl").read_text().splitlines()) == 4 and not (tmp_path / "h").exists()
    r = run(*args)  # resumes: nothing left to label, then trains
    assert r.exit_code == 0, r.output
    assert (tmp_path / "h" / HEAD_FILE).exists() and json.loads((tmp_path / "h" / "training.json").read_text())["steps"] > 0
    r = run(*args[:-2], "--out", str(tmp_path / "t"), "--tune-layers", "1", "--lora-rank", "2")
    assert r.exit_code == 0, r.output
    assert HeadSpec.load(tmp_path / "t").tuned_layers == 1
    assert json.loads((tmp_path / "t" / "training.json").read_text())["adapter_parameters"] > 0
    r = run(*args, "--tune-layers", "-1")
    assert r.exit_code == 2 and "--tune-layers -1" in r.output
    r = run(*args[:-2], "--out", str(tmp_path / "l3"), "--layers", "3")
    assert r.exit_code == 0, r.output
    assert HeadSpec.load(tmp_path / "l3").layers == (3,)
    for bad, says in (("x", "layer numbers >= 0"), ("9", "has layers 0-4")):
        r = run(*args, "--layers", bad)
        assert r.exit_code == 2 and says in r.output, r.output
    r = run(*args, "--tune-layers", "1", "--logprobs")
    assert r.exit_code == 2 and "hidden states only" in r.output
    r = run(*args[:-4], "--labels", str(tmp_path / "l.jsonl"), "--samples", "3")
    assert r.exit_code == 2 and "other settings" in r.output
    r = run("--model", "testbed-target", "--temperature", "0")
    assert r.exit_code == 2 and "need sampling" in r.output


def test_the_learning_curve_benchmark_scores_the_tuned_recipe_through_the_saved_head(labels, tmp_path):
    from tests.helpers import load_benchmark

    _, path, _, labelled = labels
    bench = load_benchmark("prm_curve")
    (result,), test = bench.curve("testbed-target", path, path, [8], 1, "float32", tune_layers=1)
    (row,) = result["rows"]
    assert result["tuned_layers"] == 1 and row["problems"] == 8 and len(row["seeds"]) == 1
    assert 0.0 <= row["step_auroc"] <= 1.0 and len(test.y) > 0
