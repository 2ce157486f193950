"""OpenAI-compatible server: `reasonbudget serve`."""
