"""Hidden states at the step ends of texts that grow a step at a time, each token read once.

A text scorer (a PRM head scoring text, for a policy that is another model or a remote server) is asked for
every step of a prefix each round of a search: re-reading each prefix makes its cost quadratic in the steps.
Here the base model keeps KV rows holding texts it has read. A new text continues from a row that holds its
longest prefix ending at a step end or at the prompt's end (found by digests of the prefixes, not by comparing
tokens; copied when another text of the same call wants that row too, since particles and beams fork), and only its
new tokens are fed. A row that a text of the call continues from is never handed to another text first, and a
prompt that several texts of a call share and no row holds is read once, then forked. The states at step ends
already read are remembered. The states equal a fresh read's up to float rounding (a test).
"""

from __future__ import annotations

import hashlib
from array import array
from collections import Counter, OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor


def step_keys(ids: Sequence[int], ends: Sequence[int]) -> list[bytes]:
    """Per step end e, a digest of ids[: e + 1]: equal for texts that share that prefix; pure."""
    data = array("q", ids).tobytes()
    h, keys, done = hashlib.blake2b(digest_size=16), [], 0
    for e in ends:
        h.update(data[8 * done : 8 * (e + 1)])
        done = e + 1
        keys.append(h.copy().digest())
    return keys


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
        self.row_keys: list[set[bytes]] = [set() for _ in range(rows)]
        """Per row: the digests (`step_keys`) of the step-end prefixes whose K/V it holds."""
        self.holder: dict[bytes, int] = {}
        """A prefix digest -> the row that last held it (checked against row_keys: rows get overwritten)."""
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
        return len(self.row_keys)

    @torch.inference_mode()
    def features(self, items: Sequence[tuple[Sequence[int], Sequence[int]] | tuple[Sequence[int], Sequence[int], int]]
                 ) -> list[Tensor]:
        """Per item (token ids, the index of each step's last token, ascending, within the context; optionally
        where the first step starts, the prompt before it shared by the texts of one problem): the concatenated
        states of `layers` at each step end, [num_steps, len(layers) * d] (float32, CPU). A prompt that texts of
        this call share and no row holds is read once, then forked (a search's first round)."""
        plans = [_points(item) for item in items]
        keys = [step_keys(ids, points) for ids, points, _ in plans]
        todo = [i for i, (ks, (_, _, skip)) in enumerate(zip(keys, plans))
                if any(x not in self.states for x in ks[skip:])]
        longest = max((len(plans[i][0]) for i in todo), default=0)
        if longest > self.capacity or len(todo) > self.num_rows:
            self._grow(max(len(todo), self.num_rows), longest)
        held = [self._longest_held(plans[i][1], keys[i])[0] for i in todo]
        shared = self._unheld_shared_prompts([plans[i] for i in todo], [keys[i] for i in todo], held)
        for start in range(0, len(shared), self.num_rows):
            self._read(shared[start : start + self.num_rows], keep={row for row in held if row is not None})
        for start in range(0, len(todo), self.num_rows):  # one row per text and round
            self._read([(plans[i], keys[i]) for i in todo[start : start + self.num_rows]])
        out = []
        for (_, _, skip), ks in zip(plans, keys):
            for x in ks:
                if x in self.states:  # (a prompt's state may have been dropped)
                    self.states.move_to_end(x)
            out.append(torch.stack([self.states[x] for x in ks[skip:]]) if ks[skip:] else torch.zeros(0))
        while len(self.states) > self.remembered:
            self.states.popitem(last=False)
        return out

    @staticmethod
    def _unheld_shared_prompts(plans, keys, held) -> list:
        """The prompts (as items of `_read`) that two or more of these texts start with and no row holds."""
        counts = Counter(ks[0] for (_, _, skip), ks, row in zip(plans, keys, held) if skip and row is None)
        prompts = {ks[0]: (list(ids[: points[0] + 1]), points[:1], 0) for (ids, points, skip), ks in zip(plans, keys)
                   if skip and counts[ks[0]] > 1}
        return [(p, [k]) for k, p in prompts.items()]

    def _grow(self, rows: int, longest: int) -> None:
        """At least `rows` rows (as many as fit in max_bytes, at least the current ones) of at least `longest`
        tokens (and some more); what the rows hold is kept."""
        ctx = self.model.context_length
        if longest > ctx:
            raise ValueError(f"a text of {longest} tokens exceeds {self.model.name}'s context ({ctx}): cut it first")
        capacity = max(self.capacity, min(ctx, -(-longest * 3 // 2 // 256) * 256))
        cfg = self.model.backend.cfg
        blocks = max(self.layers)  # hidden_only reads run no block above the highest layer
        per_row = 2 * blocks * cfg.num_kv_heads * cfg.head_dim * capacity * self.model.backend.dtype.itemsize
        rows = max(self.num_rows, min(rows, self.max_bytes // max(per_row, 1)))  # (layer 0 alone runs no block)
        if (rows, capacity) == (self.num_rows, self.capacity):
            return
        old, n = self.cache, self.num_rows
        self.cache = self.model.backend.new_cache(rows, capacity, blocks=blocks)
        if old is not None:
            self.cache.k[:, :n, :, : old.capacity] = old.k
            self.cache.v[:, :n, :, : old.capacity] = old.v
            self.cache.lengths[:n] = old.lengths
        self.capacity = capacity
        self.row_keys += [set() for _ in range(rows - n)]
        self.last_used += [0] * (rows - n)

    def _read(self, items, keep: set[int] = frozenset()) -> None:
        """Feed each item's unread tokens on a row of its own and remember the states at its points. items:
        ((ids, points, skip), keys); a row that some item (or `keep`) continues from is not handed to another."""
        held = [self._longest_held(points, ks) for (_, points, _), ks in items]
        wanted = keep | {row for row, _ in held if row is not None}
        plan = []  # (row, fed from, ids, points, keys)
        claimed: set[int] = set()
        for ((ids, points, skip), ks), (best, shared) in zip(items, held):
            first_missing = next((e for e, x in zip(points[skip:], ks[skip:]) if x not in self.states), points[-1])
            # at least the first unread step end is fed again (its state may have been forgotten)
            start = min(shared, first_missing)
            if best is None or best in claimed or start == 0:
                free = [r for r in range(self.num_rows) if r not in claimed]
                row = min(free, key=lambda r: (r in wanted, self.last_used[r]))
                self._forget(row)
                if start and row != best:
                    self.cache.reorder(torch.tensor([row]), torch.tensor([best]))
                    self.row_keys[row] = set(self.row_keys[best])  # a later text of this call may start from it
            else:
                row = best
            claimed.add(row)
            plan.append((row, start, ids, points, ks))
        for group in self._groups(plan):
            self._feed(group)

    def _longest_held(self, points: Sequence[int], keys: Sequence[bytes]) -> tuple[int | None, int]:
        """(a row holding the text's longest prefix ending at a point, that prefix's length); (None, 0) when none
        does."""
        for e, k in zip(reversed(points), reversed(keys)):
            row = self.holder.get(k)
            if row is not None and k in self.row_keys[row]:
                return row, e + 1
        return None, 0

    def clear(self) -> None:
        """Forget every text read (the rows stay allocated, free for the next texts)."""
        for row in range(self.num_rows):
            self.row_keys[row] = set()
        self.holder.clear()
        self.states.clear()

    def _forget(self, row: int) -> None:
        for k in self.row_keys[row]:
            if self.holder.get(k) == row:
                del self.holder[k]
        self.row_keys[row] = set()

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
        forward = self.model.backend(x, self.cache, rows, hidden_layers=self.layers, hidden_only=True)
        for b, (row, start, ids, ends, ks) in enumerate(group):
            at = [e - start for e in ends if e >= start]
            feats = torch.cat([forward.hidden[layer][b, at].float().cpu() for layer in self.layers], dim=-1)
            for k, f in zip(ks[len(ends) - len(at):], feats):
                self.states[k] = f
            self._forget(row)
            self.row_keys[row] = set(ks)
            self.holder.update(dict.fromkeys(ks, row))
            self.cache.lengths[row] = len(ids)  # the padding past it is stale: masked, then overwritten
            self.clock += 1
            self.last_used[row] = self.clock
            self.tokens_fed += len(ids) - start


def _points(item) -> tuple[Sequence[int], list[int], int]:
    """(ids, the positions whose prefixes rows hold: the prompt's last token if given, then the step ends, how
    many leading points are not step ends)."""
    ids, ends, *first = item
    if first and 0 < first[0] <= len(ids) and (not ends or first[0] <= ends[0]):
        return ids, [first[0] - 1, *ends], 1
    return ids, list(ends), 0
