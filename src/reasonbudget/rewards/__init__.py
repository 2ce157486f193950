"""Process reward models: the protocol and aggregation here; the scorers (oracle, testbed PRM, HF PRMs, judges,
a served PRM) in their modules, loaded by name through `rewards.factory`."""

from reasonbudget.rewards.base import PRMUnavailable, ProcessRewardModel, StepSequence, aggregate

__all__ = ["PRMUnavailable", "ProcessRewardModel", "StepSequence", "aggregate"]
