"""Partial solutions and step generation: extend many partial solutions by one reasoning step each, on the
in-process engine (`StepRunner`: forked KV rows) or on a remote server (`reasonbudget.remote.steps`)."""

from reasonbudget.steps.particles import Particle, PromptCost, StepConfig, StepRunner, make_runner, prompt_generators

__all__ = ["Particle", "PromptCost", "StepConfig", "StepRunner", "make_runner", "prompt_generators"]
