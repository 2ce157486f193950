from reasonbudget.methods import budget  # noqa: F401  (registers the budget methods)
from reasonbudget.methods.base import METHODS, Method

__all__ = ["METHODS", "Method"]
