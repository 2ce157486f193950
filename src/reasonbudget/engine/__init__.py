from reasonbudget.engine.budget import BudgetConfig, BudgetController, BudgetState
from reasonbudget.engine.cache import KVCache
from reasonbudget.engine.controllers import Action, Chain, Controller, StopOnText
from reasonbudget.engine.engine import Decoded, Engine, PromptTooLongError
from reasonbudget.engine.sampling import SamplingConfig

__all__ = ["Action", "BudgetConfig", "BudgetController", "BudgetState", "Chain", "Controller", "Decoded",
           "Engine", "KVCache", "PromptTooLongError", "SamplingConfig", "StopOnText"]
