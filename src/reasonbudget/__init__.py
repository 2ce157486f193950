"""reasonbudget: thinking budgets, inference-time scaling and draft/target decoding on one engine."""

from reasonbudget.engine import Engine, SamplingConfig
from reasonbudget.methods import METHODS
from reasonbudget.models import build_prompt, load_model
from reasonbudget.types import MethodResult, Usage

__version__ = "0.1.0"
__all__ = ["METHODS", "Engine", "MethodResult", "SamplingConfig", "Usage", "build_prompt", "load_model"]
