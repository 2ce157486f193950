from reasonbudget.rewards.base import ProcessRewardModel, StepSequence, aggregate
from reasonbudget.rewards.oracle import OraclePRM

__all__ = ["OraclePRM", "ProcessRewardModel", "StepSequence", "aggregate"]
