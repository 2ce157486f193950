from reasonbudget.methods import budget, drafting, scaling  # noqa: F401  (registers the methods)
from reasonbudget.methods.base import METHODS, Capabilities, Method, check_runnable, make_method, solve

DEFAULT_METHOD = "budget-forcing"
"""What the CLI and the server run when no method is named: a hard thinking budget that always answers."""


def no_thinking_method() -> str:
    """The registered method that answers without thinking (a request that turns thinking off runs it)."""
    return next(name for name, cls in METHODS.items() if not cls.capabilities.thinks)


__all__ = ["Capabilities", "DEFAULT_METHOD", "METHODS", "Method", "check_runnable", "make_method",
           "no_thinking_method", "solve"]
