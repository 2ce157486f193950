"""Hidden states at the step ends of texts that grow a step at a time, each token read once.

A text scorer (a PRM head scoring text, for a policy that is another model or a remote server) is asked for
every step of a prefix each round of a search: re-reading each prefix makes its cost quadratic in the steps.
Here the base model keeps a few KV rows holding token sequences it has read. A new text continues from the row
that shares its longest prefix (copied when another text of the same call wants that row too, since particles
fork), and only its new tokens are fed; the states at step ends already read are remembered. The states equal a
fresh read's up to float rounding (a test).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token sequences; pure."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def _key(ids: Sequence[int]) -> bytes:
    return hashlib.blake2b(torch.tensor(list(ids), dtype=torch.int64).numpy().tobytes(), digest_size=16).digest()


class StepStates:
    """States of `layers` (HF numbering) of a runtime model at the step ends of token sequences (see above)."""

    def __init__(self, model, layers: Sequence[int], *, rows: int = 8, max_bytes: int = 4 << 30,
                 remembered: int = 16384, max_batch_tokens: int = 4096) -> None:
        """`rows`: to start with; they grow to the texts of a call (a search's live particles: a particle whose
        row was handed to another text is read again from its start), as long as all rows fit in `max_bytes`."""
        if getattr(model, "kind", "runtime") != "runtime":
            raise ValueError(f"{model.name}: step states need our runtime's KV rows (not the HF fallback)")
        self.model, self.layers = model, tuple(layers)
        self.capacity = 0  # grown to the longest text read (a full context per row would not fit in memory)
        self.cache = None
        self.held: list[list[int]] = [[] for _ in range(rows)]
        """Per row: the tokens whose K/V it holds (all of them: a row's length is len(held[r]))."""
        self.last_used = [0] * rows
        self.clock = 0
        self.max_bytes = max_bytes
        self.max_batch_tokens = max_batch_tokens
        self.states: OrderedDict[bytes, Tensor] = OrderedDict()
        """Features at a step's end, by the tokens up to and including it (least recently used dropped first)."""
        self.remembered = remembered
        self.tokens_fed = 0

    @property
    def num_rows(self) -> int:
        return len(self.held)

    @torch.inference_mode()
    def features(self, items: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[Tensor]:
        """Per item (token ids, the index of each step's last token, ascending, within the context): the
        concatenated states of `layers` at each step end, [num_steps, len(layers) * d] (float32, CPU)."""
        keys = [[_key(ids[: e + 1]) for e in ends] for ids, ends in items]
        todo = [i for i, k in enumerate(keys) if any(x not in self.states for x in k)]
        longest = max((len(items[i][0]) for i in todo), default=0)
        if longest > self.capacity or len(todo) > self.num_rows:
            self._grow(max(len(todo), self.num_rows), longest)
        for start in range(0, len(todo), self.num_rows):  # one row per text and round
            self._read([items[i] for i in todo[start : start + self.num_rows]],
                       [keys[i] for i in todo[start : start + self.num_rows]])
        out = []
        for ks in keys:
            for x in ks:
                self.states.move_to_end(x)
            out.append(torch.stack([self.states[x] for x in ks]) if ks else torch.zeros(0))
        while len(self.states) > self.remembered:
            self.states.popitem(last=False)
        return out

    def _grow(self, rows: int, longest: int) -> None:
        """At least `rows` rows (as many as fit in max_bytes, at least the current ones) of at least `longest`
        tokens (and some more); what the rows hold is kept."""
        ctx = self.model.context_length
        if longest > ctx:
            raise ValueError(f"a text of {longest} tokens exceeds {self.model.name}'s context ({ctx}): cut it first")
        capacity = max(self.capacity, min(ctx, -(-longest * 3 // 2 // 256) * 256))
        cfg = self.model.backend.cfg
        per_row = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * capacity * self.model.backend.dtype.itemsize
        rows = max(self.num_rows, min(rows, self.max_bytes // per_row))
        if (rows, capacity) == (self.num_rows, self.capacity):
            return
        old, n = self.cache, self.num_rows
        self.cache = self.model.backend.new_cache(rows, capacity)
        if old is not None:
            self.cache.k[:, :n, :, : old.capacity] = old.k
            self.cache.v[:, :n, :, : old.capacity] = old.v
            self.cache.lengths[:n] = old.lengths
        self.capacity = capacity
        self.held += [[] for _ in range(rows - n)]
        self.last_used += [0] * (rows - n)

    def _read(self, items, keys) -> None:
        """Feed each item's unread tokens on a row of its own and remember the states at its step ends."""
        plan = []  # (row, fed from, item)
        claimed: set[int] = set()
        for (ids, ends), ks in zip(items, keys):
            first_missing = next(e for e, x in zip(ends, ks) if x not in self.states)
            # the row sharing the most of this text; at least the first unread step end is fed again
            best = max(range(self.num_rows), key=lambda r: (common_prefix(self.held[r], ids), -r))
            start = min(common_prefix(self.held[best], ids), first_missing)
            if best in claimed or start == 0:
                row = min((r for r in range(self.num_rows) if r not in claimed), key=lambda r: self.last_used[r])
                if start and row != best:
                    self.cache.reorder(torch.tensor([row]), torch.tensor([best]))
                    self.held[row] = list(self.held[best])  # a later text of this call may start from it
            else:
                row = best
            claimed.add(row)
            plan.append((row, start, ids, ends, ks))
        for group in self._groups(plan):
            self._feed(group)

    def _groups(self, plan):
        """Batches of the plan whose padded feeds fit the rows' capacity and `max_batch_tokens` (one forward's
        activations), shortest feeds together."""
        plan = sorted(plan, key=lambda p: len(p[2]) - p[1])
        group: list = []
        for p in plan:
            width = len(p[2]) - p[1]
            if group and (max(q[1] for q in (*group, p)) + width > self.capacity
                          or (len(group) + 1) * width > self.max_batch_tokens):
                yield group
                group = []
            group.append(p)
        if group:
            yield group

    def _feed(self, group) -> None:
        width = max(len(ids) - start for _, start, ids, _, _ in group)
        x = torch.zeros(len(group), width, dtype=torch.long)
        for b, (_, start, ids, _, _) in enumerate(group):
            x[b, : len(ids) - start] = torch.tensor(list(ids[start:]), dtype=torch.long)
        rows = torch.tensor([row for row, *_ in group])
        self.cache.lengths[rows] = torch.tensor([start for _, start, *_ in group])
        forward = self.model.backend(x, self.cache, rows, logits_at=torch.zeros(len(group), dtype=torch.long),
                                     hidden_layers=self.layers)
        for b, (row, start, ids, ends, ks) in enumerate(group):
            at = [e - start for e in ends if e >= start]
            feats = torch.cat([forward.hidden[layer][b, at].float().cpu() for layer in self.layers], dim=-1)
            for k, f in zip(ks[len(ends) - len(at):], feats):
                self.states[k] = f
            self.held[row] = list(ids)
            self.cache.lengths[row] = len(ids)  # the padding past it is stale: masked, then overwritten
            self.clock += 1
            self.last_used[row] = self.clock
            self.tokens_fed += len(ids) - start
