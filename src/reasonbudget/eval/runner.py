"""Evaluation sweeps: task x method x budget x seed, decoded in engine batches, resumable.

Work is cut into fixed units (method, budget, seed, a chunk of `batch_size` problems in task order). A unit
whose records are all in the results file is skipped; any other unit is recomputed whole and only its
missing records are written. Every problem has its own generator seeded from (seed, problem id), so a
resumed sweep reproduces an uninterrupted one exactly, sampled or greedy.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from reasonbudget.eval.records import Key, ResultsFile

logger = logging.getLogger(__name__)
VERSION = "0.1.0"


@dataclass(frozen=True, kw_only=True)
class SweepConfig:
    task: str
    methods: tuple[str, ...]
    budgets: tuple[int, ...] = ()
    """Thinking budgets (tokens) for methods that take one; methods without a budget run once."""
    seeds: tuple[int, ...] = (0,)
    limit: int | None = None
    """First N problems of the task."""
    model: str = "smollm2-135m"
    temperature: float = 0.0
    top_p: float = 1.0
    dtype: str = "float32"
    device: str = "cpu"
    batch_size: int = 16
    """Problems decoded together in one engine batch."""
    quant: str = "none"
    """Weight-only quantized linears (none | int8 | int4 | bf16): part of the run's identity, as the dtype is."""

    def __post_init__(self) -> None:
        from reasonbudget.methods import METHODS
        from reasonbudget.methods.spec import method_class
        from reasonbudget.models.quant import check_quant

        check_quant(self.quant)
        if not self.methods:
            raise ValueError(f"no method given; available: {', '.join(METHODS)}")
        budgeted = [m for m in self.methods if method_class(m).capabilities.sweeps_budgets]  # unknown names raise
        if budgeted and not self.budgets:
            raise ValueError("budgets are required for " + ", ".join(budgeted))
        if any(b < 1 for b in self.budgets):
            raise ValueError(f"budgets must be >= 1 tokens, got {list(self.budgets)}")
        if not self.seeds or self.limit is not None and self.limit < 1 or self.batch_size < 1:
            raise ValueError("seeds must be non-empty, limit >= 1 and batch_size >= 1")
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature}: must be >= 0")

    def identity(self) -> dict[str, Any]:
        """What must match for two runs to share a results file: the model by the content of its weights and
        companion artefacts, not only by name (a retrained `testbed-target` is another model)."""
        return {"task": self.task, "model": self.model, "temperature": self.temperature, "top_p": self.top_p,
                "dtype": self.dtype, "device": self.device, "fingerprints": _fingerprints(self.model),
                **({"quant": self.quant} if self.quant != "none" else {})}


def _fingerprints(model: str) -> dict[str, str]:
    """Content fingerprints (first and last MiB of each file: milliseconds, even for GB of weights)."""
    from reasonbudget.models.registry import model_fingerprints
    from reasonbudget.remote.model import is_remote

    return {} if is_remote(model) else model_fingerprints(model)  # a server's weights cannot be read from here


@dataclass(frozen=True)
class Unit:
    method: str
    budget: int | None
    seed: int
    problem_ids: tuple[str, ...]


def problem_seed(seed: int, problem_id: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{problem_id}".encode()).digest()[:8], "little") >> 1


def plan(cfg: SweepConfig, problem_ids: Sequence[str]) -> list[Unit]:
    from reasonbudget.methods.spec import method_class

    units = []
    for method in cfg.methods:
        for budget in cfg.budgets if method_class(method).capabilities.sweeps_budgets else (None,):
            for seed in cfg.seeds:
                for i in range(0, len(problem_ids), cfg.batch_size):
                    units.append(Unit(method, budget, seed, tuple(problem_ids[i : i + cfg.batch_size])))
    return units


def unit_keys(task: str, u: Unit) -> list[Key]:
    return [(task, pid, u.method, u.budget, u.seed) for pid in u.problem_ids]


class UnitRunner:
    """Loads the model once and turns units into unscored records (also the body of a Ray actor)."""

    def __init__(self, cfg: SweepConfig, threads: int | None = None) -> None:
        import torch

        from reasonbudget.engine import Engine
        from reasonbudget.models import load_model
        from reasonbudget.tasks import get_task

        from reasonbudget.remote.model import is_remote, load_remote

        if threads:
            torch.set_num_threads(threads)
        self.cfg = cfg
        self.task = get_task(cfg.task)
        self.problems = {p.id: p for p in self.task.problems(cfg.limit)}
        self.backend = (load_remote(cfg.model) if is_remote(cfg.model)
                        else Engine(load_model(cfg.model, dtype=cfg.dtype, device=cfg.device, quant=cfg.quant)))

    def run(self, unit: Unit) -> list[dict[str, Any]]:
        import torch

        from reasonbudget.engine import SamplingConfig
        from reasonbudget.methods import solve

        cfg = self.cfg
        problems = [self.problems[pid] for pid in unit.problem_ids]
        gens = [torch.Generator().manual_seed(problem_seed(unit.seed, p.id)) for p in problems]
        results = solve(self.backend, unit.method, [self.task.question_text(p) for p in problems], budget=unit.budget,
                        sampling=SamplingConfig(temperature=cfg.temperature, top_p=cfg.top_p), generator=gens)
        return [{"task": self.task.spec, "problem_id": p.id, "method": unit.method, "budget": unit.budget,
                 "seed": unit.seed, "gold": p.gold, "thinking": r.thinking, "answer": r.answer,
                 "finish_reason": r.finish_reason, "usage": r.usage.to_dict(), "trace": dict(r.trace),
                 "model": cfg.model, "temperature": cfg.temperature, "version": VERSION}
                for p, r in zip(problems, results)]


def check_out_dir(out: Path, cfg: SweepConfig) -> None:
    """Create DIR (or fail clearly) and make sure an existing sweep there is the same kind of run."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"cannot write to output directory {out}: {e.strerror or e}") from None
    manifest = out / "run.json"
    if manifest.exists():
        previous = json.loads(manifest.read_text()).get("identity", {})
        now = cfg.identity()
        if previous != now:
            changed = [k for k in {**previous, **now} if previous.get(k) != now.get(k)]
            if "fingerprints" not in previous:
                raise ValueError(f"{out} was written before sweeps recorded the weights' fingerprints, so its "
                                 "records cannot be told apart from another version's; choose another --out or "
                                 "delete it")
            if changed == ["fingerprints"]:
                raise ValueError(f"{out} holds results of {cfg.model} with other weights or companion artefacts "
                                 f"({previous.get('fingerprints')} there vs {now['fingerprints']} now: retrained "
                                 "since?); choose another --out or delete it")
            diff = ", ".join(f"{k}={previous.get(k)!r} there vs {now.get(k)!r} now" for k in changed)
            raise ValueError(f"{out} holds a different sweep ({diff}); choose another --out")


def run_sweep(cfg: SweepConfig, out: Path, *, ray_address: str | None = None, progress: bool = True,
              threads: int | None = None) -> Path:
    """Run what is missing, then write the report; returns the path of summary.json."""
    from reasonbudget.eval.report import write_report
    from reasonbudget.tasks import get_task, grade_many

    from reasonbudget.models.registry import resolve

    from reasonbudget.remote.model import is_remote, parse_remote_name

    task = get_task(cfg.task)  # unknown task or model: fail before anything is written
    parse_remote_name(cfg.model) if is_remote(cfg.model) else resolve(cfg.model)
    problems = task.problems(cfg.limit)
    check_out_dir(out, cfg)
    results = ResultsFile(out / "results.jsonl")
    done = results.load()
    units = [u for u in plan(cfg, [p.id for p in problems]) if not all(k in done for k in unit_keys(task.spec, u))]
    (out / "run.json").write_text(json.dumps({"identity": cfg.identity(), "config": asdict(cfg),
                                              "version": VERSION}, indent=2))
    bar = _progress(sum(len(u.problem_ids) for u in units), enabled=progress)
    correct = total = 0
    t0 = time.perf_counter()
    for unit, records in _execute(cfg, units, ray_address, threads):
        todo = [r for r, k in zip(records, unit_keys(task.spec, unit)) if k not in done]
        verdicts = grade_many([(r["answer"], r["gold"], task.grader) for r in todo])
        for r, ok in zip(todo, verdicts):
            r["correct"] = ok
            r["extracted"] = _extracted(r["answer"], task.grader)
        results.append(todo)
        correct, total = correct + sum(verdicts), total + len(todo)
        bar.update(len(unit.problem_ids))
        bar.set_postfix(acc=f"{correct / max(total, 1):.3f}", unit=f"{unit.method}@{unit.budget}")
    bar.close()
    logger.info("sweep finished in %.1fs (%d new records)", time.perf_counter() - t0, total)
    return write_report(out)


def _extracted(answer: str, grader: str) -> str | None:
    from reasonbudget.tasks.extraction import extract_answer
    from reasonbudget.tasks.grading import NUMERIC_TASKS

    return extract_answer(answer, numeric=grader in NUMERIC_TASKS)


def _progress(total: int, *, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="problem", desc="eval", disable=not enabled, dynamic_ncols=True)


def _execute(cfg: SweepConfig, units: list[Unit], ray_address: str | None,
             threads: int | None) -> Iterator[tuple[Unit, list[dict[str, Any]]]]:
    if not units:
        return
    if ray_address is not None:
        from reasonbudget.eval.distributed import execute_on_ray

        yield from execute_on_ray(cfg, units, ray_address)
        return
    runner = UnitRunner(cfg, threads)
    for unit in units:
        yield unit, runner.run(unit)
