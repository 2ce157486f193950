"""Arbitrage: advantage-aware step drafting (Maheswaran et al., arXiv 2512.05033; `../shared/specs/speculative.md`
3). The draft writes each reasoning step; a router trained for the (draft, target) pair predicts y_hat, the
probability that the target would write a better step; the draft's step is kept iff y_hat <= tau (`threshold`),
else the target writes it. No PRM at inference: one router forward per step.

`oracle=true` is the analysis bound: both models write every step, the PRM scores both, and the target's step
is taken iff its score beats the draft's by more than tau (it costs both models every step).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from reasonbudget.engine.controllers import Observer
from reasonbudget.methods.base import Backend, Capabilities, Generators, register
from reasonbudget.methods.drafting.steps import PRMArbiter, RouterArbiter, StepDraftConfig, run_step_drafting
from reasonbudget.types import MethodResult, TokenIds

_ROUTERS: dict[str, object] = {}


@dataclass(frozen=True, kw_only=True)
class ArbitrageConfig(StepDraftConfig):
    threshold: float = 0.5
    """tau: keep the draft's step iff y_hat <= tau (oracle: take the target's iff s_target - s_draft > tau)."""
    router: str = "auto"
    """A router directory (`reasonbudget train-router`); auto: the target's companion (its registry entry's, else
    the user cache, where `train-router` writes)."""
    oracle: bool = False
    prm: str = "auto"
    """The oracle's PRM."""


def load_router(spec: str, draft: str, target) -> object:
    """The router for (draft, target): `spec` or the target's companion; refused when trained for another pair.
    Served models (remote:URL#MODEL) are known by the names they are served under."""
    from reasonbudget.models.registry import companion_dir
    from reasonbudget.remote.model import is_remote, parse_remote_name
    from reasonbudget.rewards.router import CONFIG_FILE, load_router_dir

    draft = parse_remote_name(draft)[1] if is_remote(draft) else draft
    target_name = getattr(target, "served_model", target.name)
    path = Path(spec) if spec != "auto" else companion_dir(target_name, "router")
    if not (path / CONFIG_FILE).exists():
        raise ValueError(f"no router for {target_name} (router={spec}): train one with `reasonbudget train-router "
                         f"--draft {draft} --target {target_name}` or pass router=DIR")
    pair = json.loads((path / CONFIG_FILE).read_text()).get("pair", {})
    if pair and not (_same_model(pair.get("draft", ""), draft) and _same_model(pair.get("target", ""), target_name)):
        raise ValueError(f"the router at {path} was trained for {pair.get('draft')} -> {pair.get('target')}, not "
                         f"{draft} -> {target_name}; train one for this pair with `reasonbudget train-router`")
    key = str(path.resolve())
    if key not in _ROUTERS:
        _ROUTERS[key] = load_router_dir(path)
    return _ROUTERS[key]


def _same_model(a: str, b: str) -> bool:
    """Two model names or paths that name the same weights (a registry name and its path match)."""
    from reasonbudget.models.registry import resolve

    if a == b:
        return True
    try:
        return Path(resolve(a)).resolve() == Path(resolve(b)).resolve()
    except Exception:  # noqa: BLE001 - an unknown name is simply not the same model
        return False


@register
@dataclass(frozen=True)
class Arbitrage:
    name: ClassVar[str] = "arbitrage"
    capabilities: ClassVar[Capabilities] = Capabilities(budget="none", level="steps",
                                                        models=("policy", "draft", "router"))
    config_type: ClassVar[type] = ArbitrageConfig
    config: ArbitrageConfig = field(default_factory=ArbitrageConfig)

    def run(self, backend: Backend, prompts: Sequence[TokenIds], *, budget: int | None = None,
            generator: Generators, observers: Sequence[Observer] | None = None) -> list[MethodResult]:
        c = self.config
        if c.oracle:
            from reasonbudget.rewards.factory import load_prm

            prm = load_prm(c.prm, getattr(backend, "model", backend))
            arbiter = PRMArbiter(prm, c.threshold, oracle=True)
            tokens = lambda: getattr(prm, "tokens_read", 0)  # noqa: E731
        else:
            router = load_router(c.router, c.draft, getattr(backend, "model", backend))
            arbiter, tokens = RouterArbiter(router, c.threshold), (lambda: router.tokens_read)
        return run_step_drafting(c, backend, prompts, generator, arbiter, method=self.name, observers=observers,
                                 scorer_tokens=tokens)
