"""Arbitrage's router: its input text, label generation, balancing, metrics, the trained classifier and the head
over the PRM's step features."""

import json
import math
import random

import pytest
import torch

from reasonbudget.rewards.router import RouterItem, StepRouter, router_text
from reasonbudget.training.router import (
    RouterExample,
    balanced,
    load_examples,
    router_metrics,
    save_examples,
    spearman_interval,
    split_by_problem,
)
from reasonbudget.training.testbed import CHECKPOINTS


def _ex(problem: str, d: float, t: float) -> RouterExample:
    return RouterExample(RouterItem(problem, (("1 + 2 = 3", 1),), ("3 * 2 = 6",)), ("3 * 2 = 6",), d, t)


def test_router_text_annotates_writers_and_the_current_draft_step():
    item = RouterItem("1 + 2 * 2 mod 100", (("1 + 2 = 3", 0), ("3 * 2 = 6", 1)), ("</think>", "The answer is 6."))
    assert router_text(item, "\n") == ("1 + 2 * 2 mod 100\nModel 0: 1 + 2 = 3\nModel 1: 3 * 2 = 6\n"
                                       "Model 0: </think>\nModel 0: The answer is 6.\n")
    assert router_text(item, "\n\n", annotate=False).startswith("1 + 2 * 2 mod 100\n1 + 2 = 3\n\n3 * 2 = 6\n\n")


def test_labels_balancing_and_split_are_what_the_paper_says():
    ex = [_ex(f"p{i}", 0.9, 0.1) for i in range(30)] + [_ex(f"p{i}", 0.2, 0.8) for i in range(30, 40)]
    assert [e.label for e in ex[:2]] == [0, 0] and ex[-1].label == 1 and ex[-1].advantage == pytest.approx(0.6)
    assert _ex("q", 0.5, 0.5).label == 0  # ties keep the draft
    b = balanced(ex, random.Random(0))
    assert sum(e.label for e in b) == 10 and len(b) == 20 and len(set(map(id, b))) == 20
    train, held = split_by_problem(ex, 0.25, random.Random(0))
    assert len(held) == 10 and not {e.item.problem for e in train} & {e.item.problem for e in held}


def test_router_metrics_known_values():
    ex = [_ex("a", 0.9, 0.1), _ex("b", 0.8, 0.6), _ex("c", 0.2, 0.9), _ex("d", 0.4, 0.5)]  # advantages -.8 -.2 .7 .1
    m = router_metrics([0.1, 0.6, 0.9, 0.4], ex)
    assert m["acc0"] == 0.5 and m["acc1"] == 0.5 and m["positive_share"] == 0.5
    assert m["spearman_rho"] == pytest.approx(0.8) and m["auroc"] == pytest.approx(0.75)
    assert math.isnan(router_metrics([0.2], [ex[0]])["acc1"])


def test_spearman_interval_is_fishers_z_with_bonett_wright_variance():
    lo, hi = spearman_interval(0.15, 1000)
    half = 1.96 * math.sqrt((1 + 0.15**2 / 2) / 997)
    assert (lo, hi) == pytest.approx((math.tanh(math.atanh(0.15) - half), math.tanh(math.atanh(0.15) + half)), abs=1e-4)
    assert lo < 0.15 < hi and hi - lo < 0.13  # about +-0.06 at n = 1000
    assert spearman_interval(0.15, 4000)[1] - spearman_interval(0.15, 4000)[0] < hi - lo
    assert all(math.isnan(v) for v in spearman_interval(0.5, 3)) and all(math.isnan(v) for v in spearman_interval(float("nan"), 50))


def test_label_dump_round_trips(tmp_path):
    ex = [_ex("p", 0.25, 0.75), RouterExample(RouterItem("q", (), ("a",)), ("b", "c"), 0.5, 0.125)]
    save_examples(ex, tmp_path / "labels.jsonl")
    assert load_examples(tmp_path / "labels.jsonl") == ex
    assert set(json.loads((tmp_path / "labels.jsonl").read_text().splitlines()[0])) >= {
        "problem", "prev_responses", "draft_response", "target_response"}


@pytest.mark.parametrize("kind", ["prm-features", "classifier"])
def test_train_router_command_labels_trains_and_loads(tmp_path, kind):
    """Three problems per difficulty through the real pipeline (committed draft, target and PRM): the router
    loads and predicts one probability per item; its report has the paper's metrics."""
    from typer.testing import CliRunner

    from reasonbudget.cli import app
    from reasonbudget.rewards.router import load_router_dir

    res = CliRunner().invoke(app, ["train-router", "--problems", "3", "--epochs", "1", "--kind", kind,
                                   "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output[res.output.index("{"):])
    assert out["examples"] >= 24 and {"spearman_rho", "acc0", "acc1"} <= set(out["held_out"])
    router = load_router_dir(tmp_path)
    assert isinstance(router, StepRouter) == (kind == "classifier")
    assert json.loads((tmp_path / "router.json").read_text())["pair"] == {"draft": "testbed-draft",
                                                                           "target": "testbed-target"}
    y = router.predict([RouterItem("1 + 2 mod 100", (), ("1 + 2 = 3",)), RouterItem("1 + 2 mod 100", (), ("1 + 2 = 9",))])
    assert len(y) == 2 and all(0.0 <= v <= 1.0 for v in y) and router.calls == 2
    if kind == "prm-features":  # it starts as 1 - PRM(step): a wrong step is escalated ahead of a right one
        assert y[1] > y[0]


def test_prm_feature_router_starts_as_the_negated_prm_and_refuses_another_prm(tmp_path):
    import shutil

    from reasonbudget.rewards.prm_router import PRMFeatureHead, annotation_features, router_inputs
    from reasonbudget.rewards.testbed_prm import TestbedPRM
    from reasonbudget.training.prm_router import PRMRouterConfig, train_prm_feature_router
    from reasonbudget.training.router import RouterExample

    assert annotation_features(()) == [0.0, 0.0, 0.0]
    assert annotation_features((("a", 0), ("b", 1), ("c", 1), ("d", 0))) == [0.5, 0.0, 4 / 24]
    prm = TestbedPRM(CHECKPOINTS / "prm")
    items = [RouterItem("1 + 2 mod 100", (("1 + 2 = 3", 1),), ("3 + 4 = 7",)),
             RouterItem("1 + 2 mod 100", (), ("1 + 2 = 9",))]
    x, a = router_inputs(prm, items)
    head = PRMFeatureHead.from_prm_head(prm.head)
    with torch.no_grad():
        assert torch.allclose(head(x, a), -prm.head(x), atol=1e-6)
    prm_dir = tmp_path / "prm"
    shutil.copytree(CHECKPOINTS / "prm", prm_dir)
    examples = [RouterExample(it, ("x",), d, t) for it, d, t in zip(items * 4, [0.9, 0.1] * 4, [0.8, 0.9] * 4)]
    train_prm_feature_router(examples, prm_dir, tmp_path / "router", PRMRouterConfig(epochs=1, val_fraction=0.0),
                             separator="\n")
    from reasonbudget.rewards.router import load_router_dir

    assert len(load_router_dir(tmp_path / "router").predict(items)) == 2
    (prm_dir / "step_head.safetensors").write_bytes((prm_dir / "step_head.safetensors").read_bytes()[:-4] + b"\0" * 4)
    with pytest.raises(ValueError, match="another PRM.*train-router"):
        load_router_dir(tmp_path / "router")
    shutil.rmtree(prm_dir)
    with pytest.raises(FileNotFoundError, match="missing.*train-router"):
        load_router_dir(tmp_path / "router")


def test_train_router_refuses_a_pair_it_cannot_label(smollm):
    from typer.testing import CliRunner

    from reasonbudget.cli import app

    res = CliRunner().invoke(app, ["train-router", "--draft", "smollm2-135m", "--target", "smollm2-135m"])
    assert res.exit_code != 0 and "no trained PRM" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(app, ["train-router", "--problems", "0"])
    assert res.exit_code != 0 and "--problems" in res.output
    res = CliRunner().invoke(app, ["train-router", "--skip", "-1"])
    assert res.exit_code != 0 and "--skip >= 0" in res.output and "Traceback" not in res.output


def test_missing_router_says_how_to_train_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="reasonbudget train-router"):
        StepRouter(tmp_path)


def test_bucketed_batches_and_schedule():
    from reasonbudget.training.batching import bucketed_batches, warmup_linear

    items = list(range(100))
    batches = bucketed_batches(items, lambda x: x, 10, random.Random(0), bucket=10)
    assert sorted(x for b in batches for x in b) == items  # every item once
    assert all(len({x // 10 for x in b}) == 1 for b in batches)  # one length bucket per batch
    assert [warmup_linear(s, 10, 2, 1.0) for s in (0, 1, 2, 6, 10)] == [0.5, 1.0, 1.0, 0.5, 0.0]


def test_a_router_head_over_a_frozen_draft_trains_loads_and_routes(tmp_path, monkeypatch):
    """The router of real pairs (too large to fine-tune here): a head over the frozen draft's hidden states,
    trained on oracle labels, loaded by `router=DIR` like the fine-tuned one, refused for another pair."""
    import torch

    from reasonbudget.engine import Engine, SamplingConfig
    from reasonbudget.methods import make_method
    from reasonbudget.models import load_model
    from reasonbudget.rewards.factory import testbed_prm_dir
    from reasonbudget.rewards.router import load_router_dir
    from reasonbudget.rewards.testbed_prm import TestbedPRM
    from reasonbudget.tasks import get_task
    from reasonbudget.training.router import HeadRouterConfig, generate_labels, train_head_router

    draft, target = load_model("testbed-draft"), load_model("testbed-target")
    task = get_task("testbed:d=6")
    questions = [p.question for p in task.problems(12)]
    examples = generate_labels(draft, target, TestbedPRM(testbed_prm_dir(target)), questions)
    assert len(examples) > 24 and 0 < sum(e.label for e in examples) < len(examples)
    report = train_head_router(examples, draft, tmp_path, HeadRouterConfig(epochs=20, hidden=16, val_fraction=0.25),
                               separator="\n", pair={"draft": "testbed-draft", "target": "testbed-target"})
    assert {"spearman_rho", "acc0", "acc1"} <= set(report["held_out"]) and report["train_examples"] > 0
    cross = report["cross_fitted"]  # every round scored once, by a head that never saw its problem
    assert cross["folds"] == 5 and cross["examples"] == len(examples)
    assert cross["spearman_rho_ci"][0] <= cross["spearman_rho"] <= cross["spearman_rho_ci"][1]
    router = load_router_dir(tmp_path)
    assert type(router).__name__ == "HeadRouter"
    y = router.predict([e.item for e in examples[:5]])
    assert len(y) == 5 and all(0.0 <= v <= 1.0 for v in y) and router.tokens_read > 0
    from reasonbudget.rewards.head_router import text_features

    whole = text_features(router.base, [router_text(e.item, "\n") for e in examples[:5]], router.config["layers"])
    assert y == pytest.approx(torch.sigmoid(router.head(whole)).tolist(), abs=1e-4)  # kept rows read as the whole
    # a later round of the same problem feeds only what its text adds to one read before
    a, b = next((a, b) for a, b in zip(examples, examples[1:]) if a.item.problem == b.item.problem)
    router.forget()
    router.predict([a.item])
    read = router.tokens_read
    router.predict([b.item])
    assert 0 < router.tokens_read - read < len(router.base.encode(router_text(b.item, "\n")))
    prompts = [task.prompt(target, p) for p in task.problems(2)]
    results = make_method(f"arbitrage:draft=testbed-draft,router={tmp_path},threshold=0.5", SamplingConfig()).run(
        Engine(target), prompts, budget=None, generator=torch.Generator().manual_seed(0))
    assert all(r.trace["router_calls"] == r.trace["rounds"] > 0 and r.usage.prm_tokens > 0 for r in results)
    with pytest.raises(ValueError, match="trained on testbed-draft"):
        type(router)(tmp_path, base=target)
    # router=auto finds a router that train-router wrote to the user cache for a target the registry does not know
    from types import SimpleNamespace

    from reasonbudget.methods.drafting.arbitrage import load_router
    from reasonbudget.models.registry import companion_dir

    monkeypatch.setenv("REASONBUDGET_CACHE", str(tmp_path / "cache"))
    other = SimpleNamespace(name="my-target")
    with pytest.raises(ValueError, match="no router for my-target.*train-router"):
        load_router("auto", "testbed-draft", other)
    where = companion_dir("my-target", "router")
    where.mkdir(parents=True)
    for f in (f for f in tmp_path.iterdir() if f.is_file()):
        (where / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((where / "router.json").read_text())
    (where / "router.json").write_text(json.dumps(cfg | {"pair": {"draft": "testbed-draft", "target": "my-target"}}))
    assert type(load_router("auto", "testbed-draft", other)).__name__ == "HeadRouter"


def test_label_journal_resumes_finished_problems_and_keeps_settings_apart(tmp_path):
    from reasonbudget.models import load_model
    from reasonbudget.rewards.factory import testbed_prm_dir
    from reasonbudget.rewards.testbed_prm import TestbedPRM
    from reasonbudget.tasks import get_task
    from reasonbudget.training.router import generate_labels

    draft, target = load_model("testbed-draft"), load_model("testbed-target")
    prm = TestbedPRM(testbed_prm_dir(target))
    questions = [p.question for p in get_task("testbed:d=6").problems(3)]
    journal = tmp_path / "labels.partial.jsonl"
    first = generate_labels(draft, target, prm, questions[:2], batch_size=1, journal=journal, identity={"prm": "a"})
    assert len(journal.read_text().splitlines()) == 2  # one line per finished problem

    class Refusing:  # any rollout would need a score
        def score_steps(self, items):
            raise AssertionError("a journaled problem was rolled out again")

    assert generate_labels(draft, target, Refusing(), questions[:2], journal=journal, identity={"prm": "a"}) == first
    with journal.open("a") as f:
        f.write('{"problem": "cut by a ki')  # a kill mid-line: that problem runs again
    seen = []
    both = generate_labels(draft, target, prm, questions, journal=journal, identity={"prm": "a"},
                           progress=lambda done, total: seen.append((done, total)))
    assert both[: len(first)] == first and len(both) > len(first) and seen == [(2, 3), (3, 3)]
    assert json.loads(journal.read_text().splitlines()[-1])["problem"] == questions[2]  # on a line of its own
    with pytest.raises(AssertionError, match="rolled out again"):  # another PRM's labels are not reused
        generate_labels(draft, target, Refusing(), questions[:1], journal=journal, identity={"prm": "b"})


def test_the_qwen_pair_has_a_committed_router_head_over_the_draft(monkeypatch, tmp_path):
    from types import SimpleNamespace

    from reasonbudget.methods.drafting.arbitrage import load_router
    from reasonbudget.models.registry import companion_dir, registered_companion
    from reasonbudget.rewards.head_router import HEAD_FILE

    monkeypatch.setenv("REASONBUDGET_CACHE", str(tmp_path))  # no user-trained router in the way
    where = registered_companion("qwen2.5-coder-1.5b", "router")
    assert where is not None and companion_dir("qwen2.5-coder-1.5b", "router") == where
    cfg = json.loads((where / "router.json").read_text())
    assert (where / HEAD_FILE).exists() and cfg["kind"] == "head" and cfg["base"] == "qwen2.5-coder-0.5b"
    assert cfg["pair"] == {"draft": "qwen2.5-coder-0.5b", "target": "qwen2.5-coder-1.5b"}
    report = json.loads((where / "router_training.json").read_text())
    assert report["examples"] > 1000 and report["cross_fitted"]["examples"] == report["examples"]
    with pytest.raises(ValueError, match="trained for qwen2.5-coder-0.5b -> qwen2.5-coder-1.5b, not testbed-draft"):
        load_router("auto", "testbed-draft", SimpleNamespace(name="qwen2.5-coder-1.5b"))
