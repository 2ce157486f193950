"""Sweeps on Ray (`pip install reasonbudget[distributed]`): units run on actors that each load the model
once; the driver grades and appends, so the results file keeps a single writer."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from reasonbudget.eval.runner import SweepConfig, Unit, UnitRunner


def execute_on_ray(cfg: SweepConfig, units: list[Unit], address: str,
                   num_actors: int | None = None) -> Iterator[tuple[Unit, list[dict[str, Any]]]]:
    try:
        import ray
    except ImportError:
        raise ValueError("--ray needs Ray: pip install 'reasonbudget[distributed]'") from None
    if not ray.is_initialized():
        ray.init(address=None if address in ("", "local") else address, log_to_driver=False,
                 include_dashboard=False)
    cpus = int(ray.available_resources().get("CPU", 1))
    n = max(1, min(num_actors or cpus, len(units)))
    Actor = ray.remote(num_cpus=1)(UnitRunner)
    actors = [Actor.remote(cfg, threads=1) for _ in range(n)]
    pending = {actors[i % n].run.remote(u): u for i, u in enumerate(units)}
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            yield pending.pop(ref), ray.get(ref)
