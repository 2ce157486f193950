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
                         cfg=None, pair: dict | None = None, kind: str = "prm-features", **generation) -> dict:
    """Oracle labels of a testbed (draft, target) pair of LoadedModels scored by the PRM in `prm_dir`, then the
    router into `router_out`: a head over that PRM's step features (`kind="prm-features"`, started from its step
    head) or a classifier fine-tuned from its verifier LM (`"classifier"`, the paper's recipe)."""
    from reasonbudget.rewards.testbed_prm import TestbedPRM
    from reasonbudget.training.router import RouterTrainConfig, generate_labels, train_router

    if kind not in ("prm-features", "classifier"):
        raise ValueError(f"router kind {kind!r}: accepted are prm-features, classifier")
    t0 = time.time()
    questions = [p.question for p in router_training_problems(per_difficulty)]
    examples = generate_labels(draft, target, TestbedPRM(prm_dir), questions, **generation,
                               progress=lambda k, n: logger.info("router labels: %d/%d problems", k, n))
    labelling = round(time.time() - t0, 1)
    pair = pair or {"draft": draft.name, "target": target.name}
    if kind == "prm-features":
        from reasonbudget.training.prm_router import PRMRouterConfig, train_prm_feature_router

        report = train_prm_feature_router(examples, prm_dir, router_out, cfg or PRMRouterConfig(),
                                          separator=target.profile.step_delimiter, pair=pair)
    else:
        report = train_router(examples, prm_dir, router_out, cfg or RouterTrainConfig(),
                              separator=target.profile.step_delimiter, pair=pair)
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
    from reasonbudget.training.prm_router import PRMRouterConfig

    draft, target = load_model(str(out / "draft")), load_model(str(out / "target"))
    smoke_args = dict(per_difficulty=1, cfg=PRMRouterConfig(epochs=1), max_steps=3, max_tokens=48) if smoke else {}
    pair = {"draft": "testbed-draft", "target": "testbed-target"}  # what the checkpoints are registered as
    return train_testbed_router(draft, target, out / "prm", out / ROUTER_DIR, pair=pair, **smoke_args)


def smoke_config(cfg):
    """A language-model stage's recipe cut to 3 steps of 4 examples: the pipeline runs, nothing is learnt (the
    recipes' 32 examples made a step 30-40 s on a 2-core AVX2 machine)."""
    return replace(cfg, steps=3, warmup_steps=1, batch_size=4)


def train_prm_stage(out: Path, *, per_difficulty: int = 60, samples: int = 4, smoke: bool = False) -> dict:
    """The verifier LM (into out/prm), then traces of the target and draft at T=1 and the step head."""
    from reasonbudget.models import load_model
    from reasonbudget.training.testbed_prm import PRMTrainConfig, sample_labelled_traces, train_prm
    from reasonbudget.training.testbed_lm import VERIFIER, train

    verifier = smoke_config(VERIFIER) if smoke else VERIFIER
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


def _lm_stage(out: Path, smoke: bool, which: str) -> dict:
    from reasonbudget.training.testbed_lm import DRAFT, PROMPT_TUNING, TARGET, train

    cfg = {"target": TARGET, "target_prompt_tuning": PROMPT_TUNING, "draft": DRAFT}[which]
    if smoke:
        cfg = smoke_config(cfg)
    if which == "target_prompt_tuning":
        return train(cfg, out / "target", name="target-prompts", init=out / "target")
    return train(cfg, out / which, name=which)


def _predictor_stage(out: Path, smoke: bool) -> dict:
    from reasonbudget.models import load_model
    from reasonbudget.training.length_predictor import train_predictor_for

    return train_predictor_for(load_model(str(out / "target")), out / PREDICTOR_DIR, data="testbed",
                               **(dict(traces=16, epochs=1) if smoke else {}))


def _prm_stage(out: Path, smoke: bool) -> dict:
    return train_prm_stage(out, **(dict(per_difficulty=1, samples=1, smoke=True) if smoke else {}))


# Stage -> (what it needs, how it runs). The draft trains alongside the target; the PRM, the length predictor and
# TALE-PT all start from the tuned target and run side by side; the router needs the PRM and both models.
STAGES = {
    "target": ((), lambda out, smoke: _lm_stage(out, smoke, "target")),
    "draft": ((), lambda out, smoke: _lm_stage(out, smoke, "draft")),
    "target_prompt_tuning": (("target",), lambda out, smoke: _lm_stage(out, smoke, "target_prompt_tuning")),
    "prm": (("target_prompt_tuning", "draft"), _prm_stage),
    "length_predictor": (("target_prompt_tuning",), _predictor_stage),
    "tale_pt": (("target_prompt_tuning",), lambda out, smoke: train_tale_pt_stage(out, smoke=smoke)),
    "router": (("prm", "draft"), lambda out, smoke: train_router_stage(out, smoke=smoke)),
}


def _worker_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(processName)s %(message)s")


def run_stage(name: str, out: Path, smoke: bool, threads: int | None = None) -> tuple[dict, float, float]:
    """One stage (in a worker process when stages run in parallel): its report, start and end (epoch seconds)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    start = time.time()
    report = STAGES[name][1](out, smoke)
    return report, start, time.time()


def retrain_all(out: Path = CHECKPOINTS, *, smoke: bool = False, jobs: int = 1) -> dict:
    """Everything, from data generation to checkpoints. `smoke`: a few steps of each stage (tests only).
    `jobs` > 1 runs independent stages side by side in worker processes, each with cpu_count // jobs threads.
    Every stage seeds itself, so the order stages run in does not change what they produce."""
    t0 = time.time()
    report: dict = {}
    spans: dict[str, list[float]] = {}  # stage -> [start, end], seconds since the retrain began

    def finish(name: str, result: tuple[dict, float, float]) -> None:
        report[name], start, end = result
        spans[name] = [round(start - t0, 1), round(end - t0, 1)]
        logger.info("stage %s done in %.0fs (%.0fs since the start)", name, end - start, end - t0)

    pending = dict(STAGES)

    def ready() -> list[str]:
        return [n for n, (needs, _) in pending.items() if all(d in report for d in needs)]

    if jobs <= 1:
        while pending:
            name = ready()[0]
            del pending[name]
            finish(name, run_stage(name, out, smoke))
    else:
        import multiprocessing as mp
        import os
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

        threads = max(1, (os.cpu_count() or 1) // jobs)
        with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"),
                                 initializer=_worker_logging) as pool:
            running: dict = {}
            while pending or running:
                for name in ready():
                    del pending[name]
                    running[pool.submit(run_stage, name, out, smoke, threads)] = name
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    finish(running.pop(future), future.result())
    report["stage_seconds"] = {name: round(end - start, 1) for name, (start, end) in spans.items()}
    report["stage_spans"] = spans
    report["jobs"] = jobs
    report["total_seconds"] = round(time.time() - t0, 1)
    (out / "retrain.json").write_text(json.dumps(report, indent=2))
    return report
