"""Answer grading with math-verify, in a process pool with a per-item timeout.

math-verify's own timeouts use signals, which only work in the main thread (so not in servers or threads);
here every check runs in a worker process that pebble kills when it exceeds `timeout`. `grade` never
raises: malformed input, parse failures and timeouts all grade as False.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
from collections.abc import Sequence
from concurrent.futures import TimeoutError as FutureTimeout

from reasonbudget.tasks.extraction import extract_answer, normalize_number

logger = logging.getLogger(__name__)

NUMERIC_TASKS = ("gsm8k", "aime24", "aime", "testbed")
DEFAULT_TIMEOUT = 5.0
_pool = None


def _task_family(task: str) -> str:
    return task.split(":")[0].split("-")[0]


def _verify(gold: str, pred: str) -> bool:
    """Runs in a worker process: symbolic equivalence of two answers given as math-verify input text."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    configs = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
    g = parse(gold, extraction_config=configs, parsing_timeout=None)
    p = parse(pred, extraction_config=configs, parsing_timeout=None)
    if not g or not p:
        return False
    return bool(verify(g, p, timeout_seconds=None))


def _quiet_worker() -> None:
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # it warns that we disabled its own timeouts


def _get_pool():
    global _pool
    if _pool is None:
        from pebble import ProcessPool

        # fork, not spawn: spawn re-runs the user's __main__ module in every worker
        _pool = ProcessPool(max_workers=2, context=multiprocessing.get_context("fork"),
                            initializer=_quiet_worker)
        atexit.register(_pool.stop)
    return _pool


def _fast_path(gold: str, pred: str, task: str) -> bool | None:
    """Numbers compared as numbers, without a worker; None when symbolic checking is needed."""
    if _task_family(task) not in NUMERIC_TASKS:
        return None
    g, p = normalize_number(gold), normalize_number(pred)
    try:
        return abs(float(g) - float(p)) <= 1e-6 * max(1.0, abs(float(g)))
    except ValueError:
        return None


def prepare(output: str, gold: str, task: str) -> tuple[str, str] | bool:
    """Extract the answer; returns the (gold, pred) pair to verify, or the verdict when already known."""
    if not isinstance(output, str) or not isinstance(gold, str) or not gold.strip():
        return False
    numeric = _task_family(task) in NUMERIC_TASKS
    pred = extract_answer(output, numeric=numeric)
    if pred is not None:
        fast = _fast_path(gold, pred, task)
        return fast if fast is not None else (_boxed(gold), _boxed(pred))
    text = output.strip()
    if numeric or not text:
        return False
    # no marked answer: a short output is the answer itself; a long one is left to math-verify's extraction
    return _boxed(gold), _boxed(text) if "\n" not in text and len(text) <= 200 else text


def _boxed(answer: str) -> str:
    return "\\boxed{" + answer.strip().strip("$").strip() + "}"


def grade_many(items: Sequence[tuple[str, str, str]], *, timeout: float = DEFAULT_TIMEOUT) -> list[bool]:
    """[(output, gold, task)] -> correctness, checked in parallel worker processes."""
    prepared = [prepare(o, g, t) for o, g, t in items]
    pool = None
    futures = {}
    for i, p in enumerate(prepared):
        if isinstance(p, tuple):
            pool = pool or _get_pool()
            futures[i] = pool.schedule(_verify, args=p, timeout=timeout)
    verdicts = [p if isinstance(p, bool) else False for p in prepared]
    for i, fut in futures.items():
        try:
            verdicts[i] = bool(fut.result())
        except (FutureTimeout, TimeoutError):
            logger.warning("grading timed out after %.1fs: %r vs %r", timeout, *prepared[i])
        except Exception as e:  # a parser bug must not sink an evaluation run
            logger.warning("grading failed (%s): %r vs %r", type(e).__name__, *prepared[i])
    return verdicts


def grade(output: str, gold: str, *, task: str, timeout: float = DEFAULT_TIMEOUT) -> bool:
    """Is the final answer in `output` (with or without \\boxed{}) equal to `gold`? Never raises."""
    try:
        return grade_many([(output, gold, task)], timeout=timeout)[0]
    except Exception as e:
        logger.warning("grading failed: %s", e)
        return False
