"""Remote backends: text-level methods against OpenAI-compatible completion servers (`remote:URL#MODEL`)."""
