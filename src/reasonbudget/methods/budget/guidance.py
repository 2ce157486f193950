"""Budget Guidance (Li et al. 2025, arXiv 2506.13752): steer thinking length with a learned predictor.

At the first thinking token and after every token that contains a newline, the row's next-token
probabilities are multiplied by P(remaining thinking length <= remaining budget) from the length predictor
(`reasonbudget.predictors`), over trusted vocabulary rows, and renormalised; elsewhere decoding is plain.
The remaining budget is B minus the thinking tokens so far, floored at 1, so a row past its budget is pushed
hard towards ending. The budget is soft, as in the paper; `hard_cap` also forces the end of thinking at B.

Departures from the reference, flagged: rows of a batch are guided independently (the reference is batch 1
only); the guided distribution then goes through the request's sampling settings (the reference samples
guided steps at temperature 1 whatever was asked); `strength` raises the CDF to a power (1 = reference).
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from torch import Tensor

from reasonbudget.engine.budget import BudgetConfig, BudgetController
from reasonbudget.engine.controllers import KEEP, Action, BatchedWork, Controller
from reasonbudget.engine.controllers import Observer
from reasonbudget.engine.sampling import SamplingConfig
from reasonbudget.methods.base import Backend, Capabilities, DraftSettings, Generators, answer_cap, register
from reasonbudget.methods.base import speculation_for
from reasonbudget.models.registry import companion_dir
from reasonbudget.predictors.gamma import MIN_RATE, guided_probs
from reasonbudget.predictors.length import LengthPredictor, hidden_layer_ids, lm_dims, load_predictor
from reasonbudget.types import MethodResult, TokenIds


@dataclass(frozen=True, kw_only=True)
class BudgetGuidanceConfig(DraftSettings):
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    predictor: str | None = None
    """Directory of a trained length predictor; None: the model's default (see `default_predictor_dir`)."""
    hard_cap: bool = False
    """Also force the end of thinking at the budget (no overshoot)."""
    strength: float = 1.0
    min_rate: float | None = None
    """Trusted-row filter: Gamma rate at least this; None: the predictor's calibrated value (the reference's
    fixed 10 suits traces thousands of tokens long and trusts almost nothing on short ones)."""
    max_answer_tokens: int | None = None
    """None: the model profile's cap (`ReasoningProfile.answer_tokens`: the answer ends at its end of turn)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.strength <= 0:
            raise ValueError(f"strength={self.strength}: must be > 0")


def default_predictor_dir(model) -> Path:
    """The model's companion length predictor (see `models.registry.companion_dir`)."""
    return companion_dir(model.name, "length_predictor")


_NEWLINES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> table
_PREDICTORS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # backend -> {path: predictor}


def newline_table(model) -> Tensor:
    """[V] bool: which token ids decode to text containing a newline (looked up, not decoded, per step)."""
    if model.tokenizer not in _NEWLINES:
        _NEWLINES[model.tokenizer] = _newline_table(model)
    return _NEWLINES[model.tokenizer]


def cached_predictor(path: Path, model) -> LengthPredictor:
    loaded = _PREDICTORS.setdefault(model.backend, {})
    key = str(Path(path).resolve())
    if key not in loaded:
        loaded[key] = load_predictor(path, model)
    return loaded[key]


def _newline_table(model) -> Tensor:
    vocab = lm_dims(model).vocab_size
    table = torch.zeros(vocab, dtype=torch.bool)
    for i in range(min(vocab, len(model.tokenizer))):
        table[i] = "\n" in model.decode([i])
    return table


class PredictorBatch(BatchedWork):
    """One predictor forward per decode step for every row of the batch that is at a line start."""

    def __init__(self, predictor: LengthPredictor, layers: Sequence[int]) -> None:
        self.predictor, self.layers = predictor, tuple(layers)

    @torch.inference_mode()
    def run(self, rows: Sequence[tuple[Controller, Mapping[int, Tensor] | None]]) -> None:
        rows = [(c, h) for c, h in rows if h is not None]
        if not rows:
            return
        t0 = time.perf_counter()
        states = torch.stack([torch.stack([h[i] for i in self.layers]) for _, h in rows]).float()  # [n, L+1, d]
        shape, rate = self.predictor(states)
        share = (time.perf_counter() - t0) / len(rows)
        for k, (c, _) in enumerate(rows):
            c.pending = (shape[k], rate[k])
            c.predictor_seconds += share


class GuidanceController(Controller):
    """One row: guides at line starts while its budget controller says the row is thinking. The predictor
    runs batched across rows (`PredictorBatch`); a controller used alone runs its own share."""

    def __init__(self, batch: PredictorBatch, newline: Tensor, budget: int, row_budget: BudgetController,
                 strength: float, min_rate: float = MIN_RATE) -> None:
        self.batch, self.hidden_layers, self.newline = batch, batch.layers, newline
        self.budget, self.row_budget, self.strength, self.min_rate = budget, row_budget, strength, min_rate
        self.guide_now, self.guided_steps, self.fallback_steps, self.predictor_seconds = True, 0, 0, 0.0
        self.pending: tuple[Tensor, Tensor] | None = None

    def _due(self) -> bool:
        return self.guide_now and self.row_budget.state.phase == "thinking"

    def batched_work(self) -> Sequence[tuple[BatchedWork, Controller]]:
        return ((self.batch, self),) if self._due() else ()

    @torch.inference_mode()
    def process_logits(self, logits: Tensor, hidden: Mapping[int, Tensor] | None) -> Tensor:
        if not self._due() or hidden is None:
            return logits
        if self.pending is None:
            self.batch.run([(self, hidden)])
        (shape, rate), self.pending = self.pending, None
        t0 = time.perf_counter()
        remaining = max(self.budget - self.row_budget.state.thinking_tokens, 1)
        probs, fell_back = guided_probs(logits[None, : shape.shape[-1]], shape[None], rate[None], remaining,
                                        self.strength, self.min_rate)
        self.fallback_steps += int(fell_back[0])
        out = torch.full_like(logits, float("-inf"))
        out[: probs.shape[1]] = torch.log(probs[0])
        self.guided_steps += 1
        self.predictor_seconds += time.perf_counter() - t0
        return out

    def on_token(self, token: int, forced: bool) -> Action:
        self.guide_now = bool(self.newline[token]) if token < self.newline.shape[0] else False
        return KEEP

    @property
    def trace(self) -> dict:
        return {"guided_steps": self.guided_steps, "fallback_steps": self.fallback_steps,
                "predictor_seconds": round(self.predictor_seconds, 4)}


@register
@dataclass(frozen=True)
class BudgetGuidance:
    name: ClassVar[str] = "budget-guidance"
    capabilities: ClassVar[Capabilities] = Capabilities(budget="thinking tokens", default_budget=256, level="tokens",
                                                        models=("policy", "predictor"), streams="tokens",
                                                        joins_running_batch=True)
    config_type: ClassVar[type] = BudgetGuidanceConfig
    config: BudgetGuidanceConfig = field(default_factory=BudgetGuidanceConfig)

    def row_config(self, backend: Backend, budget: int) -> BudgetConfig:
        """Rows of one run share the budget (the server batches equal budgets), so a joining row's is the same."""
        c = self.config
        return BudgetConfig(max_thinking_tokens=budget if c.hard_cap else None, max_answer_tokens=answer_cap(c, backend))

    def run(self, engine: Backend, prompts: Sequence[TokenIds], *, budget: int | None,
            generator: Generators, observers: Sequence[Observer] | None = None) -> list[MethodResult]:
        if budget is None or budget < 1:
            raise ValueError(f"budget-guidance needs a thinking budget >= 1 tokens, got {budget}")
        c, model = self.config, engine.model
        predictor = cached_predictor(Path(c.predictor) if c.predictor else default_predictor_dir(model), model)
        batch, newline = PredictorBatch(predictor, hidden_layer_ids(model)), newline_table(model)
        cfg = self.row_config(engine, budget)
        min_rate = c.min_rate if c.min_rate is not None else predictor.cfg.min_rate

        def steer(row_budget: BudgetController) -> GuidanceController:
            return GuidanceController(batch, newline, budget, row_budget, c.strength, min_rate)

        return engine.generate(prompts, [cfg] * len(prompts), c.sampling, generator, steering=steer,
                               observers=observers, **speculation_for(c, engine))
