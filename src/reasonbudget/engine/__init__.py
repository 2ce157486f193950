from reasonbudget.engine.budget import BudgetConfig, BudgetController, BudgetState
from reasonbudget.models.cache import KVCache
from reasonbudget.engine.controllers import Action, Chain, Controller, Observer, StopOnText
from reasonbudget.engine.engine import Decoded, Engine
from reasonbudget.engine.errors import PromptTooLongError
from reasonbudget.engine.sampling import SamplingConfig

__all__ = ["Action", "BudgetConfig", "BudgetController", "BudgetState", "Chain", "Controller", "Decoded",
           "Engine", "KVCache", "Observer", "PromptTooLongError", "SamplingConfig", "StopOnText"]
