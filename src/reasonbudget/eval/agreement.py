"""How often a draft model's greedy next token equals the target's on the target's own text: the number that
bounds token-level speculation (the acceptance rate of greedy verification, teacher-forced)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from reasonbudget.types import TokenIds


@torch.inference_mode()
def greedy_agreement(draft, prompts: Sequence[TokenIds], continuations: Sequence[TokenIds]) -> tuple[int, int]:
    """(hits, total) over every position of continuations[i] (the target's tokens after prompts[i]): the draft
    reads the prompt and the continuation so far and its argmax is compared with the next continuation token.
    One forward per sequence on the draft's own backend (no sampling, no cache reuse needed)."""
    hits = total = 0
    for prompt, cont in zip(prompts, continuations, strict=True):
        if not cont:
            continue
        ids = torch.tensor([list(prompt) + list(cont)])
        cache = draft.backend.new_cache(1, ids.shape[1])
        logits = draft.backend(ids.to(draft.backend.device), cache, torch.tensor([0])).logits[0]
        pred = logits.argmax(-1).cpu()[len(prompt) - 1 : len(prompt) - 1 + len(cont)]  # position j predicts j + 1
        hits += int((pred == torch.tensor(list(cont))).sum())
        total += len(cont)
    return hits, total
