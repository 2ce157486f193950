"""A CPU-sized reasoning world: synthetic arithmetic chains, reference traces, a step checker, a character
tokenizer, and tiny draft/target thinking models trained here."""
