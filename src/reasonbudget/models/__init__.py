from reasonbudget.models.config import ModelConfig
from reasonbudget.models.profiles import INSTRUCT, THINKING, ReasoningProfile
from reasonbudget.models.registry import (DEFAULT_MODEL, LoadedModel, ModelNotFoundError, available_models,
                                          build_prompt, load_model)

__all__ = ["DEFAULT_MODEL", "INSTRUCT", "THINKING", "LoadedModel", "ModelConfig", "ModelNotFoundError",
           "ReasoningProfile", "available_models", "build_prompt", "load_model"]
