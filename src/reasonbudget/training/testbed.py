"""`reasonbudget testbed train`: regenerate data and retrain the target (then tune it on TALE's prompts), the
draft, the PRM, the target's length predictor and the pair's router."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from pathlib import Path

from reasonbudget.models.registry import testbed_checkpoints
from reasonbudget.testbed.problems import MAX_DIFFICULTY, generate

logger = logging.getLogger(__name__)
CHECKPOINTS = testbed_checkpoints()
PRM_SEED_OFFSET = 2_000_000  # PRM training problems: disjoint from LM training and from test seeds
ROUTER_SEED_OFFSET = 5_000_000  # router labels (3M: the quality benchmark's held-out PRM problems; 4M: predictor)
PREDICTOR_DIR = "testbed-target-length-predictor"  # budget guidance's length predictor for the target
ROUTER_DIR = "router"  # Arbitrage's router for the (draft, target) pair
TALE_PT_SEED_OFFSET = 6_000_000  # TALE-PT's training questions
TALE_PT_DIR = "target-tale-pt"


def prm_training_problems(per_difficulty: int):
    return [p for d in range(1, MAX_DIFFICULTY + 1)
            for p in generate(per_difficulty, difficulty=d, seed=PRM_SEED_OFFSET + d)]


def router_training_problems(per_difficulty: int):
    return [p for d in range(1, MAX_DIFFICULTY + 1)
            for p in generate(per_difficulty, difficulty=d, seed=ROUTER_SEED_OFFSET + d)]


def train_testbed_router(draft, target, prm_dir: Path, router_out: Path, *, per_difficulty: int = 100,
                         cfg=None, pair: dict | None = None, **generation) -> dict:
    """Oracle labels of a testbed (draft, target) pair of LoadedModels scored by the PRM in `prm_dir`, then the
    router (initialised from that PRM's verifier LM) into `router_out`."""
    from reasonbudget.rewards.testbed_prm import TestbedPRM
    from reasonbudget.training.router import RouterTrainConfig, generate_labels, train_router

    t0 = time.time()
    questions = [p.question for p in router_training_problems(per_difficulty)]
    examples = generate_labels(draft, target, TestbedPRM(prm_dir), questions, **generation,
                               progress=lambda k, n: logger.info("router labels: %d/%d problems", k, n))
    labelling = round(time.time() - t0, 1)
    report = train_router(examples, prm_dir, router_out, cfg or RouterTrainConfig(),
                          separator=target.profile.step_delimiter,
                          pair=pair or {"draft": draft.name, "target": target.name})
    return {"labelling_seconds": labelling, "problems": len(questions), **report}


def train_tale_pt_stage(out: Path, *, per_difficulty: int = 100, smoke: bool = False) -> dict:
    """TALE-PT: the target's budget-optimal answers on fresh questions (TALE's search, reference prompts),
    then SFT of the target on them into out/target-tale-pt."""
    from reasonbudget.models import load_model
    from reasonbudget.testbed.traces import final_answer
    from reasonbudget.training.tale_pt import SFTConfig, train_tale_pt

    problems = [p for d in range(1, MAX_DIFFICULTY + 1)
                for p in generate(1 if smoke else per_difficulty, difficulty=d, seed=TALE_PT_SEED_OFFSET + d)]
    # smoke: a 3-step target is never right, so every answer counts as right (the pipeline runs, nothing else)
    is_correct = (lambda i, a: True) if smoke else (lambda i, a: final_answer(a) == problems[i].answer)
    return train_tale_pt(load_model(str(out / "target")), out / "target", [p.question for p in problems], is_correct,
                         out / TALE_PT_DIR, cfg=SFTConfig(epochs=1) if smoke else SFTConfig(),
                         **(dict(max_thinking_tokens=24, max_answer_tokens=8) if smoke else {}),
                         progress=lambda k, n: logger.info("TALE-PT budget search: %d/%d questions", k, n))


def train_router_stage(out: Path, *, smoke: bool = False) -> dict:
    from reasonbudget.models import load_model
    from reasonbudget.training.router import RouterTrainConfig

    draft, target = load_model(str(out / "draft")), load_model(str(out / "target"))
    smoke_args = dict(per_difficulty=1, cfg=RouterTrainConfig(epochs=1), max_steps=3, max_tokens=48) if smoke else {}
    pair = {"draft": "testbed-draft", "target": "testbed-target"}  # what the checkpoints are registered as
    return train_testbed_router(draft, target, out / "prm", out / ROUTER_DIR, pair=pair, **smoke_args)


def train_prm_stage(out: Path, *, per_difficulty: int = 60, samples: int = 4, smoke: bool = False) -> dict:
    """The verifier LM (into out/prm), then traces of the target and draft at T=1 and the step head."""
    from reasonbudget.models import load_model
    from reasonbudget.training.testbed_prm import PRMTrainConfig, sample_labelled_traces, train_prm
    from reasonbudget.training.testbed_lm import VERIFIER, train

    verifier = replace(VERIFIER, steps=3, warmup_steps=1) if smoke else VERIFIER
    stats: dict = {"verifier_lm": train(verifier, out / "prm", name="verifier", init=out / "target")}
    t0 = time.time()
    problems = prm_training_problems(per_difficulty)
    data = []
    for name in ("target", "draft"):
        model = load_model(str(out / name))
        data += sample_labelled_traces(model, problems, samples=samples, temperature=1.0, seed=1)
    stats["sampling_seconds"] = round(time.time() - t0, 1)
    cfg = replace(PRMTrainConfig(), epochs=1) if smoke else PRMTrainConfig()
    stats["step_head"] = train_prm(data, cfg, out / "prm")
    return stats


def retrain_all(out: Path = CHECKPOINTS, *, smoke: bool = False) -> dict:
    """Everything, from data generation to checkpoints. `smoke`: a few steps of each stage (tests only)."""
    from reasonbudget.models import load_model
    from reasonbudget.training.length_predictor import train_predictor_for
    from reasonbudget.training.testbed_lm import DRAFT, PROMPT_TUNING, TARGET, train

    t0 = time.time()
    target, tuning, draft = ((replace(c, steps=3, warmup_steps=1) for c in (TARGET, PROMPT_TUNING, DRAFT)) if smoke
                             else (TARGET, PROMPT_TUNING, DRAFT))
    report = {"target": train(target, out / "target", name="target"),
              "target_prompt_tuning": train(tuning, out / "target", name="target-prompts", init=out / "target"),
              "draft": train(draft, out / "draft", name="draft"),
              "prm": train_prm_stage(out, **(dict(per_difficulty=1, samples=1, smoke=True) if smoke else {})),
              "length_predictor": train_predictor_for(load_model(str(out / "target")), out / PREDICTOR_DIR,
                                                      data="testbed", **(dict(traces=16, epochs=1) if smoke else {})),
              "router": train_router_stage(out, smoke=smoke),
              "tale_pt": train_tale_pt_stage(out, smoke=smoke)}
    report["total_seconds"] = round(time.time() - t0, 1)
    (out / "retrain.json").write_text(json.dumps(report, indent=2))
    return report
