"""Errors of the engine layer that callers turn into clear messages."""


class PromptTooLongError(ValueError):
    """The prompt leaves too little of the model's context to generate."""
