"""Keys and values of a Hugging Face causal LM kept per segment of sequences that grow by segments (a question,
then one reasoning step at a time), so that a scorer reads each prefix once: scoring a trace that extends one
scored before feeds only its new steps. Step-level search and drafting score every step's prefix, so re-reading
whole prefixes makes a scorer's cost quadratic in the number of steps; this makes it linear.

A sequence is a list of segment keys (each key names the whole prefix up to and including its segment, e.g.
(question, steps[:k])). Segments live in an LRU store; a lookup returns the leading segments present, and only
the rest is fed. Evicting a segment makes its descendants unreachable until they are read again.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass
class Segment:
    keys: list[Tensor]
    """Per layer, [1, heads, segment tokens, head dim]."""
    values: list[Tensor]
    extra: Any
    """What the scorer keeps about the prefix ending here (its next-token log-probs, a running feature...)."""


class SegmentKV:
    def __init__(self, max_segments: int = 4096) -> None:
        if max_segments < 1:
            raise ValueError(f"max_segments={max_segments}: accepted is at least 1")
        self.max_segments = max_segments
        self._store: OrderedDict[Hashable, Segment] = OrderedDict()

    def __len__(self) -> int:
        return len(self._store)

    def clear(self) -> None:
        self._store.clear()

    def lookup(self, keys: Sequence[Hashable]) -> list[Segment]:
        """The longest run of leading segments already stored (marked as recently used)."""
        path = []
        for key in keys:
            seg = self._store.get(key)
            if seg is None:
                break
            self._store.move_to_end(key)
            path.append(seg)
        return path

    @staticmethod
    def past(path: Sequence[Segment]):
        """A DynamicCache holding the path's keys and values (empty for an empty path), for the model to extend."""
        from transformers import DynamicCache

        cache = DynamicCache()
        if path:
            for layer in range(len(path[0].keys)):
                cache.update(torch.cat([s.keys[layer] for s in path], dim=2),
                             torch.cat([s.values[layer] for s in path], dim=2), layer)
        return cache

    def add(self, keys: Sequence[Hashable], cache, start: int, lengths: Sequence[int], extras: Sequence[Any]) -> None:
        """Store the segments just fed: `cache` holds the prefix, then their tokens from position `start` on."""
        pos = start
        for key, n, extra in zip(keys, lengths, extras, strict=True):
            layers = cache.layers
            self._store[key] = Segment([layer.keys[:, :, pos : pos + n].clone() for layer in layers],
                                       [layer.values[:, :, pos : pos + n].clone() for layer in layers], extra)
            self._store.move_to_end(key)
            pos += n
        while len(self._store) > self.max_segments:
            self._store.popitem(last=False)
