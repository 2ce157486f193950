from reasonbudget.methods.budget.forcing import BudgetForcing, BudgetForcingConfig
from reasonbudget.methods.budget.guidance import BudgetGuidance, BudgetGuidanceConfig
from reasonbudget.methods.budget.nothinking import NoThinking, NoThinkingConfig
from reasonbudget.methods.budget.plain import PlainConfig, PlainCoT

__all__ = ["BudgetForcing", "BudgetForcingConfig", "BudgetGuidance", "BudgetGuidanceConfig", "NoThinking",
           "NoThinkingConfig", "PlainCoT", "PlainConfig"]
