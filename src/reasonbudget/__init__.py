"""reasonbudget: thinking budgets, inference-time scaling and draft/target decoding on one engine.

Names are imported lazily, so that light entry points (answer grading workers, `--help`) do not pay for
importing torch and transformers.
"""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Engine": "reasonbudget.engine",
    "SamplingConfig": "reasonbudget.engine",
    "METHODS": "reasonbudget.methods",
    "build_prompt": "reasonbudget.models",
    "load_model": "reasonbudget.models",
    "MethodResult": "reasonbudget.types",
    "Usage": "reasonbudget.types",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'reasonbudget' has no attribute {name!r}")
