from reasonbudget.methods import budget, scaling  # noqa: F401  (registers the methods)
from reasonbudget.methods.base import METHODS, Method

__all__ = ["METHODS", "Method"]
