"""The `Method` interface, the capabilities every method declares, and the method registry.

Callers (CLI, eval, server) never name a method: they read its `Capabilities` (what its budget counts, whether
budgets may differ per row, the backend level it needs, the models it uses, how it streams). Adding a method
is one module that defines a class with `name`, `capabilities`, `config_type`, `run`, decorated `@register`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol

from reasonbudget.engine.backend import LEVELS, Backend, Level, check_level
from reasonbudget.engine.controllers import Observer
from reasonbudget.engine.generation import Generators
from reasonbudget.engine.sampling import SamplingConfig
from reasonbudget.types import MethodResult, TokenIds

BudgetUnit = Literal["thinking tokens", "samples", "none"]
Role = Literal["policy", "draft", "prm", "router", "predictor"]
Streaming = Literal["tokens", "end"]

__all__ = ["Backend", "BudgetUnit", "Capabilities", "DraftSettings", "Generators", "LEVELS", "Level", "METHODS", "Method",
           "Role", "Streaming", "answer_cap", "check_runnable", "make_method", "register", "solve", "speculation_for"]


@dataclass(frozen=True, kw_only=True)
class Capabilities:
    """What a method needs and offers, as data (read by the CLI, the eval runner and the server)."""

    budget: BudgetUnit
    """What `budget` counts: thinking tokens, N samples / particles, or nothing."""
    budget_required: bool = True
    """False: a budget is optional (TALE: a cap on its own estimate); sweeps then run the method once."""
    default_budget: int | None = None
    """Used when the caller gives none (search methods: N)."""
    per_row_budgets: bool = False
    """`run` takes one budget per prompt (the server batches requests with different budgets)."""
    level: Level = "text"
    """The lowest backend level it needs (text < steps < tokens; see `engine.backend`)."""
    models: tuple[Role, ...] = ("policy",)
    """The models it uses besides the policy's weights (a PRM, a length predictor, ...)."""
    streams: Streaming = "end"
    """tokens: one row per prompt whose tokens an observer sees as they come; end: the text comes at the end."""
    thinks: bool = True
    """False: the answer starts at once (thinking prefilled as done); a request that turns thinking off maps
    to such a method."""
    joins_running_batch: bool = False
    """Requests may join its running batch between decode steps (continuous batching): its `run` is one
    `generate` call whose rows differ only by `row_config(backend, budget)`."""

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"level={self.level!r}: accepted are {', '.join(LEVELS)}")
        if self.budget == "none" and (self.default_budget is not None or self.per_row_budgets):
            raise ValueError("a method without a budget has no default budget and no per-row budgets")

    @property
    def sweeps_budgets(self) -> bool:
        """An eval sweep runs it once per budget (else once, without one)."""
        return self.budget != "none" and self.budget_required

    @property
    def takes_samples(self) -> bool:
        return self.budget == "samples"


class Method(Protocol):
    name: ClassVar[str]
    capabilities: ClassVar[Capabilities]
    config_type: ClassVar[type]

    def run(self, backend: Backend, prompts: Sequence[TokenIds], *, budget: int | Sequence[int] | None,
            generator: Generators, observers: Sequence[Observer] | None = None) -> list[MethodResult]: ...


METHODS: dict[str, Callable[..., Method]] = {}


def register(cls: type) -> type:
    if not isinstance(getattr(cls, "capabilities", None), Capabilities):
        raise TypeError(f"{cls.__name__} must declare `capabilities: ClassVar[Capabilities]`")
    METHODS[cls.name] = cls
    return cls


def make_method(spec: str, sampling: SamplingConfig, **options: Any) -> Method:
    """A registered method with its config built from a sampling config, the settings of its spec
    ("name:key=value,...", see `methods.spec`) and keyword overrides."""
    from reasonbudget.methods.spec import parse_method_spec

    name, settings = parse_method_spec(spec)
    cls = METHODS[name]
    return cls(cls.config_type(sampling=sampling, **{**settings, **options}))


@dataclass(frozen=True, kw_only=True)
class DraftSettings:
    """Token-level speculation for a method that decodes one row per prompt: a draft model proposes `gamma`
    tokens per round, the target verifies them in one forward (exact: the output follows the target's
    distribution; greedy output equals greedy decoding). Budgets and controllers see every emitted token."""

    draft: str = ""
    """The draft model (registry name or path; it must share the target's tokenizer); empty or "none": no
    speculation (how a request turns off a server's default draft)."""
    gamma: int = 4
    draft_quant: str = "none"
    """Weight-only quantized draft (none | int8 | int4 | bf16): a cheaper draft step."""
    adaptive_gamma: bool = False
    """Each row's gamma moves after every round: +2 when all drafted tokens were kept, -1 otherwise (HF's
    heuristic), between 1 and 16."""

    def __post_init__(self) -> None:
        from reasonbudget.models.quant import check_quant

        if self.draft == "none":
            object.__setattr__(self, "draft", "")
        if self.gamma < 1:
            raise ValueError(f"gamma={self.gamma}: must be >= 1 draft token per round")
        check_quant(self.draft_quant)


def speculation_for(config: Any, backend: Backend) -> dict[str, Any]:
    """{"speculation": ...} for `backend.generate` when the config names a draft, else {}."""
    draft = getattr(config, "draft", "")
    if not draft:
        return {}
    make = getattr(backend, "speculation", None)
    if make is None:
        raise ValueError(f"draft={draft}: speculation runs on the in-process engine; {backend.name} is served "
                         "elsewhere (let that server speculate, e.g. vLLM's speculative config)")
    return {"speculation": make(draft, config.gamma, config.draft_quant, getattr(config, "mtad_settings", None),
                                config.adaptive_gamma)}


def answer_cap(config: Any, backend: Backend) -> int:
    """A method config's `max_answer_tokens`, or the backend's profile default when it is None."""
    return config.max_answer_tokens if config.max_answer_tokens is not None else backend.profile.answer_tokens


def check_runnable(method: Method, backend: Backend) -> None:
    """ValueError in one line when the backend lacks the level the method needs."""
    check_level(backend, method.capabilities.level, method.name)


def solve(backend: Backend, method: str | Method, questions: Sequence[str], *, generator: Generators,
          budget: int | Sequence[int] | None = None, sampling: SamplingConfig | None = None,
          observers: Sequence[Observer] | None = None) -> list[MethodResult]:
    """Questions in, results out, on any backend (the engine or `remote:` server): the method (a spec such as
    "budget-forcing:max_waits=2", or a built method) is checked against the backend's levels first."""
    if isinstance(method, str):
        from reasonbudget.methods.spec import method_class

        cls = method_class(method)  # the backend's level first: a method it cannot run is refused as such
        check_level(backend, cls.capabilities.level, cls.name)
        method = make_method(method, sampling or SamplingConfig())
    check_runnable(method, backend)
    return method.run(backend, [backend.prompt(q) for q in questions], budget=budget, generator=generator,
                      observers=observers)
