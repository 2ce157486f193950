from reasonbudget.methods.budget.forcing import BudgetForcing, BudgetForcingConfig
from reasonbudget.methods.budget.guidance import BudgetGuidance, BudgetGuidanceConfig
from reasonbudget.methods.budget.nothinking import NoThinking, NoThinkingConfig
from reasonbudget.methods.budget.plain import PlainConfig, PlainCoT
from reasonbudget.methods.budget.tale import Tale, TaleConfig

__all__ = ["BudgetForcing", "BudgetForcingConfig", "BudgetGuidance", "BudgetGuidanceConfig", "NoThinking",
           "NoThinkingConfig", "PlainCoT", "PlainConfig", "Tale", "TaleConfig"]
